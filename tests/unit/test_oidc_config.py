"""OpenID Connect login on plain data: claims -> auth_state, the site YAML's ``auth.oidc``
section -> the authenticator's traits, discovery's errors, the client secret's file."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from deskhub.authenticators.oidc import (
    CLASS,
    DeskhubOIDCAuthenticator,
    OIDCConfigError,
    claims_to_auth_state,
    configure,
    discover,
    endpoints,
    experiment_ids,
    is_disabled,
    site_traits,
)
from deskhub.authenticators.secretfile import SecretFileError, read_secret
from deskhub.hub_config.site import SiteConfigError, load_site

LOG = logging.getLogger("test-oidc")
URLS = {
    "authorize_url": "https://id.example.org/auth",
    "token_url": "https://id.example.org/token",
    "userdata_url": "https://id.example.org/userinfo",
}


# -- claims -> auth_state ------------------------------------------------------------------
def test_claims_become_auth_state() -> None:
    claims = {
        "preferred_username": "alice",
        "experiments": ["xfm-2026-007", "mx-2026-042", "mx-2026-042"],
        "uid_number": 10001,
        "gid_number": "10002",
        "groups": ["mx-staff", "exp-mx-2026-042", "mx-staff"],
    }
    assert claims_to_auth_state(claims, log=LOG) == {
        "experiments": ["mx-2026-042", "xfm-2026-007"],
        "uid": 10001,
        "gid": 10002,
        "groups": ["exp-mx-2026-042", "mx-staff"],
    }


def test_experiments_may_be_objects_with_an_id_field() -> None:
    claims = {"proposals": [{"number": "p-1", "title": "A"}, {"number": 42}, {"title": "no id"}]}
    state = claims_to_auth_state(
        claims, experiments_claim="proposals", experiment_id_field="number", log=LOG
    )
    assert state["experiments"] == ["42", "p-1"]
    assert experiment_ids("single-id") == ["single-id"]
    assert experiment_ids(None) == []


def test_crafted_experiment_ids_are_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    claims = {
        "sub": "mallory",
        "experiments": [
            "ok-1",
            "../etc",
            "a/b",
            ".hidden",
            "-rf",
            "x" * 65,
            "",
            True,
            None,
            {"id": ".."},
        ],
    }
    with caplog.at_level(logging.WARNING, logger="test-oidc"):
        state = claims_to_auth_state(claims, log=LOG)
    assert state["experiments"] == ["ok-1"]
    assert "experiment id '../etc' is not allowed" in caplog.text
    assert "experiment id 'a/b' is not allowed" in caplog.text
    assert "'mallory'" in caplog.text


def test_posix_ids_absent_invalid_or_root_are_none() -> None:
    assert claims_to_auth_state({}, log=LOG) == {
        "experiments": [],
        "uid": None,
        "gid": None,
        "groups": [],
    }
    state = claims_to_auth_state({"uid_number": 0, "gid_number": "staff"}, log=LOG)
    assert (state["uid"], state["gid"]) == (None, None)
    state = claims_to_auth_state(
        {"uidNumber": [20001], "gid_number": 5}, uid_claim="uidNumber", gid_claim="", log=LOG
    )
    assert (state["uid"], state["gid"]) == (20001, None)


def test_a_single_group_string_is_one_group() -> None:
    assert claims_to_auth_state({"groups": "mx-staff"}, log=LOG)["groups"] == ["mx-staff"]
    assert claims_to_auth_state({"roles": ["a", 3, ""]}, groups_claim="roles", log=LOG)[
        "groups"
    ] == ["a"]


@pytest.mark.parametrize(
    ("value", "disabled"),
    [
        (True, True),
        ("true", True),
        ("Yes", True),
        (1, True),
        (False, False),
        ("false", False),
        (None, False),
        (0, False),
    ],
)
def test_disabled_claim(value: Any, disabled: bool) -> None:
    assert is_disabled({"disabled": value}, "disabled") is disabled
    assert is_disabled({"disabled": value}, "") is False  # no such claim configured


# -- the authenticator on plain data --------------------------------------------------------
def authenticator(**traits: Any) -> DeskhubOIDCAuthenticator:
    config = Config()
    for name, value in {**URLS, "client_id": "deskhub", "client_secret": "s", **traits}.items():
        setattr(config.DeskhubOIDCAuthenticator, name, value)
    return DeskhubOIDCAuthenticator(config=config)


def test_auth_state_keeps_tokens_userinfo_and_deskhubs_keys() -> None:
    auth = authenticator(admin_groups={"deskhub-admins"})
    userinfo = {"preferred_username": "alice", "groups": ["deskhub-admins"], "experiments": ["e-1"]}
    state = asyncio.run(
        auth.build_auth_state_dict({"access_token": "t", "refresh_token": "r"}, userinfo)
    )
    assert state["access_token"] == "t" and state["refresh_token"] == "r"
    assert state["oauth_user"] == userinfo
    assert state["experiments"] == ["e-1"] and state["groups"] == ["deskhub-admins"]
    # oauthenticator's own group handling reads deskhub's "groups" key
    assert asyncio.run(auth.get_user_groups(state)) == {"deskhub-admins"}
    assert auth.manage_groups is True
    assert auth.username_claim == "preferred_username"
    assert auth.user_info_to_username(userinfo) == "alice"


def test_blocked_and_disabled_users_cannot_log_in() -> None:
    auth = authenticator(blocked_users={"eve"}, disabled_claim="account_disabled")

    def model(**claims: Any) -> dict[str, Any]:
        return {"name": "x", "auth_state": {"oauth_user": claims}}

    assert auth.check_blocked_users("alice", model()) is True
    assert auth.check_blocked_users("eve", model()) is False
    assert auth.check_blocked_users("dave", model(account_disabled=True)) is False
    assert auth.check_blocked_users("dave", model(account_disabled="false")) is True


# -- site section -> traits -----------------------------------------------------------------
def test_a_minimal_section() -> None:
    section = {
        "issuer": "https://id.example.org",
        "client_id": "deskhub",
        "client_secret_file": "/s",
    }
    traits = site_traits(section, "https://desk.example.org:8000/", URLS, "secret")
    assert traits == {
        **URLS,
        "client_id": "deskhub",
        "client_secret": "secret",
        "oauth_callback_url": "https://desk.example.org:8000/hub/oauth_callback",
        "scope": ["openid", "profile", "email"],
        "login_service": "OpenID Connect",
        "manage_groups": True,
        "admin_groups": set(),
        "allowed_groups": set(),
        "blocked_users": set(),
        "allow_all": True,
        "auto_login": False,
    }


def test_a_full_section() -> None:
    section = {
        "client_id": "deskhub",
        "callback_url": "https://desk.example.org/hub/oauth_callback",
        "scopes": ["openid", "profile", "groups", "proposals"],
        "login_service": "Facility account",
        "auto_login": True,
        "ca_file": "/etc/deskhub/ca.pem",
        "claims": {
            "username": "uid",
            "groups": "memberOf",
            "experiments": "proposals",
            "experiment_id": "number",
            "uid": "uidNumber",
            "gid": "gidNumber",
            "disabled": "locked",
        },
        "admin_groups": ["deskhub-admins"],
        "allowed_groups": ["staff", "users"],
        "blocked_users": ["eve"],
    }
    traits = site_traits(section, "http://ignored", URLS, "secret")
    assert traits["oauth_callback_url"] == "https://desk.example.org/hub/oauth_callback"
    assert traits["allow_all"] is False and traits["allowed_groups"] == {"staff", "users"}
    assert traits["admin_groups"] == {"deskhub-admins"} and traits["blocked_users"] == {"eve"}
    assert traits["http_request_kwargs"] == {"ca_certs": "/etc/deskhub/ca.pem"}
    assert {k: traits[k] for k in ("username_claim", "groups_claim", "experiments_claim")} == {
        "username_claim": "uid",
        "groups_claim": "memberOf",
        "experiments_claim": "proposals",
    }
    assert (traits["experiment_id_field"], traits["uid_claim"], traits["gid_claim"]) == (
        "number",
        "uidNumber",
        "gidNumber",
    )
    assert traits["disabled_claim"] == "locked"
    # every trait it sets exists on the authenticator and takes the value
    auth = authenticator(**{k: v for k, v in traits.items() if k not in URLS})
    assert auth.allowed_groups == {"staff", "users"} and auth.disabled_claim == "locked"


def test_explicit_urls_win_over_discovery() -> None:
    document = {
        "authorization_endpoint": "https://id/a",
        "token_endpoint": "https://id/t",
        "userinfo_endpoint": "https://id/u",
    }
    assert endpoints({"issuer": "https://id"}, document) == {
        "authorize_url": "https://id/a",
        "token_url": "https://id/t",
        "userdata_url": "https://id/u",
    }
    assert endpoints({"token_url": "https://other/t"}, document)["token_url"] == "https://other/t"
    with pytest.raises(OIDCConfigError, match="no userdata_url in auth.oidc"):
        endpoints({"authorize_url": "https://a", "token_url": "https://t"}, None)


# -- discovery against a real (tiny) HTTP server ----------------------------------------------
@pytest.fixture
def served() -> Iterator[tuple[str, dict[str, Any]]]:
    """An HTTP server on a loopback port that answers discovery with ``document``."""
    document: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path != "/.well-known/openid-configuration":
                self.send_error(404)
                return
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", document
    finally:
        server.shutdown()
        server.server_close()


def test_discovery_reads_the_document(served: tuple[str, dict[str, Any]]) -> None:
    issuer, document = served
    document.update(
        issuer=issuer,
        authorization_endpoint=f"{issuer}/auth",
        token_endpoint=f"{issuer}/token",
        userinfo_endpoint=f"{issuer}/me",
    )
    assert endpoints({"issuer": issuer}, discover(issuer + "/"))["userdata_url"] == f"{issuer}/me"


def test_discovery_refuses_another_issuer(served: tuple[str, dict[str, Any]]) -> None:
    issuer, document = served
    document.update(issuer="https://evil.example.org")
    with pytest.raises(
        OIDCConfigError,
        match=f"{issuer}/.well-known/openid-configuration names issuer 'https://evil.example.org'",
    ):
        discover(issuer)


def test_discovery_errors_name_the_url(served: tuple[str, dict[str, Any]]) -> None:
    issuer, _ = served
    with pytest.raises(
        OIDCConfigError,
        match=f"discovery {issuer}/sub/.well-known/openid-configuration answered HTTP 404",
    ):
        discover(issuer + "/sub")
    closed = issuer.rsplit(":", 1)[0] + ":1"
    with pytest.raises(
        OIDCConfigError, match=f"discovery {closed}/.well-known/openid-configuration is unreachable"
    ):
        discover(closed, timeout=3)


# -- the client secret's file ---------------------------------------------------------------
def test_client_secret_comes_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    warnings: list[str] = []
    what = "auth.oidc.client_secret_file"
    assert read_secret(str(path), what, warn=warnings.append) == "s3cret"
    assert warnings == []
    path.chmod(0o644)
    read_secret(str(path), what, warn=warnings.append)
    assert "readable by others" in warnings[0]
    with pytest.raises(
        SecretFileError, match="client_secret_file .*/missing: cannot read it \\(No such file"
    ):
        read_secret(str(tmp_path / "missing"), what)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret(str(tmp_path / "empty"), what)


# -- the whole of configure, and the schema -------------------------------------------------
def write_site(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_configure_with_explicit_urls(tmp_path: Path) -> None:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    site = load_site(
        write_site(
            tmp_path,
            f"""
            hub: {{bind_url: "https://desk.example.org"}}
            auth:
              type: oidc
              oidc:
                authorize_url: https://id.example.org/auth
                token_url: https://id.example.org/token
                userinfo_url: https://id.example.org/userinfo
                client_id: deskhub
                client_secret_file: {secret}
                admin_groups: [deskhub-admins]
            """,
        )
    )
    c = Config()
    configure(c, site, tmp_path)
    assert c.JupyterHub.authenticator_class == CLASS
    auth = DeskhubOIDCAuthenticator(config=c)
    assert auth.client_secret == "s3cret"
    assert auth.oauth_callback_url == "https://desk.example.org/hub/oauth_callback"
    assert auth.userdata_url == "https://id.example.org/userinfo"
    assert auth.admin_groups == {"deskhub-admins"}


def test_configure_stops_with_one_line_when_discovery_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "s"
    secret.write_text("x")
    site = {
        "hub": {"bind_url": "http://127.0.0.1:8000"},
        "auth": {
            "oidc": {
                "issuer": "http://127.0.0.1:1",
                "client_id": "d",
                "client_secret_file": str(secret),
            }
        },
    }
    with pytest.raises(SystemExit) as stopped:
        configure(Config(), site, tmp_path)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "http://127.0.0.1:1/.well-known/openid-configuration is unreachable" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "auth: {type: oidc, oidc: {client_id: d, client_secret_file: /s, client_secret: x}}",
            "auth.oidc.client_secret",
        ),
        ("auth: {type: oidc, oidc: {client_id: d}}", "'client_secret_file' is a required property"),
        (
            "auth: {type: oidc, oidc: {client_id: d, client_secret_file: s}}",
            "auth.oidc.client_secret_file",
        ),
        (
            "auth: {type: oidc, oidc: {client_id: d, client_secret_file: /s,"
            " claims: {experiment: e}}}",
            "auth.oidc.claims.experiment",
        ),
        (
            "auth: {type: oidc, oidc: {client_id: d, client_secret_file: /s, scopes: [open id]}}",
            "auth.oidc.scopes.0",
        ),
    ],
)
def test_schema_names_the_wrong_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SiteConfigError, match=message):
        load_site(write_site(tmp_path, text))


# -- experiments from a source other than the claim (auth.experiments) -----------------------
def test_a_configured_source_gives_the_experiments_instead_of_the_claim(tmp_path: Path) -> None:
    table = tmp_path / "experiments.yaml"
    table.write_text("alice: [mx-2026-042, ../etc]\n")
    auth = authenticator(experiment_source={"source": "file", "path": str(table)})
    userinfo = {"preferred_username": "alice", "experiments": ["from-claim"]}
    state = asyncio.run(auth.build_auth_state_dict({"access_token": "t"}, userinfo))
    assert state["experiments"] == ["mx-2026-042"]
    # the file becomes unreadable: the next refresh keeps what the source said last
    table.chmod(0)
    table.rename(tmp_path / "gone.yaml")
    state = asyncio.run(auth.build_auth_state_dict({"access_token": "t"}, userinfo))
    assert state["experiments"] == ["mx-2026-042"]


def test_group_patterns_work_on_the_groups_claim() -> None:
    auth = authenticator(experiment_source={"source": "ldap-groups", "pattern": "^exp-(?P<id>.+)$"})
    userinfo = {"preferred_username": "bob", "groups": ["exp-xfm-7", "staff", "exp-../x"]}
    state = asyncio.run(auth.build_auth_state_dict({"access_token": "t"}, userinfo))
    assert state["experiments"] == ["xfm-7"]


class AccountWithoutLogin:
    """A hub user the provider never signed in (a workshop participant): no auth_state."""

    name = "intro-ann"
    spawners: dict = {}

    async def get_auth_state(self) -> None:
        return None


def test_an_account_the_provider_never_signed_in_is_not_refreshed_or_refused() -> None:
    auth = authenticator()
    assert asyncio.run(auth.refresh_user(AccountWithoutLogin())) is True
