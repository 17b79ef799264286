"""What a user's ``auth_state`` carries to the spawner, and the one check every experiment
id passes before it becomes part of a path.

Every facility authenticator (LDAP, OpenID Connect) stores, at login and at each refresh::

    auth_state = {
        "experiments": ["mx-2026-042", "xfm-2026-007"],  # valid ids only, sorted
        "uid": 10001,        # POSIX ids from the directory, or None: the site default
        "gid": 10001,
        "groups": ["mx-staff", "exp-mx-2026-042"],   # the directory's groups, for the log
    }

The spawner (``spawner/data.py``) turns ``experiments`` into read-only mounts at
``/data/EXPERIMENT`` and writable ``/processed/EXPERIMENT`` areas, and runs the session as
``uid:gid``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

# an experiment id becomes a directory name: letters, digits, '.', '_', '-', never a
# leading dot or dash, never '..', never '/', at most 64 characters
EXPERIMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

EXPERIMENTS = "experiments"
UID = "uid"
GID = "gid"
GROUPS = "groups"


class InvalidExperiment(ValueError):
    """An experiment id that must never become part of a path."""


def validate_experiment_id(value: Any) -> str:
    """``value`` if it is a safe experiment id; raises :class:`InvalidExperiment` if not."""
    if not isinstance(value, str) or not EXPERIMENT_ID.fullmatch(value) or ".." in value:
        raise InvalidExperiment(f"experiment id {value!r} is not allowed")
    return value


def clean_experiments(
    values: Iterable[Any], log: logging.Logger | logging.LoggerAdapter, source: str
) -> list[str]:
    """The valid ids of ``values``, sorted and unique; each refused one is logged."""
    valid: set[str] = set()
    for value in values:
        try:
            valid.add(validate_experiment_id(value))
        except InvalidExperiment as err:
            log.warning("refused from %s: %s", source, err)
    return sorted(valid)


def posix_id(value: Any, minimum: int = 1000) -> int | None:
    """A uid or gid from the directory: an int >= ``minimum`` (never root), else None."""
    try:
        number = int(value[0] if isinstance(value, list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if number >= minimum else None
