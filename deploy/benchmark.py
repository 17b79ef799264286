"""deskhub's benchmark (not a test): measures what users wait for and what sessions cost,
side by side with stock DockerSpawner on the same image in the same run, and writes
docs/benchmarks.md.

Run it with ``deploy/benchmark`` (which prepares the machine first). Its sections:

- ``sessions``: spawn to ready, desktop pixels and idle memory, one hub after the other on
  the host engine; plus the image sizes (about 5 minutes).
- ``environments``: every environment image on the host engine: its size and what it adds
  to base, spawn to ready and time to the first desktop pixels through one deskhub hub
  (``deploy/bench_environments.py``; about a minute per environment and run).
- ``placement``: the time of one placement decision over 10, 100 and 1,000 nodes, and of
  building the node snapshots (``deploy/bench_placement.py``; pure CPU, about 15 s).
- ``concurrent``: 30 spawns at once on deskhub over three real engines, then on stock
  DockerSpawner on the host engine (``deploy/bench_placement.py``; several minutes).
- ``load``: 40 simulated users (``--load-users``) in waves of 10 (``--load-wave``) log in
  on the native login form, spawn, open the desktop's VNC websocket and a kernel, and stop,
  while a probe times the hub's API every 0.5 s: failed spawns, lost sessions, API latency
  p50/p95, the hub's CPU and memory (``deploy/bench_load.py``; 10 to 15 minutes). It exits
  with status 1 (after writing its section) when a spawn or any other step of a user failed,
  a session was lost, the hub did not answer a probe in 10 s, or a stopped session's
  container stayed. Not a test: run it on a quiet machine.

``--only placement concurrent`` runs only those (default: all). Each section is written to
docs/benchmarks.md between the markers ``<!-- benchmark:NAME -->`` and
``<!-- /benchmark:NAME -->``, with its own date and machine; the sections not run keep
their previous text (a file without markers counts as the ``sessions`` section).
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from deploy import bench_environments, bench_load, bench_placement  # noqa: E402
from deskhub.hub_config.hub import network_gateway  # noqa: E402
from deskhub.hub_config.site import load_site  # noqa: E402
from deskhub.spawner.catalogue import Catalogue  # noqa: E402
from tests.harness import Hub, free_port  # noqa: E402

# the shipped default environment, with the shipped defaults' needs (its limits)
DEFAULTS = load_site(None)
DEFAULT_DESKTOP = Catalogue.from_site(DEFAULTS["environments"]).default
assert DEFAULT_DESKTOP is not None
START_TIMEOUT = DEFAULTS["sessions"]["start_timeout"]

SECTIONS = ("sessions", "environments", "placement", "concurrent", "load")
TITLE = "# deskhub benchmarks"
INTRO = (
    "Written by `deploy/benchmark`; each section says when and on what machine it was "
    "measured. `deploy/benchmark --only SECTION` reruns one section (`sessions`, "
    "`environments`, `placement`, `concurrent`, `load`) and keeps the others."
)

STOCK_CONFIG = """
c.JupyterHub.bind_url = {url!r}
c.JupyterHub.hub_ip = c.JupyterHub.hub_connect_ip = {gateway!r}
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "{state}/proxy.pid"
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.spawner_class = "docker"
c.DockerSpawner.image = "deskhub/base:latest"
c.DockerSpawner.network_name = {network!r}
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.prefix = {prefix!r}
# the same limits deskhub gives the environment, so only the spawners differ
c.DockerSpawner.cpu_limit = {cpu}
c.DockerSpawner.mem_limit = {memory}
# deskhub's start timeout (sessions.start_timeout), which it also uses as http_timeout
c.Spawner.start_timeout = {start_timeout}
c.Spawner.http_timeout = {start_timeout}
c.Spawner.default_url = "/lab"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.services = [{{"name": "harness", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "harness", "services": ["harness"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"]}}]
"""


class StockHub(Hub):
    """Stock JupyterHub + DockerSpawner, configured the documented way, on the same image."""

    def __init__(
        self,
        workdir: Path,
        network: str,
        prefix: str = "stockbench",
        cpu: float = DEFAULT_DESKTOP.needs.cpu,
        memory: int = DEFAULT_DESKTOP.needs.memory,
    ) -> None:
        super().__init__(workdir, {}, prefix=prefix, network=network)
        self.config_file = workdir / "stock_config.py"
        self.config_file.write_text(
            STOCK_CONFIG.format(
                url=self.url,
                gateway=network_gateway(network),
                state=self.state,
                network=network,
                token=self.token,
                proxy_api_port=free_port(),
                prefix=prefix,
                cpu=cpu,
                memory=memory,
                start_timeout=START_TIMEOUT,
            )
        )

    def containers(self) -> list[Any]:
        return [
            c for c in self.docker.containers.list(all=True) if c.name.startswith(f"{self.prefix}-")
        ]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spawn_times(hub: Hub, user: str, runs: int) -> list[float]:
    hub.ensure_user(user)
    times = []
    for _ in range(runs):
        times.append(timed(lambda: hub.spawn_ready(user)))
        assert hub.user_get(user, "api/status").ok
        hub.stop_server(user)
    return times


def open_desktop(hub: Hub, user: str, browser: Any, idle: float) -> tuple[float, float]:
    """On a running server: seconds until Chromium shows the drawn desktop, then the
    session's memory (MiB) after ``idle`` seconds with the desktop open."""
    from tests.browser.test_desktop_in_browser import wait_for_desktop

    token = hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 3600}).json()["token"]
    # the user's own token as a header (JupyterHub 6 refuses tokens in URLs), on the page
    # and on noVNC's websocket alike
    context = browser.new_context(
        viewport={"width": 1280, "height": 800},
        extra_http_headers={"Authorization": f"token {token}"},
    )
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(f"{hub.url}/user/{user}/desktop/")
        wait_for_desktop(page)
        pixels = time.perf_counter() - start
        time.sleep(idle)
        memory = container_memory(hub.container(user))
    finally:
        context.close()
    return pixels, memory


def desktop_pixels_and_memory(hub: Hub, user: str, browser: Any, idle: float) -> dict[str, float]:
    """Spawn, open the desktop in Chromium, time to pixels; then idle memory."""
    hub.ensure_user(user)
    hub.spawn_ready(user)
    try:
        pixels, memory = open_desktop(hub, user, browser, idle)
    finally:
        hub.stop_server(user)
    return {"pixels": pixels, "memory": memory}


def container_memory(container: Any) -> float:
    """MiB in use, as ``docker stats`` counts it (page cache that can be dropped excluded)."""
    stats = container.stats(stream=False)["memory_stats"]
    inner = stats.get("stats", {})
    cache = inner.get("total_inactive_file", inner.get("inactive_file", inner.get("cache", 0)))
    return (stats["usage"] - cache) / 1024**2


def describe_machine(client: docker.DockerClient) -> str:
    info = client.info()
    cpu = subprocess.run(
        ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"{info['NCPU']} CPUs ({cpu}), {info['MemTotal'] / 1024**3:.0f} GiB memory, "
        f"{platform.system()} {platform.release()}, Docker engine {info['ServerVersion']} "
        f"({info['Driver']}, cgroup v{info.get('CgroupVersion', '?')}), Python "
        f"{platform.python_version()}"
    )


def fmt(values: list[float]) -> str:
    return (
        f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}, "
        f"n={len(values)})"
    )


def run_sessions(args: argparse.Namespace, client: docker.DockerClient) -> str:
    """Spawn times, desktop pixels and idle memory of both hubs; the image sizes."""
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_FLAGS

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="deskhub-bench-") as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        work = Path(tmp)
        network = f"deskhub-bench-{secrets.token_hex(3)}"
        hubs: dict[str, Hub] = {
            # the embedded defaults: the site YAML adds nothing
            "deskhub (DeskhubSpawner)": Hub(
                work / "deskhub", {}, prefix="deskbench", network=network
            ),
        }
        hubs["stock DockerSpawner 14"] = StockHub(work / "stock", network)
        try:
            for label, hub in hubs.items():
                hub.start()
                print(f"[bench] {label}: spawns", flush=True)
                spawns = spawn_times(hub, "bench", args.runs)
                print(f"[bench] {label}: desktop pixels and idle memory", flush=True)
                desk = desktop_pixels_and_memory(hub, "benchdesk", browser, args.idle)
                results[label] = {"spawn": spawns, **desk}
                hub.stop()
        finally:
            for hub in hubs.values():
                hub.cleanup()  # containers, home volumes and the shared network
            browser.close()

    lines = [
        "## Sessions",
        "",
        f"Measured {now()} on: {describe_machine(client)}.",
        "",
        "Both hubs ran in the same run, on the same engine, with the same image "
        "(`deskhub/base:latest`) and the same limits (deskhub's default environment: "
        f"{DEFAULT_DESKTOP.needs.describe()}), one after the other.",
        "",
        "| spawner | spawn to ready (REST API) | desktop pixels after opening `/desktop/` "
        f"| memory of an idle desktop session after {args.idle:.0f} s |",
        "| --- | --- | --- | --- |",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {fmt(r['spawn'])} | {r['pixels']:.2f} s | {r['memory']:.0f} MiB |"
        )
    lines += [
        "",
        "- *Spawn to ready*: `POST /hub/api/users/NAME/server` until the server model says "
        "`ready` (the hub has seen the single-user server answer), polled every 0.25 s.",
        "- *Desktop pixels*: Chromium opens `/user/NAME/desktop/` on a running server until "
        "the noVNC canvas holds a drawn desktop (more than 20 distinct colours); this includes "
        "starting TigerVNC and the MATE session.",
        "- *Memory*: `docker stats`' figure (usage less inactive page cache) with the desktop "
        "open in the browser.",
        "",
        "## Images",
        "",
        "| image | size | unique to the image |",
        "| --- | --- | --- |",
    ]
    for env in bench_environments.environment_images(client):
        lines.append(f"| `{env.image}` | {env.size_mb:.0f} MB | {env.unique_mb:.0f} MB |")
    return "\n".join(lines)


