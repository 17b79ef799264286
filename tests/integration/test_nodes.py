"""The node watcher against real engines: what it sees, and a node that does not answer."""

from __future__ import annotations

import os
import time

from deskhub.spawner.inventory import NodeConfig
from deskhub.spawner.nodes import Node
from deskhub.spawner.placement import Reservation
from tests.harness import run_async

GiB = 1024**3


def refresh(node: Node):
    return run_async(node.refresh())


def test_local_node_snapshot_reads_capacity_images_and_sessions(hub):
    hub.ensure_user("henry")
    hub.spawn_ready("henry", {"environment": "xfm"})
    try:
        node = Node(NodeConfig("local", "unix:///var/run/docker.sock"))
        first = refresh(node)
        time.sleep(1)
        snapshot = refresh(node)  # CPU load is a rate: it needs two samples
    finally:
        hub.stop_server("henry")
    assert snapshot.reachable, snapshot.error
    assert snapshot.cpus == os.cpu_count()
    assert snapshot.memory > GiB
    assert {"deskhub/base:latest", "deskhub/xfm:latest"} <= snapshot.images
    assert snapshot.sessions["henry/"] == Reservation(0.25, GiB)
    # live use of the node's containers: henry's JupyterLab and desktop take some memory
    assert first.load == 0.0
    assert snapshot.load is not None and 0.0 <= snapshot.load <= snapshot.cpus
    assert 50 * 1024**2 < snapshot.memory_used < snapshot.memory


def test_a_node_that_does_not_answer_is_marked_unreachable_quickly():
    node = Node(NodeConfig("dead", "tcp://127.0.0.1:9"), timeout=2)  # discard port: nothing listens
    start = time.monotonic()
    snapshot = refresh(node)
    assert time.monotonic() - start < 10
    assert not snapshot.reachable
    assert "Connection" in snapshot.error or "refused" in snapshot.error


def test_reservations_in_flight_count_until_released():
    node = Node(NodeConfig("n", "unix:///var/run/docker.sock"))
    node.reserve("alice/", Reservation(1, GiB))
    assert node.planning_snapshot().sessions == {"alice/": Reservation(1, GiB)}
    node.release("alice/")
    assert node.planning_snapshot().sessions == {}
    # a started session's reservation stays until a poll that began after the start
    node.reserve("bob/", Reservation(1, GiB))
    node.started("bob/")
    assert "bob/" in node.planning_snapshot().sessions
    refresh(node)
    assert "bob/" not in node.planning_snapshot().sessions
