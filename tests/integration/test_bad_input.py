"""Bad input against a real deskhub: what users send (the spawn form, REST ``user_options``,
usernames in URLs, query strings to a running session's desktop and proxy URLs) and what
admins write (the site YAML).

Every request ends in a clear 4xx (or a correct 2xx/3xx) without a traceback in its body,
no refused request leaves a container, and the hub's log holds no traceback except the
ones JupyterHub itself writes for a refused request (an HTTP 4xx, or JSON it could not
parse). A broken site YAML stops the hub with one message naming the file and the key.
One hub serves the module, with one real session (for the desktop and proxy URLs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import running
from tests.harness import Hub, example_site, make_data

PREFIX = "deskhubfuzz"
NETWORK = "deskhub-fuzz"
VIEWER = "viewer"  # the one user with a running session
FUZZER = "fuzzer"  # every refused spawn is this user's; they never get a container
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # what could name a real environment

FUZZ = settings(
    max_examples=10,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("fuzz-hub")
    site = example_site(make_data(work / "data"))
    with running(Hub(work, site, prefix=PREFIX, network=NETWORK)) as hub:
        hub.ensure_user(FUZZER)
        # once the nodes' first poll is done, a bad choice is refused at once (400); before,
        # the spawner waits for it and the refusal may come after the hub's 1 s (202)
        assert hub.api("GET", "/environments").ok
        yield hub


@pytest.fixture(scope="module")
def viewer(fuzz_hub: Hub) -> str:
    fuzz_hub.ensure_user(VIEWER)
    fuzz_hub.spawn_ready(VIEWER, {"environment": "desktop"})
    return VIEWER


def assert_clear(
    response: requests.Response, allowed: range = range(400, 500), sent: Any = ""
) -> None:
    """A status in ``allowed`` (never a 5xx), and no traceback in what the user reads; a
    refusal from the hub's API says why in its JSON ``message``."""
    where = f"{response.request.method} {response.request.url[:200]} {str(sent)[:200]}"
    assert response.status_code in allowed, f"{where}: {response.status_code} {response.text[:500]}"
    assert "Traceback" not in response.text, f"{where}: {response.text[:2000]}"
    kind = response.headers.get("Content-Type", "")
    if response.status_code >= 400 and "/hub/api/" in response.url and "json" in kind:
        message = response.json().get("message")
        # JupyterHub answers a path or method its API does not have with a bare 404 or 405
        if response.status_code not in (404, 405):
            assert isinstance(message, str) and message.strip(), f"{where}: {response.text[:500]}"


def no_container_for(hub: Hub, user: str) -> None:
    names = [c.name for c in hub.containers()]
    assert f"{hub.prefix}-{user}" not in names, names
    assert not hub.api("GET", f"/users/{user}").json()["servers"]


# -- REST user_options ----------------------------------------------------------------------
RAW_BODIES: list[tuple[bytes, str]] = [
    (b'{"user_options": {"environment": "nope"}}', "Unknown environment 'nope'"),
    (b'{"user_options": {"environment": 42}}', "must be given by its name"),
    (b'{"user_options": {"environment": ["xfm"]}}', "must be given by its name"),
    (b'{"user_options": {"environment": {"$ne": ""}}}', "must be given by its name"),
    (b'{"user_options": {"environment": null}}', "must be given by its name"),
    (b'{"user_options": {"environment": "xfm", "image": "evil:1"}}', "Unknown option 'image'"),
    (b'{"user_options": {"environment": "../../etc/passwd"}}', "Unknown environment"),
    (b'{"user_options": {"environment": "xfm\\u0000"}}', "Unknown environment 'xfm\\x00'"),
    (b'{"user_options": {"environment": "\\ud800"}}', "Unknown environment"),
    ('{"user_options": {"environment": "ｘｆｍ🖥"}}'.encode(), "Unknown environment"),
    (b'{"user_options": "xfm"}', "user_options must be an object or null"),
    (b'{"user_options": [1, 2]}', "user_options must be an object or null"),
    (b'{"display_name": 5}', "display_name must be a string"),
    (b"[1, 2]", "Body must be a JSON object"),
    (b'"xfm"', "Body must be a JSON object"),
    (b"42", "Body must be a JSON object"),
    (b"{not json", "Invalid JSON"),
    (b'{"user_options": {"environment": "xfm"', "Invalid JSON"),
    (b"\xff\xfe{\x00}", "Invalid JSON"),
    (b'{"environment": "nope"}', "Unknown environment 'nope'"),  # the older body form
    (
        b'{"user_options": {"environment": "' + b"x" * 1_000_000 + b'"}}',
        "Unknown environment 'xxxxxxxx",
    ),
    (b'{"user_options": {"environment": ' + b"[" * 5000 + b"]" * 5000 + b"}}", ""),
]


