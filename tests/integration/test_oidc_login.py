"""OpenID Connect login against a real provider (oidc-provider, tests/oidcprovider.py) and a
real deskhub: the full redirect flow with the provider's login form, claims mapped into
auth_state, admin from the groups claim, crafted experiment ids dropped, a wrong password
refused, blocked and disabled accounts refused, and a claim change picked up by a refresh.
No session containers are started.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from tests.harness import Hub, free_port
from tests.oidcprovider import OIDCProvider, installed

PASSWORD = {
    name: secrets.token_urlsafe(10)
    for name in ("alice", "boss", "mallory", "carol", "eve", "dave", "frank", "grace")
}
REFRESH_AGE = 2  # seconds; a cookie request after that refreshes the user's claims
ACCESS_TOKEN_TTL = 5  # seconds; a refresh after that renews it with the refresh token
ACCOUNTS: list[dict[str, Any]] = [
    {
        "username": "alice",
        "claims": {
            "groups": ["mx-staff"],
            # objects with an id field, as a facility's user portal gives them
            "experiments": [{"id": "mx-2026-042", "title": "Lysozyme"}, {"id": "xfm-2026-007"}],
            "uid_number": 10001,
            "gid_number": 10002,
        },
    },
    {
        "username": "boss",
        "claims": {"groups": ["deskhub-admins"], "experiments": []},
    },
    {
        "username": "mallory",
        "claims": {
            "groups": [],
            "experiments": ["ok-2026-001", "../etc", "a/b", ".hidden", "-rf", "x" * 65, 42, None],
            "uid_number": 0,  # root is never accepted
        },
    },
    {"username": "carol", "claims": {"experiments": ["mx-2026-042"]}},
    {"username": "eve", "claims": {"experiments": ["mx-2026-042"]}},
    {"username": "dave", "claims": {"experiments": ["mx-2026-042"], "disabled": False}},
    {"username": "frank", "claims": {"experiments": ["mx-2026-042"]}},
    {"username": "grace", "claims": {"experiments": ["mx-2026-042"]}},
]


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, OIDCProvider]]:
    missing = installed()
    if missing:
        pytest.fail(f"{missing}. deploy/test installs it (ensure_test_oidc).")
    work = tmp_path_factory.mktemp("oidc")
    secret = secrets.token_urlsafe(32)
    secret_file = work / "client-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    accounts = [
        {
            "username": a["username"],
            "password": PASSWORD[a["username"]],
            "claims": dict(a["claims"]),
        }
        for a in ACCOUNTS
    ]
    provider = OIDCProvider(
        work / "provider",
        client_id="deskhub",
        client_secret=secret,
        accounts=accounts,
        access_token_ttl=ACCESS_TOKEN_TTL,
    )
    site = {
        "auth": {
            "type": "oidc",
            "refresh_age": REFRESH_AGE,
            "oidc": {
                "issuer": provider.issuer,
                "client_id": "deskhub",
                "client_secret_file": str(secret_file),
                "scopes": ["openid", "profile", "groups", "experiments", "posix", "status"],
                "claims": {"disabled": "disabled"},
                "admin_groups": ["deskhub-admins"],
                "blocked_users": ["eve"],
            },
        },
        "sessions": {"idle_timeout": 0},
    }
    hub = Hub(work / "hub", site, prefix="deskhuboidc", network="deskhub-oidc")
    try:
        provider.start(redirect_uri=f"{hub.url}/hub/oauth_callback")
        hub.cleanup()
        hub.start()
        yield hub, provider
    finally:
        hub.cleanup()
        provider.stop()


def login(hub: Hub, username: str, password: str) -> tuple[requests.Session, requests.Response]:
    """The browser's way in: the hub sends us to the provider's login page, we fill it
    in, the provider sends us back to the hub's callback. Returns the session and the
    last page."""
    session = requests.Session()
    page = session.get(f"{hub.url}/hub/oauth_login", params={"next": "/hub/home"}, timeout=30)
    assert page.status_code == 200, page.text
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action, f"no login form at {page.url}:\n{page.text}"
    answer = session.post(
        urljoin(page.url, action.group(1)),
        data={"login": username, "password": password},
        timeout=30,
    )
    return session, answer


def user_model(hub: Hub, name: str) -> dict[str, Any]:
    response = hub.api("GET", f"/users/{name}")
    response.raise_for_status()
    return response.json()


def test_login_maps_claims_into_auth_state(oidc: tuple[Hub, OIDCProvider]) -> None:
    hub, _ = oidc
    _, page = login(hub, "alice", PASSWORD["alice"])
    assert page.status_code == 200
    assert page.url == f"{hub.url}/hub/home"
    model = user_model(hub, "alice")
    state = model["auth_state"]
    assert state["experiments"] == ["mx-2026-042", "xfm-2026-007"]
    assert (state["uid"], state["gid"]) == (10001, 10002)
    assert state["groups"] == ["mx-staff"]
    assert model["groups"] == ["mx-staff"]  # the provider's groups are the hub's groups
    assert model["admin"] is False


def test_admin_from_groups_claim(oidc: tuple[Hub, OIDCProvider]) -> None:
    hub, _ = oidc
    _, page = login(hub, "boss", PASSWORD["boss"])
    assert page.url == f"{hub.url}/hub/home"
    model = user_model(hub, "boss")
    assert model["admin"] is True
    assert model["auth_state"]["experiments"] == []
    assert model["auth_state"]["uid"] is None and model["auth_state"]["gid"] is None


def test_crafted_experiment_ids_are_dropped(oidc: tuple[Hub, OIDCProvider]) -> None:
    hub, _ = oidc
    _, page = login(hub, "mallory", PASSWORD["mallory"])
    assert page.url == f"{hub.url}/hub/home"
    state = user_model(hub, "mallory")["auth_state"]
    assert state["experiments"] == ["42", "ok-2026-001"]  # a number is an id
    assert state["uid"] is None  # uid 0 refused
    log = hub.log_path.read_text(errors="replace")
    assert "experiment id '../etc' is not allowed" in log
    assert "experiment id 'a/b' is not allowed" in log


def test_wrong_password_is_refused(oidc: tuple[Hub, OIDCProvider]) -> None:
    hub, provider = oidc
    session, page = login(hub, "frank", PASSWORD["frank"] + "x")
    assert page.url.startswith(provider.issuer)  # still at the provider
    assert "Invalid username or password" in page.text
    assert hub.api("GET", "/users/frank").status_code == 404
    assert session.get(f"{hub.url}/hub/home", allow_redirects=False, timeout=30).status_code == 302


def test_blocked_user_is_refused(oidc: tuple[Hub, OIDCProvider]) -> None:
    hub, _ = oidc
    _, page = login(hub, "eve", PASSWORD["eve"])
    assert page.status_code == 403
    assert hub.api("GET", "/users/eve").status_code == 404


def test_claim_change_is_picked_up_by_refresh(oidc: tuple[Hub, OIDCProvider]) -> None:
    hub, provider = oidc
    session, page = login(hub, "carol", PASSWORD["carol"])
    assert page.url == f"{hub.url}/hub/home"
    assert user_model(hub, "carol")["auth_state"]["experiments"] == ["mx-2026-042"]
    assert user_model(hub, "carol")["admin"] is False
    # carol joins a beamtime and the admin group at the facility, mid-session
    provider.set_claims(
        "carol",
        experiments=["mx-2026-042", "imaging-2026-003", "../../root"],
        groups=["deskhub-admins"],
        uid_number=10050,
    )
    time.sleep(REFRESH_AGE + 0.5)
    # her next page is refreshed with the stored access token (no new login)
    assert session.get(f"{hub.url}/hub/home", timeout=30).url == f"{hub.url}/hub/home"
    model = user_model(hub, "carol")
    assert model["auth_state"]["experiments"] == ["imaging-2026-003", "mx-2026-042"]
    assert model["auth_state"]["uid"] == 10050
    assert model["admin"] is True


def test_expired_access_token_is_renewed_with_the_refresh_token(
    oidc: tuple[Hub, OIDCProvider],
) -> None:
    hub, provider = oidc
    session, page = login(hub, "grace", PASSWORD["grace"])
    assert page.url == f"{hub.url}/hub/home"
    before = user_model(hub, "grace")["auth_state"]
    assert before["refresh_token"]
    provider.set_claims("grace", experiments=["xfm-2026-007"])
    time.sleep(max(REFRESH_AGE, ACCESS_TOKEN_TTL) + 0.5)
    assert session.get(f"{hub.url}/hub/home", timeout=30).url == f"{hub.url}/hub/home"
    after = user_model(hub, "grace")["auth_state"]
    assert after["experiments"] == ["xfm-2026-007"]
    assert after["access_token"] != before["access_token"]
    assert "Refreshing oauth access token for grace" in hub.log_path.read_text(errors="replace")


def test_disabled_account_is_refused_and_logged_out(oidc: tuple[Hub, OIDCProvider]) -> None:
    hub, provider = oidc
    session, page = login(hub, "dave", PASSWORD["dave"])
    assert page.url == f"{hub.url}/hub/home"
    provider.set_claims("dave", disabled=True)
    time.sleep(REFRESH_AGE + 0.5)
    # the refresh finds the account disabled: the session's cookie no longer counts
    home = session.get(f"{hub.url}/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 302 and "/hub/login" in home.headers["Location"]
    # and a new login is refused
    _, again = login(hub, "dave", PASSWORD["dave"])
    assert again.status_code == 403


def test_unreachable_issuer_stops_the_hub(oidc: tuple[Hub, OIDCProvider], tmp_path: Path) -> None:
    # a second hub on the module's network (removed with the module's hub)
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("s\n")
    secret_file.chmod(0o600)
    issuer = f"http://127.0.0.1:{free_port()}"
    site = {
        "auth": {
            "type": "oidc",
            "oidc": {"issuer": issuer, "client_id": "x", "client_secret_file": str(secret_file)},
        }
    }
    hub = Hub(tmp_path / "hub", site, prefix="deskhuboidc", network="deskhub-oidc")
    with pytest.raises(RuntimeError, match="exited during start"):
        hub.start(timeout=30)
    assert (
        f"OpenID Connect discovery {issuer}/.well-known/openid-configuration is unreachable"
        in hub.log_tail()
    )
