"""The site YAML's ``workshops`` section -> JupyterHub settings (handlers, services, roles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def configure_workshops(c: Any, site: dict[str, Any], state: Path) -> None:
    """Nothing yet: workshops land with issue 5."""
