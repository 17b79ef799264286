"""Workshops kept in ``STATE_DIR/workshops.json``: read at hub start, rewritten atomically
(a temporary file renamed over the old one) after every change, so a hub restart or a crash
mid-write never loses or half-writes them. The file holds join codes: mode 0600.

One store per file and process (:func:`shared`): the hub's handlers, its periodic check
and the spawners' catalogue filter all see the same workshops.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .model import Workshop, participant_username

VERSION = 1


def read_workshops(path: Path) -> dict[str, Workshop]:
    """The workshops in ``path`` (none if it does not exist), by name."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {entry["name"]: Workshop.from_json(entry) for entry in data.get("workshops", [])}


def write_workshops(path: Path, workshops: dict[str, Workshop]) -> None:
    """Replace ``path`` with ``workshops``, atomically."""
    text = json.dumps(
        {"version": VERSION, "workshops": [w.to_json() for w in workshops.values()]}, indent=1
    )
    fd, tmp = tempfile.mkstemp(prefix=".workshops-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class WorkshopStore:
    """The workshops of one file, in memory, written through on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._workshops = read_workshops(path)
        self.ending: set[str] = set()  # being ended now (servers stopping, users deleted)

    def all(self) -> list[Workshop]:
        return sorted(self._workshops.values(), key=lambda w: (w.start, w.name))

    def get(self, name: str) -> Workshop | None:
        return self._workshops.get(name)

    def by_code(self, code: str) -> Workshop | None:
        return next((w for w in self._workshops.values() if w.code == code), None)

    def codes(self) -> list[str]:
        return [w.code for w in self._workshops.values()]

    def of_user(self, username: str) -> Workshop | None:
        """The workshop whose participant ``username`` is, if any."""
        for workshop in self._workshops.values():
            prefix = f"{workshop.name}-"
            if username.startswith(prefix) and username in workshop.usernames():
                return workshop
        return None

    def is_participant(self, username: str) -> bool:
        return self.of_user(username) is not None

    def put(self, workshop: Workshop) -> None:
        changed = {**self._workshops, workshop.name: workshop}
        write_workshops(self.path, changed)
        self._workshops = changed

    def remove(self, name: str) -> None:
        changed = {k: v for k, v in self._workshops.items() if k != name}
        write_workshops(self.path, changed)
        self._workshops = changed
        self.ending.discard(name)


_STORES: dict[Path, WorkshopStore] = {}


def shared(path: str | Path) -> WorkshopStore:
    """The process's store for ``path``."""
    key = Path(path).resolve()
    if key not in _STORES:
        _STORES[key] = WorkshopStore(key)
    return _STORES[key]


__all__ = ["WorkshopStore", "participant_username", "read_workshops", "shared", "write_workshops"]
