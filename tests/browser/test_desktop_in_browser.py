"""What a researcher does, in a real browser: log in, pick an environment, run a cell in
JupyterLab, open the MATE desktop."""

from __future__ import annotations

import re
import time

from playwright.sync_api import Page, expect

from tests.browser.conftest import ARTIFACTS


def log_in(page: Page, hub) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", hub.admin_password)
    page.click("input[type=submit], button[type=submit]")


def test_login_spawn_notebook_and_desktop(page: Page, hub):
    log_in(page, hub)
    # the spawn page lists the environments with what they need
    expect(page.locator("label.deskhub-env")).to_have_count(5)
    expect(page.locator("label[for=env-xfm]")).to_contain_text("Needs 0.25 CPUs, 1 GiB memory")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "spawn-page.png"))
    page.check("#env-desktop")
    page.click("form#spawn_form input[type=submit], form#spawn_form button[type=submit]")

    # readable progress: where the session goes and why, then JupyterLab
    page.wait_for_url(re.compile(r"/hub/spawn-pending/admin"), timeout=30_000)
    expect(page.locator("#progress-log")).to_contain_text("Placed on local: ", timeout=30_000)
    expect(page.locator("#progress-log")).to_contain_text("image already there")
    page.screenshot(path=str(ARTIFACTS / "spawn-progress.png"))
    page.wait_for_url(re.compile(r"/user/admin/lab"), timeout=120_000)
    launcher = page.locator(".jp-Launcher")
    expect(launcher).to_be_visible(timeout=60_000)
    expect(
        launcher.locator(
            ".jp-LauncherCard[title='Desktop'], .jp-LauncherCard:has-text('Desktop')"
        ).first
    ).to_be_visible()

    # run a cell
    launcher.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    expect(cell).to_be_visible(timeout=60_000)
    # the status bar says the kernel is connected and idle before the cell is run
    expect(page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle"))).to_be_visible(
        timeout=60_000
    )
    cell.click()
    page.keyboard.type("print(6 * 7)")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-OutputArea-output").first).to_have_text("42", timeout=60_000)

    # the desktop, through noVNC
    page.goto(f"{hub.url}/user/admin/desktop/")
    canvas = page.locator("canvas").first
    expect(canvas).to_be_visible(timeout=60_000)
    stats = wait_for_desktop(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "mate-desktop.png"))
    assert stats["colors"] > 20, stats
    assert stats["panel_share"] > 0.8, stats
    # MATE's panel is drawn: the window tree of the desktop's X server has it
    result = hub.container("admin").exec_run(
        ["sh", "-c", "DISPLAY=$(ls /tmp/.X11-unix | sed 's/X/:/' | head -1) xwininfo -root -tree"],
        user="1000",
    )
    assert b"mate-panel" in result.output.lower() or b"top panel" in result.output.lower()
    hub.stop_server("admin")


PIXELS_JS = """
() => {
  const canvas = document.querySelector('canvas');
  if (!canvas || !canvas.width) return null;
  const ctx = canvas.getContext('2d');
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const colors = new Set();
  for (let i = 0; i < data.length; i += 4 * 97) {
    colors.add(data[i] << 16 | data[i+1] << 8 | data[i+2]);
  }
  // the top 20 rows: MATE's top panel is one flat colour across the screen
  const counts = new Map();
  let total = 0;
  for (let y = 2; y < 20; y += 3) for (let x = 0; x < canvas.width; x += 7) {
    const i = (y * canvas.width + x) * 4;
    const c = data[i] << 16 | data[i+1] << 8 | data[i+2];
    counts.set(c, (counts.get(c) || 0) + 1); total++;
  }
  const top = Math.max(...counts.values());
  // the desktop area (caja draws the background): share of pure black pixels
  let black = 0, seen = 0;
  for (let y = 80; y < canvas.height - 40; y += 11) for (let x = 0; x < canvas.width; x += 13) {
    const i = (y * canvas.width + x) * 4;
    if (data[i] + data[i+1] + data[i+2] === 0) black++;
    seen++;
  }
  return {width: canvas.width, height: canvas.height, colors: colors.size,
          panel_share: top / total, black_share: black / seen};
}
"""


def wait_for_desktop(page: Page, timeout: float = 90) -> dict:
    """Canvas statistics once the desktop is drawn (not the connect screen, not blank)."""
    deadline = time.monotonic() + timeout
    stats = None
    while time.monotonic() < deadline:
        stats = page.evaluate(PIXELS_JS)
        if stats and stats["colors"] > 20 and stats["black_share"] < 0.5:
            return stats
        time.sleep(1)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "desktop-not-drawn.png"))
    raise AssertionError(f"desktop never drawn: {stats}")
