"""The image pipeline on real parts: ``images/build`` builds and pushes to a real registry
(Debian's docker-registry), ``deploy/prepull`` pulls onto another engine, the hub spawns
there; a spawn that needs a pull shows it on the progress stream; a missing image gives
its one sentence.

Two engines in containers (tests/multinode.py) on a network of their own: ``builder``
builds and pushes (images/build with DOCKER_HOST pointing at it), ``worker`` (mutual TLS,
as the hub and the pre-pull command reach it) runs the sessions. The registry listens on
the network's gateway, which both engines treat as an insecure (plain HTTP) registry. The
images are the tiny ones of tests/pipeline-images (busybox, a stand-in single-user
server), not the multi-GB desktops.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import running
from tests.harness import ROOT, Hub, free_port
from tests.multinode import (
    EngineCluster,
    NodeSpec,
    ensure_node_image,
    ensure_tiny_image,
)
from tests.registry import Registry

pytestmark = pytest.mark.docker

NS = "deskhubpipe"
NETWORK = "deskhub-test-pipeline"
SUBNET = "172.31.248.0/24"
PREFIX = "deskhubpipenode-"
IMAGES_DIR = ROOT / "tests" / "pipeline-images"
SMALL = {"cpu": 0.25, "memory": "256M"}
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")


def git_version() -> str:
    described = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--tags", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return re.sub(r"[^A-Za-z0-9_.-]", "-", described).lstrip(".-")[:128]


@dataclass
class Pipeline:
    cluster: EngineCluster
    registry: Registry
    work: Path
    version: str = ""

    def ref(self, name: str, tag: str | None = None) -> str:
        return f"{self.registry.host}/{NS}/{name}:{tag or self.version}"

    def build(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """images/build on the builder engine, over the tiny images."""
        environ = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        environ.update(
            DOCKER_HOST=self.cluster["builder"].endpoint,
            DESKHUB_IMAGES_DIR=str(IMAGES_DIR),
            DESKHUB_IMAGE_NAMESPACE=NS,
            DESKHUB_BASE_IMAGE="deskhub/test-tiny:latest",
            DESKHUB_EXTRA_CA_CERTS="none",
            DESKHUB_PYTHON=sys.executable,
            **env,
        )
        return subprocess.run(
            [str(ROOT / "images" / "build"), *args],
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def site(self, api_port: int, environments: dict, extra_nodes: list | None = None) -> dict:
        hub_url = f"http://{self.cluster.gateway}:{api_port}"
        return {
            "hub": {"api_port": api_port},
            # the embedded environments' images are not in this registry
            "environments": {
                "desktop": {"hidden": True, "default": False},
                "xfm": {"hidden": True},
                **environments,
            },
            "placement": {"poll_interval": 1, "node_timeout": 5},
            "sessions": {"idle_timeout": 0, "start_timeout": 60},
            # the pipeline's own images only (the firewall on nodes: test_multinode.py)
            "network": {"isolation": False},
            "nodes": [self.cluster["worker"].site_entry(hub_connect_url=hub_url)]
            + (extra_nodes or []),
        }

    def prepull(self, site: dict, *args: str) -> subprocess.CompletedProcess[str]:
        path = self.work / f"prepull-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(site))
        return subprocess.run(
            [str(ROOT / "deploy" / "prepull"), "--site", str(path), "--interval", "0.2", *args],
            env={**os.environ, "DESKHUB_PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Pipeline]:
    ensure_node_image(docker_client)
    tiny = ensure_tiny_image(docker_client)
    work = tmp_path_factory.mktemp("pipeline")
    cluster = EngineCluster(
        docker_client,
        [NodeSpec("builder"), NodeSpec("worker", tls=True)],
        work / "nodes",
        network=NETWORK,
        subnet=SUBNET,
        prefix=PREFIX,
        insecure_registry_subnet=True,
    )
    cluster.start()
    registry: Registry | None = None
    try:
        (work / "registry").mkdir()
        registry = Registry(work / "registry", address=cluster.gateway).start()
        cluster.load_images("builder", [tiny])
        yield Pipeline(cluster, registry, work)
    finally:
        if registry is not None:
            registry.stop()
        cluster.teardown()


@pytest.fixture(scope="module")
def built(pipeline: Pipeline) -> Pipeline:
    """images/build --push: every tiny image built on the builder and in the registry."""
    begin = time.monotonic()
    result = pipeline.build("--push", pipeline.registry.host, "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"images/build --push took {time.monotonic() - begin:.1f} s")
    pipeline.version = git_version()
    log = result.stderr
    # progress, in dependency order: base is built before the images FROM it
    assert log.index("base: Step") < log.index("app: Step")
    assert log.index("base: built") < log.index("bulky: Step")
    assert f"pushed {pipeline.ref('app')} and :latest" in log
    return pipeline


def test_build_tags_the_git_version_and_pushes_both_tags(built: Pipeline) -> None:
    version = built.version
    for name in ("base", "app", "bulky"):
        assert built.registry.tags(f"{NS}/{name}") == sorted([version, "latest"])
        assert built.registry.digest(f"{NS}/{name}", version) == built.registry.digest(
            f"{NS}/{name}", "latest"
        )
    builder = built.cluster["builder"].client()
    app = builder.images.get(f"{NS}/app:latest")
    assert f"{NS}/app:{version}" in app.tags
    # built FROM the base of this run
    base = builder.images.get(f"{NS}/base:latest")
    assert base.id in {step["Id"] for step in app.history()}


def test_a_second_build_comes_from_the_cache_and_a_changed_image_is_rebuilt(
    built: Pipeline, tmp_path: Path
) -> None:
    builder = built.cluster["builder"].client()
    before = builder.images.get(f"{NS}/app:latest").id
    begin = time.monotonic()
    again = built.build("--if-missing", "base", "app", DESKHUB_IMAGE_VERSION="+rc/1")
    seconds = time.monotonic() - begin
    assert again.returncode == 0, again.stderr[-3000:]
    assert "app: built" in again.stderr and "2 of 2 steps from the cache" in again.stderr
    assert builder.images.get(f"{NS}/app:latest").id == before
    # the version is made a valid tag: "+rc/1" -> "rc-1"
    assert f"{NS}/app:rc-1" in builder.images.get(f"{NS}/app:latest").tags
    assert seconds < 30, again.stderr


@pytest.fixture(scope="module")
def pipeline_hub(built: Pipeline) -> Iterator[Hub]:
    site = built.site(
        free_port(),
        {
            "app": {"title": "App", "image": built.ref("app"), "needs": SMALL, "default": True},
            "bulky": {"title": "Bulky", "image": built.ref("bulky"), "needs": SMALL},
            "gone": {"title": "Gone", "image": built.ref("never-pushed", "latest"), "needs": SMALL},
        },
    )
    instance = Hub(
        built.work / "hub",
        site,
        prefix="deskhubpipe",
        network="deskhub-pipe",
        spawner_config=(
            # POST answers at once, so the progress stream is read while the spawn runs
            'c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n'
            "c.DeskhubSpawner.pull_progress_interval = 0.2\n"
        ),
    )
    (built.work / "hub").mkdir(exist_ok=True)
    with running(instance):
        yield instance


def test_prepull_onto_a_second_engine_then_spawn_there(built: Pipeline, pipeline_hub: Hub) -> None:
    app = built.ref("app")
    gone = {
        "name": "gone",
        "endpoint": "tcp://127.0.0.1:1",
        "hub_connect_url": "http://127.0.0.1:1",
    }
    site = built.site(9999, {"app": {"title": "App", "image": app, "needs": SMALL}}, [gone])
    begin = time.monotonic()
    result = built.prepull(site)
    print(f"prepull took {time.monotonic() - begin:.1f} s:\n{result.stdout}")
    # the site's images by default; a node that is down fails, with its one line
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"worker: pulling {app}" in out
    assert re.search(
        rf"worker: pulled {re.escape(app)} in \d+ s \([\d.]+ of [\d.]+ MB, 5 layers", out
    )
    failed = [line for line in out.splitlines() if line.startswith("gone: FAILED")]
    assert len(failed) == 1 and "tcp://127.0.0.1:1 does not answer" in failed[0], out
    assert "1 of 2 node(s) FAILED: gone (" in out.splitlines()[-1]

    worker = built.cluster["worker"].client()
    digest = built.registry.digest(f"{NS}/app", built.version)
    assert f"{built.registry.host}/{NS}/app@{digest}" in worker.images.get(app).attrs["RepoDigests"]

    # again: nothing to pull; a missing image fails with its own line
    again = built.prepull(site, "--node", "worker")
    assert again.returncode == 0 and f"worker: {app} is already there" in again.stdout
    missing = built.prepull(site, "--node", "worker", built.ref("never-pushed", "latest"))
    assert missing.returncode == 1
    assert re.search(
        r"worker: FAILED: \S+/never-pushed:latest is not in its registry", missing.stdout
    )

    # the hub starts the pre-pulled image on the worker without a pull
    pipeline_hub.ensure_user("alice")
    assert pipeline_hub.spawn("alice", {"environment": "app"}).status_code in (201, 202)
    messages = [e.get("message", "") for e in pipeline_hub.progress_events("alice")]
    assert messages[-1].startswith("Server ready"), messages
    assert not any("Pulling" in m for m in messages), messages
    container = worker.containers.get("deskhubpipe-alice")
    assert container.image.id == worker.images.get(app).id
    pipeline_hub.stop_server("alice")


def test_a_spawn_that_pulls_shows_the_pull_on_its_progress_stream(
    built: Pipeline, pipeline_hub: Hub
) -> None:
    bulky = built.ref("bulky")
    pipeline_hub.ensure_user("bob")
    assert pipeline_hub.spawn("bob", {"environment": "bulky"}).status_code in (201, 202)
    events = pipeline_hub.progress_events("bob")
    messages = [e.get("message", "") for e in events]
    assert events[-1].get("ready"), messages
    assert f"Pulling {bulky} onto worker (first use there)" in messages, messages
    done = [m for m in messages if m.startswith(f"Pulled {bulky} onto worker")]
    # 4 MB of noise came over; the base's layers were there already
    assert done and re.search(r"in \d+ s: [4-5]\.\d of [4-5]\.\d MB \(5 of 5 layers\)", done[0]), (
        messages
    )
    progress = [e["progress"] for e in events if "progress" in e]
    assert progress == sorted(progress), events
    pipeline_hub.stop_server("bob")


def test_a_missing_image_gives_one_sentence(pipeline_hub: Hub) -> None:
    pipeline_hub.ensure_user("carol")
    response = pipeline_hub.spawn("carol", {"environment": "gone"})
    assert response.status_code in (202, 503), response.text
    if response.status_code == 503:
        message = response.json()["message"]
    else:
        events = pipeline_hub.progress_events("carol")
        assert events[-1].get("failed"), events
        message = events[-1]["message"]
        assert message.startswith("Spawn failed: The environment"), message
    # the spawn page shows "Spawn failed: " and the sentence
    assert message.endswith(
        "The environment 'Gone' is not available right now (its image is missing);"
        " please tell your administrator."
    ), message
