"""Run a real deskhub (JupyterHub + configurable-http-proxy + DeskhubSpawner on the local
Docker engine) in a scratch directory, for tests and the benchmark script.

Everything the hub gets comes from the same place as in production: the site YAML and the
thin ``hub_config/jupyterhub_config.py``. The only addition is a ``jupyterhub_config.d``
file that gives the harness an API token with admin scopes and test-only name prefixes.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import requests
import yaml

from deskhub.spawner.isolation import bridge_name, chain_names

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HUB_CONFIG = ROOT / "hub_config" / "jupyterhub_config.py"


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to its end on a fresh event loop in a thread of its own.

    Playwright's sync API (browser tests in the same session) leaves an event loop
    registered on the main thread, where ``asyncio.run`` then refuses to start.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


EXTRA_CONFIG = """
c.JupyterHub.services.append({{"name": "harness", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{
    "name": "harness",
    "scopes": ["admin:users", "admin:servers", "access:servers", "admin:groups",
               "read:hub", "tokens"],
    "services": ["harness"],
}})
c.DeskhubSpawner.prefix = {prefix!r}
c.DeskhubSpawner.home_volume_template = {prefix!r} + "-home-{{username}}"
c.JupyterHub.log_level = "DEBUG"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
"""


def wait_until_serving(
    proc: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    timeout: float,
    what: str,
    log_tail: Callable[[], str],
) -> None:
    """Poll ``probe`` (a request to the process's server) until it says yes; raise
    ``RuntimeError`` with the log's tail if the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited during start:\n{log_tail()}")
        try:
            if probe():
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer in {timeout:.0f} s:\n{log_tail()}")


def stop_process_group(proc: subprocess.Popen[bytes] | None, grace: float = 10) -> None:
    """End a server a test started with ``start_new_session=True``, and its children:
    SIGTERM to its process group, SIGKILL if it is still there after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def file_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a server's log file ("" before it exists)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Hub:
    """A deskhub instance in ``workdir``; ``start``/``stop``/``restart`` it like an admin."""

    def __init__(
        self,
        workdir: Path,
        site: dict[str, Any],
        *,
        prefix: str = "deskhubtest",
        network: str = "deskhub-test",
        spawner_config: str = "",
    ) -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = prefix
        self.network = network
        self.token = secrets.token_hex(24)
        self.admin_password = secrets.token_urlsafe(12)
        self.api_port = site.get("hub", {}).get("api_port") or free_port()
        hub = {**site.get("hub", {}), "bind_url": self.url, "network": network}
        site = {**site, "hub": {**hub, "api_port": self.api_port}}
        self.site_path = workdir / "site.yaml"
        self.site_path.write_text(yaml.safe_dump(site))
        (self.state / "admin-credentials").write_text(
            f"username: admin\npassword: {self.admin_password}\n"
        )
        config_d = self.state / "jupyterhub_config.d"
        config_d.mkdir(exist_ok=True)
        (config_d / "50-harness.py").write_text(
            EXTRA_CONFIG.format(token=self.token, prefix=prefix, proxy_api_port=free_port())
            + spawner_config
        )
        self.log_path = workdir / "jupyterhub.log"
        self.config_file = HUB_CONFIG
        self.proc: subprocess.Popen[bytes] | None = None
        self.docker = docker.from_env()

    # -- process -----------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        env = {
            **os.environ,
            "DESKHUB_STATE_DIR": str(self.state),
            "DESKHUB_SITE_CONFIG": str(self.site_path),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "jupyterhub"), "-f", str(self.config_file)],
            cwd=self.state,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_serving(
            self.proc,
            lambda: requests.get(f"{self.url}/hub/api/", timeout=2).ok,
            timeout,
            "the hub",
            self.log_tail,
        )

    def stop(self) -> None:
        stop_process_group(self.proc, grace=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        return file_tail(self.log_path, lines)

    # -- REST API ------------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=60, **kwargs
        )

    def ensure_user(self, name: str, groups: tuple[str, ...] = ()) -> None:
        if self.api("GET", f"/users/{name}").status_code == 404:
            self.api("POST", f"/users/{name}").raise_for_status()
        for group in groups:
            if self.api("GET", f"/groups/{group}").status_code == 404:
                self.api("POST", f"/groups/{group}").raise_for_status()
            self.api("POST", f"/groups/{group}/users", json={"users": [name]}).raise_for_status()

    def spawn(self, user: str, options: dict[str, Any] | None = None) -> requests.Response:
        body = {"user_options": options} if options is not None else {}
        return self.api("POST", f"/users/{user}/server", data=json.dumps(body))

    def wait_ready(self, user: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{user}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if not server or not server.get("pending") and not server.get("ready"):
                raise RuntimeError(f"{user}'s server stopped while starting:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"{user}'s server not ready in {timeout}s:\n{self.log_tail()}")

    def spawn_ready(self, user: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.spawn(user, options)
        if response.status_code not in (201, 202):
            raise RuntimeError(f"spawn refused: {response.status_code} {response.text}")
        return self.wait_ready(user)

    def stop_server(self, user: str, timeout: float = 60) -> None:
        response = self.api("DELETE", f"/users/{user}/server")
        if response.status_code not in (202, 204, 400):
            response.raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.api("GET", f"/users/{user}").json().get("servers", {}).get("")
            if not server:
                return
            time.sleep(0.25)
        raise TimeoutError(f"{user}'s server did not stop in {timeout}s")

    def progress_events(self, user: str, timeout: float = 90) -> list[dict[str, Any]]:
        """The events of the user's spawn progress stream, until ready or failed."""
        events: list[dict[str, Any]] = []
        with requests.get(
            f"{self.url}/hub/api/users/{user}/server/progress",
            headers={"Authorization": f"token {self.token}"},
            stream=True,
            timeout=timeout,
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                event = json.loads(line.removeprefix("data:"))
                events.append(event)
                if event.get("ready") or event.get("failed"):
                    break
        return events

    def admin_session(self) -> requests.Session:
        """A browser-like session logged in through the login form as the first admin."""
        session = requests.Session()
        session.get(f"{self.url}/hub/login", timeout=30)
        response = session.post(
            f"{self.url}/hub/login",
            data={
                "username": "admin",
                "password": self.admin_password,
                "_xsrf": session.cookies.get("_xsrf"),
            },
            allow_redirects=False,
            timeout=30,
        )
        if response.status_code != 302:
            raise RuntimeError(f"admin login failed: {response.status_code} {response.text}")
        return session

    def user_get(self, user: str, path: str, **kwargs: Any) -> requests.Response:
        """GET a path of the user's server through the proxy, with the harness's token."""
        return requests.get(
            f"{self.url}/user/{user}/{path.lstrip('/')}",
            headers={"Authorization": f"token {self.token}"},
            timeout=30,
            **kwargs,
        )

    # -- Docker side ---------------------------------------------------------------------
    def container(self, user: str) -> Any:
        return self.docker.containers.get(f"{self.prefix}-{user}")

    def containers(self) -> list[Any]:
        return [
            c
            for c in self.docker.containers.list(
                all=True, filters={"label": "deskhub.managed=true"}
            )
            if c.name.startswith(f"{self.prefix}-")
        ]

    def cleanup(self) -> None:
        """Remove everything this hub created: containers, homes, its network."""
        self.stop()
        # all at once: a workshop's twenty one after the other took 45 s
        containers = self.containers()
        if containers:
            with ThreadPoolExecutor(min(len(containers), 8)) as pool:
                list(pool.map(lambda c: c.remove(force=True), containers))
        for volume in self.docker.volumes.list(filters={"label": "deskhub.managed=true"}):
            if volume.name.startswith(f"{self.prefix}-home-"):
                volume.remove(force=True)
        # Docker's name filter matches prefixes too ("deskhub-test" finds "deskhub-test-nodes")
        for network in self.docker.networks.list(names=[self.network]):
            if network.name == self.network:
                remove_isolation(network.attrs)
                network.remove()


def remove_isolation(network: dict[str, Any]) -> None:
    """Remove the session firewall the hub loaded for ``network`` on this machine
    (spawner/netguard.py), so that test runs leave no chains behind."""
    bridge = bridge_name(network)
    for parent, chain in zip(("INPUT", "DOCKER-USER"), chain_names(bridge), strict=True):
        jump = [parent, "-i", bridge, "-j", chain]
        while subprocess.run(["iptables", "-w", "-D", *jump], capture_output=True).returncode == 0:
            pass
        subprocess.run(["iptables", "-w", "-F", chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-X", chain], capture_output=True)


# deploy/test builds mx and imaging in the background while the first tests run (see
# start_background_images in deploy/lib/prepare.sh); LOG.status holds the build's status.
BACKGROUND_BUILD_LOG = "DESKHUB_BACKGROUND_BUILD_LOG"
BACKGROUND_BUILD_TIMEOUT = 40 * 60.0


def wait_for_background_images(timeout: float = BACKGROUND_BUILD_TIMEOUT) -> None:
    """Return once the background image build (if deploy/test started one) has succeeded.

    Raises ``RuntimeError`` with the build log's tail when it failed, ``TimeoutError`` when
    it has not finished within ``timeout``. Without a background build (tests run directly
    after ``images/build``) it returns at once.
    """
    log = os.environ.get(BACKGROUND_BUILD_LOG)
    if not log:
        return
    status_file = Path(f"{log}.status")
    deadline = time.monotonic() + timeout
    announced = False
    while not status_file.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the background image build ({log}) did not end in time")
        if not announced:
            print(f"waiting for the background image build ({log})", file=sys.stderr)
            announced = True
        time.sleep(2)
    status = status_file.read_text().strip()
    if status != "0":
        tail = "".join(Path(log).read_text(errors="replace").splitlines(True)[-40:])
        raise RuntimeError(f"the background image build failed (status {status}):\n{tail}")


def example_site(data_root: Path) -> dict[str, Any]:
    """A site YAML for tests: the real images, small needs, one never-built image."""
    return {
        "environments": {
            "desktop": {
                "title": "MATE desktop",
                "description": "Test desktop",
                "image": "deskhub/base:latest",
                "default": True,
                "needs": {"cpu": 0.25, "memory": "1G"},
            },
            "xfm": {
                "title": "XFM",
                "description": "PyMca and silx",
                "image": "deskhub/xfm:latest",
                "needs": {"cpu": 0.25, "memory": "1G"},
            },
            # mx and imaging: the images' own titles, apps and labels, with small needs
            "mx": {
                "image": "deskhub/mx:latest",
                "needs": {"cpu": 0.25, "memory": "1G"},
            },
            "imaging": {
                "image": "deskhub/imaging:latest",
                "needs": {"cpu": 0.25, "memory": "1.5G"},
            },
            "ghost": {
                "title": "Ghost",
                "description": "An environment whose image was never built",
                "image": "deskhub/never-built:latest",
                "needs": {"cpu": 0.25, "memory": "1G"},
            },
        },
        "data": {
            "experiments": {
                "mx-alice": {"path": str(data_root / "mx-alice"), "users": ["alice"]},
                "xfm-team": {"path": str(data_root / "xfm-team"), "groups": ["xfm-staff"]},
            }
        },
        "sessions": {"idle_timeout": 3600, "start_timeout": 120},
    }


def make_data(root: Path) -> Path:
    for name in ("mx-alice", "xfm-team"):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        (folder / "README.txt").write_text(f"data of {name}\n")
        (folder / "README.txt").chmod(0o644)
    return root
