"""A session on another host, in a real browser: the spawn page says which node and why,
JupyterLab and the MATE desktop come through the hub's proxy from that node; an admin
drains and undrains a node on the nodes page."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_desktop_in_browser import log_in, wait_for_desktop


def test_a_desktop_on_a_remote_node_in_the_browser(page: Page, multinode_hub, session_cluster):
    hub = multinode_hub
    log_in(page, hub)
    expect(page.locator("label[for=env-mx]")).to_contain_text("on nodes with beamline=mx")
    page.check("#env-mx")
    page.click("form#spawn_form input[type=submit], form#spawn_form button[type=submit]")

    page.wait_for_url(re.compile(r"/hub/spawn-pending/admin"), timeout=30_000)
    progress = page.locator("#progress-log")
    expect(progress).to_contain_text("Placed on node-c: ", timeout=30_000)
    expect(progress).to_contain_text("Starting the desktop container on node-c")
    page.wait_for_url(re.compile(r"/user/admin/lab"), timeout=120_000)
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=60_000)

    page.goto(f"{hub.url}/user/admin/desktop/")
    stats = wait_for_desktop(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "remote-desktop.png"))
    assert stats["panel_share"] > 0.8, stats
    # it really runs on node-c's engine, published on node-c's address
    container = session_cluster["node-c"].client().containers.get("deskhubmn-admin")
    bindings = container.attrs["NetworkSettings"]["Ports"]["8888/tcp"]
    assert [b["HostIp"] for b in bindings] == [session_cluster["node-c"].ip]
    hub.stop_server("admin")


def test_an_admin_drains_and_undrains_a_node_on_the_nodes_page(page: Page, multinode_hub):
    hub = multinode_hub
    log_in(page, hub)
    page.goto(f"{hub.url}/hub/admin")
    page.click("a.nav-link:has-text('Nodes')")
    page.wait_for_url(re.compile(r"/hub/nodes$"))
    row = page.locator("tr[data-node='node-a']")
    expect(row.locator(".node-state")).to_contain_text("in service")
    expect(page.locator("tr[data-node='node-b']")).to_contain_text("(TLS)")
    expect(page.locator("tr[data-node='node-c']")).to_contain_text("0 of 2 desktop slots")
    row.locator("button.deskhub-drain").click()
    expect(page.locator("tr[data-node='node-a'] .node-state")).to_contain_text("drained")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "nodes-page.png"))
    assert hub.api("GET", "/nodes/node-a").json()["draining"] is True
    page.locator("tr[data-node='node-a'] button.deskhub-drain").click()
    expect(page.locator("tr[data-node='node-a'] .node-state")).to_contain_text("in service")
    assert hub.api("GET", "/nodes/node-a").json()["draining"] is False
