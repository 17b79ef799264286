"""An environment is described by its image: on a running hub, with no restart and no config
change, a newly built image with deskhub labels is offered (REST API, spawn page) and
spawns; an image with a broken label gives admins a clear warning and the hub keeps
serving. Only the images built here are removed afterwards."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
import requests
from markupsafe import escape

from tests.harness import Hub

SUFFIX = uuid.uuid4().hex[:8]
GOOD_NAME, BAD_NAME = f"itest-{SUFFIX}", f"itest-broken-{SUFFIX}"
GOOD_TAG = f"deskhub/test-labelled-{SUFFIX}:latest"
BAD_TAG = f"deskhub/test-broken-{SUFFIX}:latest"
TITLE = f"Labelled test environment {SUFFIX}"
BROKEN_WARNING = (
    f"image {BAD_TAG}: label deskhub.needs.memory='lots' is not a memory size (e.g. 4G);"
    " the environment is not offered"
)
WAIT = 60  # seconds: the watcher polls every 3 s (slower while the engine is busy)


@pytest.fixture(scope="module")
def build_image(docker_client) -> Iterator[Callable[[str, str], None]]:
    """Build ``FROM deskhub/base:latest`` plus LABEL lines (classic builder: a second);
    remove every image built here at the end."""
    engine = docker.APIClient(version="auto", timeout=120)
    built: list[str] = []

    def build(tag: str, labels: str) -> None:
        dockerfile = f"FROM deskhub/base:latest\nLABEL {labels}\n".encode()
        built.append(tag)
        for line in engine.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, decode=True):
            assert "error" not in line, line
        assert engine.inspect_image(tag)

    yield build
    for tag in built:
        with contextlib.suppress(docker.errors.NotFound):
            engine.remove_image(tag, force=True)
    engine.close()


def catalogue(hub: Hub) -> dict[str, Any]:
    response = hub.api("GET", "/environments")
    response.raise_for_status()
    return response.json()


def entry(hub: Hub, name: str) -> dict[str, Any] | None:
    return next((e for e in catalogue(hub)["environments"] if e["name"] == name), None)


def wait_for(condition: Callable[[], Any], what: str, hub: Hub) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    nodes = [
        {k: node[k] for k in ("name", "reachable", "error", "polled_seconds_ago")}
        for node in hub.api("GET", "/nodes").json()
    ]
    raise AssertionError(f"{what} not seen in {WAIT} s (nodes: {nodes}):\n{hub.log_tail(40)}")


def test_a_labelled_image_is_offered_and_spawns_without_a_restart(hub, build_image):
    pid = hub.proc.pid
    sources = {e["name"]: e["source"] for e in catalogue(hub)["environments"]}
    assert sources["ghost"] == "site"  # a site entry whose image exists nowhere still counts
    # desktop and xfm: from the site alone, or merged once base and xfm carry their labels
    assert sources["desktop"] in ("site", "image+site") and GOOD_NAME not in sources

    build_image(
        GOOD_TAG,
        f'deskhub.environment.name="{GOOD_NAME}" deskhub.title="{TITLE}"'
        ' deskhub.description="Built by the catalogue test"'
        ' deskhub.needs.cpu="0.25" deskhub.needs.memory="1G"'
        """ deskhub.apps='[{"name": "Terminal", "exec": "mate-terminal"}]'""",
    )
    found = wait_for(lambda: entry(hub, GOOD_NAME), "the labelled image's environment", hub)
    assert found == {
        "name": GOOD_NAME,
        "title": TITLE,
        "description": "Built by the catalogue test",
        "image": GOOD_TAG,
        "icon": found["icon"],  # whatever the base image's labels say, inherited
        "needs": {"cpu": 0.25, "memory": "1G"},
        "needs_text": "0.25 CPUs, 1 GiB memory",
        "apps": [{"name": "Terminal", "exec": "mate-terminal", "gpu": False}],
        "virtualgl": found["virtualgl"],
        "default": False,
        "hidden": False,
        "source": "image",
        "nodes": ["local"],
    }

    form = hub.admin_session().get(f"{hub.url}/hub/spawn", timeout=60)
    assert form.status_code == 200
    assert TITLE in form.text and f'value="{GOOD_NAME}"' in form.text

    hub.ensure_user("lena")
    hub.spawn_ready("lena", {"environment": GOOD_NAME})
    try:
        container = hub.container("lena")
        assert container.attrs["Config"]["Image"] == GOOD_TAG
        # the spawner's container label wins over anything the image brings
        assert container.labels["deskhub.environment"] == GOOD_NAME
        assert container.labels["deskhub.reserved.cpu"] == "0.25"
        assert container.attrs["HostConfig"]["Memory"] == 1024**3
        # the desktop's launchers come from the catalogue's apps
        apps = 'DESKHUB_APPS=[{"name":"Terminal","exec":"mate-terminal","gpu":false}]'
        assert apps in container.attrs["Config"]["Env"]
    finally:
        hub.stop_server("lena")
    assert hub.proc.pid == pid and hub.proc.poll() is None  # never restarted


def test_a_broken_label_warns_admins_and_the_hub_keeps_serving(hub, build_image):
    build_image(
        BAD_TAG,
        f'deskhub.environment.name="{BAD_NAME}" deskhub.title="Broken {SUFFIX}"'
        ' deskhub.needs.memory="lots"',
    )
    wait_for(
        lambda: BROKEN_WARNING in catalogue(hub)["warnings"], "the broken label's warning", hub
    )
    assert entry(hub, BAD_NAME) is None

    admin = hub.admin_session()
    page = admin.get(f"{hub.url}/hub/nodes", timeout=60)
    assert page.status_code == 200
    assert "Environment warnings" in page.text
    assert str(escape(BROKEN_WARNING)) in page.text

    # users are refused it in one sentence; everything else works as before
    hub.ensure_user("mia")
    refused = hub.spawn("mia", {"environment": BAD_NAME})
    assert refused.status_code == 400
    assert f"Unknown environment '{BAD_NAME}'" in refused.json()["message"]
    form = admin.get(f"{hub.url}/hub/spawn", timeout=60)
    assert form.status_code == 200 and f"Broken {SUFFIX}" not in form.text
    assert hub.api("GET", "/nodes").json()[0]["reachable"] is True

    # the catalogue and its warnings are for those who may read servers, not every user
    token = hub.api("POST", "/users/mia/tokens", json={"note": "test"}).json()["token"]
    plain = requests.get(
        f"{hub.url}/hub/api/environments", headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert plain.status_code == 403

    # logged once, not at every poll
    time.sleep(7)
    log = hub.log_path.read_text(errors="replace")
    assert log.count(f"environment warning: {BROKEN_WARNING}") == 1

    # fixing it (here: removing the image) clears the warning, still without a restart
    docker.APIClient(version="auto").remove_image(BAD_TAG, force=True)
    wait_for(lambda: BROKEN_WARNING not in catalogue(hub)["warnings"], "the warning's end", hub)
