"""Placement across three real Docker engines (tests/conftest.py: node-a plain TCP, node-b
mutual TLS with one GPU, node-c two GPUs and beamline=mx), through the hub's REST API.

The tests run in file order on one hub and build on each other's sessions, like a day at a
facility: sessions spread out, GPUs are handed out and run out, a node is drained, the hub
restarts, a node dies.
"""

from __future__ import annotations

import json
import re
import time

import docker
import pytest
import requests

from tests.harness import Hub
from tests.multinode import TINY_IMAGE, EngineCluster
from tests.netprobe import connect_from

pytestmark = pytest.mark.docker

GiB = 1024**3


def find(cluster: EngineCluster, hub: Hub, user: str):
    """(node name, container) of the user's session, looked up on every node's engine."""
    for node in cluster:
        try:
            found = node.client(timeout=5).containers.list(filters={"name": f"{hub.prefix}-{user}"})
        except (docker.errors.DockerException, requests.exceptions.ConnectionError):
            continue  # a node that is down holds no session we can reach
        for container in found:
            if container.name == f"{hub.prefix}-{user}":
                return node.name, container
    raise AssertionError(f"no container for {user} on any node")


def placed_line(hub: Hub, user: str) -> str:
    lines = [line for line in hub.log_tail(3000).splitlines() if f"{user}: Placed on" in line]
    assert lines, f"no placement logged for {user}"
    return lines[-1].split(": Placed on ", 1)[1]


def pid1_environ(container) -> dict[str, str]:
    output = container.exec_run(["cat", "/proc/1/environ"]).output.decode()
    return dict(item.split("=", 1) for item in output.split("\0") if "=" in item)


def spawn(hub: Hub, user: str, environment: str) -> dict:
    hub.ensure_user(user)
    return hub.spawn_ready(user, {"environment": environment})


def refused(hub: Hub, user: str, environment: str) -> str:
    hub.ensure_user(user)
    response = hub.spawn(user, {"environment": environment})
    assert response.status_code == 503, response.text
    return response.json()["message"]


@pytest.fixture(scope="module")
def mn(multinode_hub: Hub, session_cluster: EngineCluster):
    # an image tag that only node-b holds
    node_b = session_cluster["node-b"].client()
    node_b.images.get("deskhub/base:latest").tag("deskhub/base", "only-b")
    node_c = session_cluster["node-c"].client()
    node_c.images.get("deskhub/base:latest").tag("deskhub/base", "a-and-c")
    node_a = session_cluster["node-a"].client()
    node_a.images.get(TINY_IMAGE).tag("deskhub/base", "a-and-c")
    return multinode_hub, session_cluster


def test_a_start_that_fails_on_one_node_is_retried_on_the_next(mn):
    hub, cluster = mn
    # all nodes are empty: node-a wins the tie by name, but its image has no JupyterHub, so
    # the container there exits at once
    spawn(hub, "zed", "flaky")
    assert find(cluster, hub, "zed")[0] == "node-c"
    log = hub.log_tail(3000)
    assert "zed: Placed on node-a: " in log
    assert "zed: Could not start on node-a (its container stopped at once); trying another" in log
    assert "zed: Placed on node-c: " in log
    # nothing is left behind on node-a, and its reservation is gone
    assert not cluster["node-a"].client().containers.list(all=True, filters={"name": "zed"})
    node_a = hub.api("GET", "/nodes/node-a").json()
    assert node_a["sessions"] == [] and node_a["reserved_cpu"] == 0
    hub.stop_server("zed")


def test_sessions_spread_over_the_nodes_and_are_served_across_hosts(mn):
    hub, cluster = mn
    homes = {}
    for user in ("ann", "ben", "cat"):
        spawn(hub, user, "desktop")
        homes[user] = find(cluster, hub, user)
    assert sorted(node for node, _ in homes.values()) == ["node-a", "node-b", "node-c"]
    for user, (node, container) in homes.items():
        # the hub reaches the session through the port published on the node's address only
        bindings = container.attrs["NetworkSettings"]["Ports"]["8888/tcp"]
        assert [b["HostIp"] for b in bindings] == [cluster[node].ip]
        assert container.labels["deskhub.node"] == node
        # and the session reached the hub's API (token check) through hub_connect_url
        status = hub.user_get(user, "api/status")
        assert status.status_code == 200, status.text
        assert "GPU" not in placed_line(hub, user)  # a CPU session is told nothing of GPUs
        assert container.attrs["HostConfig"]["DeviceRequests"] is None


