"""Web isolation on a real deployment served the way docs/security.md recommends for
production: per-user subdomains (``hub.subdomain_host``) and TLS (``hub.tls``), with a
self-signed wildcard certificate for deskhub.test and *.deskhub.test.

The browser is logged in as the admin, who may open every server (an instructor opening a
participant's desktop is the same case). alice's server (A) serves a page that sets
cookies, reads ``document.cookie`` and posts forged forms to the hub; bob's server (B)
echoes the Cookie header it receives. Both pages are tiny HTTP servers started inside the
users' own containers and reached through jupyter-server-proxy (``/user/NAME/proxy/PORT/``).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser.conftest import ARTIFACTS, CHROMIUM_FLAGS
from tests.conftest import running
from tests.harness import Hub
from tests.multinode import _issue, _write_cert, _write_key, make_ca

pytestmark = [pytest.mark.docker, pytest.mark.browser]

DOMAIN = "deskhub.test"
PREFIX, NETWORK = "deskhubweb", "deskhub-web"
ATTACKER, NEIGHBOUR = "alice", "bob"
TINY_PORT = 8765
# with https subdomains, JupyterHub names its login cookies __Host-: host-only, path /
HUB_COOKIE, NEIGHBOUR_COOKIE = "__Host-jupyterhub-hub-login", f"__Host-jupyterhub-user-{NEIGHBOUR}"
# every name Chromium looks up under deskhub.test is this machine (nothing leaves it)
RESOLVER_RULES = f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1, MAP *.{DOMAIN} 127.0.0.1"
# Browsers send a cookie set with Domain=deskhub.test by any subdomain to every other one
# ("cookie tossing"): deskhub.test is not a public suffix. docs/security.md says so; this
# test checks that the docs stay true.
TOSSED_COOKIES_REACH_SIBLINGS = True

# A tiny HTTP server (standard library only) run as the session's user inside a container:
# GET /echo answers the Cookie header it received; any other path in PAGES answers its
# page, /set with a host-only cookie of its own.
TINY_SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PAGES = sys.argv[1], json.loads(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/echo":
            body, kind = json.dumps({"cookie": self.headers.get("Cookie", "")}), "json"
        elif path in PAGES:
            body, kind = PAGES[path], "html"
        else:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", f"text/{kind}; charset=utf-8" if kind == "html"
                         else "application/json")
        self.send_header("Content-Length", str(len(data)))
        if path == "/set":
            self.send_header("Set-Cookie", f"{NAME}_header=from-{NAME}; Path=/; Secure")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[3])), Handler).serve_forever()
"""

# A's page: cookies of every kind a page can set, then what it can read of the others'
SET_PAGE = """<!doctype html><title>setting</title><pre id="seen"></pre><script>
document.cookie = "alice_script=from-alice; path=/; secure";
document.cookie = "alice_tossed=from-alice; domain=deskhub.test; path=/; secure";
document.cookie = "__Host-jupyterhub-hub-login=tossed; domain=deskhub.test; path=/; secure";
document.cookie = "__Host-jupyterhub-user-bob=tossed; domain=deskhub.test; path=/; secure";
document.getElementById("seen").textContent = document.cookie;
document.title = "set";
</script>"""

# A's forged forms: each posts to the hub, cross-origin, without the hub's _xsrf token
FORGED_FORMS = {
    "spawn": {"env": "desktop"},
    "workshops": {
        "name": "forged",
        "size": "5",
        "start": "2030-01-01T10:00",
        "end": "2030-01-01T12:00",
        "environments": "desktop",
        "cpu": "0.5",
        "instructors": "",
    },
}


def forged_form(hub_origin: str, target: str, fields: dict[str, str], xsrf: str) -> str:
    inputs = "".join(
        f'<input type="hidden" name="{name}" value="{value}">' for name, value in fields.items()
    )
    if xsrf:
        inputs += f'<input type="hidden" name="_xsrf" value="{xsrf}">'
    return (
        f'<!doctype html><title>forged</title><form id="f" method="post"'
        f' action="{hub_origin}/hub/{target}">{inputs}</form>'
        '<script>document.getElementById("f").submit()</script>'
    )


