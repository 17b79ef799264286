"""Experiment data that follows the login: the experiments in a user's auth_state are
mounted (data read-only, processed writable), nothing else is, and the session runs as the
directory's uid, so what it writes belongs to the user on the host too.

The auth_state is written through the REST API (``admin:auth_state``), as a facility login
(LDAP, OIDC; tested on their own) stores it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import running
from tests.harness import Hub, example_site

UID, GID, EXPERIMENT_GID = 20001, 20001, 40042
USER = "dana"


def exec_in(container, cmd: str, user: str = f"{UID}:{GID}") -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", cmd], user=user)
    return result.exit_code, result.output.decode(errors="replace")


@pytest.fixture(scope="module")
def site_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facility")
    root.chmod(0o755)
    for experiment in ("exp-a", "exp-b", "exp-c"):
        folder = root / "raw" / experiment
        folder.mkdir(parents=True)
        (folder / "scan.txt").write_text(f"{experiment}\n")
        for path in (folder, folder.parent):
            path.chmod(0o755)
        (folder / "scan.txt").chmod(0o644)
    # exp-a has a processed area owned by its group (setgid, members only); exp-b has none
    processed = root / "processed" / "exp-a"
    processed.mkdir(parents=True)
    processed.parent.chmod(0o755)
    os.chown(processed, 0, EXPERIMENT_GID)
    processed.chmod(0o2770)
    return root


@pytest.fixture(scope="module")
def data_hub(tmp_path_factory, site_data: Path, docker_client) -> Iterator[Hub]:
    site = example_site(site_data / "static")
    site["data"] = {
        "root": str(site_data / "raw"),
        "processed_root": str(site_data / "processed"),
        "experiments": {},
    }
    hub = Hub(
        tmp_path_factory.mktemp("data-hub"), site, prefix="deskhubdata", network="deskhub-data"
    )
    with running(hub) as instance:
        yield instance


def set_auth_state(hub: Hub, user: str, state: dict) -> None:
    hub.ensure_user(user)
    hub.api("PATCH", f"/users/{user}", json={"auth_state": state}).raise_for_status()


@pytest.fixture(scope="module")
def dana(data_hub: Hub):
    set_auth_state(
        data_hub,
        USER,
        {"experiments": ["exp-a", "exp-b", "../raw/exp-c"], "uid": UID, "gid": GID},
    )
    data_hub.spawn_ready(USER, {"environment": "desktop"})
    yield data_hub.container(USER)
    data_hub.stop_server(USER)


def test_only_the_logins_experiments_are_mounted(dana, data_hub):
    code, out = exec_in(dana, "ls /data; echo --; ls /processed; echo --; cat /data/*/scan.txt")
    assert code == 0, out
    assert out.split("--") == ["exp-a\nexp-b\n", "\nexp-a\n", "\nexp-a\nexp-b\n"]
    assert "refused" not in out
    assert "experiment id '../raw/exp-c' is not allowed" in data_hub.log_tail(400)


def test_data_is_read_only_even_for_root(dana):
    for user in (f"{UID}:{GID}", "0:0"):
        code, out = exec_in(dana, "touch /data/exp-a/mine", user=user)
        assert code != 0 and "Read-only file system" in out, (user, out)


def test_files_written_belong_to_the_users_uid_inside_and_on_the_host(dana, site_data, data_hub):
    code, out = exec_in(
        dana, "id -u; id -G; echo result > /processed/exp-a/fit.txt; echo notes > ~/notes.txt"
    )
    assert code == 0, out
    uid, groups = out.splitlines()[:2]
    assert uid == str(UID) and str(EXPERIMENT_GID) in groups.split()
    written = site_data / "processed" / "exp-a" / "fit.txt"
    assert (written.stat().st_uid, written.stat().st_gid) == (UID, EXPERIMENT_GID)
    volume = data_hub.docker.volumes.get(f"{data_hub.prefix}-home-{USER}")
    home = Path(volume.attrs["Mountpoint"])
    assert (home / "notes.txt").stat().st_uid == UID
    assert home.stat().st_uid == UID
    # the session runs as that uid, never root
    assert dana.attrs["Config"]["User"] == f"{UID}:{GID}"


def test_the_desktop_starts_as_the_directorys_uid(dana, data_hub):
    """noVNC's websocket gets the VNC server's greeting: Xvnc and MATE run as uid 20001."""

    async def greeting() -> bytes:
        request = HTTPRequest(
            f"{data_hub.url.replace('http', 'ws')}/user/{USER}/desktop-websockify/",
            headers={"Authorization": f"token {data_hub.token}"},
            request_timeout=60,
        )
        connection = await websocket_connect(request, subprotocols=["binary"])
        try:
            return await asyncio.wait_for(connection.read_message(), 60)
        finally:
            connection.close()

    assert asyncio.run(greeting()).startswith(b"RFB 003.00")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code, out = exec_in(dana, f"ps -o comm= -u {UID}")
        if {"Xtigervnc", "mate-session"} <= set(out.split()):
            break
        time.sleep(1)
    assert {"Xtigervnc", "mate-session"} <= set(out.split()), out
    code, out = exec_in(dana, "ps -o user=,comm= -C Xtigervnc,mate-session")
    assert {line.split()[0] for line in out.splitlines()} == {str(UID)}, out


def test_a_later_login_with_other_experiments_changes_the_mounts(data_hub, dana):
    data_hub.stop_server(USER)
    set_auth_state(data_hub, USER, {"experiments": ["exp-c"], "uid": UID, "gid": GID})
    data_hub.spawn_ready(USER, {"environment": "desktop"})
    code, out = exec_in(data_hub.container(USER), "ls /data; ls /processed 2>&1 | wc -l")
    assert code == 0 and out.split() == ["exp-c", "1"], out
