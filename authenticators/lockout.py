"""What happens to the sessions of a user the directory no longer vouches for (blocked,
expired, disabled, no longer allowed): every running server stops at once, its route
first, so nothing of it stays reachable."""

from __future__ import annotations

import logging
from typing import Any


async def stop_servers(
    user: Any, handler: Any, log: logging.Logger | logging.LoggerAdapter
) -> None:
    """Stop every running (not starting) server of ``user``, a JupyterHub ``User``."""
    for name, spawner in list(user.spawners.items()):
        if not spawner.active or spawner.pending:
            continue
        log.warning("stopping %s: its user may no longer log in", spawner._log_name)
        proxy = getattr(handler, "proxy", None)
        if proxy is not None:
            try:
                await proxy.delete_user(user, name)
            except Exception as err:  # the route goes with the proxy's next check
                log.warning("could not remove the route of %s: %s", user.name, err)
        await user.stop(name)