@dataclass(frozen=True)
class Site:
    hub: Hub
    origin: str  # https://deskhub.test:PORT

    def user_origin(self, user: str) -> str:
        return self.origin.replace("://", f"://{user}.", 1)

    def proxied(self, user: str, path: str) -> str:
        return f"{self.user_origin(user)}/user/{user}/proxy/{TINY_PORT}{path}"


# -- the deployment ---------------------------------------------------------------------
def wildcard_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate of it for deskhub.test, *.deskhub.test and 127.0.0.1."""
    ca = make_ca(directory / "ca", name="deskhub web test CA")
    san: list[x509.GeneralName] = [
        x509.DNSName(DOMAIN),
        x509.DNSName(f"*.{DOMAIN}"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert, key = _issue(ca, DOMAIN, ExtendedKeyUsageOID.SERVER_AUTH, san, 2)
    cert_path, key_path = directory / "hub-cert.pem", directory / "hub-key.pem"
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return ca.cert, cert_path, key_path


def web_site() -> dict[str, Any]:
    return {
        "environments": {
            "desktop": {
                "title": "MATE desktop",
                "image": "deskhub/base:latest",
                "default": True,
                # no desktop is drawn; half a CPU starts JupyterLab in seconds (0.05: 90 s)
                "needs": {"cpu": 0.5, "memory": "512M"},
            }
        },
        "sessions": {"idle_timeout": 0, "start_timeout": 120},
    }


def serve_https(hub: Hub, cert: Path, key: Path) -> str:
    """Rewrite the hub's site YAML for subdomains and TLS; returns the hub's public origin."""
    site = yaml.safe_load(hub.site_path.read_text())
    origin = f"https://{DOMAIN}:{hub.port}"
    site["hub"].update(
        bind_url=f"https://127.0.0.1:{hub.port}",
        subdomain_host=origin,
        tls={"cert": str(cert), "key": str(key)},
    )
    hub.site_path.write_text(yaml.safe_dump(site))
    hub.url = f"https://127.0.0.1:{hub.port}"  # the harness's REST calls
    return origin


def start(hub: Hub, user: str, timeout: float = 180) -> None:
    """Start ``user``'s server; a node that is full for now (503) is asked again."""
    deadline = time.monotonic() + timeout
    while True:
        response = hub.spawn(user)
        if response.status_code in (201, 202):
            return
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(2)


def start_tiny_server(hub: Hub, user: str, pages: dict[str, str], timeout: float = 20) -> None:
    container = hub.container(user)
    container.exec_run(
        ["python3", "-c", TINY_SERVER, user, json.dumps(pages), str(TINY_PORT)], detach=True
    )
    probe = f"import urllib.request as u; u.urlopen('http://127.0.0.1:{TINY_PORT}/echo')"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.exec_run(["python3", "-c", probe]).exit_code == 0:
            return
        time.sleep(0.3)
    raise TimeoutError(f"the tiny server in {user}'s container did not answer")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("web-isolation")
    ca, cert, key = wildcard_certificate(work / "tls")
    hub = Hub(work, web_site(), prefix=PREFIX, network=NETWORK)
    origin = serve_https(hub, cert, key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(ca))  # the harness trusts the test CA
        with running(hub):
            for user in (ATTACKER, NEIGHBOUR):
                hub.ensure_user(user)
                start(hub, user)
            for user in (ATTACKER, NEIGHBOUR):
                hub.wait_ready(user)
            forged = {f"/{t}": forged_form(origin, t, f, "") for t, f in FORGED_FORMS.items()}
            start_tiny_server(hub, ATTACKER, {"/set": SET_PAGE, **forged})
            start_tiny_server(hub, NEIGHBOUR, {})
            yield Site(hub, origin)


@pytest.fixture(scope="module")
def chromium(browser: Browser) -> Iterator[Browser]:
    """Chromium that resolves deskhub.test and its subdomains to this machine."""
    instance = browser.browser_type.launch(
        executable_path=shutil.which("chromium"), args=[*CHROMIUM_FLAGS, RESOLVER_RULES]
    )
    yield instance
    instance.close()


