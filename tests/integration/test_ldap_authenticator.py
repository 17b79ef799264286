"""DeskhubLDAPAuthenticator in-process against a real slapd (no hub, no Docker): the
rules a login and a refresh apply, the fallbacks when the directory or the portal fails,
and that injection attempts never reach the directory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from deskhub.authenticators import ldap
from tests.ldapserver import GROUPS, LDAPServer, User

USERS = [
    User("alice", 10001, ["exp-mx-2026-042", "exp-xfm-2026-007", "exp-../../etc", "staff"]),
    User("bob", 10002),
    User("carol", 10003, ["deskhub-admins"]),
    User("mallory", 10004, ["deskhub-blocked", "exp-mx-2026-042"]),
    User("dave", 10005, shadow_expire=1000),  # 1972
    User("erin", 10006, ["exp-mx-2026-042"], shadow_expire=10**6),  # year 4707
    User("root2", 0),  # uid 0 from the directory is never used
]


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LDAPServer]:
    with LDAPServer(USERS, tmp_path_factory.mktemp("slapd")) as server:
        yield server


def authenticator(directory: LDAPServer, experiments: dict | None = None, **ldap_extra):
    c = Config()
    site = {
        "auth": {
            "type": "ldap",
            "ldap": directory.site_section(**ldap_extra),
            "experiments": experiments or {},
        }
    }
    ldap.configure(c, site, Path("/nonexistent"))
    return ldap.DeskhubLDAPAuthenticator(config=c)


def login(auth, username: str, password: str | None = None) -> dict | None:
    password = f"{username}-pw" if password is None else password
    return asyncio.run(auth.authenticate(None, {"username": username, "password": password}))


class FakeSpawner:
    def __init__(self, active: bool, pending: str | None = None) -> None:
        self.active, self.pending = active, pending
        self._log_name = "fake"


class FakeUser:
    """The few parts of jupyterhub.user.User that refresh_user uses."""

    def __init__(self, name: str, auth_state: dict[str, Any]) -> None:
        self.name = name
        self.auth_state = auth_state
        self.spawners = {"": FakeSpawner(True), "other": FakeSpawner(False)}
        self.stopped: list[str] = []

    async def get_auth_state(self) -> dict[str, Any]:
        return self.auth_state

    async def stop(self, name: str) -> None:
        self.stopped.append(name)


def test_login_gives_the_documented_auth_state(directory, caplog):
    with caplog.at_level(logging.WARNING):
        model = login(authenticator(directory), "alice")
    assert model == {
        "name": "alice",
        "admin": False,
        "auth_state": {
            "experiments": ["mx-2026-042", "xfm-2026-007"],
            "uid": 10001,
            "gid": 10001,
            "groups": ["exp-../../etc", "exp-mx-2026-042", "exp-xfm-2026-007", "staff"],
        },
    }
    assert "experiment id '../../etc' is not allowed" in caplog.text


def test_wrong_or_empty_password_and_unknown_user(directory):
    auth = authenticator(directory)
    assert login(auth, "alice", "wrong") is None
    assert login(auth, "alice", "") is None
    assert login(auth, "nobody", "x") is None


def test_admin_from_group_by_dn_or_cn(directory):
    assert login(authenticator(directory), "carol")["admin"] is True
    assert login(authenticator(directory, admin_group="deskhub-admins"), "carol")["admin"]
    assert login(authenticator(directory), "bob")["admin"] is False


def test_blocked_and_expired_users_are_refused(directory, caplog):
    auth = authenticator(directory)
    with caplog.at_level(logging.WARNING):
        assert login(auth, "mallory") is None
        assert login(auth, "dave") is None
    assert "refused mallory: member of the blocked group" in caplog.text
    assert "refused dave: account expired (shadowExpire)" in caplog.text
    assert login(auth, "erin")["auth_state"]["experiments"] == ["mx-2026-042"]
    # with the expiry check off, dave may log in
    assert login(authenticator(directory, expiry_attribute=""), "dave") is not None


def test_allowed_groups(directory):
    auth = authenticator(directory, allowed_groups=[f"cn=deskhub-admins,{GROUPS}", "staff"])
    assert login(auth, "carol") is not None
    assert login(auth, "alice") is not None
    assert login(auth, "bob") is None


def test_a_root_uid_from_the_directory_is_not_used(directory):
    state = login(authenticator(directory), "root2")["auth_state"]
    assert (state["uid"], state["gid"]) == (None, None)


INJECTIONS = [
    "*",
    "admin)(uid=*",
    "alice)(|(uid=*",
    "al*",
    "alice\\",
    "alice\x00",
    "alice\n",
    "uid=alice,ou=people",
    "(cn=*)",
]


def test_injection_attempts_never_reach_the_directory(directory):
    auth = authenticator(directory)
    before = directory.log_text().count(" ACCEPT ")
    for name in INJECTIONS:
        assert login(auth, name, "anything") is None
    assert directory.log_text().count(" ACCEPT ") == before
    assert login(auth, "alice") is not None  # and the directory was there all along
    assert directory.log_text().count(" ACCEPT ") > before


def test_refresh_follows_group_changes(directory):
    auth = authenticator(directory)
    user = FakeUser("bob", login(auth, "bob")["auth_state"])
    directory.add_to_group("bob", "exp-sim-2026-100")
    try:
        model = asyncio.run(auth.refresh_user(user, None))
        assert model["auth_state"]["experiments"] == ["sim-2026-100"]
        directory.add_to_group("bob", "deskhub-admins")
        assert asyncio.run(auth.refresh_user(user, None))["admin"] is True
    finally:
        directory.remove_from_group("bob", "exp-sim-2026-100")
        directory.remove_from_group("bob", "deskhub-admins")
    assert user.stopped == []


def test_refresh_of_a_blocked_user_stops_their_servers(directory):
    auth = authenticator(directory)
    user = FakeUser("erin", login(auth, "erin")["auth_state"])
    directory.add_to_group("erin", "deskhub-blocked")
    try:
        assert asyncio.run(auth.refresh_user(user, None)) is False
    finally:
        directory.remove_from_group("erin", "deskhub-blocked")
    assert user.stopped == [""]  # the active one only


def test_refresh_of_a_user_gone_from_the_directory(directory):
    state = {"experiments": ["mx-2026-042"], "uid": 10009, "gid": 10009, "groups": []}
    user = FakeUser("ghost", state)
    assert asyncio.run(authenticator(directory).refresh_user(user, None)) is False
    assert user.stopped == [""]


def test_refresh_leaves_accounts_the_directory_never_vouched_for(directory):
    # e.g. a workshop participant: no directory auth_state, not in the directory
    for state in ({}, None):
        user = FakeUser("participant-7", state)
        assert asyncio.run(authenticator(directory).refresh_user(user, None)) is True
        assert user.stopped == []


def test_refresh_keeps_the_state_while_the_directory_is_down(directory):
    auth = authenticator(directory)
    auth.server_port = 9  # nothing listens there
    user = FakeUser("alice", {"experiments": ["mx-2026-042"]})
    assert asyncio.run(auth.refresh_user(user, None)) is True
    assert user.stopped == []
    assert login(auth, "alice") is None  # no login without the directory


def test_a_failing_portal_keeps_the_previous_experiments(directory, caplog):
    portal = {"source": "http", "url": "http://127.0.0.1:9/{username}", "timeout": 1}
    auth = authenticator(directory, experiments=portal)
    assert login(auth, "alice")["auth_state"]["experiments"] == []  # first login: none
    user = FakeUser("alice", {"experiments": ["mx-2026-042", "../bad"]})
    with caplog.at_level(logging.ERROR):
        model = asyncio.run(auth.refresh_user(user, None))
    assert model["auth_state"]["experiments"] == ["mx-2026-042"]
    assert "experiments from http http://127.0.0.1:9/{username} for alice failed" in caplog.text


def test_file_source(directory, tmp_path):
    table = tmp_path / "experiments.csv"
    table.write_text("alice,mx-1\nbob,xfm-2\nbob,../../etc\n")
    auth = authenticator(directory, experiments={"source": "file", "path": str(table)})
    assert login(auth, "bob")["auth_state"]["experiments"] == ["xfm-2"]
    assert login(auth, "carol")["auth_state"]["experiments"] == []


def test_bind_dn_template_instead_of_a_lookup(directory):
    template = "uid={username},ou=people,dc=deskhub,dc=test"
    auth = authenticator(directory, bind_dn_template=template)
    assert auth.lookup_dn is False
    assert login(auth, "alice")["auth_state"]["uid"] == 10001
    assert login(auth, "alice", "wrong") is None


# -- TLS: the server's certificate is checked ----------------------------------------------
@pytest.fixture(scope="module")
def tls_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LDAPServer]:
    with LDAPServer(USERS[:2], tmp_path_factory.mktemp("slapd-tls"), tls=True) as server:
        yield server


def test_starttls_and_ldaps_with_the_sites_ca(tls_directory):
    ca = str(tls_directory.ca_file)
    starttls = authenticator(tls_directory, tls="starttls", server="localhost", ca_file=ca)
    assert login(starttls, "alice")["auth_state"]["uid"] == 10001
    ldaps = authenticator(
        tls_directory, tls="ldaps", server="localhost", port=tls_directory.ldaps_port, ca_file=ca
    )
    assert ldaps.tls_strategy.name == "on_connect"
    assert login(ldaps, "alice")["auth_state"]["uid"] == 10001


def test_an_untrusted_certificate_is_refused(tls_directory, caplog):
    # without ca_file the system's CAs apply, and they do not know the test CA
    auth = authenticator(tls_directory, tls="starttls", server="localhost")
    with caplog.at_level(logging.ERROR):
        assert login(auth, "alice") is None
    assert "the directory failed" in caplog.text
