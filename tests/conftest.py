"""Fixtures shared by the integration and browser tests: a real deskhub on the local engine."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from tests.harness import Hub, example_site, free_port, make_data
from tests.multinode import EngineCluster, NodeSpec, ensure_node_image

IMAGES = ("deskhub/base:latest", "deskhub/xfm:latest", "deskhub/netguard:latest")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        pytest.fail(f"no Docker engine: {err}. Run deploy/test, which installs and starts one.")
    missing = [image for image in IMAGES if not client.images.list(name=image)]
    if missing:
        pytest.fail(f"images missing: {', '.join(missing)}. Build them with images/build.")
    return client


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("hub")
    data = make_data(work / "data")
    with running(Hub(work, example_site(data))) as instance:
        yield instance


@contextmanager
def running(instance: Hub) -> Iterator[Hub]:
    """Start a hub from a clean slate; remove all it made afterwards."""
    instance.cleanup()
    try:
        instance.start()
        yield instance
    finally:
        if os.environ.get("DESKHUB_KEEP_HUB_LOG"):
            print(instance.log_tail(200))
        instance.cleanup()


# -- several real Docker engines ("nodes"), each in a container on this machine ---------
# node-a: plain TCP, no GPU; node-b: mutual TLS, one GPU; node-c: plain TCP, two GPUs and
# the label beamline=mx. GPU nodes run the NVIDIA hook stand-in, so their engines really
# accept (and record) GPU device requests.
NODE_SPECS = [
    NodeSpec("node-a"),
    NodeSpec("node-b", tls=True, gpu=True),
    NodeSpec("node-c", gpu=True),
]
SESSION_IMAGE = "deskhub/base:latest"
NETGUARD_IMAGE = "deskhub/netguard:latest"


def load_everywhere(cluster: EngineCluster, image: str) -> float:
    """Copy ``image`` from the host into every node, saving it once; seconds taken."""
    begin = time.monotonic()
    host_image = cluster.host.images.get(image)
    with tempfile.TemporaryDirectory(prefix="deskhub-image-") as tmp:
        archive = Path(tmp) / "image.tar"
        with archive.open("wb") as out:
            for chunk in host_image.save(named=image):  # this tag, not the first one
                out.write(chunk)

        def load(node) -> None:
            client = node.client(timeout=900)
            try:
                try:
                    if client.images.get(image).id == host_image.id:
                        return
                except docker.errors.ImageNotFound:
                    pass
                with archive.open("rb") as data:
                    client.images.load(data)
            finally:
                client.close()

        with ThreadPoolExecutor(len(cluster.nodes)) as pool:
            list(pool.map(load, cluster))
    return time.monotonic() - begin


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[EngineCluster]:
    ensure_node_image(docker_client)
    nodes = EngineCluster(docker_client, NODE_SPECS, tmp_path_factory.mktemp("nodes"))
    nodes.start()
    try:
        for node in nodes:
            nodes.load_tiny_image(node)
        yield nodes
    finally:
        nodes.teardown()


@pytest.fixture(scope="session")
def session_cluster(cluster: EngineCluster) -> EngineCluster:
    """The nodes, with the session image on each."""
    seconds = load_everywhere(cluster, SESSION_IMAGE)
    print(f"loaded {SESSION_IMAGE} into {len(cluster.nodes)} nodes in {seconds:.0f} s")
    # the helper that loads each node's session firewall (spawner/netguard.py)
    load_everywhere(cluster, NETGUARD_IMAGE)
    return cluster


def multinode_site(cluster: EngineCluster, api_port: int) -> dict:
    gpus = {
        "node-b": [{"id": "GPU-b0", "model": "A40", "memory": "48G", "desktop_slots": 2}],
        "node-c": [
            {"id": f"GPU-c{i}", "model": "A100", "memory": "80G", "desktop_slots": 2}
            for i in range(2)
        ],
    }
    nodes = []
    for node in cluster:
        entry = node.site_entry(hub_connect_url=f"http://{cluster.gateway}:{api_port}")
        if node.name in gpus:
            entry["gpus"] = gpus[node.name]
        if node.name == "node-c":
            entry["labels"] = {"beamline": "mx"}
        nodes.append(entry)
    small = {"cpu": 0.5, "memory": "1G"}
    return {
        "hub": {"api_port": api_port},
        "environments": {
            "desktop": {
                "title": "Desktop",
                "image": SESSION_IMAGE,
                "default": True,
                "needs": small,
            },
            "viz": {"title": "3D viz", "image": SESSION_IMAGE, "needs": {**small, "gpu": "shared"}},
            "train": {
                "title": "Training",
                "image": SESSION_IMAGE,
                "needs": {**small, "gpu": {"exclusive": 2}},
            },
            "mx": {
                "title": "MX beamline",
                "image": SESSION_IMAGE,
                "needs": {**small, "node_labels": {"beamline": "mx"}},
            },
            "only-b": {"title": "Only on node-b", "image": "deskhub/base:only-b", "needs": small},
            # node-a's copy of this image is broken (busybox under that tag): starts fail there
            "flaky": {"title": "Flaky", "image": "deskhub/base:a-and-c", "needs": small},
            "huge": {
                "title": "Huge",
                "image": SESSION_IMAGE,
                "needs": {"cpu": 1.9, "memory": "1G"},
            },
        },
        "placement": {"poll_interval": 1, "node_timeout": 3, "node_lost_after": 3},
        "sessions": {"idle_timeout": 0, "start_timeout": 120},
        "nodes": nodes,
    }


@pytest.fixture(scope="session")
def multinode_hub(tmp_path_factory: pytest.TempPathFactory, session_cluster) -> Iterator[Hub]:
    """A deskhub whose sessions run on the three nodes, none on the hub's own engine."""
    work = tmp_path_factory.mktemp("multinode-hub")
    instance = Hub(
        work,
        multinode_site(session_cluster, free_port()),
        prefix="deskhubmn",
        network="deskhub-mn",
        # the hub notices a session whose node died within seconds, not the default 30 s
        spawner_config="c.DeskhubSpawner.poll_interval = 3\n",
    )
    with running(instance):
        yield instance
