"""The site YAML's ``auth`` section -> the authenticator's settings on ``c``.

Each login kind has a ``configure(c, site, state)`` of its own (``native``, ``ldap``,
``oidc``); this module picks it and sets what every kind shares: encrypted ``auth_state``
and how often a user's experiments are refreshed.
"""

from __future__ import annotations

import importlib
import os
import secrets
from pathlib import Path
from typing import Any

CRYPT_KEY_FILE = "crypt-key"
KINDS = {
    "native": "deskhub.authenticators.native",
    "ldap": "deskhub.authenticators.ldap",
    "oidc": "deskhub.authenticators.oidc",
}


def crypt_keys(state: Path) -> list[bytes]:
    """The keys that encrypt ``auth_state`` in the hub database.

    ``JUPYTERHUB_CRYPT_KEY`` (hex or base64 32-byte keys, ``;``-separated, newest first)
    wins; else ``STATE_DIR/crypt-key``, generated on first start (mode 0600), like the
    cookie secret. Losing the key loses nothing but the stored experiments: users get them
    again at their next login.
    """
    if os.environ.get("JUPYTERHUB_CRYPT_KEY"):
        return []  # JupyterHub's CryptKeeper reads the variable itself
    path = state / CRYPT_KEY_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return [bytes.fromhex(path.read_text().strip())]


def configure_auth(c: Any, site: dict[str, Any], state: Path) -> None:
    auth = site["auth"]
    keys = crypt_keys(state)
    if keys:
        c.CryptKeeper.keys = keys
    c.Authenticator.enable_auth_state = True
    c.Authenticator.auth_refresh_age = auth["refresh_age"]
    # a user's experiments are asked for again before every spawn
    c.Authenticator.refresh_pre_spawn = True
    c.Authenticator.admin_users = set(site["hub"]["admin_users"])
    module = importlib.import_module(KINDS[auth["type"]])
    module.configure(c, site, state)
