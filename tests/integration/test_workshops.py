"""Workshops on a real hub: the REST API and who may use it, joining with a code, what a
participant may start, the instructors' role, a hub restart, and the end (servers stopped,
accounts and homes deleted, group and role gone)."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.conftest import running
from tests.harness import Hub

pytestmark = pytest.mark.docker

WS_PREFIX = "deskhubws"
WS_NETWORK = "deskhub-ws"
INSTRUCTOR_PASSWORD = "instructor-password-42"


def workshop_site() -> dict[str, Any]:
    return {
        "environments": {
            "desktop": {
                "title": "MATE desktop",
                "image": "deskhub/base:latest",
                "default": True,
                "needs": {"cpu": 0.1, "memory": "512M"},
            },
            "xfm": {
                "title": "XFM",
                "image": "deskhub/xfm:latest",
                "needs": {"cpu": 0.25, "memory": "1G"},
            },
        },
        "sessions": {"idle_timeout": 0, "start_timeout": 180},
        "workshops": {"check_interval": 2, "max_size": 40},
    }


def iso(delta: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).isoformat()


def create_workshop(hub: Hub, **body: Any) -> dict[str, Any]:
    response = hub.api("POST", "/workshops", data=json.dumps(body))
    assert response.status_code == 201, response.text
    return response.json()


def xsrf(session: requests.Session) -> str:
    return session.cookies.get("_xsrf", path="/hub/")


def post_form(
    hub: Hub, path: str, fields: dict[str, str]
) -> tuple[requests.Session, requests.Response]:
    """A browser-like session that opened the hub page ``path`` and posted its form (with
    the XSRF token), not following the redirect."""
    session = requests.Session()
    session.get(f"{hub.url}{path}", timeout=30)
    response = session.post(
        f"{hub.url}{path}",
        data={**fields, "_xsrf": xsrf(session)},
        allow_redirects=False,
        timeout=30,
    )
    return session, response


def join(hub: Hub, code: str, name: str) -> tuple[requests.Session, requests.Response]:
    """A participant's session after posting the join form."""
    return post_form(hub, "/hub/workshop", {"code": code, "name": name})


def joined(hub: Hub, code: str, name: str) -> requests.Session:
    session, response = join(hub, code, name)
    assert response.status_code == 303, response.text
    assert response.headers["Location"].endswith("/hub/spawn")
    # the spawn page: the participant's own _xsrf cookie for the REST API
    session.get(f"{hub.url}/hub/spawn", timeout=60).raise_for_status()
    return session


def participant_api(
    hub: Hub, session: requests.Session, method: str, path: str, **kwargs: Any
) -> requests.Response:
    """The REST API as the participant's browser calls it: cookie plus XSRF header."""
    return session.request(
        method,
        f"{hub.url}/hub/api{path}",
        headers={"X-XSRFToken": xsrf(session)},
        timeout=60,
        **kwargs,
    )


def sign_up(hub: Hub, username: str, password: str) -> None:
    """NativeAuthenticator's sign-up, then the admin's approval."""
    session = requests.Session()
    session.get(f"{hub.url}/hub/signup", timeout=30)
    session.post(
        f"{hub.url}/hub/signup",
        data={
            "username": username,
            "signup_password": password,
            "signup_password_confirmation": password,
            "_xsrf": xsrf(session),
        },
        timeout=30,
    ).raise_for_status()
    admin = hub.admin_session()
    admin.get(f"{hub.url}/hub/authorize/{username}", timeout=30).raise_for_status()


def log_in(hub: Hub, username: str, password: str) -> tuple[requests.Session, requests.Response]:
    """The login form, as a browser posts it."""
    return post_form(hub, "/hub/login", {"username": username, "password": password})


def open_as_browser(hub: Hub, session: requests.Session, path: str) -> requests.Response:
    """GET a page of someone's server as a browser does, confirming JupyterHub's "Authorize
    access" page (shown when the server is not the user's own)."""
    response = session.get(f"{hub.url}{path}", timeout=60)
    if response.status_code == 200 and "/hub/api/oauth2/authorize" in response.url:
        scopes = re.findall(r'name="scopes" value="([^"]*)"', response.text)
        response = session.post(
            response.url,
            data={"scopes": [html.unescape(s) for s in scopes], "_xsrf": xsrf(session)},
            timeout=60,
        )
    return response


def user_token(hub: Hub, name: str) -> str:
    response = hub.api("POST", f"/users/{name}/tokens", json={"note": "test"})
    response.raise_for_status()
    return response.json()["token"]


def as_token(hub: Hub, token: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        method,
        f"{hub.url}/hub/api{path}",
        headers={"Authorization": f"token {token}"},
        timeout=60,
        **kwargs,
    )


