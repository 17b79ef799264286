"""A workshop, in a real browser: the admin creates it on /hub/workshops, 20 participants
join with its code and start their sessions through the REST API, the instructor opens
one participant's desktop, a participant trying another's gets 403, and at the end time
every session, account and home is gone."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_desktop_in_browser import log_in, wait_for_desktop
from tests.conftest import running
from tests.harness import Hub
from tests.integration.test_workshops import (
    WS_NETWORK,
    WS_PREFIX,
    home_volumes,
    iso,
    joined,
    participant_api,
    sign_up,
    wait_for,
    workshop_site,
)

pytestmark = [pytest.mark.docker, pytest.mark.browser]

PARTICIPANTS = [f"p{i:02d}" for i in range(20)]
# 20 sessions reserve 20 x CPU_CAP (1.6) of the node's 2 CPUs: room is left for another
# session; a smaller cap starves JupyterLab's and MATE's start (0.05 took 115 s for 20)
CPU_CAP = 0.08
INSTRUCTOR, INSTRUCTOR_PASSWORD = "ivy", "instructor-password-42"

LOCAL_TIME_JS = """
(minutes) => {
  const d = new Date(Date.now() + minutes * 60000);
  const p = (n) => String(n).padStart(2, "0");
  const day = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
  return `${day}T${p(d.getHours())}:${p(d.getMinutes())}`;
}
"""


@pytest.fixture(scope="module")
def ws_hub(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("workshops-browser-hub")
    with running(Hub(work, workshop_site(), prefix=WS_PREFIX, network=WS_NETWORK)) as hub:
        yield hub


def create_in_browser(page: Page, hub: Hub) -> str:
    """The admin creates the workshop on /hub/workshops; returns its join code."""
    log_in(page, hub)
    page.wait_for_url("**/hub/spawn*")
    page.click("a.nav-link:text-is('Workshops')")
    page.wait_for_url("**/hub/workshops")
    page.fill("#ws-name", "class")
    page.fill("#ws-size", str(len(PARTICIPANTS)))
    page.fill("#ws-start", page.evaluate(LOCAL_TIME_JS, -1))
    page.fill("#ws-end", page.evaluate(LOCAL_TIME_JS, 60))
    page.check("#ws-env-desktop")
    page.fill("#ws-cpu", str(CPU_CAP))
    page.fill("#ws-memory", "512M")
    page.fill("#ws-instructors", INSTRUCTOR)
    page.click("#ws-create")
    code = page.locator("#workshop-code")
    expect(code).to_have_text(re.compile(r"^[A-HJ-NP-Z2-9]{8}$"), timeout=30_000)
    row = page.locator("tr[data-workshop=class]")
    expect(row.locator(".workshop-state")).to_have_text("running")
    expect(row.locator(".workshop-participants")).to_contain_text(f"0 of {len(PARTICIPANTS)}")
    # the pre-pull finds the image on the (only) node
    for _ in range(60):
        if "images ready on 1 of 1 nodes" in row.locator(".workshop-images").inner_text():
            break
        time.sleep(1)
        page.reload()
    expect(row.locator(".workshop-images")).to_have_text("images ready on 1 of 1 nodes")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "workshops-page.png"))
    return code.inner_text()


def test_a_workshop_of_twenty(browser: Browser, page: Page, ws_hub: Hub):
    hub = ws_hub
    began = time.monotonic()
    sign_up(hub, INSTRUCTOR, INSTRUCTOR_PASSWORD)
    instructor = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        ipage = instructor.new_page()
        ipage.goto(f"{hub.url}/hub/login")
        ipage.fill("input[name=username]", INSTRUCTOR)
        ipage.fill("input[name=password]", INSTRUCTOR_PASSWORD)
        ipage.click("input[type=submit], button[type=submit]")
        ipage.wait_for_url("**/hub/spawn*")  # now a hub user, who can be an instructor

        code = create_in_browser(page, hub)

        # 20 people join with the code and start their sessions through the REST API
        with ThreadPoolExecutor(4) as pool:
            sessions = dict(
                zip(
                    PARTICIPANTS,
                    pool.map(lambda n: joined(hub, code, n), PARTICIPANTS),
                    strict=True,
                )
            )
        spawn_began = time.monotonic()
        for name, session in sessions.items():
            started = participant_api(
                hub, session, "POST", f"/users/class-{name}/server", data="{}"
            )
            assert started.status_code in (201, 202), started.text
        for name in PARTICIPANTS:
            hub.wait_ready(f"class-{name}", timeout=240)
        spawned = time.monotonic() - spawn_began
        print(f"20 sessions ready in {spawned:.0f} s")
        container = hub.docker.containers.get(f"{WS_PREFIX}-class-2dp07")
        assert container.attrs["HostConfig"]["NanoCpus"] == int(CPU_CAP * 1e9)
        assert container.attrs["HostConfig"]["Memory"] == 512 * 1024**2

        # a participant cannot open another one's server
        other = sessions["p01"].get(f"{hub.url}/user/class-p00/lab", timeout=60)
        assert other.status_code == 403, other.url

        # the instructor opens p00's desktop: JupyterHub asks to authorize, then noVNC
        ipage.goto(f"{hub.url}/user/class-p00/desktop/")
        ipage.click("button:has-text('Authorize')")
        ipage.wait_for_url("**/user/class-p00/desktop/**")
        expect(ipage.locator("canvas").first).to_be_visible(timeout=60_000)
        expect(ipage.locator("#status")).to_have_text("Connected", timeout=90_000)
        connected = time.monotonic()
        # MATE draws its desktop within the session's CPU cap (here 0.08 of a CPU)
        stats = wait_for_desktop(ipage, timeout=150)
        print(f"instructor's desktop drawn {time.monotonic() - connected:.0f} s after connecting")
        ipage.screenshot(path=str(ARTIFACTS / "workshop-instructor-desktop.png"))
        assert stats["panel_share"] > 0.8, stats
    finally:
        instructor.close()

    # the end: its time, moved to now; the workshops service does the rest
    volumes = home_volumes(hub)
    assert len(volumes) >= len(PARTICIPANTS)
    ending = time.monotonic()
    response = hub.api("PATCH", "/workshops/class", data=json.dumps({"end": iso(0)}))
    assert response.status_code == 200, response.text
    wait_for(
        "the end of the workshop",
        lambda: hub.api("GET", "/workshops/class").status_code == 404,
        90,
        hub,
    )
    print(f"workshop ended in {time.monotonic() - ending:.0f} s")
    users = {u["name"] for u in hub.api("GET", "/users").json()}
    assert not {u for u in users if u.startswith("class-")}
    assert not [c for c in hub.containers() if c.name.startswith(f"{WS_PREFIX}-class-")]
    assert not {v for v in home_volumes(hub) if v.startswith(f"{WS_PREFIX}-home-class-")}
    assert participant_api(hub, sessions["p00"], "GET", "/user").status_code == 403
    page.goto(f"{hub.url}/hub/workshops")
    expect(page.locator("#workshops-table")).to_contain_text("No workshops.")
    print(f"workshop test took {time.monotonic() - began:.0f} s")