def test_bad_user_options_bodies_get_400_with_a_sentence(fuzz_hub: Hub):
    for body, message in RAW_BODIES:
        response = fuzz_hub.api("POST", f"/users/{FUZZER}/server", data=body)
        assert_clear(response, range(400, 401), body)
        assert message in response.json()["message"], (body[:80], response.text[:300])
        assert len(response.json()["message"]) < 300, response.text[:500]
    no_container_for(fuzz_hub, FUZZER)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def refused(options: dict[str, Any]) -> bool:
    """Whether the hub must refuse these options (never true of a real environment's name:
    a generated name could be one an image's labels describe)."""
    if set(options) - {"environment"}:
        return True
    name = options.get("environment", "desktop")
    return not isinstance(name, str) or not NAME.match(name)


@FUZZ
@given(
    options=(
        st.fixed_dictionaries({"environment": JSON})
        | st.dictionaries(st.text(max_size=20), JSON, min_size=1, max_size=3)
    ).filter(refused)
)
def test_generated_user_options_are_refused_with_a_sentence(fuzz_hub: Hub, options: dict):
    response = fuzz_hub.spawn(FUZZER, options)
    assert_clear(response, range(400, 401), options)
    assert "Traceback" not in response.json()["message"]
    no_container_for(fuzz_hub, FUZZER)


# -- the spawn form -------------------------------------------------------------------------
def post_form(session: requests.Session, url: str, data: Any, **kwargs: Any) -> requests.Response:
    return session.post(url, data=data, timeout=60, allow_redirects=False, **kwargs)


def test_bad_spawn_forms_are_shown_again_with_a_sentence(fuzz_hub: Hub):
    session = fuzz_hub.admin_session()
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    url = f"{fuzz_hub.url}/hub/spawn/{FUZZER}"
    cases: list[tuple[Any, dict[str, Any], str]] = [
        ({"environment": "bogus"}, {}, "Unknown environment"),
        ({}, {}, "Pick exactly one environment"),
        ([("environment", "xfm"), ("environment", "desktop")], {}, "Pick exactly one"),
        ({"environment": ""}, {}, "Pick exactly one"),
        ({"environment": "   "}, {}, "Pick exactly one"),
        ({"environment": "xfm\x00"}, {}, "Unknown environment"),
        ({"environment": "../../../etc/passwd"}, {}, "Unknown environment"),
        ({"environment": "<script>alert(1)</script>"}, {}, "Unknown environment"),
        ({"environment": "ｘｆｍ🖥️"}, {}, "Unknown environment"),
        ({"environment": "x" * 200_000}, {}, "Unknown environment"),
        ({"environment": "%s%n{0}"}, {}, "Unknown environment"),
        ({"image": "evil/root:latest"}, {}, "Pick exactly one"),
        # a file upload in place of the field: JupyterHub passes it as environment_file
        ({}, {"files": {"environment": ("env.txt", b"xfm")}}, "Pick exactly one"),
    ]
    for data, extra, message in cases:
        if isinstance(data, dict):
            data = {**data, "_xsrf": xsrf}
        elif isinstance(data, list):
            data = [*data, ("_xsrf", xsrf)]
        response = post_form(session, url, data, **extra)
        assert_clear(response, range(400, 401), data)
        assert message in response.text.replace("&#39;", "'"), (data, response.text[-800:])
        assert 'name="environment"' in response.text  # the form, to pick again
        assert "<script>alert(1)" not in response.text
    # without the XSRF token, or with a wrong one, nothing is even parsed
    for data in ({"environment": "xfm"}, {"environment": "xfm", "_xsrf": "forged"}):
        response = post_form(session, url, data)
        assert_clear(response, range(403, 404))
    response = post_form(requests.Session(), url, {"environment": "xfm"})  # not logged in
    assert_clear(response, range(302, 404))
    no_container_for(fuzz_hub, FUZZER)


# -- usernames in URLs ----------------------------------------------------------------------
WEIRD_NAMES = [
    "..",
    "../admin",
    "a/b",
    "%2e%2e",
    "%2fadmin",
    "admin%00",
    "%00",
    "a b",
    "<script>",
    "'; DROP TABLE users; --",
    "ü" * 3,
    "🖥",
    "x" * 300,
    "ADMIN",
    "-",
    "_",
    "{username}",
    "\\",
]