def wait_for(what: str, check, timeout: float, hub: Hub) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen in {timeout:.0f} s:\n{hub.log_tail(80)}")


def home_volumes(hub: Hub) -> set[str]:
    return {
        v.name
        for v in hub.docker.volumes.list(filters={"label": "deskhub.managed=true"})
        if v.name.startswith(f"{hub.prefix}-home-")
    }


@pytest.fixture(scope="module")
def ws_hub(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("workshops-hub")
    with running(Hub(work, workshop_site(), prefix=WS_PREFIX, network=WS_NETWORK)) as hub:
        yield hub


def test_only_admins_manage_workshops_and_bad_input_gets_one_sentence(ws_hub):
    hub = ws_hub
    hub.ensure_user("plain")
    token = user_token(hub, "plain")
    body = {
        "name": "nope",
        "size": 2,
        "start": iso(0),
        "end": iso(600),
        "environments": ["desktop"],
    }
    assert as_token(hub, token, "POST", "/workshops", data=json.dumps(body)).status_code == 403
    assert as_token(hub, token, "GET", "/workshops").status_code == 403
    # only the workshops service may run the check
    assert hub.api("POST", "/workshops-check").status_code == 403
    for bad, sentence in [
        ({**body, "environments": ["ghost"]}, "There is no environment named 'ghost'"),
        ({**body, "start": iso(-120), "end": iso(-60)}, "The end is already past."),
        ({**body, "instructors": ["nobody"]}, "There is no hub user named 'nobody'"),
        ({**body, "size": 41}, "from 1 to 40."),
        ({**body, "start": "soon"}, "is not a date and time"),
    ]:
        response = hub.api("POST", "/workshops", data=json.dumps(bad))
        assert response.status_code == 400
        assert sentence in response.json()["message"]
    assert hub.api("POST", "/workshops", data="[1]").status_code == 400
    # an existing group of that name is never taken over (its members would get instructors)
    hub.api("POST", "/groups/workshop-taken").raise_for_status()
    response = hub.api("POST", "/workshops", data=json.dumps({**body, "name": "taken"}))
    assert response.status_code == 400
    assert response.json()["message"].startswith("A group named workshop-taken already exists")
    # the admin page's form: the same sentence, the form shown again; XSRF-protected
    admin = hub.admin_session()
    page = admin.get(f"{hub.url}/hub/workshops", timeout=30)
    assert page.status_code == 200 and 'name="_xsrf"' in page.text
    assert 'href="/hub/workshops"' in page.text  # the navigation link
    form = {
        "name": "Bad Name",
        "size": "2",
        "start": "2026-11-26T10:00",
        "end": "2026-11-26T11:00",
        "environments": "desktop",
        "utc_offset": "60",
    }
    response = admin.post(f"{hub.url}/hub/workshops", data={**form, "_xsrf": xsrf(admin)})
    assert response.status_code == 400
    assert "The workshop name must be 2 to 30 lowercase letters" in response.text
    assert 'value="Bad Name"' in response.text
    assert admin.post(f"{hub.url}/hub/workshops", data=form).status_code == 403
    assert hub.api("GET", "/workshops/ghost").status_code == 404
    assert hub.api("GET", "/workshops").json() == []


def test_join_spawn_instructor_restart_and_end(ws_hub):
    hub = ws_hub
    # the instructor: a hub user with a password (sign-up, approval, first login)
    sign_up(hub, "ivy", INSTRUCTOR_PASSWORD)
    ivy_browser, response = log_in(hub, "ivy", INSTRUCTOR_PASSWORD)
    assert response.status_code == 302, response.text
    hub.ensure_user("outsider")
    created = create_workshop(
        hub,
        name="intro",
        size=3,
        start=iso(-5),
        end=iso(3600),
        environments=["desktop"],
        cpu=0.1,
        memory="512M",
        instructors=["ivy"],
    )
    code = created["code"]
    assert len(code) == 8 and created["state"] == "running"
    later = create_workshop(
        hub, name="later", size=2, start=iso(7200), end=iso(9000), environments=["xfm"]
    )

    # images: the local engine holds them already
    def images_ready() -> bool:
        images = hub.api("GET", "/workshops/intro").json()["images"]
        return images["summary"] == "images ready on 1 of 1 nodes" and not images["pulling"]

    wait_for("the pre-pull", images_ready, 60, hub)

    # the join page, linked from the login page
    assert 'href="/hub/workshop"' in requests.get(f"{hub.url}/hub/login", timeout=30).text
    for bad_code, name, sentence in [
        ("WRONGCOD", "ann", "There is no workshop with this code"),
        (code, "Bad Name", "Choose a name of 1 to 20 letters"),
        (later["code"], "ann", "This workshop starts at "),
    ]:
        _, response = join(hub, bad_code, name)
        assert response.status_code == 400 and sentence in response.text
    ann = joined(hub, code.lower()[:4] + "-" + code[4:], " Ann ")  # typed loosely
    me = participant_api(hub, ann, "GET", "/user").json()
    assert me["name"] == "intro-ann" and me["groups"] == ["workshop-intro"]
    _, again = join(hub, code, "ann")
    assert again.status_code == 400 and "The name &#39;ann&#39; is already taken" in again.text
    bob = joined(hub, code, "bob")
    # a sign-up under a participant's name, even approved, never logs in as them
    sign_up(hub, "intro-bob", "a-long-enough-password-1")
    assert log_in(hub, "intro-bob", "a-long-enough-password-1")[1].status_code != 302
    assert log_in(hub, "intro-ann", "")[1].status_code != 302

    # participants start only the workshop's environments, capped
    spawn_page = ann.get(f"{hub.url}/hub/spawn", timeout=30).text
    assert 'value="desktop"' in spawn_page and 'value="xfm"' not in spawn_page
    refused = participant_api(
        hub, ann, "POST", "/users/intro-ann/server", data=json.dumps({"environment": "xfm"})
    )
    assert refused.status_code == 400 and "Unknown environment 'xfm'" in refused.json()["message"]
    started = participant_api(
        hub, ann, "POST", "/users/intro-ann/server", data=json.dumps({"environment": "desktop"})
    )
    assert started.status_code in (201, 202), started.text
    hub.wait_ready("intro-ann", timeout=180)
    container = hub.docker.containers.get(f"{hub.prefix}-intro-2dann")  # escaped name
    assert container.attrs["HostConfig"]["NanoCpus"] == 100_000_000
    assert container.attrs["HostConfig"]["Memory"] == 512 * 1024**2
    assert f"{hub.prefix}-home-intro-2dann" in home_volumes(hub)

    # participants cannot open each other's servers; the instructor can, not others'
    other = bob.get(f"{hub.url}/user/intro-ann/lab", timeout=60)
    assert other.status_code == 403 and "/hub/api/oauth2/authorize" in other.url
    ivy = user_token(hub, "ivy")
    assert as_token(hub, ivy, "GET", "/users/intro-ann").status_code == 200
    assert as_token(hub, ivy, "GET", "/users/outsider").status_code == 404
    # in the browser (JupyterHub's OAuth, which resolves the group), not with a token:
    # single-user servers do not resolve group filters of a token's scopes
    response = open_as_browser(hub, ivy_browser, "/user/intro-ann/lab")
    assert response.status_code == 200 and response.url.endswith("/user/intro-ann/lab")
    assert ivy_browser.get(f"{hub.url}/user/intro-ann/api/status", timeout=30).status_code == 200
    # the full catalogue for everyone else
    assert 'value="xfm"' in hub.admin_session().get(f"{hub.url}/hub/spawn", timeout=30).text

    # the workshop, its role and the participants' access survive a hub restart
    hub.restart()
    assert [w["name"] for w in hub.api("GET", "/workshops").json()] == ["intro", "later"]
    assert as_token(hub, ivy, "GET", "/users/intro-ann").status_code == 200
    assert participant_api(hub, bob, "GET", "/user").json()["name"] == "intro-bob"
    patched = hub.api("PATCH", "/workshops/intro", data=json.dumps({"size": 1}))
    assert patched.status_code == 400 and "cannot be smaller" in patched.json()["message"]

    # the end, by its time: the workshops service ends it within seconds
    volumes_before = home_volumes(hub)
    ended_at = time.monotonic()
    hub.api("PATCH", "/workshops/intro", data=json.dumps({"end": iso(0)})).raise_for_status()
    wait_for(
        "the end of intro",
        lambda: hub.api("GET", "/workshops/intro").status_code == 404,
        60,
        hub,
    )
    seconds = time.monotonic() - ended_at
    assert seconds < 30, seconds
    for name in ("intro-ann", "intro-bob"):
        assert hub.api("GET", f"/users/{name}").status_code == 404
    assert hub.api("GET", "/groups/workshop-intro").status_code == 404
    assert as_token(hub, ivy, "GET", "/users/intro-ann").status_code in (403, 404)
    assert not [c for c in hub.containers() if c.name.endswith("intro-2dann")]
    assert home_volumes(hub) == volumes_before - {f"{hub.prefix}-home-intro-2dann"}
    assert participant_api(hub, ann, "GET", "/user").status_code == 403
    _, late = join(hub, code, "cy")
    assert late.status_code == 400 and "There is no workshop with this code" in late.text

    # DELETE ends one now
    assert hub.api("DELETE", "/workshops/later").status_code == 202
    wait_for(
        "the end of later",
        lambda: hub.api("GET", "/workshops/later").status_code == 404,
        30,
        hub,
    )
    assert hub.api("GET", "/workshops").json() == []
