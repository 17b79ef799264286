"""deskhub's benchmark (not a test): measures what users wait for and what sessions cost,
side by side with stock DockerSpawner on the same image in the same run, and writes
docs/benchmarks.md.

Run it with ``deploy/benchmark`` (which prepares the machine first).
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
from playwright.sync_api import sync_playwright  # noqa: E402

from deskhub.hub_config.hub import network_gateway  # noqa: E402
from deskhub.hub_config.site import load_site  # noqa: E402
from deskhub.spawner.catalogue import Catalogue  # noqa: E402
from tests.browser.conftest import CHROMIUM_FLAGS  # noqa: E402
from tests.browser.test_desktop_in_browser import wait_for_desktop  # noqa: E402
from tests.harness import Hub, free_port  # noqa: E402

# the shipped default environment, with the shipped defaults' needs (its limits)
DEFAULT_DESKTOP = Catalogue.from_site(load_site(None)["environments"]).default
assert DEFAULT_DESKTOP is not None

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
c.DockerSpawner.prefix = "stockbench"
# the same limits deskhub gives its default environment, so only the spawners differ
c.DockerSpawner.cpu_limit = {cpu}
c.DockerSpawner.mem_limit = {memory}
c.Spawner.default_url = "/lab"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.services = [{{"name": "harness", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "harness", "services": ["harness"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"]}}]
"""


class StockHub(Hub):
    """Stock JupyterHub + DockerSpawner, configured the documented way, on the same image."""

    def __init__(self, workdir: Path, network: str) -> None:
        super().__init__(workdir, {}, prefix="stockbench", network=network)
        self.config_file = workdir / "stock_config.py"
        self.config_file.write_text(
            STOCK_CONFIG.format(
                url=self.url,
                gateway=network_gateway(network),
                state=self.state,
                network=network,
                token=self.token,
                proxy_api_port=free_port(),
                cpu=DEFAULT_DESKTOP.needs.cpu,
                memory=DEFAULT_DESKTOP.needs.memory,
            )
        )

    def containers(self) -> list[Any]:
        return [
            c for c in self.docker.containers.list(all=True) if c.name.startswith("stockbench-")
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


def desktop_pixels_and_memory(hub: Hub, user: str, browser: Any, idle: float) -> dict[str, float]:
    """Spawn, open the desktop in Chromium, time to pixels; then idle memory."""
    hub.ensure_user(user)
    token = hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 3600}).json()["token"]
    hub.spawn_ready(user)
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
        hub.stop_server(user)
    return {"pixels": pixels, "memory": memory}


def container_memory(container: Any) -> float:
    """MiB in use, as ``docker stats`` counts it (page cache that can be dropped excluded)."""
    stats = container.stats(stream=False)["memory_stats"]
    inner = stats.get("stats", {})
    cache = inner.get("total_inactive_file", inner.get("inactive_file", inner.get("cache", 0)))
    return (stats["usage"] - cache) / 1024**2


def image_sizes(client: docker.DockerClient) -> list[tuple[str, float, float]]:
    """(image, size MB, MB of layers not shared with deskhub/base)."""

    def steps(name: str) -> list[tuple[str, str, int]]:
        return [(h["Created"], h["CreatedBy"], h["Size"]) for h in client.api.history(name)]

    base = set(steps("deskhub/base:latest"))
    rows = []
    for name in ("deskhub/base:latest", "deskhub/xfm:latest"):
        size = client.images.get(name).attrs["Size"]
        own = [step for step in steps(name) if step not in base]
        unique = sum(step[2] for step in own) if own else size
        rows.append((name, size / 1e6, unique / 1e6))
    return rows


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="spawns per spawner")
    parser.add_argument("--idle", type=float, default=60, help="seconds idle before memory")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    client = docker.from_env()
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
        "# deskhub benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `deploy/benchmark` on: "
        f"{describe_machine(client)}.",
        "",
        "Both hubs ran in the same run, on the same engine, with the same image "
        "(`deskhub/base:latest`) and the same limits (deskhub's default environment: "
        f"{DEFAULT_DESKTOP.needs.describe()}), one after the other.",
        "",
        "## Sessions",
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
    for name, size, unique in image_sizes(client):
        lines.append(f"| `{name}` | {size:.0f} MB | {unique:.0f} MB |")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