def test_weird_usernames_in_urls_are_refused_or_handled(fuzz_hub: Hub):
    session = fuzz_hub.admin_session()
    created: list[str] = []
    for raw in WEIRD_NAMES:
        name = raw if "%" in raw else quote(raw, safe="")
        assert_clear(fuzz_hub.api("GET", f"/users/{name}"), range(200, 500))
        assert_clear(fuzz_hub.api("POST", f"/users/{name}/server"), range(400, 500))
        response = fuzz_hub.api("POST", f"/users/{name}")
        assert_clear(response, range(200, 500))
        if response.status_code == 201:
            created.append(response.json()["name"])
        for path in (f"/user/{name}/", f"/user/{name}/desktop/", f"/hub/spawn/{name}"):
            response = session.get(f"{fuzz_hub.url}{path}", allow_redirects=False, timeout=30)
            assert_clear(response, range(200, 500))
        response = post_form(
            session,
            f"{fuzz_hub.url}/hub/spawn/{name}",
            {"environment": "nope", "_xsrf": session.cookies.get("_xsrf", path="/hub/")},
        )
        assert_clear(response, range(200, 500))
    response = fuzz_hub.api("POST", "/users", json={"usernames": WEIRD_NAMES})
    assert_clear(response, range(200, 500))
    if response.status_code == 201:
        created += [user["name"] for user in response.json()]
    # a name the hub took is an ordinary user: listed, and deleted like one
    for name in set(created):
        assert fuzz_hub.api("GET", f"/users/{quote(name, safe='')}").ok
        assert fuzz_hub.api("DELETE", f"/users/{quote(name, safe='')}").status_code == 204
    names = [c.name for c in fuzz_hub.containers()]
    assert all(n == f"{PREFIX}-{VIEWER}" for n in names), names


# -- query strings to a running session's desktop and proxy URLs ----------------------------
QUERIES = [
    "",
    "?resize=remote&autoconnect=true",
    "?path=../../../../etc/passwd",
    "?host=10.0.0.1&port=22&path=websockify",
    "?token=%00%ff",
    "?%00=%00",
    "?a=<script>alert(1)</script>",
    "?" + "a=b&" * 500,
    "?" + "x" * 6000,
    "?password=%s%s%s%n",
    "?encrypt=1&repeaterID=../..",
    "?🖥=🖥",
]


def test_desktop_and_proxy_urls_with_junk_queries(fuzz_hub: Hub, viewer: str):
    get = fuzz_hub.user_get
    for query in QUERIES:
        assert_clear(get(viewer, f"desktop/{query}", allow_redirects=False), range(200, 500))
        # a plain GET (no websocket upgrade), as a link or a scanner sends it
        assert_clear(get(viewer, f"desktop-websockify{query}"), range(400, 500))
        assert_clear(get(viewer, f"desktop-websockify/{query}"), range(400, 500))
    for port in ("abc", "0", "-1", "99999", "5901", "22", "8888x", "%2e%2e", "..%2f..%2fetc"):
        for query in ("", "?a=%ff", "?" + "x" * 3000):
            response = get(viewer, f"proxy/{port}/{query}", allow_redirects=False)
            if response.status_code >= 500:
                # jupyter-server-proxy in the image answers some ports it cannot reach (e.g.
                # 0) with its server's 500 page: no traceback, nothing of the hub's; kept
                # until the images are rebuilt with a fix (see the report of issue 6)
                assert "<title>Jupyter Server</title>" in response.text, response.text[:500]
                response.status_code = 499
            assert_clear(response, range(200, 500))
    assert get(viewer, "api/status").status_code == 200  # the session is still fine


def test_nothing_refused_left_a_container_or_a_traceback(fuzz_hub: Hub, viewer: str):
    """Run last in the module: after every case above, only the viewer's session runs and
    the hub logged no traceback but JupyterHub's own for refused requests."""
    names = sorted(c.name for c in fuzz_hub.containers())
    assert names == [f"{PREFIX}-{VIEWER}"]
    unexpected = unexpected_tracebacks(fuzz_hub.log_path.read_text(errors="replace"))
    assert not unexpected, "\n\n".join(unexpected[:3])


