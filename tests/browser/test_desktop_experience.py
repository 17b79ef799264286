"""The desktop as a researcher uses it in the browser (project issue 4): the clipboard both
ways without the viewer's text box, the desktop's resolution following the window,
reconnecting to the same desktop, and each environment's applications drawn in the page.

One desktop session (the admin's, on the hub fixture) and one logged-in browser context
with clipboard permissions serve the tests here. The other environments' sessions (users
appENVIRONMENT, viewed by the admin) are spawned when the module starts, so that they
start while the first tests run. X is looked at from inside the containers, on the
session's display with its D-Bus address, as the desktop's own programs see it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_desktop_in_browser import wait_for_desktop
from tests.harness import Hub, wait_for_background_images

T = TypeVar("T")
USER = "admin"
VIEWPORT = {"width": 1280, "height": 800}


@dataclass(frozen=True)
class App:
    """An application of an environment's image, started in its desktop session."""

    environment: str  # of tests.harness.example_site
    image: str
    command: str
    title: str  # the X window's name, a regular expression

    @property
    def user(self) -> str:
        """Whose session shows it: the admin's desktop for the base image, else its own."""
        if self.environment == "desktop":
            return USER
        # letters and digits only: DockerSpawner escapes the rest in container names
        return "app" + re.sub(r"[^a-z0-9]", "", self.environment.lower())


# One application per environment image, explicitly: add each new image here (and its
# environment to tests.harness.example_site). mate-terminal runs `top`, not a shell, whose
# prompt would retitle the window.
APPS = [
    App(
        "desktop",
        "deskhub/base:latest",
        "mate-terminal --disable-factory --title deskhub-app -e 'top -d 1'",
        "deskhub-app",
    ),
    App("xfm", "deskhub/xfm:latest", "pymca", r"PyMca - \[Main Window\]"),
    App("mx", "deskhub/mx:latest", "pymol", r"PyMOL[^\"]*"),
    App("imaging", "deskhub/imaging:latest", "imagej", r"ImageJ"),
]


def poll(what: str, check: Callable[[], T | None], timeout: float = 30, every: float = 0.5) -> T:
    """``check()``'s first truthy result; fail naming ``what`` and the last result."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@dataclass
class Window:
    id: str
    x: int
    y: int
    width: int
    height: int


class DesktopSession:
    """The X side of a running session: commands on its display, as its user."""

    def __init__(self, hub: Hub, user: str) -> None:
        self.hub = hub
        self.user = user
        self.container = hub.container(user)
        self._x_env: dict[str, str] = {}

    def sh(self, cmd: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        result = self.container.exec_run(["sh", "-c", cmd], user="1000", environment=env or {})
        return result.exit_code, result.output.decode(errors="replace")

    def x_env(self) -> dict[str, str]:
        """DISPLAY as the VNC server set it, and the session's D-Bus address."""
        if self._x_env:
            return self._x_env
        code, sockets = self.sh("ls /tmp/.X11-unix")
        assert code == 0 and sockets.split(), f"no X server socket: {sockets}"
        env = {"DISPLAY": ":" + sockets.split()[0].removeprefix("X")}
        code, out = self.sh(
            "tr '\\0' '\\n' </proc/$(pgrep -o -x mate-session)/environ"
            " | grep ^DBUS_SESSION_BUS_ADDRESS="
        )
        assert code == 0, f"no D-Bus address in mate-session's environment: {out}"
        env["DBUS_SESSION_BUS_ADDRESS"] = out.strip().split("=", 1)[1]
        self._x_env = env
        return env

    def x(self, cmd: str) -> tuple[int, str]:
        return self.sh(cmd, env=self.x_env())

    def launch(self, command: str) -> int:
        """Start ``command`` in the session, in the background; its PID."""
        code, out = self.x(f"{command} >/tmp/app-$$.log 2>&1 & echo $!")
        assert code == 0, out
        return int(out.split()[-1])

    def xvnc_pid(self) -> int:
        code, out = self.sh("pgrep -o -x 'Xtigervnc|Xvnc'")
        assert code == 0, "no TigerVNC server runs"
        return int(out)

    def screen_size(self) -> tuple[int, int]:
        code, out = self.x("xdpyinfo")
        found = re.search(r"dimensions:\s+(\d+)x(\d+) pixels", out)
        assert code == 0 and found, out
        return int(found.group(1)), int(found.group(2))

    def window(self, title: str) -> Window | None:
        """Where the largest viewable window named ``title`` (a regex) is, if one is (an
        application may own several windows of that name: PyMOL's are hidden but one)."""
        code, tree = self.x("xwininfo -root -tree")
        if code != 0 and "Can't query window tree" in tree:
            # a window went away while xwininfo walked the tree (a splash screen, say):
            # not found this time; the caller polls again
            return None
        assert code == 0, tree
        windows = []
        for found in re.finditer(rf'^\s+(0x[0-9a-f]+) "{title}"', tree, re.MULTILINE):
            code, info = self.x(f"xwininfo -id {found.group(1)}")
            if code != 0 or "IsViewable" not in info:
                continue
            fields = {
                key: int(re.search(rf"{key}:\s+(-?\d+)", info).group(1))  # type: ignore[union-attr]
                for key in ("Absolute upper-left X", "Absolute upper-left Y", "Width", "Height")
            }
            windows.append(Window(found.group(1), *fields.values()))
        return max(windows, key=lambda w: w.width * w.height, default=None)

    def clipboard(self) -> str:
        code, out = self.x("xclip -selection clipboard -o")
        return out if code == 0 else ""


