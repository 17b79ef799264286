"""The multi-node test infrastructure (tests/multinode.py) against real engines.

Three nodes on this machine: node-a plain TCP, node-b mutual TLS, node-c plain TCP with
the GPU stand-in. Also checks the two network facts the cross-host design relies on: the
host reaches a port that a container publishes on its node's IP, and a container inside
a node reaches the host at the nodes' network gateway.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import docker
import docker.errors
import docker.tls
import pytest
import requests

from tests.multinode import TINY_IMAGE, EngineCluster

pytestmark = pytest.mark.docker

GPU_REQUEST = docker.types.DeviceRequest(
    driver="nvidia",
    device_ids=["GPU-aaaa", "GPU-bbbb"],
    capabilities=[["gpu", "compute", "utility", "graphics"]],
)
SMALL_IMAGE = "deskhub/debian-local:bookworm"


def environ(client: docker.DockerClient, **kwargs) -> dict[str, str]:
    """The environment of PID 1 in a fresh tiny container on ``client``'s engine."""
    output = client.containers.run(TINY_IMAGE, ["cat", "/proc/1/environ"], remove=True, **kwargs)
    return dict(item.split("=", 1) for item in output.decode().split("\0") if "=" in item)


def test_every_node_answers_and_reports_its_capacity(cluster: EngineCluster):
    for node in cluster:
        client = node.client()
        info = client.info()
        assert info["NCPU"] >= 1 and info["MemTotal"] > 2**30, node.name
        assert info["Name"] == node.name
        assert info["Driver"] == "overlay2"  # a volume at /var/lib/docker, not vfs
        client.close()
    net = cluster.subnet.rsplit(".", 1)[0]  # 172.31.250, or a spare if that one is taken
    assert [entry["endpoint"] for entry in cluster.site_nodes()] == [
        f"tcp://{net}.11:2375",
        f"tcp://{net}.12:2376",
        f"tcp://{net}.13:2375",
    ]


def test_tls_node_answers_a_client_certificate_and_refuses_anyone_else(
    cluster: EngineCluster,
):
    node = cluster["node-b"]
    assert node.tls is not None
    entry = node.site_entry()
    assert entry["tls"] == {
        "ca": str(node.tls.ca),
        "cert": str(node.tls.client_cert),
        "key": str(node.tls.client_key),
    }
    assert node.client().ping()

    anonymous = docker.DockerClient(
        base_url=node.endpoint,
        tls=docker.tls.TLSConfig(ca_cert=str(node.tls.ca), verify=True),
        version="1.41",
        timeout=10,
    )
    anonymous.api.trust_env = False
    with pytest.raises(requests.exceptions.SSLError, match="(?i)certificate"):
        anonymous.ping()

    plain = docker.DockerClient(base_url=f"tcp://{node.ip}:2376", version="1.41", timeout=10)
    with pytest.raises(docker.errors.APIError, match="HTTP request to an HTTPS server"):
        plain.ping()


def test_gpu_request_runs_on_the_gpu_node_through_the_standin_hook(cluster: EngineCluster):
    client = cluster["node-c"].client()
    before = len(cluster.hook_log("node-c"))
    env = environ(client, device_requests=[GPU_REQUEST])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,GPU-bbbb"
    assert "graphics" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")

    records = cluster.hook_log("node-c")[before:]
    assert len(records) == 1
    assert records[0]["hook"] == "prestart"
    assert records[0]["visible_devices"] == "GPU-aaaa,GPU-bbbb"
    assert set(records[0]["capabilities"].split(",")) == {"compute", "utility", "graphics"}
    assert len(records[0]["id"]) == 64

    # No device request: no NVIDIA environment, and the hook is not called.
    assert "NVIDIA_VISIBLE_DEVICES" not in environ(client)
    assert len(cluster.hook_log("node-c")) == before + 1


def test_gpu_request_is_refused_by_a_node_without_the_driver(cluster: EngineCluster):
    client = cluster["node-a"].client()
    with pytest.raises(docker.errors.APIError, match='device driver "nvidia"'):
        client.containers.run(TINY_IMAGE, ["true"], device_requests=[GPU_REQUEST], remove=True)
    for container in client.containers.list(all=True, filters={"ancestor": TINY_IMAGE}):
        container.remove(force=True)
    assert cluster.hook_log("node-a") == []


def test_images_load_from_the_host_once(cluster: EngineCluster):
    first = cluster.load_images("node-a", [SMALL_IMAGE])
    assert first.loaded == [SMALL_IMAGE]
    again = cluster.load_images("node-a", [SMALL_IMAGE])
    assert again.skipped == [SMALL_IMAGE] and again.seconds < 2
    client = cluster["node-a"].client()
    assert client.containers.run(SMALL_IMAGE, ["true"], remove=True) == b""
    client.images.remove(SMALL_IMAGE)


def test_host_and_other_nodes_reach_a_port_published_on_a_node_ip(cluster: EngineCluster):
    node = cluster["node-c"]
    client = node.client()
    script = "mkdir /www && echo hello-from-node-c >/www/index.html && httpd -f -p 8080 -h /www"
    server = client.containers.run(
        TINY_IMAGE, ["sh", "-c", script], detach=True, ports={"8080/tcp": (node.ip, None)}
    )
    try:
        server.reload()
        binding = server.ports["8080/tcp"][0]
        assert binding["HostIp"] == node.ip
        url = f"http://{node.ip}:{binding['HostPort']}/"
        body = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    url, timeout=3
                ) as response:
                    body = response.read()
                break
            except OSError:
                time.sleep(0.2)
        assert body == b"hello-from-node-c\n"
        # A container on another node gets there too (node-a's NAT, then the bridge).
        # The tiny image's busybox wget crashes: speak HTTP through nc.
        get = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {node.ip} {binding['HostPort']}"
        other = cluster["node-a"].client()
        fetched = other.containers.run(TINY_IMAGE, ["sh", "-c", get], remove=True)
        assert fetched.startswith(b"HTTP/1.")
        assert fetched.endswith(b"\r\n\r\nhello-from-node-c\n")
    finally:
        server.remove(force=True)


def test_a_container_in_a_node_reaches_the_host_at_the_gateway(cluster: EngineCluster):
    seen: list[tuple[str, bytes]] = []
    with socket.socket() as listener:
        listener.bind((cluster.gateway, 0))
        listener.listen(1)
        listener.settimeout(20)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, (peer, _port) = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                seen.append((peer, conn.recv(100)))
                conn.sendall(b"pong\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        output = (
            cluster["node-a"]
            .client()
            .containers.run(
                TINY_IMAGE,
                ["sh", "-c", f"echo ping | nc -w 5 {cluster.gateway} {port}"],
                remove=True,
            )
        )
        thread.join(10)
    assert output == b"pong\n"
    # The host sees the node's address: the node's engine masquerades its containers.
    assert seen == [(cluster["node-a"].ip, b"ping\n")]


def test_a_killed_node_stops_answering_and_comes_back_with_its_images(cluster: EngineCluster):
    node = cluster["node-a"]
    cluster.stop_node("node-a", kill=True)
    client = node.client(timeout=3)
    with pytest.raises((docker.errors.DockerException, requests.exceptions.ConnectionError)):
        client.ping()
    cluster.start_node("node-a")
    client = node.client()
    assert client.ping()
    assert client.images.get(TINY_IMAGE)
    assert client.containers.run(TINY_IMAGE, ["true"], remove=True) == b""
