"""Secrets (an LDAP service account's password, an OIDC client secret) come from files of
their own, never from the site YAML; one reader for all of them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class SecretFileError(ValueError):
    """The secret's file cannot be used: one line naming the setting and the file."""


def read_secret(path: str, what: str, warn: Callable[[str], None] | None = None) -> str:
    """The file's first line. ``what`` names the setting in messages (e.g.
    ``auth.oidc.client_secret_file``); ``warn`` hears about a file others can read."""
    file = Path(path)
    try:
        text = file.read_text()
        mode = file.stat().st_mode
    except OSError as err:
        raise SecretFileError(f"{what} {path}: cannot read it ({err.strerror})") from None
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise SecretFileError(f"{what} {path} is empty")
    if mode & 0o077 and warn is not None:
        warn(f"deskhub: warning: {path} ({what}) is readable by others; chmod 600 it")
    return secret


def warn_on_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def stop_hub(message: str) -> NoReturn:
    """A site setting the hub cannot start with: one line on stderr, exit status 2."""
    print(f"deskhub: site configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)
