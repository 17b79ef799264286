"""Add deskhub's scripts to jupyter-remote-desktop-proxy's desktop page (its /desktop/).

Run with the Python whose site-packages hold jupyter-remote-desktop-proxy (the image's
venv), as root, at image build time: ``python3 install.py``. It copies the scripts next
to the package's static files (served at ``{base_url}desktop/static/``), adds a script tag
for each to the page template just before the viewer's own, and checks the result: the
rendered page loads each script before viewer.js, and viewer.js still has the hooks the
scripts rely on (a new jupyter-remote-desktop-proxy that changed them fails the build).
Running it twice changes nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jinja2
import jupyter_remote_desktop_proxy

HERE = Path(__file__).resolve().parent
SCRIPTS = ("deskhub-clipboard.js",)
VIEWER_TAG = '<script src="{{base_url}}desktop/static/dist/viewer.js"></script>'
# What deskhub-clipboard.js relies on in the (minified) viewer: it fills the panel's
# textarea with the server's clipboard, sends the textarea's text on `change`, and asks
# the VNC server to follow the browser window's size.
VIEWER_HOOKS = (
    'document.getElementById("clipboard-text").value=e.detail.text',
    'document.getElementById("clipboard-text").addEventListener("change"',
    "resizeSession=!0",
)


def tag(script: str) -> str:
    return f'<script src="{{{{base_url}}}}desktop/static/deskhub/{script}"></script>'


def install(package: Path) -> None:
    static = package / "static" / "deskhub"
    static.mkdir(exist_ok=True)
    for script in SCRIPTS:
        shutil.copyfile(HERE / script, static / script)
        (static / script).chmod(0o644)

    template = package / "templates" / "index.html"
    page = template.read_text()
    if page.count(VIEWER_TAG) != 1:
        sys.exit(f"{template}: expected one viewer script tag {VIEWER_TAG!r}")
    missing = [tag(script) for script in SCRIPTS if tag(script) not in page]
    if missing:
        indent = page[: page.index(VIEWER_TAG)].rsplit("\n", 1)[1]
        page = page.replace(VIEWER_TAG, f"\n{indent}".join([*missing, VIEWER_TAG]))
        template.write_text(page)


def check(package: Path) -> None:
    viewer = (package / "static" / "dist" / "viewer.js").read_text()
    for hook in VIEWER_HOOKS:
        if hook not in viewer:
            sys.exit(f"viewer.js lacks {hook!r}: check deskhub-clipboard.js against it")
    loader = jinja2.FileSystemLoader(str(package / "templates"))
    page = jinja2.Environment(loader=loader).get_template("index.html").render(base_url="/u/")
    viewer_at = page.index('src="/u/desktop/static/dist/viewer.js"')
    for script in SCRIPTS:
        at = page.find(f'src="/u/desktop/static/deskhub/{script}"')
        if not 0 <= at < viewer_at or page.count(f"deskhub/{script}") != 1:
            sys.exit(f"the desktop page does not load {script} once, before viewer.js")
        if (package / "static" / "deskhub" / script).read_bytes() != (HERE / script).read_bytes():
            sys.exit(f"{script} was not copied")
    print(f"deskhub desktop scripts installed into {package}: {', '.join(SCRIPTS)}")


def main() -> None:
    package = Path(jupyter_remote_desktop_proxy.__file__).resolve().parent
    install(package)
    check(package)


if __name__ == "__main__":
    main()