@pytest.fixture
def context(chromium: Browser, request: pytest.FixtureRequest) -> Iterator[BrowserContext]:
    # the CA is the test's own: Chromium is told to accept the certificate it signed
    instance = chromium.new_context(ignore_https_errors=True)
    yield instance
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and instance.pages:
        ARTIFACTS.mkdir(exist_ok=True)
        instance.pages[-1].screenshot(path=str(ARTIFACTS / f"{request.node.name}-failed.png"))
    instance.close()


# -- browser steps --------------------------------------------------------------------------
def log_in(page: Page, site: Site) -> None:
    page.goto(f"{site.origin}/hub/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", site.hub.admin_password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url("**/hub/spawn*")


def open_server_page(page: Page, url: str) -> None:
    """Open a page of someone else's server: JupyterHub first asks the admin to authorize
    access to that server (once per server)."""
    page.goto(url)
    if "/hub/api/oauth2/authorize" in page.url:
        page.click("button:has-text('Authorize')")
    page.wait_for_url(url)


def received_cookies(page: Page, site: Site, user: str) -> dict[str, str]:
    """The cookies the browser sent to ``user``'s server, as its tiny server saw them."""
    open_server_page(page, site.proxied(user, "/echo"))
    header = json.loads(page.locator("body").inner_text())["cookie"]
    pairs = (part.strip().partition("=") for part in header.split(";") if part.strip())
    return {name: value for name, _, value in pairs}


def hub_cookies(context: BrowserContext) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in context.cookies() if c["domain"].lstrip(".") == DOMAIN}


# -- the tests ------------------------------------------------------------------------------
def test_auth_cookies_are_secure_and_httponly_over_tls(context: BrowserContext, site: Site):
    page = context.new_page()
    log_in(page, site)
    open_server_page(page, site.proxied(NEIGHBOUR, "/echo"))
    cookies = context.cookies()
    by_name = {c["name"]: c for c in cookies}
    # the hub's login cookie has the __Host- prefix: only deskhub.test itself can set it
    auth = [HUB_COOKIE, "jupyterhub-session-id", NEIGHBOUR_COOKIE]
    assert set(auth) <= set(by_name), sorted(by_name)
    flags = {(c["name"], c["domain"]): (c["secure"], c["httpOnly"]) for c in cookies}
    print("cookies after login over https (secure, httpOnly):", flags)
    for cookie in cookies:
        if cookie["name"].startswith(("jupyterhub-", "__Host-jupyterhub-")):
            assert cookie["secure"] and cookie["httpOnly"], flags
    assert by_name[HUB_COOKIE]["domain"] == DOMAIN  # host-only
    hub_xsrf = [c for c in cookies if c["name"] == "_xsrf" and c["domain"] == DOMAIN]
    assert hub_xsrf and all(c["secure"] and c["httpOnly"] for c in hub_xsrf), flags


def test_a_cookie_set_by_a_users_page_is_not_sent_to_another_users_server(
    context: BrowserContext, site: Site
):
    page = context.new_page()
    log_in(page, site)
    before = received_cookies(page, site, NEIGHBOUR)
    assert NEIGHBOUR_COOKIE in before, before  # the echo sees B's cookies
    login_cookie = hub_cookies(context)[HUB_COOKIE]

    # A's page sets its cookies and shows what it can read
    open_server_page(page, site.proxied(ATTACKER, "/set"))
    page.wait_for_function("document.title === 'set'")
    readable = page.locator("#seen").inner_text()
    secrets_of_others = [
        login_cookie["value"],
        *(value for name, value in before.items() if name.startswith("jupyterhub-")),
    ]
    for name in ("jupyterhub-hub-login", "jupyterhub-session-id", NEIGHBOUR_COOKIE):
        assert name not in readable, readable
    assert not any(secret and secret in readable for secret in secrets_of_others), readable
    # ... and what A's own server receives: none of the hub's or B's credentials
    at_attacker = received_cookies(page, site, ATTACKER)
    assert not {HUB_COOKIE, NEIGHBOUR_COOKIE} & set(at_attacker), at_attacker

    # B's server, in the same browser: A's host-only cookies are not sent
    after = received_cookies(page, site, NEIGHBOUR)
    assert "alice_header" not in after and "alice_script" not in after, after
    # a cookie with Domain=deskhub.test is (cookie tossing: docs/security.md)
    assert ("alice_tossed" in after) is TOSSED_COOKIES_REACH_SIBLINGS, after
    # the hub's __Host- login cookie cannot be tossed: it is unchanged, the admin still in
    assert hub_cookies(context)[HUB_COOKIE]["value"] == login_cookie["value"]
    assert after.get(HUB_COOKIE) is None, after
    assert after[NEIGHBOUR_COOKIE] == before[NEIGHBOUR_COOKIE], after
    page.goto(f"{site.origin}/hub/home")
    assert page.url.startswith(f"{site.origin}/hub/home"), page.url
    print(
        "A's page read:",
        readable,
        "| B received:",
        sorted(after),
        "| A received:",
        sorted(at_attacker),
    )