def stop_servers(hub: Hub, users: list[str]) -> None:
    """Stop the users' servers, all at once (the users exist)."""
    for user in users:
        response = hub.api("DELETE", f"/users/{user}/server")
        if response.status_code not in (202, 204, 400):
            response.raise_for_status()
    for user in users:
        hub.stop_server(user)


@pytest.fixture(scope="module", autouse=True)
def app_sessions(hub: Hub) -> Iterator[None]:
    """The other environments' sessions, spawned (not awaited) as the module starts."""
    try:
        wait_for_background_images()
    except (RuntimeError, TimeoutError) as err:
        pytest.fail(str(err))
    users = [app.user for app in APPS if app.user != USER]
    for user in users:
        hub.ensure_user(user)
    stop_servers(hub, [USER, *users])
    for app in APPS:
        if app.user != USER:
            response = hub.spawn(app.user, {"environment": app.environment})
            assert response.status_code in (201, 202), response.text
    yield
    stop_servers(hub, [USER, *users])


@pytest.fixture(scope="module")
def desk_context(browser: Browser, hub: Hub) -> Iterator[BrowserContext]:
    """Logged in as the admin; the hub's origin may read and write the clipboard (as after
    the user allowed it once)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)
    page = context.new_page()
    # to the hub's home page, not on to JupyterLab (heavy, and not needed here)
    page.goto(f"{hub.url}/hub/login?next=%2Fhub%2Fhome")
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", hub.admin_password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url(re.compile(r"/hub/home"))
    page.close()
    yield context
    context.close()


def open_desktop(context: BrowserContext, hub: Hub, user: str = USER) -> Page:
    page = context.new_page()
    page.goto(f"{hub.url}/user/{user}/desktop/")
    if "/hub/api/oauth2/authorize" in page.url:  # the admin opens another user's server
        page.click("button[type=submit]:has-text('Authorize')")
    expect(page.locator("#status")).to_have_text("Connected", timeout=60_000)
    wait_for_desktop(page)
    return page


@pytest.fixture(scope="module")
def desktop(hub: Hub) -> DesktopSession:
    """The admin's session of the base image."""
    hub.spawn_ready(USER, {"environment": "desktop"})
    return DesktopSession(hub, USER)


@pytest.fixture(scope="module")
def desktop_page(desk_context: BrowserContext, hub: Hub, desktop: DesktopSession) -> Iterator[Page]:
    page = open_desktop(desk_context, hub)
    yield page
    if not page.is_closed():
        page.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Iterator[list[Page]]:
    """Pages to screenshot into artifacts/ if the test fails."""
    pages: list[Page] = []
    yield pages
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        for index, page in enumerate(pages):
            if not page.is_closed():
                page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{index}-failed.png"))


# -- clipboard ----------------------------------------------------------------------------


