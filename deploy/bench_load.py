"""The ``load`` section of deskhub's benchmark (deploy/benchmark.py runs it): simulated users
in waves, in the spirit of hubtraf, against one deskhub hub on the host engine.

Each simulated user signs up on NativeAuthenticator's ``/hub/signup`` form and is approved
by the first admin on ``/hub/authorize/NAME`` (setup, before the waves). Then, in its wave,
it does what a researcher's browser does:

1. logs in on the ``/hub/login`` form (a bcrypt check in the hub) and opens ``/hub/home``;
2. with its login cookie (and the XSRF header the hub's pages send), makes itself an API
   token (``POST /hub/api/users/NAME/tokens``, as on ``/hub/token``): its Jupyter server
   takes that token, where a browser would go through the hub's OAuth redirects;
3. spawns its default environment (``POST /hub/api/users/NAME/server``, cookie + XSRF, as
   the spawn page does) and polls its server model every 0.5 s until ``ready``;
4. opens the desktop's VNC websocket through the proxy and reads the RFB banner
   (``tests/jupyterclient.py``; this starts TigerVNC and MATE);
5. starts a kernel, runs ``print(5 * 4)`` and expects ``20``, shuts the kernel down;
6. keeps its session while the next ``keep`` waves run, checks that it is still there
   (the hub says ready, and the server answers through the proxy), then stops it
   (``DELETE``) and waits until it is gone.

Meanwhile a probe reads ``GET /hub/api/users/NAME`` every 0.5 s (the hub's API through the
proxy) and a running user's ``/user/NAME/api/status`` (the proxy's route to a session), a
monitor reads ``GET /hub/api/users`` every second to catch a session that vanishes between
ready and its stop, and a sampler reads the hub's and the proxy's CPU and memory from /proc.

The run fails (:func:`problems`) on any failed step of a user (a failed spawn among them), a
lost session, a probe not answered with 200 within 10 s, or a session container still there
30 s after the hub reported its server stopped.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from deploy.bench_placement import percentile
from tests import jupyterclient
from tests.harness import Hub

USERS = 40
WAVE = 10
KEEP = 1  # waves that stay running while the next one comes in
CPU = 0.1
MEMORY = "1G"
PREFIX = "deskhubload"
NETWORK = "deskhub-load"
START_TIMEOUT = 120  # sessions.start_timeout of the hub under load
STOP_TIMEOUT = 120
POLL = 0.5  # a user polling its server model
PROBE_INTERVAL = 0.5
PROBE_TIMEOUT = 10.0  # a probe slower than this counts as the hub not answering
MONITOR_INTERVAL = 1.0
SAMPLE_INTERVAL = 1.0
CODE, OUTPUT = "print(5 * 4)", "20"
BANNER = b"RFB 003.008\n"
OTHER_STAGES = ("login", "token", "desktop", "kernel", "check", "stop")  # all but spawn


class StageFailed(Exception):
    def __init__(self, stage: str, why: str) -> None:
        super().__init__(f"{stage}: {why}")
        self.stage = stage
        self.why = why


@dataclass
class UserResult:
    name: str
    wave: int
    times: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    failure: StageFailed | None = None


# -- what is shared between the users, the probe and the monitor ---------------------------


@dataclass
class Tracker:
    """Which sessions are ready and which were asked to stop, and the sessions lost."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: dict[str, str] = field(default_factory=dict)  # name -> the user's token
    stopping: set[str] = field(default_factory=set)
    lost: dict[str, str] = field(default_factory=dict)  # name -> how it was noticed
    most_ready: int = 0

    def mark_ready(self, name: str, token: str) -> None:
        with self.lock:
            self.ready[name] = token
            self.most_ready = max(self.most_ready, len(self.ready))

    def mark_stopping(self, name: str) -> None:
        with self.lock:
            self.stopping.add(name)

    def mark_gone(self, name: str) -> None:
        with self.lock:
            self.ready.pop(name, None)

    def mark_lost(self, name: str, why: str) -> None:
        with self.lock:
            self.lost.setdefault(name, why)

    def watched(self) -> set[str]:
        """Sessions that are ready and not being stopped: they must stay."""
        with self.lock:
            return set(self.ready) - self.stopping - set(self.lost)

    def one_running(self) -> tuple[str, str] | None:
        with self.lock:
            for name, token in self.ready.items():
                if name not in self.stopping:
                    return name, token
        return None


