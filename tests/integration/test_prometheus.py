"""PrometheusSource against a real Prometheus scraping a real node-exporter.

The node-exporter's textfile collector serves DCGM-exporter series from a file the test
writes: they stand in for a GPU this machine does not have, while the exporter, the scrape,
the storage and the PromQL are all real. Prometheus gives the target the instance label of
a made-up node address, so the matching by ``instance`` is tested. Both run as the test's
own processes, on free loopback ports, with their own configuration and data directories.

Needs the Debian packages ``prometheus`` and ``prometheus-node-exporter`` (their binaries
only; the packaged services need not run).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deskhub.spawner.catalogue import Needs
from deskhub.spawner.inventory import NodeConfig
from deskhub.spawner.metrics import (
    GpuMetrics,
    MetricsUnavailable,
    NodeMetrics,
    PrometheusSource,
    parse_vector,
)
from deskhub.spawner.nodes import Node, NodePool
from deskhub.spawner.placement import Gpu, place
from tests.harness import free_port, run_async

MiB = 1024**2
INSTANCE = "10.9.9.9:9100"  # the node's address as Prometheus labels it; nothing is there
INSTANCES = {"node-c": INSTANCE, "node-x": "10.8.8.8:9100"}
GPU_IDS = {"node-c": ["GPU-aaaa", "GPU-bbbb"], "node-x": ["GPU-xxxx"]}
WAIT = 60.0  # seconds Prometheus may take to have every metric


def dcgm_file(utilisation: float = 37) -> str:
    """DCGM-exporter series as it exposes them (FB_USED and FB_FREE in MiB)."""
    labels = {
        "GPU-aaaa": 'gpu="0",UUID="GPU-aaaa",device="nvidia0",modelName="NVIDIA A40"',
        "GPU-bbbb": 'gpu="1",UUID="GPU-bbbb",device="nvidia1",modelName="NVIDIA A40"',
        "GPU-zzzz": 'gpu="2",UUID="GPU-zzzz",device="nvidia2",modelName="NVIDIA A40"',
    }
    values = {
        "DCGM_FI_DEV_GPU_UTIL": {"GPU-aaaa": utilisation, "GPU-bbbb": 0, "GPU-zzzz": 99},
        "DCGM_FI_DEV_FB_USED": {"GPU-aaaa": 1536, "GPU-bbbb": 0, "GPU-zzzz": 100},
        "DCGM_FI_DEV_FB_FREE": {"GPU-aaaa": 44068, "GPU-bbbb": 45604, "GPU-zzzz": 1},
    }
    lines = []
    for metric, by_gpu in values.items():
        lines.append(f"# TYPE {metric} gauge")
        for uuid, value in by_gpu.items():
            lines.append(f'{metric}{{{labels[uuid]},Hostname="node-c"}} {value}')
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    # the textfile collector reads only *.prom: never let it see a half-written file
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def host_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


@dataclass
class Servers:
    url: str  # Prometheus
    exporter_url: str
    textfile: Path
    ready_after: float  # seconds from start until every metric was there


def start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def complete(metrics: NodeMetrics) -> bool:
    return metrics.load is not None and metrics.memory_used is not None and len(metrics.gpus) == 2


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    missing = [b for b in ("prometheus", "prometheus-node-exporter") if not shutil.which(b)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: install the Debian packages prometheus and "
            "prometheus-node-exporter (deploy/lib/prepare.sh does)"
        )
    work = tmp_path_factory.mktemp("prometheus")
    textfile = work / "textfile"
    textfile.mkdir()
    write_atomically(textfile / "dcgm.prom", dcgm_file())
    exporter_port, prometheus_port = free_port(), free_port()
    (work / "prometheus.yml").write_text(
        f"""\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:{exporter_port}"]
        labels:
          instance: "{INSTANCE}"