def test_a_session_reaches_the_hub_but_no_engine_and_no_session_on_another_node(mn):
    hub, cluster = mn
    (node_a, ann), (node_b, ben) = find(cluster, hub, "ann"), find(cluster, hub, "ben")
    assert node_a != node_b
    hub_api = f"{cluster.gateway}:{hub.api_port}"
    bens_port = ben.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]["HostPort"]
    engines = [f"{node.ip}:{node.port}" for node in cluster]  # its own node's among them
    targets = [hub_api, f"{cluster[node_b].ip}:{bens_port}", *engines]
    seen = connect_from(ann, targets)
    # each engine answers the hub (the test's client), and ben's server answers the proxy
    assert hub.user_get("ben", "api/status").status_code == 200
    assert seen == {hub_api: "open", **{target: "timeout" for target in targets[1:]}}
    assert f"node {node_a}: sessions on br-" in hub.log_tail(5000)


def test_the_node_that_holds_the_image_is_preferred(mn):
    hub, cluster = mn
    spawn(hub, "dan", "only-b")
    node, _ = find(cluster, hub, "dan")
    assert node == "node-b"  # by name, node-a would win the tie: the image bonus decides
    assert placed_line(hub, "dan").startswith("node-b: ")
    assert "image already there" in placed_line(hub, "dan")
    hub.stop_server("dan")


def test_whole_gpus_go_to_one_session_and_the_engine_gets_exactly_those(mn):
    hub, cluster = mn
    spawn(hub, "eve", "train")
    node, container = find(cluster, hub, "eve")
    assert node == "node-c"  # the only node with two GPUs
    assert placed_line(hub, "eve").startswith("node-c: GPUs 0, 1 (A100) free for you alone")
    assert container.attrs["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["GPU-c0", "GPU-c1"],
            "Capabilities": [["gpu", "compute", "graphics", "utility"]],
            "Options": {},
        }
    ]
    env = pid1_environ(container)
    # set by the engine's nvidia device driver, from the device request
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-c0,GPU-c1"
    assert set(env["NVIDIA_DRIVER_CAPABILITIES"].split(",")) == {"compute", "graphics", "utility"}
    assert env["DESKHUB_GPU"] == "exclusive"
    hooks = [r for r in cluster.hook_log("node-c") if r["id"] == container.id]
    assert [r["visible_devices"] for r in hooks] == ["GPU-c0,GPU-c1"]

    message = refused(hub, "fay", "train")
    assert message == (
        "Cannot start now: all 2 GPUs are in use and 2 nodes lack 2 GPUs;"
        " try again later or pick a CPU environment."
    )
    assert not [c for c in cluster["node-c"].client().containers.list(all=True) if "fay" in c.name]


