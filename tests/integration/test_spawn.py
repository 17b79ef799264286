"""Spawning through the REST API on the real engine: the container deskhub builds, the
storage it gives, and what bad input gets."""

from __future__ import annotations

import time

import pytest

GiB = 1024**3


@pytest.fixture(scope="module")
def alice(hub):
    hub.ensure_user("alice")
    hub.spawn_ready("alice", {"environment": "desktop"})
    yield "alice"
    hub.stop_server("alice")


def exec_in(container, cmd: str, user: str = "1000:1000") -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", cmd], user=user)
    return result.exit_code, result.output.decode(errors="replace")


def test_container_has_the_expected_spec(hub, alice):
    container = hub.container(alice)
    attrs = container.attrs
    config, host = attrs["Config"], attrs["HostConfig"]
    assert config["Image"] == "deskhub/base:latest"
    assert config["User"] == "1000:1000"
    image_labels = hub.docker.images.get(config["Image"]).labels
    labels = {k: v for k, v in config["Labels"].items() if k not in image_labels}
    assert labels == {
        "deskhub.managed": "true",
        "deskhub.user": "alice",
        "deskhub.server": "",
        "deskhub.environment": "desktop",
        "deskhub.node": "local",
        "deskhub.reserved.cpu": "0.25",
        "deskhub.reserved.memory": str(GiB),
        "deskhub.gpu": "none",
    }
    assert host["DeviceRequests"] is None
    assert host["Memory"] == GiB
    assert host["NanoCpus"] == 250_000_000
    assert host["PidsLimit"] == 2048
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"]
    assert host["Privileged"] is False
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert set(mounts) == {"/home/deskhub", "/data/mx-alice"}
    assert mounts["/home/deskhub"]["Type"] == "volume"
    assert mounts["/home/deskhub"]["Name"] == "deskhubtest-home-alice"
    assert mounts["/data/mx-alice"]["RW"] is False
    assert "/var/run/docker.sock" not in str(attrs["Mounts"])


def test_processes_run_as_the_unprivileged_user(hub, alice):
    code, out = exec_in(hub.container(alice), "id -u; grep NoNewPrivs /proc/1/status")
    assert code == 0
    assert out.split()[0] == "1000"
    assert "NoNewPrivs:\t1" in out


def test_server_answers_through_the_proxy(hub, alice):
    response = hub.user_get(alice, "api/status")
    assert response.status_code == 200, response.text


def test_data_mount_is_read_only_and_holds_only_own_data(hub, alice):
    container = hub.container(alice)
    code, out = exec_in(container, "cat /data/mx-alice/README.txt")
    assert (code, out) == (0, "data of mx-alice\n")
    code, out = exec_in(container, "touch /data/mx-alice/new-file")
    assert code != 0 and "Read-only file system" in out
    # even root inside the container cannot write: the mount itself is read-only
    code, out = exec_in(container, "touch /data/mx-alice/new-file", user="0")
    assert code != 0 and "Read-only file system" in out
    code, out = exec_in(container, "ls -A /data")
    assert out.split() == ["mx-alice"]


def test_group_member_sees_group_data_only(hub):
    hub.ensure_user("bob", groups=("xfm-staff",))
    hub.spawn_ready("bob", {"environment": "xfm"})
    try:
        code, out = exec_in(hub.container("bob"), "ls -A /data; ls /data/mx-alice 2>&1")
        assert out.split()[0] == "xfm-team"
        assert "No such file or directory" in out
    finally:
        hub.stop_server("bob")


def test_home_survives_stop_and_start_and_stop_removes_container(hub):
    hub.ensure_user("carol")
    hub.spawn_ready("carol")
    code, _ = exec_in(hub.container("carol"), "echo kept > ~/notes.txt")
    assert code == 0
    hub.stop_server("carol")
    assert not [c for c in hub.containers() if c.name == "deskhubtest-carol"]
    assert hub.docker.volumes.get("deskhubtest-home-carol").attrs["Labels"] == {
        "deskhub.managed": "true",
        "deskhub.home-of": "carol",
        "deskhub.home-owner": "1000:1000",
    }
    hub.spawn_ready("carol")
    code, out = exec_in(hub.container("carol"), "cat ~/notes.txt")
    assert (code, out) == (0, "kept\n")
    hub.stop_server("carol")


def test_hub_restart_keeps_sessions_and_homes(hub):
    hub.ensure_user("dave")
    hub.spawn_ready("dave")
    exec_in(hub.container("dave"), "echo before-restart > ~/mark.txt")
    container_id = hub.container("dave").id
    hub.restart()
    server = hub.api("GET", "/users/dave").json()["servers"][""]
    assert server["ready"] is True
    assert hub.container("dave").id == container_id
    assert hub.user_get("dave", "api/status").status_code == 200
    state = hub.api("GET", "/users/dave", params={"include_stopped_servers": "1"})
    assert state.ok
    code, out = exec_in(hub.container("dave"), "cat ~/mark.txt")
    assert out == "before-restart\n"
    hub.stop_server("dave")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"environment": "nope"},
            "Unknown environment 'nope'; pick one of: desktop, xfm, ghost, imaging, mx.",
        ),
        ({"environment": 42}, "The environment must be given by its name"),
        ({"environment": "xfm", "image": "evil:latest"}, "Unknown option 'image'"),
    ],
)
def test_bad_user_options_get_400_and_create_nothing(hub, options, message):
    hub.ensure_user("eve")
    before = {c.name for c in hub.containers()}
    response = hub.spawn("eve", options)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    time.sleep(0.5)
    assert {c.name for c in hub.containers()} == before
    assert not hub.api("GET", "/users/eve").json()["servers"]


def test_missing_image_is_a_clear_error_and_creates_nothing(hub):
    hub.ensure_user("frank")
    response = hub.spawn("frank", {"environment": "ghost"})
    assert response.status_code == 503, response.text
    assert response.json()["message"] == (
        "The environment 'Ghost' is not available right now (its image is missing);"
        " please tell your administrator."
    )
    assert not [c for c in hub.containers() if c.name == "deskhubtest-frank"]
    assert not hub.api("GET", "/users/frank").json()["servers"]
    assert "image deskhub/never-built:latest unavailable on local" in hub.log_tail(400)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"environment": "bogus"}, "Unknown environment &#39;bogus&#39;; pick one of:"),
        ({}, "Pick exactly one environment from the list, then press Start."),
        ({"environment": ["xfm", "desktop"]}, "Pick exactly one environment"),
    ],
)
def test_bad_spawn_form_gets_400_on_the_form_page(hub, form, message):
    session = hub.admin_session()
    before = {c.name for c in hub.containers()}
    response = session.post(
        f"{hub.url}/hub/spawn",
        data={**form, "_xsrf": session.cookies.get("_xsrf", path="/hub/")},
        timeout=60,
    )
    assert response.status_code == 400
    assert message in response.text
    assert 'name="environment"' in response.text  # the form is shown again to correct
    assert {c.name for c in hub.containers()} == before