def run_environments(args: argparse.Namespace, client: docker.DockerClient, machine: str) -> str:
    """Sizes, spawn and time to desktop of every environment image on the engine."""
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_FLAGS

    images = bench_environments.environment_images(client)
    with tempfile.TemporaryDirectory(prefix="deskhub-bench-") as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            timings = bench_environments.measure(
                Path(tmp),
                f"deskhub-bench-{secrets.token_hex(3)}",
                browser,
                images,
                args.env_runs,
                lambda hub, user, b: open_desktop(hub, user, b, args.env_idle),
            )
        finally:
            browser.close()
    return bench_environments.markdown(images, timings, now(), machine)


def run_load(args: argparse.Namespace, client: docker.DockerClient, machine: str) -> str:
    """The load run; its section is written even when it failed, then the script exits 1."""
    result = bench_load.run_load(
        users=args.load_users,
        wave=args.load_wave,
        keep=args.load_keep,
        cpu=args.load_cpu,
        memory=args.load_memory,
        ncpu=client.info()["NCPU"],
    )
    text = bench_load.load_markdown(result, now(), machine)
    failed = bench_load.problems(result)
    if failed:
        write_sections(args.out, {"load": text})
        print(text, flush=True)
        print("[bench] load: FAILED:", *failed, sep="\n  ", file=sys.stderr, flush=True)
        print(f"[bench] load: the hub's log: {result['log']}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    result["log"].unlink(missing_ok=True)
    return text


def now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def marker(name: str, end: bool = False) -> str:
    return f"<!-- {'/' if end else ''}benchmark:{name} -->"


def read_sections(text: str) -> dict[str, str]:
    """The sections of an earlier docs/benchmarks.md, by name (see the module docstring)."""
    sections = {}
    for name in SECTIONS:
        begin, end = marker(name), marker(name, end=True)
        if begin in text and end in text:
            sections[name] = text.split(begin, 1)[1].split(end, 1)[0].strip()
    body = text.strip().removeprefix(TITLE).strip()
    if not sections and body:
        # written before the markers: all of it was the sessions section, its date first
        head, heading, tail = body.partition("## Sessions\n")
        sections["sessions"] = f"{heading}\n{head.strip()}\n{tail}".strip() if heading else body
    return sections


def write_sections(path: Path, new: dict[str, str]) -> str:
    """Replace the sections in ``new``, keep the others; returns the whole text."""
    sections = read_sections(path.read_text()) if path.exists() else {}
    sections.update(new)
    parts = [TITLE, "", INTRO, ""]
    for name in SECTIONS:
        if name in sections:
            parts += [marker(name), "", sections[name], "", marker(name, end=True), ""]
    text = "\n".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}; default: all)",
    )
    parser.add_argument("--runs", type=int, default=5, help="spawns per spawner (sessions)")
    parser.add_argument(
        "--idle", type=float, default=60, help="seconds idle before memory (sessions)"
    )
    parser.add_argument(
        "--env-runs", type=int, default=2, help="spawns per environment (environments)"
    )
    parser.add_argument(
        "--env-idle",
        type=float,
        default=20,
        help="seconds idle before memory (environments)",
    )
    parser.add_argument(
        "--decisions", type=int, default=300, help="timed decisions per row (placement)"
    )
    parser.add_argument(
        "--users", type=int, default=bench_placement.USERS, help="spawns at once (concurrent)"
    )
    parser.add_argument(
        "--load-users", type=int, default=bench_load.USERS, help="simulated users (load)"
    )
    parser.add_argument(
        "--load-wave", type=int, default=bench_load.WAVE, help="users per wave (load)"
    )
    parser.add_argument(
        "--load-keep",
        type=int,
        default=bench_load.KEEP,
        help="waves kept running while the next one arrives (load)",
    )
    parser.add_argument(
        "--load-cpu", type=float, default=bench_load.CPU, help="CPUs per session (load)"
    )
    parser.add_argument(
        "--load-memory", default=bench_load.MEMORY, help="memory per session (load)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    client = docker.from_env()
    machine = describe_machine(client)
    new: dict[str, str] = {}
    for name in SECTIONS:
        if name not in args.only:
            continue
        begin = time.monotonic()
        print(f"[bench] section {name}", flush=True)
        if name == "sessions":
            new[name] = run_sessions(args, client)
        elif name == "environments":
            new[name] = run_environments(args, client, machine)
        elif name == "placement":
            result = bench_placement.run_placement(decisions=args.decisions)
            new[name] = bench_placement.placement_markdown(result, now(), machine)
        elif name == "load":
            new[name] = run_load(args, client, machine)
        else:
            result = bench_placement.run_concurrent(
                client,
                lambda work, network, prefix: StockHub(
                    work,
                    network,
                    prefix,
                    cpu=bench_placement.CPU,
                    memory=bench_placement.MEMORY,
                ),
                args.users,
            )
            new[name] = bench_placement.concurrent_markdown(result, now(), machine)
        print(new[name], flush=True)
        print(f"[bench] section {name} took {time.monotonic() - begin:.0f} s", flush=True)
        # written after each section, so a later section that fails keeps this one
        write_sections(args.out, {name: new[name]})


if __name__ == "__main__":
    main()