def test_desktops_share_a_gpu_until_its_slots_run_out(mn):
    hub, cluster = mn
    # node-c's GPUs are held whole by eve: desktops go to node-b's GPU
    spawn(hub, "gus", "viz")
    node, container = find(cluster, hub, "gus")
    assert node == "node-b"
    assert placed_line(hub, "gus").startswith("node-b: GPU 0 (A40) has 2 of 2 desktop slots free")
    assert container.attrs["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["GPU-b0"]
    env = pid1_environ(container)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-b0"
    assert env["VGL_DISPLAY"] == "egl" and env["DESKHUB_GPU"] == "shared"
    assert container.labels["deskhub.gpus"] == "GPU-b0"

    spawn(hub, "hal", "viz")
    assert find(cluster, hub, "hal")[0] == "node-b"
    assert placed_line(hub, "hal").startswith("node-b: GPU 0 (A40) has 1 of 2 desktop slots")
    assert refused(hub, "ida", "viz") == (
        "Cannot start now: no desktop slot is free on any of the 3 GPUs and 1 node lacks a GPU;"
        " try again later or pick a CPU environment."
    )
    for user in ("hal", "gus", "eve"):
        hub.stop_server(user)
    # the GPUs are free again once the engines no longer run those sessions
    spawn(hub, "ida", "viz")
    assert find(cluster, hub, "ida")[0] in ("node-b", "node-c")
    hub.stop_server("ida")


def test_node_labels_restrict_where_a_session_may_run(mn):
    hub, cluster = mn
    spawn(hub, "jon", "mx")
    assert find(cluster, hub, "jon")[0] == "node-c"
    hub.stop_server("jon")


def test_a_drained_node_is_skipped_and_keeps_its_sessions(mn):
    hub, cluster = mn
    ann_node = find(cluster, hub, "ann")[0]
    response = hub.api("PATCH", f"/nodes/{ann_node}", data=json.dumps({"draining": True}))
    assert response.status_code == 200
    try:
        for user in ("kim", "lou"):
            spawn(hub, user, "desktop")
            assert find(cluster, hub, user)[0] != ann_node
        assert hub.user_get("ann", "api/status").status_code == 200
        nodes = {n["name"]: n for n in hub.api("GET", "/nodes").json()}
        assert nodes[ann_node]["draining"] is True
        assert [s["user"] for s in nodes[ann_node]["sessions"]] == ["ann"]
    finally:
        hub.api("PATCH", f"/nodes/{ann_node}", data=json.dumps({"draining": False}))
    for user in ("kim", "lou"):
        hub.stop_server(user)


def test_when_every_node_is_full_the_user_reads_why(mn):
    hub, _ = mn
    # ann, ben and cat hold 0.5 of each node's 2 CPUs: 1.9 more fits nowhere
    assert refused(hub, "max", "huge") == (
        "Cannot start now: 3 nodes have no CPUs free; try again later."
    )


def test_a_hub_restart_finds_and_serves_the_sessions_on_all_three_nodes(mn):
    hub, cluster = mn
    before = {user: find(cluster, hub, user) for user in ("ann", "ben", "cat")}
    hub.restart()
    for user, (_node, container) in before.items():
        server = hub.api("GET", f"/users/{user}").json()["servers"][""]
        assert server["ready"], server
        assert hub.user_get(user, "api/status").status_code == 200
        assert find(cluster, hub, user)[1].id == container.id  # the same container
    nodes = {n["name"]: n for n in hub.api("GET", "/nodes").json()}
    assert {n: [s["user"] for s in nodes[n]["sessions"]] for n in nodes} == {
        node: [user] for user, (node, _) in before.items()
    }


def test_a_node_that_dies_is_skipped_and_its_sessions_are_reported_stopped(mn):
    hub, cluster = mn
    victim = "ann"
    dead, _ = find(cluster, hub, victim)
    cluster.stop_node(dead, kill=True)
    try:
        # the watcher notices within seconds (1 s polls, 3 s timeouts)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            node = hub.api("GET", f"/nodes/{dead}").json()
            if not node["reachable"]:
                break
            time.sleep(0.5)
        assert not node["reachable"], node
        assert node["error"]
        # new spawns go elsewhere, and the user is told which node was skipped
        spawn(hub, "ned", "desktop")
        assert find(cluster, hub, "ned")[0] != dead
        assert re.search(rf"\({dead} not answering\)$", placed_line(hub, "ned"))
        # the hub reports the dead node's session stopped; its user can start again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not hub.api("GET", f"/users/{victim}").json()["servers"]:
                break
            time.sleep(1)
        assert not hub.api("GET", f"/users/{victim}").json()["servers"]
        assert f"{victim}'s session is on {dead}, which is not answering" in hub.log_tail(3000)
        spawn(hub, victim, "desktop")
        assert find(cluster, hub, victim)[0] != dead
    finally:
        cluster.start_node(dead)
    for user in ("ann", "ben", "cat", "ned"):
        hub.stop_server(user)