@dataclass
class Probe:
    """Latencies (s) of the requests a probe made, and the ones that failed."""

    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Usage:
    """CPU (% of one core, per sampling interval) and RSS (MiB) of one process."""

    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)


# -- one simulated user ----------------------------------------------------------------------


class SimulatedUser:
    """A browser-like client of the hub: its own cookies, XSRF token and API token."""

    def __init__(self, hub_url: str, name: str, password: str) -> None:
        self.hub_url = hub_url
        self.name = name
        self.password = password
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only, never an environment proxy
        self.token = ""

    @property
    def server_url(self) -> str:
        return f"{self.hub_url}/user/{self.name}"

    def xsrf(self) -> str:
        return self.session.cookies.get("_xsrf", path="/hub/") or ""

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The hub's REST API as its pages call it: login cookie plus XSRF header."""
        return self.session.request(
            method,
            f"{self.hub_url}/hub/api{path}",
            headers={"X-XSRFToken": self.xsrf()},
            timeout=60,
            **kwargs,
        )

    def sign_up(self) -> None:
        self.session.get(f"{self.hub_url}/hub/signup", timeout=60).raise_for_status()
        response = self.session.post(
            f"{self.hub_url}/hub/signup",
            data={
                "username": self.name,
                "signup_password": self.password,
                "signup_password_confirmation": self.password,
                "_xsrf": self.xsrf(),
            },
            timeout=60,
        )
        response.raise_for_status()
        self.session.cookies.clear()

    def log_in(self) -> None:
        self.session.get(f"{self.hub_url}/hub/login", timeout=60).raise_for_status()
        response = self.session.post(
            f"{self.hub_url}/hub/login",
            data={"username": self.name, "password": self.password, "_xsrf": self.xsrf()},
            allow_redirects=False,
            timeout=60,
        )
        if response.status_code != 302:
            raise StageFailed("login", f"HTTP {response.status_code} from the login form")
        # the home page gives the XSRF cookie that goes with the new login
        home = self.session.get(f"{self.hub_url}/hub/home", allow_redirects=False, timeout=60)
        if home.status_code != 200:
            raise StageFailed("login", f"HTTP {home.status_code} from /hub/home after login")

    def make_token(self) -> None:
        response = self.api(
            "POST", f"/users/{self.name}/tokens", json={"note": "load", "expires_in": 3600}
        )
        if response.status_code != 201:
            raise StageFailed("token", f"HTTP {response.status_code}: {response.text[:200]}")
        self.token = response.json()["token"]

    def server(self) -> dict[str, Any] | None:
        response = self.api("GET", f"/users/{self.name}")
        response.raise_for_status()
        return (response.json().get("servers") or {}).get("")

    def spawn(self, timeout: float) -> None:
        response = self.api("POST", f"/users/{self.name}/server", json={})
        if response.status_code not in (201, 202):
            raise StageFailed("spawn", f"HTTP {response.status_code}: {response.text[:200]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server()
            if server and server.get("ready"):
                return
            if not server or not server.get("pending"):
                raise StageFailed("spawn", "stopped while starting")
            time.sleep(POLL)
        raise StageFailed("spawn", f"not ready within {timeout:.0f} s")

    def open_desktop(self) -> None:
        banner = jupyterclient.desktop_handshake(self.server_url, self.token, timeout=60)
        if banner != BANNER:
            raise StageFailed("desktop", f"unexpected banner {banner[:40]!r}")

    def run_kernel(self) -> float:
        """Start a kernel, time one execution, shut it down; the execution's seconds."""
        kernel = jupyterclient.start_kernel(self.server_url, self.token, timeout=90)
        try:
            begin = time.perf_counter()
            out = jupyterclient.execute(self.server_url, self.token, kernel, CODE, timeout=60)
            seconds = time.perf_counter() - begin
        finally:
            jupyterclient.delete_kernel(self.server_url, self.token, kernel)
        if out.strip() != OUTPUT:
            raise StageFailed("kernel", f"{CODE} printed {out[:40]!r}")
        return seconds

    def still_there(self) -> str:
        """Why the session is no longer there ("" when it is)."""
        server = self.server()
        if not server or not server.get("ready"):
            return "the hub no longer lists it as ready"
        response = self.session.get(
            f"{self.server_url}/api/status",
            headers={"Authorization": f"token {self.token}"},
            allow_redirects=False,
            timeout=60,
        )
        return "" if response.status_code == 200 else f"HTTP {response.status_code} from it"

    def stop(self, timeout: float, running: bool = True) -> None:
        """Stop the server and wait until it is gone (``running``: it was ready, so the
        hub must accept the stop)."""
        response = self.api("DELETE", f"/users/{self.name}/server")
        accepted = (202, 204) if running else (202, 204, 400, 404)
        if response.status_code not in accepted:
            raise StageFailed("stop", f"HTTP {response.status_code}: {response.text[:200]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.server():
                return
            time.sleep(POLL)
        raise StageFailed("stop", f"not gone within {timeout:.0f} s")


def timed(result: UserResult, stage: str, action: Callable[[], Any]) -> Any:
    """Run one stage of a user, keeping its seconds; any error fails the stage."""
    begin = time.perf_counter()
    try:
        value = action()
    except StageFailed:
        raise
    except Exception as err:  # what a user would see: the stage failed, and why
        raise StageFailed(stage, f"{type(err).__name__}: {str(err)[:300]}") from err
    result.times[stage] = time.perf_counter() - begin
    return value


def arrive(user: SimulatedUser, result: UserResult, tracker: Tracker) -> None:
    """Log in, spawn, open the desktop and a kernel; the session then stays running."""
    try:
        timed(result, "login", user.log_in)
        timed(result, "token", user.make_token)
        timed(result, "spawn", lambda: user.spawn(START_TIMEOUT + 30))
        tracker.mark_ready(user.name, user.token)
        timed(result, "desktop", user.open_desktop)
        result.times["execute"] = timed(result, "kernel", user.run_kernel)
    except StageFailed as failure:
        result.failure = failure


def leave(user: SimulatedUser, result: UserResult, tracker: Tracker) -> None:
    """Check the session is still there, then stop it (also after a failed arrival)."""
    try:
        if result.failure is None:
            why = timed(result, "check", user.still_there)
            if why:
                tracker.mark_lost(user.name, f"before its stop: {why}")
        tracker.mark_stopping(user.name)
        if "token" in result.times:  # it asked for a server: stop whatever there is
            running = "spawn" in result.times
            timed(result, "stop", lambda: user.stop(STOP_TIMEOUT, running))
    except StageFailed as failure:
        result.failure = result.failure or failure
    finally:
        tracker.mark_gone(user.name)


# -- the probe, the monitor and the sampler ------------------------------------------------


def probe_loop(
    hub: Hub, probe_user: str, tracker: Tracker, stop: threading.Event
) -> tuple[Probe, Probe]:
    """Every 0.5 s: the hub's API (one user's model) and, when a session runs, a session's
    ``/api/status`` through the proxy. Each request has its own latency."""
    api, route = Probe(), Probe()
    session = requests.Session()
    session.trust_env = False
    while not stop.wait(PROBE_INTERVAL):
        timed_get(
            session,
            f"{hub.url}/hub/api/users/{probe_user}",
            hub.token,
            api,
        )
        running = tracker.one_running()
        if running:
            name, token = running
            failed = timed_get(session, f"{hub.url}/user/{name}/api/status", token, route)
            if failed and name not in tracker.watched():
                route.failures.pop()  # it was being stopped meanwhile: not the proxy's fault
    return api, route


def timed_get(session: requests.Session, url: str, token: str, into: Probe) -> bool:
    """GET ``url`` with ``token``; its latency into ``into``; whether it failed."""
    begin = time.perf_counter()
    try:
        response = session.get(
            url,
            headers={"Authorization": f"token {token}"},
            allow_redirects=False,
            timeout=PROBE_TIMEOUT,
        )
        ok = response.status_code == 200
        why = f"HTTP {response.status_code}"
    except requests.RequestException as err:
        ok, why = False, type(err).__name__
    seconds = time.perf_counter() - begin
    into.times.append(seconds)
    if not ok:
        into.failures.append(f"{why} after {seconds:.1f} s")
    return not ok


def monitor_loop(hub: Hub, tracker: Tracker, stop: threading.Event) -> None:
    """Every second, the hub's list of users: a session that was ready before the request,
    and was not asked to stop, must still be ready in the answer."""
    session = requests.Session()
    session.trust_env = False
    while not stop.wait(MONITOR_INTERVAL):
        before = tracker.watched()
        try:
            response = session.get(
                f"{hub.url}/hub/api/users",
                params={"state": "active", "limit": 500},
                headers={"Authorization": f"token {hub.token}"},
                timeout=30,
            )
            response.raise_for_status()
        except requests.RequestException:
            continue  # the probe counts an unanswered hub; this one only looks for losses
        ready = {
            u["name"]
            for u in response.json()
            if ((u.get("servers") or {}).get("") or {}).get("ready")
        }
        for name in before & tracker.watched() - ready:
            tracker.mark_lost(name, "the hub's user list no longer showed it ready")


def hub_processes(pid: int) -> dict[str, int]:
    """The hub's process and its proxy's (a child process), by role."""
    found = {"hub": pid}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"configurable-http-proxy" in cmdline:
            found["proxy"] = int(entry.name)
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def sample_loop(pid: int, stop: threading.Event) -> dict[str, Usage]:
    """The hub's and the proxy's CPU and RSS, every second."""
    processes = hub_processes(pid)
    usage = {role: Usage() for role in processes}
    last = {role: (time.monotonic(), cpu_seconds(p)) for role, p in processes.items()}
    while not stop.wait(SAMPLE_INTERVAL):
        for role, p in processes.items():
            try:
                now, busy = time.monotonic(), cpu_seconds(p)
                usage[role].rss.append(rss_mib(p))
            except (OSError, ValueError):
                continue
            then, busy_then = last[role]
            usage[role].cpu.append(100 * (busy - busy_then) / (now - then))
            last[role] = (now, busy)
    return usage


@contextmanager
def background(target: Callable[..., Any], *args: Any) -> Iterator[list[Any]]:
    """Run ``target(*args, stop_event)`` in a thread while the block runs; its return value
    lands in the yielded list."""
    stop = threading.Event()
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target(*args, stop)), daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join(PROBE_TIMEOUT + 30)


# -- the run -------------------------------------------------------------------------------


def site(cpu: float, memory: str) -> dict[str, Any]:
    """The shipped defaults with a smaller desktop, so tens of them fit on a small machine."""
    return {
        "environments": {"desktop": {"needs": {"cpu": cpu, "memory": memory}}},
        "sessions": {"start_timeout": START_TIMEOUT},
    }


def sign_up_all(hub: Hub, users: list[SimulatedUser]) -> None:
    """NativeAuthenticator's sign-up for each user, then the admin's approval of each."""
    admin = hub.admin_session()
    for user in users:
        user.sign_up()
        response = admin.get(f"{hub.url}/hub/authorize/{user.name}", timeout=60)
        response.raise_for_status()


def in_parallel(users: list[SimulatedUser], action: Callable[[SimulatedUser], None]) -> None:
    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(action, users))


