"""Faults a running deskhub survives, each with what the user sees (issue 6, item 5):
a session container killed from outside, a node's Docker engine restarted under a
session, and a node whose disk is full when a session starts. (A hub restart under
running sessions is tested in test_spawn.py and test_multinode.py.)

Two real Docker engines of this module's own (tests/multinode.py), on a network and
subnet of their own: ``fault-a``, an ordinary node, and ``fault-full``, whose Docker data
root is a 256 MB tmpfs that a test fills. Sessions run a busybox stand-in for
jupyterhub-singleuser (built on each node from the tiny image), which answers
``/user/NAME/status`` with its container's hostname: the faults are the engines', not
JupyterLab's.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.conftest import running
from tests.harness import Hub, free_port
from tests.multinode import TINY_IMAGE, EngineCluster, EngineNode, NodeSpec

pytestmark = pytest.mark.docker

SESSION_IMAGE = "deskhubfault/session:latest"
PLAIN, FULL = "fault-a", "fault-full"
DATA_ROOT_SIZE = "256m"
HOME = "/home/deskhub"
# the hub notices a stopped session within seconds (its poll), not at its default 30 s
SPAWNER_CONFIG = "c.DeskhubSpawner.poll_interval = 2\n"

FAKE_SINGLEUSER = """#!/bin/sh
# stands in for jupyterhub-singleuser: serves /user/NAME/status (its container's hostname)
port=${JUPYTERHUB_SERVICE_URL##*:}
port=${port%%/*}
www=/tmp/www
mkdir -p "$www$JUPYTERHUB_SERVICE_PREFIX"
echo "serving $(hostname)" > "$www${JUPYTERHUB_SERVICE_PREFIX}status"
httpd -f -p "${port:-8888}" -h "$www" &
trap 'kill $!; exit 0' TERM INT
wait
"""
DOCKERFILE = f"""FROM {TINY_IMAGE}
COPY jupyterhub-singleuser /usr/local/bin/jupyterhub-singleuser
RUN chmod 0755 /usr/local/bin/jupyterhub-singleuser && mkdir -p /tmp {HOME} \\
    && chmod 1777 /tmp && chown 1000:1000 {HOME}
CMD ["/usr/local/bin/jupyterhub-singleuser"]
"""


class FaultCluster(EngineCluster):
    """Nodes whose name is ``FULL`` keep their Docker data root on a small tmpfs."""

    def _run_node(self, spec: NodeSpec) -> EngineNode:
        if spec.name == FULL:
            # created before the node's own volume of that name, which then finds it
            self.host.volumes.create(
                self.volume_name(spec.name),
                driver="local",
                driver_opts={"type": "tmpfs", "device": "tmpfs", "o": f"size={DATA_ROOT_SIZE}"},
                labels=self._labels(spec.name),
            )
        return super()._run_node(spec)


def build_session_image(node: EngineNode) -> None:
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text, mode in (
            ("Dockerfile", DOCKERFILE, 0o644),
            ("jupyterhub-singleuser", FAKE_SINGLEUSER, 0o755),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client = node.client(timeout=120)
    try:
        client.images.build(fileobj=context, custom_context=True, tag=SESSION_IMAGE, rm=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def fault_cluster(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[EngineCluster]:
    cluster = FaultCluster(
        docker_client,
        [NodeSpec(PLAIN), NodeSpec(FULL)],
        tmp_path_factory.mktemp("fault-nodes"),
        network="deskhub-fault-nodes",
        subnet="172.31.246.0/24",
        prefix="deskhubfault-",
    )
    begin = time.monotonic()
    cluster.start()
    try:
        print(f"fault nodes up in {time.monotonic() - begin:.1f} s")
        for node in cluster:
            cluster.load_tiny_image(node)
            build_session_image(node)
        print(f"fault nodes ready in {time.monotonic() - begin:.1f} s")
        yield cluster
    finally:
        cluster.teardown()


def fault_site(cluster: EngineCluster, api_port: int) -> dict[str, Any]:
    def env(title: str, disk: str) -> dict[str, Any]:
        needs = {"cpu": 0.1, "memory": "128M", "node_labels": {"disk": disk}}
        return {"title": title, "image": SESSION_IMAGE, "needs": needs}

    hub_url = f"http://{cluster.gateway}:{api_port}"
    return {
        "hub": {"api_port": api_port},
        "environments": {
            "desktop": {"hidden": True},
            "xfm": {"hidden": True},
            "plain": env("On the ordinary node", "plain"),
            "small": env("On the small-disk node", "small"),
        },
        # the session firewall is tested elsewhere; these nodes lack its helper image
        "network": {"isolation": False},
        "placement": {"poll_interval": 1, "node_timeout": 10, "node_lost_after": 30},
        "sessions": {"idle_timeout": 0, "start_timeout": 60},
        "nodes": [
            cluster[PLAIN].site_entry(labels={"disk": "plain"}, hub_connect_url=hub_url),
            cluster[FULL].site_entry(labels={"disk": "small"}, hub_connect_url=hub_url),
        ],
    }


@pytest.fixture(scope="module")
def fault_hub(
    tmp_path_factory: pytest.TempPathFactory, fault_cluster: EngineCluster
) -> Iterator[Hub]:
    work: Path = tmp_path_factory.mktemp("fault-hub")
    instance = Hub(
        work,
        fault_site(fault_cluster, free_port()),
        prefix="deskhubfault",
        network="deskhub-fault",
        spawner_config=SPAWNER_CONFIG,
    )
    with running(instance):
        yield instance


# -- helpers ------------------------------------------------------------------------------


def session(cluster: EngineCluster, node: str, hub: Hub, user: str) -> Any:
    return cluster[node].client().containers.get(f"{hub.prefix}-{user}")


def leftovers(cluster: EngineCluster, node: str, user: str) -> list[str]:
    """Containers of any state the user's spawns left on the node."""
    found = cluster[node].client().containers.list(all=True)
    return [
        f"{c.name} ({c.status})" for c in found if user in c.name or c.labels.get("deskhub.helper")
    ]


def exec_in(container: Any, cmd: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", cmd], user="1000:1000")
    return result.exit_code, result.output.decode(errors="replace")


def server(hub: Hub, user: str) -> dict[str, Any] | None:
    return hub.api("GET", f"/users/{user}").json()["servers"].get("")


def status_page(hub: Hub, user: str) -> requests.Response:
    """What the user's browser gets at their server's URL, through the proxy."""
    return hub.user_get(user, "status", allow_redirects=False)


def wait_stopped(hub: Hub, user: str, timeout: float = 60) -> float:
    """Seconds until the hub reports the user's server stopped."""
    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        if server(hub, user) is None:
            return time.monotonic() - begin
        time.sleep(0.5)
    raise AssertionError(f"the hub still reports {user}'s server: {server(hub, user)}")


def assert_user_sees_not_running(hub: Hub, user: str) -> None:
    """The server's URL no longer reaches a session: the hub answers that it is not
    running (and offers to start it)."""
    page = hub.user_get(user, "status")
    print(f"the user sees: {page.status_code} {page.url}")
    assert page.status_code in (424, 503), (page.status_code, page.text[:300])
    assert "not running" in page.text, page.text[:300]


def spawn_with_home_file(hub: Hub, cluster: EngineCluster, user: str, env: str, node: str) -> Any:
    hub.ensure_user(user)
    hub.spawn_ready(user, {"environment": env})
    container = session(cluster, node, hub, user)
    assert exec_in(container, f"echo kept-{user} > {HOME}/notes.txt")[0] == 0
    return container


def assert_home_kept(hub: Hub, cluster: EngineCluster, user: str, node: str) -> None:
    code, out = exec_in(session(cluster, node, hub, user), f"cat {HOME}/notes.txt")
    assert (code, out) == (0, f"kept-{user}\n")


def start_again(hub: Hub, user: str, env: str, timeout: float = 30) -> None:
    """Start as a user does who reads "try again later": until the hub's watcher has seen
    the node back (it polls a node that was down less often), the refusal names it."""
    deadline = time.monotonic() + timeout
    while True:
        response = hub.spawn(user, {"environment": env})
        if response.status_code in (201, 202):
            hub.wait_ready(user)
            return
        message = response.json().get("message", "")
        assert response.status_code == 503 and "1 node is not answering" in message, message
        assert time.monotonic() < deadline, f"still refused after {timeout:.0f} s: {message}"
        print(f"start again: refused with {message!r}")
        time.sleep(1)


def sse_failure(hub: Hub, user: str, timeout: float = 60) -> str:
    """The message of the spawn's last progress event (it failed)."""
    events = hub.progress_events(user, timeout)
    assert events and events[-1].get("failed"), events
    return events[-1]["message"]


# -- the faults ---------------------------------------------------------------------------


def test_a_container_killed_from_outside_is_noticed_and_the_home_kept(fault_hub, fault_cluster):
    hub, cluster, user = fault_hub, fault_cluster, "kia"
    container = spawn_with_home_file(hub, cluster, user, "plain", PLAIN)
    assert status_page(hub, user).text == f"serving {container.id[:12]}\n"
    container.kill()  # e.g. an admin's `docker kill`, or the kernel's OOM killer
    print(f"killed: reported stopped after {wait_stopped(hub, user, 30):.1f} s")
    assert_user_sees_not_running(hub, user)
    hub.spawn_ready(user, {"environment": "plain"})
    again = session(cluster, PLAIN, hub, user)
    assert again.id != container.id
    assert status_page(hub, user).text == f"serving {again.id[:12]}\n"
    assert_home_kept(hub, cluster, user, PLAIN)
    hub.stop_server(user)
    assert leftovers(cluster, PLAIN, user) == []


def test_an_engine_restart_ends_with_the_session_reported_stopped(fault_hub, fault_cluster):
    hub, cluster, user = fault_hub, fault_cluster, "ray"
    spawn_with_home_file(hub, cluster, user, "plain", PLAIN)
    cluster.stop_node(PLAIN)  # dockerd stops, and stops its containers, as at a restart
    cluster.start_node(PLAIN)
    back = time.monotonic()
    # deskhub gives sessions no restart policy: the engine comes back without it, and the
    # hub's poll must say so soon; until then the proxy answers 503 (it reaches nothing)
    while server(hub, user) is not None and time.monotonic() - back < 30:
        time.sleep(0.5)
    stale = server(hub, user)
    assert stale is None, f"still called running 30 s after the engine's restart: {stale}"
    print(f"engine restart: reported stopped {time.monotonic() - back:.1f} s after it was back")
    assert leftovers(cluster, PLAIN, user) in ([], [f"{hub.prefix}-{user} (exited)"])
    assert_user_sees_not_running(hub, user)
    # the user starts again on the same node, with the same home
    start_again(hub, user, "plain")
    assert status_page(hub, user).status_code == 200
    assert_home_kept(hub, cluster, user, PLAIN)
    hub.stop_server(user)
    assert leftovers(cluster, PLAIN, user) == []


def fill_disk(cluster: EngineCluster, node: str) -> None:
    _, out = cluster.exec(node, "dd", "if=/dev/zero", "of=/var/lib/docker/fill", "bs=1M")
    assert "No space left on device" in out, out
    _, out = cluster.exec(node, "df", "-B1", "--output=avail", "/var/lib/docker")
    assert out.split()[-1] == "0", out  # nothing left


def test_a_full_disk_gives_one_sentence_and_corrupts_nothing(fault_hub, fault_cluster):
    hub, cluster, user = fault_hub, fault_cluster, "dee"
    spawn_with_home_file(hub, cluster, user, "small", FULL)
    hub.stop_server(user)
    fill_disk(cluster, FULL)
    try:
        response = hub.spawn(user, {"environment": "small"})
        assert response.status_code in (202, 503), response.text
        if response.status_code == 503:
            message = response.json()["message"]
        else:
            message = sse_failure(hub, user).removeprefix("Spawn failed: ")
        print(f"disk full: the user reads {message!r}")
        assert message == (
            f"The compute node {FULL} is out of disk space, so your session cannot start"
            " there; please tell your administrator."
        )
        assert server(hub, user) is None
        assert leftovers(cluster, FULL, user) == []
        assert "Failed to cleanup" not in hub.log_tail(300)
    finally:
        cluster.exec(FULL, "rm", "-f", "/var/lib/docker/fill")
    # space freed: the same user starts there again, with the home as it was
    hub.spawn_ready(user, {"environment": "small"})
    assert_home_kept(hub, cluster, user, FULL)
    hub.stop_server(user)
