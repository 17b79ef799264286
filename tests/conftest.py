"""Fixtures shared by the integration and browser tests: a real deskhub on the local engine."""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from tests.harness import Hub, example_site, make_data

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


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("hub")
    data = make_data(work / "data")
    instance = Hub(work, example_site(data))
    instance.cleanup()
    try:
        instance.start()
        yield instance
    finally:
        if os.environ.get("DESKHUB_KEEP_HUB_LOG"):
            print(instance.log_tail(200))
        instance.cleanup()