# JupyterHub logs these with their traceback for every request it refuses: a 4xx that a
# hook raised (the form's or user_options'), or a body it could not parse as JSON
EXPECTED_LAST_LINE = re.compile(r"^(tornado\.web\.HTTPError|[\w.]*SpawnRefused): HTTP 4\d\d")
# ... and these for a body that is not JSON, and a name its authenticator refuses (400)
REFUSAL_RECORDS = ("Couldn't parse JSON", "Failed to create user")


def unexpected_tracebacks(log: str) -> list[str]:
    """Each traceback of the log that is not JupyterHub's own for a refused request: the
    log record before it and the exception it ends with tell."""
    found = []
    record = ""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("["):
            record = line
        if "Traceback (most recent call last)" not in line:
            continue
        block = [line]
        for following in lines[i + 1 :]:
            if following.startswith("[") or not following.strip():
                break
            block.append(following)
        last = block[-1].strip()
        if not (EXPECTED_LAST_LINE.match(last) or any(r in record for r in REFUSAL_RECORDS)):
            found.append("\n".join([record, *block[-12:]]))
    return found


@pytest.mark.xfail(
    strict=True,
    reason="JupyterHub 6.1 decodes the spawn form's fields outside its error handling"
    " (SpawnHandler._post): bytes that are not UTF-8 give its 500 page",
)
def test_spawn_form_that_is_not_utf8_gets_400(fuzz_hub: Hub):
    """After the log check above: this one leaves JupyterHub's traceback in the log."""
    session = fuzz_hub.admin_session()
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    response = post_form(
        session,
        f"{fuzz_hub.url}/hub/spawn/{FUZZER}",
        f"_xsrf={xsrf}&environment=%ff%fe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "Traceback" not in response.text
    no_container_for(fuzz_hub, FUZZER)
    assert_clear(response, range(400, 401))


# -- the site YAML at hub start -------------------------------------------------------------
def broken_sites(data: Path) -> list[tuple[str, Any, str]]:
    """(what is wrong, the site or its text, what the hub must print)."""
    site = example_site(data)
    memory = yaml.safe_load(yaml.safe_dump(site))
    memory["environments"]["desktop"]["needs"]["memory"] = "2X"
    wrong_type = yaml.safe_load(yaml.safe_dump(site))
    wrong_type["sessions"]["start_timeout"] = "two minutes"
    unknown = yaml.safe_load(yaml.safe_dump(site))
    unknown["placement"] = {"polcy": "spread"}
    endpoint = yaml.safe_load(yaml.safe_dump(site))
    endpoint["nodes"] = [{"name": "local", "endpoint": "unix:///nonexistent/docker.sock"}]
    return [
        ("syntax", "environments: {desktop: [\n", "is not valid YAML"),
        ("memory", memory, "'environments.desktop.needs.memory' has the value '2X'"),
        ("type", wrong_type, "'sessions.start_timeout' 'two minutes' is not of type 'integer'"),
        ("unknown", unknown, "'placement.polcy' is not a known setting"),
        ("endpoint", endpoint, "'nodes.0.endpoint' (local): cannot reach the Docker engine"),
        ("key", "sessions:\n  yes: 3\n", "'sessions.True' is not a valid key"),
    ]


def test_broken_site_yaml_stops_the_hub_with_a_message_naming_it(tmp_path: Path, docker_client):
    def start(case: tuple[str, Any, str]) -> tuple[str, Hub, str]:
        label, site, expected = case
        hub = Hub(tmp_path / label, site if isinstance(site, dict) else {}, network=NETWORK)
        if isinstance(site, str):
            hub.site_path.write_text(hub.site_path.read_text() + site)
        try:
            hub.start(timeout=60)
        except RuntimeError:
            pass
        else:
            hub.cleanup()
            raise AssertionError(f"the hub started with a broken site YAML ({label})")
        return label, hub, expected

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(start, broken_sites(tmp_path / "data")))
    for label, hub, expected in results:
        log = hub.log_path.read_text()
        prefix = f"deskhub: site configuration error: {hub.site_path}:"
        assert prefix in log and expected in log, f"{label}:\n{log[-2000:]}"
        assert "Traceback" not in log, f"{label}:\n{log[-3000:]}"
        assert hub.proc is not None and hub.proc.returncode == 2, label


@pytest.mark.xfail(
    strict=True,
    reason="configurable-http-proxy decodes the path with decodeURIComponent, which throws"
    " on a malformed escape such as %FF: the hub's 500 page",
)
def test_malformed_escape_in_a_url_gets_a_4xx(fuzz_hub: Hub):
    response = fuzz_hub.api("GET", "/users/%FF")
    assert "Traceback" not in response.text
    assert_clear(response, range(400, 500))
