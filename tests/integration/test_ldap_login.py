"""Facility login through a real hub and a real slapd: the login form, auth_state read
back through the REST API, admins and blocked users from directory groups, injection
attempts, and experiments that follow group changes into the session's /data."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import running
from tests.harness import Hub
from tests.ldapserver import LDAPServer, User

EXP_A, EXP_B, EXP_NEW = "mx-2026-042", "xfm-2026-007", "sim-2026-100"
USERS = [
    User("alice", 10001, [f"exp-{EXP_A}", f"exp-{EXP_B}", "exp-../../etc", "staff"]),
    User("bob", 10002, ["staff"]),
    User("carol", 10003, ["deskhub-admins"]),
    User("mallory", 10004, ["deskhub-blocked", f"exp-{EXP_A}"]),
    User("dave", 10005, shadow_expire=1000),
    User("frank", 10006, [f"exp-{EXP_A}"]),
]
# (a NUL never gets this far: tornado strips control characters from form arguments; the
# authenticator's own refusal of it is tested in test_ldap_authenticator.py)
INJECTIONS = ["*", "admin)(uid=*", "alice)(|(uid=*", "al*", "alice\\2a", "(cn=*)", "x,ou=y"]


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LDAPServer]:
    with LDAPServer(USERS, tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facility")
    root.chmod(0o755)
    for experiment in (EXP_A, EXP_B, EXP_NEW):
        for area in ("raw", "processed"):
            folder = root / area / experiment
            folder.mkdir(parents=True)
            folder.parent.chmod(0o755)
            folder.chmod(0o755)
        (root / "raw" / experiment / "scan.txt").write_text(f"{experiment}\n")
        (root / "raw" / experiment / "scan.txt").chmod(0o644)
        os.chown(root / "processed" / experiment, 10001, 10001)
    return root


@pytest.fixture(scope="module")
def ldap_hub(tmp_path_factory, directory: LDAPServer, data_root: Path, docker_client):
    site = {
        "auth": {
            "type": "ldap",
            # a cookie-authenticated request refreshes after 2 s (a spawn: always)
            "refresh_age": 2,
            "ldap": directory.site_section(),
            "experiments": {"source": "ldap-groups", "pattern": "^exp-(?P<id>.+)$"},
        },
        "environments": {
            "desktop": {
                "title": "MATE desktop",
                "image": "deskhub/base:latest",
                "default": True,
                "needs": {"cpu": 0.25, "memory": "1G"},
            },
            "xfm": {"hidden": True},
        },
        "data": {"root": str(data_root / "raw"), "processed_root": str(data_root / "processed")},
        "sessions": {"idle_timeout": 0, "start_timeout": 120},
    }
    hub = Hub(
        tmp_path_factory.mktemp("ldap-hub"), site, prefix="deskhubldap", network="deskhub-ldap"
    )
    with running(hub) as instance:
        yield instance


def login(hub: Hub, username: str, password: str | None = None) -> requests.Response:
    """POST the hub's login form like a browser; the response (302 on success) carries
    the session cookie in ``response.session``."""
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=30)
    response = session.post(
        f"{hub.url}/hub/login",
        data={
            "username": username,
            "password": f"{username}-pw" if password is None else password,
            "_xsrf": session.cookies.get("_xsrf"),
        },
        allow_redirects=False,
        timeout=30,
    )
    response.session = session  # type: ignore[attr-defined]
    return response


def user_model(hub: Hub, name: str) -> dict:
    response = hub.api("GET", f"/users/{name}")
    response.raise_for_status()
    return response.json()


def refused(response: requests.Response) -> bool:
    return response.status_code == 403 and "Invalid username or password" in response.text


def test_good_login(ldap_hub):
    response = login(ldap_hub, "bob")
    assert response.status_code == 302, response.text
    home = response.session.get(f"{ldap_hub.url}/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 200


def test_wrong_password_is_refused_with_a_clear_message(ldap_hub):
    assert refused(login(ldap_hub, "bob", "not-bobs-password"))
    assert refused(login(ldap_hub, "nobody", "whatever"))


def test_user_with_no_experiments(ldap_hub):
    assert login(ldap_hub, "bob").status_code == 302
    model = user_model(ldap_hub, "bob")
    assert model["auth_state"] == {
        "experiments": [],
        "uid": 10002,
        "gid": 10002,
        "groups": ["staff"],
    }
    assert model["admin"] is False


def test_user_in_two_experiments(ldap_hub):
    assert login(ldap_hub, "alice").status_code == 302
    state = user_model(ldap_hub, "alice")["auth_state"]
    assert state["experiments"] == [EXP_A, EXP_B]
    assert (state["uid"], state["gid"]) == (10001, 10001)
    # the group that would name "../../etc" is listed, its experiment refused and logged
    assert "exp-../../etc" in state["groups"]
    assert "experiment id '../../etc' is not allowed" in ldap_hub.log_tail(400)


def test_admin_from_the_directory_group(ldap_hub):
    assert login(ldap_hub, "carol").status_code == 302
    assert user_model(ldap_hub, "carol")["admin"] is True


def test_blocked_and_expired_users_are_refused(ldap_hub):
    assert refused(login(ldap_hub, "mallory"))
    assert refused(login(ldap_hub, "dave"))
    log = ldap_hub.log_tail(400)
    assert "refused mallory: member of the blocked group deskhub-blocked" in log
    assert "refused dave: account expired" in log
    assert ldap_hub.api("GET", "/users/mallory").status_code == 404


def test_injection_usernames_are_refused_before_any_ldap_query(ldap_hub, directory):
    accepted = directory.log_text().count(" ACCEPT ")
    for name in INJECTIONS:
        assert refused(login(ldap_hub, name, "anything")), name
    assert directory.log_text().count(" ACCEPT ") == accepted
    assert ldap_hub.log_tail(400).count("not a valid username") >= len(INJECTIONS)


def test_a_group_change_is_picked_up_at_the_next_spawn_without_logging_out(ldap_hub, directory):
    response = login(ldap_hub, "frank")
    assert response.status_code == 302
    assert user_model(ldap_hub, "frank")["auth_state"]["experiments"] == [EXP_A]
    directory.add_to_group("frank", f"exp-{EXP_NEW}")
    # a spawn refreshes first (refresh_pre_spawn); this one is then refused for its
    # unknown environment, so no container is made
    spawn = ldap_hub.spawn("frank", {"environment": "no-such-environment"})
    assert spawn.status_code == 400, spawn.text
    assert user_model(ldap_hub, "frank")["auth_state"]["experiments"] == [EXP_A, EXP_NEW]
    # frank's browser session is still logged in
    home = response.session.get(f"{ldap_hub.url}/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 200


# -- one real session: /data follows the directory --------------------------------------
def exec_as_user(container, cmd: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", cmd], user=container.attrs["Config"]["User"])
    return result.exit_code, result.output.decode(errors="replace")


def test_sessions_mount_the_experiments_and_follow_the_directory(ldap_hub, directory):
    browser = login(ldap_hub, "alice")
    assert browser.status_code == 302
    ldap_hub.spawn_ready("alice", {"environment": "desktop"})
    container = ldap_hub.container("alice")
    assert container.attrs["Config"]["User"] == "10001:10001"
    code, out = exec_as_user(container, "id -u; ls /data; cat /data/*/scan.txt")
    assert code == 0, out
    assert out.split() == ["10001", EXP_A, EXP_B, EXP_A, EXP_B]
    code, out = exec_as_user(container, f"touch /data/{EXP_A}/mine")
    assert code != 0 and "Read-only file system" in out, out
    code, out = exec_as_user(container, f"echo fit > /processed/{EXP_A}/fit.txt && ls /processed")
    assert code == 0 and out.split() == [EXP_A, EXP_B], out

    # added to a third experiment: the next spawn has it, no new login
    directory.add_to_group("alice", f"exp-{EXP_NEW}")
    ldap_hub.stop_server("alice")
    ldap_hub.spawn_ready("alice", {"environment": "desktop"})
    code, out = exec_as_user(ldap_hub.container("alice"), "ls /data")
    assert code == 0 and out.split() == sorted([EXP_A, EXP_B, EXP_NEW]), out
    home = browser.session.get(f"{ldap_hub.url}/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 200

    # blocked now: her next request after refresh_age refreshes, ends the session and
    # sends her to the login page, where she is refused
    directory.add_to_group("alice", "deskhub-blocked")
    time.sleep(2.5)
    home = browser.session.get(f"{ldap_hub.url}/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 302 and "/hub/login" in home.headers["Location"]
    deadline = time.monotonic() + 30
    while ldap_hub.containers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ldap_hub.containers() == []
    assert user_model(ldap_hub, "alice")["servers"] == {}
    assert refused(login(ldap_hub, "alice"))
    assert re.search(r"stopping .*alice.*: its user may no longer log in", ldap_hub.log_tail(400))