def test_forms_without_the_xsrf_token_are_refused(
    chromium: Browser, context: BrowserContext, site: Site
):
    hub = site.hub
    workshops_before = hub.api("GET", "/workshops").json()

    # the login form, posted without (or with a made-up) token: 403, nobody logged in
    page = context.new_page()
    page.goto(f"{site.origin}/hub/login")
    for token in ("", "made-up"):
        fields = {"username": "admin", "password": hub.admin_password, "_xsrf": token}
        assert post_form(site, context, "/hub/login", fields) == 403
    assert HUB_COOKIE not in hub_cookies(context)

    # logged in: the spawn and workshops forms, with the browser's cookies, no valid token
    log_in(page, site)
    for target, fields in FORGED_FORMS.items():
        for token in ("", "made-up"):
            status = post_form(site, context, f"/hub/{target}", {**fields, "_xsrf": token})
            assert status == 403, (target, token)
    # the same form with the page's own token passes the check (then is refused for its
    # content: a size of 0), so the 403s above are the token's doing
    valid = page.evaluate("window.jhdata.xsrf_token")
    empty = {**FORGED_FORMS["workshops"], "size": "0", "_xsrf": valid}
    assert post_form(site, context, "/hub/workshops", empty) == 400

    # and posted cross-origin by A's page, the browser sending the admin's cookies along
    open_server_page(page, site.proxied(ATTACKER, "/echo"))  # access to A's server granted
    # each in a browser context of its own with the admin's cookies: in one context, the
    # second cross-origin POST never left Chromium's connection pool (no timeout fired)
    state = context.storage_state()
    for target in FORGED_FORMS:
        attacked = chromium.new_context(ignore_https_errors=True, storage_state=state)
        try:
            attack = attacked.new_page()  # the form navigates it to the hub
            with attack.expect_response(
                lambda r, t=target: r.request.method == "POST" and r.url.endswith(f"/hub/{t}"),
                timeout=30_000,
            ) as answer:
                attack.goto(site.proxied(ATTACKER, f"/{target}"), wait_until="commit")
            assert answer.value.status == 403, target
        finally:
            attacked.close()

    # the hub is fine, and nothing was done
    assert hub.api("GET", "/").status_code == 200
    assert hub.api("GET", "/users/admin").json()["servers"] == {}
    assert hub.api("GET", "/workshops").json() == workshops_before
    page.goto(f"{site.origin}/hub/home")
    assert page.url.startswith(f"{site.origin}/hub/home"), page.url


def post_form(site: Site, context: BrowserContext, path: str, fields: dict[str, str]) -> int:
    """POST a form to the hub as the browser would, with its cookies for the hub's host, on
    a connection of its own (an in-page fetch once waited forever behind the proxy)."""
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in hub_cookies(context).values())
    host = site.origin.split("://", 1)[1]
    response = requests.post(
        f"https://127.0.0.1:{host.rsplit(':', 1)[1]}{path}",
        data={k: v for k, v in fields.items() if v != ""},
        headers={
            "Host": host,
            "Cookie": cookies,
            "Origin": site.origin,
            "Referer": f"{site.origin}/hub/",
            "Connection": "close",
        },
        allow_redirects=False,
        timeout=30,
    )
    return response.status_code