"""
    )
    started = time.monotonic()
    processes = [
        start(
            [
                "prometheus-node-exporter",
                f"--web.listen-address=127.0.0.1:{exporter_port}",
                "--web.disable-exporter-metrics",
                # only what the queries read
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.meminfo",
                "--collector.textfile",
                f"--collector.textfile.directory={textfile}",
            ],
            work / "node-exporter.log",
        ),
        start(
            [
                "prometheus",
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                "--storage.tsdb.retention.time=1h",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            work / "prometheus.log",
        ),
    ]
    url = f"http://127.0.0.1:{prometheus_port}"
    source = PrometheusSource(url, timeout=2.0)
    try:
        last: object = None
        while True:
            for process in processes:
                if process.poll() is not None:
                    log = (work / f"{Path(process.args[0]).name}.log").read_text()
                    pytest.fail(f"{process.args[0]} exited ({process.returncode}):\n{log[-3000:]}")
            try:
                last = run_async(source.fetch(INSTANCES, GPU_IDS))
                if complete(last["node-c"]):
                    break
            except MetricsUnavailable as err:  # not listening yet
                last = err
            if time.monotonic() - started > WAIT:
                logs = "\n".join(p.read_text()[-2000:] for p in sorted(work.glob("*.log")))
                pytest.fail(f"no complete metrics after {WAIT:.0f} s; last: {last!r}\n{logs}")
            time.sleep(0.5)
        yield Servers(
            url, f"http://127.0.0.1:{exporter_port}", textfile, time.monotonic() - started
        )
    finally:
        for process in reversed(processes):
            stop(process)


def test_fetch_reads_node_and_gpu_metrics_from_a_real_prometheus(servers):
    print(f"Prometheus had every metric {servers.ready_after:.1f} s after starting")
    nodes = run_async(PrometheusSource(servers.url).fetch(INSTANCES, GPU_IDS))
    assert set(nodes) == {"node-c", "node-x"}
    node = nodes["node-c"]
    assert node.load is not None and 0 <= node.load <= (os.cpu_count() or 1) * 1.1 + 0.1
    assert node.memory_used is not None and 0 < node.memory_used < host_memory()
    # GPU-zzzz is in the file but no node declares it
    assert node.gpus == {
        "GPU-aaaa": GpuMetrics(37.0, 1536 * MiB, 44068 * MiB),
        "GPU-bbbb": GpuMetrics(0.0, 0, 45604 * MiB),
    }
    # an instance Prometheus does not scrape, and a GPU it does not know
    assert nodes["node-x"] == NodeMetrics()


def test_fetch_follows_a_change_within_a_few_scrapes(servers):
    write_atomically(servers.textfile / "dcgm.prom", dcgm_file(utilisation=81.5))
    try:
        source = PrometheusSource(servers.url)
        deadline = time.monotonic() + 20
        while True:
            gpu = run_async(source.fetch(INSTANCES, GPU_IDS))["node-c"].gpus["GPU-aaaa"]
            if gpu.utilisation == 81.5 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert gpu == GpuMetrics(81.5, 1536 * MiB, 44068 * MiB)
    finally:
        write_atomically(servers.textfile / "dcgm.prom", dcgm_file())


def test_a_real_error_answer_is_a_value_error(servers):
    response = requests.get(f"{servers.url}/api/v1/query", params={"query": "rate("}, timeout=5)
    assert response.status_code == 400
    with pytest.raises(ValueError, match="Prometheus query failed: bad_data: .*parse error"):
        parse_vector(response.text)


def test_fetch_from_a_server_that_is_not_prometheus(servers):
    # node-exporter answers every path with its HTML landing page
    with pytest.raises(MetricsUnavailable, match="HTTP 200: Prometheus answer is not JSON"):
        run_async(PrometheusSource(servers.exporter_url).fetch(INSTANCES, GPU_IDS))


def test_fetch_where_nothing_listens_fails_quickly():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(MetricsUnavailable, match=f"{url}: ConnectionRefusedError"):
        run_async(PrometheusSource(url).fetch(INSTANCES, GPU_IDS))
    assert time.monotonic() - started < 10


def test_fetch_from_a_server_that_never_answers_fails_after_its_timeout():
    with socket.socket() as sock:  # accepts connections (the kernel does), never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(MetricsUnavailable, match="Timeout"):
            run_async(PrometheusSource(url, timeout=1.0).fetch(INSTANCES, GPU_IDS))
        assert time.monotonic() - started < 5


def test_the_watchers_take_live_load_and_gpu_use_from_prometheus(servers):
    # the local engine, labelled in Prometheus as the made-up node address
    local = NodeConfig(
        "node-c",
        "unix:///var/run/docker.sock",
        prometheus_instance=INSTANCE,
        gpus=(Gpu("GPU-aaaa", "A40", 48 * 1024**3, 4), Gpu("GPU-bbbb", "A40", 48 * 1024**3, 4)),
    )

    async def poll(url: str):
        pool = NodePool([Node(local)], metrics=PrometheusSource(url, timeout=2))
        await pool.poll_metrics()
        return await pool.nodes["node-c"].refresh(), pool.nodes["node-c"].fresh_metrics()

    snapshot, metrics = run_async(poll(servers.url))
    assert metrics is not None and snapshot.load == metrics.load
    assert snapshot.memory_used == metrics.memory_used
    assert snapshot.gpu_busy == {"GPU-aaaa": 0.37, "GPU-bbbb": 0.0}
    assert snapshot.gpu_memory_free == {"GPU-aaaa": 44068 * MiB, "GPU-bbbb": 45604 * MiB}
    # the busier GPU is avoided, and the user is told how busy the chosen one is
    desktop = place(Needs(0.1, 1024**2, gpu="shared"), [snapshot])
    assert desktop.gpus == ("GPU-bbbb",)
    assert "GPU 1 (A40) has 4 of 4 desktop slots free (busy 0%)" in desktop.reason

    # Prometheus gone: the watcher measures the containers itself again
    snapshot, metrics = run_async(poll(f"http://127.0.0.1:{free_port()}"))
    assert metrics is None
    assert snapshot.load is not None and snapshot.gpu_busy == {}