def wave_line(number: int, waves: int, results: list[UserResult]) -> str:
    spawns = [r.times["spawn"] for r in results if "spawn" in r.times]
    failed = Counter(r.failure.stage for r in results if r.failure)
    spawn = f"spawn median {statistics.median(spawns):.1f} s" if spawns else "no spawn"
    ready = sum(1 for r in results if "spawn" in r.times)
    kernels = sum(1 for r in results if "kernel" in r.times)
    return (
        f"[bench] load: wave {number}/{waves}: {len(results)} users, {ready} ready ({spawn}), "
        f"{kernels} desktop+kernel ok, failed: {dict(failed) or 0}"
    )


def run_waves(
    hub: Hub, users: list[SimulatedUser], wave: int, keep: int, tracker: Tracker
) -> tuple[list[UserResult], list[float]]:
    """Waves of ``wave`` users; wave N stops after wave N+keep has arrived."""
    results = {u.name: UserResult(u.name, i // wave) for i, u in enumerate(users)}
    groups = [users[i : i + wave] for i in range(0, len(users), wave)]
    running: list[list[SimulatedUser]] = []
    durations = []
    for number, group in enumerate(groups, 1):
        begin = time.monotonic()
        in_parallel(group, lambda u: arrive(u, results[u.name], tracker))
        durations.append(time.monotonic() - begin)
        print(wave_line(number, len(groups), [results[u.name] for u in group]), flush=True)
        running.append(group)
        while len(running) > keep:
            leaving = running.pop(0)
            in_parallel(leaving, lambda u: leave(u, results[u.name], tracker))
            print(f"[bench] load: stopped wave {number - keep}", flush=True)
    for group in running:
        in_parallel(group, lambda u: leave(u, results[u.name], tracker))
    print("[bench] load: stopped the last waves", flush=True)
    return list(results.values()), durations


def containers_left(hub: Hub, grace: float = 30) -> list[str]:
    """Session containers still there ``grace`` seconds after the last stop, with their
    state (every stopped session's container should be gone)."""
    deadline = time.monotonic() + grace
    while True:
        left = hub.containers()
        if not left or time.monotonic() > deadline:
            return [f"{c.name} ({c.status})" for c in left]
        time.sleep(1)


def keep_log(hub: Hub) -> Path:
    """A copy of the hub's log outside the run's scratch directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    copy = Path(tempfile.gettempdir()) / f"deskhub-load-{stamp}.log"
    if hub.log_path.exists():
        shutil.copyfile(hub.log_path, copy)
    return copy


def log_findings(log: Path) -> dict[str, Any]:
    """What the hub's log says about the run: event-loop stalls (JupyterHub warns when its
    loop was unresponsive for over a second), nodes reported not answering, stops that
    failed, and error lines."""
    found: dict[str, Any] = {"stalls": [], "not answering": 0, "could not stop": 0, "errors": 0}
    if not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        stall = re.search(r"Event loop was unresponsive for at least ([0-9.]+)s", line)
        if stall:
            found["stalls"].append(float(stall.group(1)))
        elif " is not answering" in line:
            found["not answering"] += 1
        elif "could not stop" in line:
            found["could not stop"] += 1
        elif line.startswith(("[E ", "[C ")):
            found["errors"] += 1
    return found


def run_load(
    users: int = USERS,
    wave: int = WAVE,
    keep: int = KEEP,
    cpu: float = CPU,
    memory: str = MEMORY,
    ncpu: int | None = None,
) -> dict[str, Any]:
    """The whole load run on a fresh hub; the figures for :func:`load_markdown`."""
    peak = min(users, wave * (keep + 1))
    if ncpu is not None and peak * cpu > ncpu:
        raise SystemExit(
            f"{peak} sessions of {cpu:g} CPU at once do not fit on {ncpu} CPUs: "
            "lower --load-cpu, --load-wave or --load-keep"
        )
    names = [f"load{i:02d}" for i in range(users)]
    with tempfile.TemporaryDirectory(prefix="deskhub-load-") as tmp:
        hub = Hub(Path(tmp), site(cpu, memory), prefix=PREFIX, network=NETWORK)
        try:
            hub.start()
            probe_user = "loadprobe"
            hub.ensure_user(probe_user)
            simulated = [SimulatedUser(hub.url, n, secrets.token_urlsafe(12)) for n in names]
            begin = time.monotonic()
            sign_up_all(hub, simulated)
            setup = time.monotonic() - begin
            print(f"[bench] load: {users} users signed up and approved in {setup:.0f} s")
            tracker = Tracker()
            assert hub.proc is not None
            begin = time.monotonic()
            with (
                background(sample_loop, hub.proc.pid) as usage,
                background(probe_loop, hub, probe_user, tracker) as probes,
                background(monitor_loop, hub, tracker),
            ):
                results, durations = run_waves(hub, simulated, wave, keep, tracker)
            wall = time.monotonic() - begin
            leftovers = containers_left(hub)
        finally:
            log = keep_log(hub)
            hub.cleanup()
    api, route = probes[0] if probes else (Probe(), Probe())
    return {
        "users": users,
        "wave": wave,
        "keep": keep,
        "cpu": cpu,
        "memory": memory,
        "results": results,
        "lost": dict(tracker.lost),
        "most_ready": tracker.most_ready,
        "api": api,
        "route": route,
        "usage": usage[0] if usage else {},
        "setup": setup,
        "wall": wall,
        "durations": durations,
        "leftovers": leftovers,
        "log": log,
        "log_findings": log_findings(log),
        "load": os.getloadavg()[0],
    }


# -- the verdict and the section -----------------------------------------------------------


def problems(result: dict[str, Any]) -> list[str]:
    """Why the run failed (empty: it held)."""
    found = [f"{r.name} (wave {r.wave + 1}): {r.failure}" for r in result["results"] if r.failure]
    found += [f"{name}: session lost ({why})" for name, why in result["lost"].items()]
    found += [f"hub API probe: {why}" for why in result["api"].failures]
    found += [f"proxy route probe: {why}" for why in result["route"].failures]
    found += [
        f"container left 30 s after its stop was reported done: {name}"
        for name in result["leftovers"]
    ]
    return found


def stats(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "–"
    v = [x * scale for x in values]
    return (
        f"{statistics.median(v):.{digits}f} / {percentile(v, 0.95):.{digits}f} / "
        f"{max(v):.{digits}f} {unit}"
    )


def stage_times(result: dict[str, Any], stage: str) -> list[float]:
    return [r.times[stage] for r in result["results"] if stage in r.times]


def failure_cell(result: dict[str, Any], stages: tuple[str, ...]) -> str:
    failures = [r.failure for r in result["results"] if r.failure and r.failure.stage in stages]
    if not failures:
        return "0"
    reasons = Counter(f.why.split(":")[0] for f in failures)
    return f"{len(failures)} (" + ", ".join(f"{n}× {why}" for why, n in reasons.items()) + ")"


def usage_cell(usage: Usage) -> str:
    if not usage.rss:
        return "–"
    cpu = usage.cpu or [math.nan]
    return (
        f"CPU peak {max(cpu):.0f}% of a core (mean {statistics.mean(cpu):.0f}%), "
        f"RSS {usage.rss[0]:.0f} MiB at the start, peak {max(usage.rss):.0f} MiB"
    )


def log_cell(found: dict[str, Any]) -> str:
    stalls = found["stalls"]
    longest = f" (the longest {max(stalls):.1f} s)" if stalls else ""
    return (
        f"{len(stalls)} warnings of its event loop unresponsive for over a second{longest}, "
        f"{found['not answering']} of the node not answering, {found['could not stop']} "
        f"stops that failed, {found['errors']} error lines"
    )


def load_markdown(result: dict[str, Any], measured: str, machine: str) -> str:
    n, wave, keep = result["users"], result["wave"], result["keep"]
    waves = math.ceil(n / wave)
    api, route = result["api"], result["route"]
    held = not problems(result)
    lines = [
        f"## Load: {n} simulated users",
        "",
        f"Measured {measured} on: {machine}.",
        "",
        f"- One deskhub hub on the host engine, the shipped defaults except a smaller desktop "
        f"({result['cpu']:g} CPU, {result['memory']} memory per session), start timeout "
        f"{START_TIMEOUT} s. Users load00..load{n - 1:02d} signed up on NativeAuthenticator's "
        f"form and were approved by the admin beforehand ({result['setup']:.0f} s, not "
        "counted).",
        f"- {waves} waves of {wave}; the users of a wave go together (one thread each). Each "
        "logs in on `/hub/login` (cookie), makes itself an API token with that cookie, spawns "
        "its default environment with `POST /hub/api/users/NAME/server` (cookie + XSRF, as the "
        f"spawn page does) and polls its server model every {POLL} s until `ready`; then opens "
        "the desktop's VNC websocket through the proxy until the RFB banner (which starts "
        f"TigerVNC and MATE), starts a kernel and runs `{CODE}` over its websocket. Wave N is "
        f"stopped (`DELETE`, until gone) after wave N+{keep} has arrived, so up to "
        f"{min(n, wave * (keep + 1))} desktops run at once; before its stop each session is "
        "checked (the hub lists it ready and it answers `/api/status` through the proxy).",
        "- A *lost* session was ready and then vanished before its stop: not ready in "
        f"`GET /hub/api/users` (read every {MONITOR_INTERVAL:g} s) or not answering before "
        "the stop. A failed spawn was refused, stopped while starting or not ready in time.",
        f"- Hub responsiveness: a probe every {PROBE_INTERVAL} s sends `GET "
        "/hub/api/users/NAME` (the hub's API, through the proxy) and `GET "
        "/user/NAME/api/status` to a running session (the proxy's route to a session); a "
        f"request over {PROBE_TIMEOUT:.0f} s or not `200` counts as a failure. CPU and RSS of "
        f"the hub and the proxy are read from /proc every {SAMPLE_INTERVAL:g} s.",
        f"- The whole run (waves and stops) took {result['wall']:.0f} s; the arrival of each "
        f"wave {', '.join(f'{d:.0f}' for d in result['durations'])} s. The machine's load "
        f"average at the end: {result['load']:.2f}; other jobs may share the machine.",
        "",
        f"**{'Held' if held else 'Failed'}**: {failure_cell(result, ('spawn',))} failed "
        f"spawns, {len(result['lost'])} sessions lost, "
        f"{failure_cell(result, OTHER_STAGES)} other "
        f"failures, {len(api.failures) + len(route.failures)} probe failures, "
        f"{len(result['leftovers'])} containers left after their stop; "
        f"{result['most_ready']} sessions ready at once at the most.",
        "",
        "| measure | median / p95 / max | n |",
        "| --- | --- | --- |",
    ]
    rows = [
        ("log in (form, bcrypt, home page)", "login"),
        ("spawn to ready", "spawn"),
        ("desktop websocket to RFB banner", "desktop"),
        ("kernel: start, run, shut down", "kernel"),
        (f"kernel round trip (`{CODE}`)", "execute"),
        ("stop until gone", "stop"),
    ]
    for label, stage in rows:
        values = stage_times(result, stage)
        lines.append(f"| {label} | {stats(values)} | {len(values)} |")
    lines += [
        f"| hub API latency (`GET /hub/api/users/NAME`) | {stats(api.times, 'ms', 1000, 0)} "
        f"| {len(api.times)} |",
        f"| proxy route latency (`/user/NAME/api/status`) | "
        f"{stats(route.times, 'ms', 1000, 0)} | {len(route.times)} |",
        "",
    ]
    for role, label in (("hub", "JupyterHub"), ("proxy", "configurable-http-proxy")):
        if role in result["usage"]:
            lines.append(f"- {label}: {usage_cell(result['usage'][role])}.")
    lines.append(f"- The hub's log: {log_cell(result['log_findings'])}.")
    found = problems(result)
    if found:
        lines += ["", "What failed:", ""] + [f"- {why[:300]}" for why in found[:40]]
    return "\n".join(lines)
