"""Fixtures shared by the integration and browser tests: a real deskhub on the local engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.harness import Hub

IMAGES = ("deskhub/base:latest", "deskhub/xfm:latest")


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


def test_site(data_root: Path) -> dict:
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


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("hub")
    data = make_data(work / "data")
    instance = Hub(work, test_site(data))
    instance.cleanup()
    try:
        instance.start()
        yield instance
    finally:
        if os.environ.get("DESKHUB_KEEP_HUB_LOG"):
            print(instance.log_tail(200))
        instance.cleanup()
