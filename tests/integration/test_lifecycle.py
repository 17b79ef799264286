"""What the user reads while a session starts, and what happens to idle sessions."""

from __future__ import annotations

import json
import time

import requests

from tests.harness import Hub, example_site, make_data


def read_progress(hub: Hub, user: str) -> list[dict]:
    """The spawn's progress events, as the spawn page's event stream delivers them."""
    events = []
    with requests.get(
        f"{hub.url}/hub/api/users/{user}/server/progress",
        headers={"Authorization": f"token {hub.token}"},
        stream=True,
        timeout=120,
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                events.append(event)
                if event.get("ready") or event.get("failed"):
                    break
    return events


def test_progress_says_where_and_why(hub):
    hub.ensure_user("grace")
    assert hub.spawn("grace", {"environment": "xfm"}).status_code in (201, 202)
    events = read_progress(hub, "grace")
    messages = [event.get("message", "") for event in events]
    hub.wait_ready("grace")
    hub.stop_server("grace")
    text = "\n".join(messages)
    assert "Starting XFM: looking for a compute node with 0.25 CPUs, 1 GiB memory" in text
    assert "Placed on local: " in text and "image already there" in text
    assert "Starting the desktop container" in text
    assert events[-1].get("ready") is True


def test_idle_sessions_are_culled_and_homes_kept(tmp_path, docker_client):
    site = example_site(make_data(tmp_path / "data"))
    site["sessions"]["idle_timeout"] = 10  # the culler looks every 5 s
    hub = Hub(tmp_path, site, prefix="deskhubcull", network="deskhub-cull")
    hub.cleanup()
    try:
        hub.start()
        hub.ensure_user("idle")
        hub.spawn_ready("idle")
        hub.container("idle").exec_run(["sh", "-c", "echo still-here > ~/kept.txt"])
        deadline = time.monotonic() + 120
        while hub.api("GET", "/users/idle").json()["servers"] and time.monotonic() < deadline:
            time.sleep(2)
        assert not hub.api("GET", "/users/idle").json()["servers"], "idle session not culled"
        assert "Culling server idle (inactive for" in hub.log_tail(2000)
        assert not hub.containers()
        hub.spawn_ready("idle")
        result = hub.container("idle").exec_run(["cat", "/home/deskhub/kept.txt"])
        assert result.output == b"still-here\n"
        hub.stop_server("idle")
    finally:
        hub.cleanup()


def test_site_typo_stops_the_hub_with_a_message_naming_the_key(tmp_path, docker_client):
    site = example_site(make_data(tmp_path / "data"))
    site["sessions"]["idle_timout"] = 60
    hub = Hub(tmp_path, site, prefix="deskhubtypo", network="deskhub-typo")
    try:
        hub.start(timeout=30)
    except RuntimeError:
        pass
    else:
        hub.cleanup()
        raise AssertionError("the hub started with a misspelt setting")
    log = hub.log_path.read_text()
    assert (
        f"deskhub: site configuration error: {hub.site_path}: 'sessions.idle_timout' is not a"
        " known setting (check its spelling and indentation)"
    ) in log
    assert "Traceback" not in log
    assert hub.proc is not None and hub.proc.returncode == 2


def test_the_login_form_refuses_a_wrong_password_and_takes_the_right_one(hub):
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=30)
    form = {"username": "admin", "_xsrf": session.cookies.get("_xsrf")}
    wrong = session.post(
        f"{hub.url}/hub/login",
        data={**form, "password": hub.admin_password + "x"},
        allow_redirects=False,
        timeout=30,
    )
    assert wrong.status_code == 200 and "Invalid username or password" in wrong.text
    right = session.post(
        f"{hub.url}/hub/login",
        data={**form, "password": hub.admin_password},
        allow_redirects=False,
        timeout=30,
    )
    assert right.status_code == 302