def test_clipboard_follows_the_browser_both_ways(
    desktop: DesktopSession, desktop_page: Page, shots: list[Page]
) -> None:
    page = desktop_page
    shots.append(page)
    assert page.evaluate("window.isSecureContext && !!window.deskhubClipboard")

    # browser -> desktop: copied elsewhere, then back on the desktop (its canvas gains focus)
    text = f"from the browser {secrets.token_hex(4)} ünïcødé"
    page.evaluate("text => navigator.clipboard.writeText(text)", text)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.locator("#screen canvas").focus()
    poll("the desktop's X clipboard has the browser's text", lambda: desktop.clipboard() == text)
    # the fallback panel shows it too
    assert page.locator("#clipboard-text").input_value() == text

    # desktop -> browser: a desktop program copies
    text = f"from the desktop {secrets.token_hex(4)}"
    code, out = desktop.x(f"printf %s '{text}' | xclip -selection clipboard >/dev/null 2>&1")
    assert code == 0, out
    poll(
        "the browser's clipboard has the desktop's text",
        lambda: page.evaluate("navigator.clipboard.readText()") == text,
        timeout=15,
    )
    assert page.locator("#clipboard-text").input_value() == text
    # no echo: focusing the desktop again sends nothing back
    sent = page.evaluate("window.deskhubClipboard.sent")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.locator("#screen canvas").focus()
    time.sleep(1)
    assert page.evaluate("window.deskhubClipboard.sent") == sent


def test_clipboard_without_permission_falls_back_to_the_panel(
    desktop: DesktopSession,
    desktop_page: Page,
    desk_context: BrowserContext,
    hub: Hub,
    shots: list[Page],
) -> None:
    page = desktop_page
    shots.append(page)
    desk_context.clear_permissions()  # headless Chromium denies what it would ask for
    try:
        sent = page.evaluate("window.deskhubClipboard.sent")
        page.evaluate("text => navigator.clipboard.writeText(text)", "never read")
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.locator("#screen canvas").focus()
        poll(
            "the denied read noted",
            lambda: "denied" in page.evaluate("window.deskhubClipboard.error"),
            timeout=10,
        )
        assert page.evaluate("window.deskhubClipboard.sent") == sent
        # the viewer's panel still sends what the user puts there
        page.click("#clipboard-button")
        text = f"through the panel {secrets.token_hex(4)}"
        page.fill("#clipboard-text", text)
        page.locator("#clipboard-text").blur()  # `change`
        poll("the panel's text on the desktop", lambda: desktop.clipboard() == text)
        page.click("#clipboard-button")
    finally:
        desk_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)


# -- resolution ---------------------------------------------------------------------------

CANVAS_JS = """
() => {
  const canvas = document.querySelector('#screen canvas');
  const screen = document.getElementById('screen').getBoundingClientRect();
  const shown = canvas.getBoundingClientRect();
  return {pixels: [canvas.width, canvas.height], shown: [shown.width, shown.height],
          room: [Math.floor(screen.width), Math.floor(screen.height)],
          ratio: window.devicePixelRatio};
}
"""


def follows_the_window(page: Page, desktop: DesktopSession) -> dict[str, Any]:
    """Once the X screen is as large as the page's room for it: the canvas, unscaled."""
    state: dict[str, Any] = {}

    def check() -> bool:
        state.update(page.evaluate(CANVAS_JS), x=list(desktop.screen_size()))
        return state["x"] == state["room"] == state["pixels"]

    poll("the desktop's resolution follows the window", lambda: check() and state, timeout=20)
    # drawn 1:1, no scaling blur
    assert state["shown"] == state["pixels"] and state["ratio"] == 1, state
    return state


def test_resolution_follows_the_window(
    desktop: DesktopSession, desktop_page: Page, shots: list[Page]
) -> None:
    page = desktop_page
    shots.append(page)
    big = follows_the_window(page, desktop)
    assert big["x"][0] == VIEWPORT["width"], big
    page.set_viewport_size({"width": 1024, "height": 640})
    small = follows_the_window(page, desktop)
    assert small["x"][0] == 1024 and small["x"][1] < big["x"][1], small
    page.set_viewport_size(VIEWPORT)
    follows_the_window(page, desktop)


# -- reconnect ----------------------------------------------------------------------------


