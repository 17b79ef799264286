"""The site YAML's ``workshops`` section -> JupyterHub settings (handlers, services, roles).

```yaml
workshops:
  enabled: true          # the admin page, the join page, the REST API and the check
  check_interval: 5      # seconds between two checks: a workshop ends at most this late
  prepull_before: 3600   # seconds before its start that its images are pulled again
  max_size: 100          # the most participants an admin may allow in one workshop
  code_length: 8         # letters and digits of a join code
```

Workshops live in ``STATE_DIR/workshops.json``. JupyterHub deletes, at every start, the
roles that its configuration does not name, so the instructors' roles of the workshops in
that file are added to ``c.JupyterHub.load_roles`` here, and survive a restart.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .checker import __name__ as CHECKER
from .handlers import CHECK_SCOPE, WorkshopSettings, handlers
from .lifecycle import instructor_role
from .narrowing import WorkshopCatalogueFilter
from .store import read_workshops, shared

TEMPLATES = Path(__file__).parent / "templates"
SERVICE = "workshops"


def refuse_participant_passwords(store_path: Path, chained: Any = None) -> Any:
    """A ``post_auth_hook`` refusing a password login as a workshop participant (say,
    after someone signed up under a participant's name): they join with the code only."""

    async def hook(authenticator: Any, handler: Any, authentication: dict[str, Any]) -> Any:
        if shared(store_path).is_participant(authentication["name"]):
            authenticator.log.warning(
                "refused a password login as workshop participant %s", authentication["name"]
            )
            return None
        if chained is not None:
            result = chained(authenticator, handler, authentication)
            return await result if hasattr(result, "__await__") else result
        return authentication

    return hook


def _current(section: Any, key: str, default: Any) -> Any:
    return section.get(key, default)


def configure_workshops(c: Any, site: dict[str, Any], state: Path) -> None:
    options = site.get("workshops") or {}
    if not options.get("enabled", True):
        return
    store_path = state / "workshops.json"
    settings = WorkshopSettings(
        store_path=store_path,
        max_size=int(options.get("max_size", 100)),
        code_length=int(options.get("code_length", 8)),
        prepull_before=float(options.get("prepull_before", 3600)),
    )
    c.JupyterHub.extra_handlers = [
        *_current(c.JupyterHub, "extra_handlers", []),
        *handlers(settings),
    ]
    c.JupyterHub.template_paths = [*_current(c.JupyterHub, "template_paths", []), str(TEMPLATES)]
    c.JupyterHub.template_vars = {
        **_current(c.JupyterHub, "template_vars", {}),
        "deskhub_workshops": True,
    }
    c.DeskhubSpawner.catalogue_filter = WorkshopCatalogueFilter(
        store_path, _current(c.DeskhubSpawner, "catalogue_filter", None)
    )
    c.Authenticator.post_auth_hook = refuse_participant_passwords(
        store_path, _current(c.Authenticator, "post_auth_hook", None)
    )
    c.JupyterHub.custom_scopes = {
        **_current(c.JupyterHub, "custom_scopes", {}),
        CHECK_SCOPE: {"description": "End the workshops that are over; pre-pull their images."},
    }
    interval = float(options.get("check_interval", 5))
    c.JupyterHub.services = [
        *_current(c.JupyterHub, "services", []),
        {"name": SERVICE, "command": [sys.executable, "-m", CHECKER, f"--interval={interval:g}"]},
    ]
    c.JupyterHub.load_roles = [
        *_current(c.JupyterHub, "load_roles", []),
        {"name": "workshops-check", "scopes": [CHECK_SCOPE], "services": [SERVICE]},
        *(instructor_role(w) for w in _saved_workshops(store_path)),
    ]


def _saved_workshops(path: Path) -> list[Any]:
    """The workshops of ``path``; a file that cannot be read stops the hub with one line."""
    try:
        return list(read_workshops(path).values())
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(
            f"deskhub: {path} cannot be read ({type(err).__name__}: {err}); fix or move it",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