def test_reconnect_finds_the_same_desktop(
    desktop: DesktopSession,
    desktop_page: Page,
    desk_context: BrowserContext,
    hub: Hub,
    shots: list[Page],
) -> None:
    xvnc = desktop.xvnc_pid()
    terminal = desktop.launch(
        "mate-terminal --disable-factory --title deskhub-reconnect -e 'top -d 1'"
    )
    try:
        before = poll("the terminal's window", lambda: desktop.window("deskhub-reconnect"))
        desktop_page.close()  # the tab closes: the desktop goes on without a viewer
        time.sleep(2)
        # the user comes back, with a smaller window
        page = desk_context.new_page()
        shots.append(page)
        page.set_viewport_size({"width": 1100, "height": 700})
        page.goto(f"{hub.url}/user/{USER}/desktop/")
        expect(page.locator("#status")).to_have_text("Connected", timeout=60_000)
        wait_for_desktop(page)
        assert desktop.xvnc_pid() == xvnc, "a new VNC server: the desktop was not kept"
        after = desktop.window("deskhub-reconnect")
        assert after and after.id == before.id, "the terminal's window is gone"
        follows_the_window(page, desktop)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "desktop-after-reconnect.png"))
        page.close()
    finally:
        desktop.sh(f"kill {terminal}")


# -- each environment's applications, drawn in the page --------------------------------------

SNAPSHOT_JS = """
() => {
  const canvas = document.querySelector('#screen canvas');
  const ctx = canvas.getContext('2d');
  window.deskhubBefore = ctx.getImageData(0, 0, canvas.width, canvas.height);
}
"""

CHANGED_JS = """
([x, y, w, h]) => {
  const canvas = document.querySelector('#screen canvas');
  const before = window.deskhubBefore;
  if (before.width !== canvas.width || before.height !== canvas.height) return null;
  const now = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let changed = 0, seen = 0;
  const colors = new Set();
  for (let row = y; row < y + h; row += 4) for (let col = x; col < x + w; col += 4) {
    const i = (row * canvas.width + col) * 4;
    const d = Math.abs(now[i] - before.data[i]) + Math.abs(now[i+1] - before.data[i+1])
      + Math.abs(now[i+2] - before.data[i+2]);
    if (d > 48) changed++;
    colors.add(now[i] << 16 | now[i+1] << 8 | now[i+2]);
    seen++;
  }
  return {changed: changed / seen, colors: colors.size};
}
"""


@pytest.mark.parametrize("app", APPS, ids=[app.image for app in APPS])
def test_application_is_drawn_in_the_browser(
    app: App, desktop: DesktopSession, desk_context: BrowserContext, hub: Hub, shots: list[Page]
) -> None:
    if app.user == USER:
        session = desktop
    else:
        hub.wait_ready(app.user)
        session = DesktopSession(hub, app.user)
    repositories = {tag.split(":")[0] for tag in session.container.image.tags}
    assert app.image.split(":")[0] in repositories, (app, repositories)
    page = open_desktop(desk_context, hub, app.user)
    shots.append(page)
    try:
        width, height = follows_the_window(page, session)["x"]
        page.evaluate(SNAPSHOT_JS)
        session.launch(app.command)
        where = poll(f"a window {app.title}", lambda: session.window(app.title), timeout=90)
        # the part of the window on the screen
        x, y = max(where.x, 0), max(where.y, 0)
        w, h = min(where.x + where.width, width) - x, min(where.y + where.height, height) - y
        assert w > 100 and h > 50, where  # ImageJ's main window is a 76 px toolbar
        # A window is mapped before it is painted: Java fills ImageJ's window with one
        # colour first. Wait for the painted window (changed and several colours); a
        # window that never gets past its fill ends in the poll's timeout.
        last: dict = {}

        def painted() -> dict | None:
            last.update(page.evaluate(CHANGED_JS, [x, y, w, h]) or {})
            return dict(last) if last.get("changed", 0) > 0.3 and last["colors"] > 3 else None

        try:
            poll(f"{app.title} painted on the canvas", painted)
        except AssertionError as error:
            raise AssertionError(f"{app.title} not painted: last seen {last}") from error
        ARTIFACTS.mkdir(exist_ok=True)
        name = app.image.split("/")[-1].replace(":", "-")
        page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"))
    finally:
        page.close()
