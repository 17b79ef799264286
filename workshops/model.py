"""A workshop as plain data: who may join, when, what they may start, and the rules for it.

Everything here is pure (no hub, no Docker): validation of what an admin or a participant
sends raises :class:`WorkshopError`, whose message is the one sentence the user sees.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from deskhub.spawner.units import parse_memory

# no 0/O, 1/I/L: a code read aloud or copied from a projector is typed right
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
WORKSHOP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,28}[a-z0-9]$")
PARTICIPANT_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,18}[a-z0-9])?$")
SETTINGS = ("name", "size", "start", "end", "environments", "cpu", "memory", "instructors")
PATCHABLE = ("end", "size")


class WorkshopError(ValueError):
    """Input that cannot be used; the message is one sentence for the user."""


def group_name(workshop: str) -> str:
    """The JupyterHub group of a workshop's participants."""
    return f"workshop-{workshop}"


def role_name(workshop: str) -> str:
    """The JupyterHub role of a workshop's instructors."""
    return f"workshop-{workshop}-instructors"


def participant_username(workshop: str, name: str) -> str:
    """The hub user a participant becomes, e.g. ``intro-alice`` (workshop first, so the
    admin page lists a workshop's participants together)."""
    return f"{workshop}-{name}"


def new_code(taken: Iterable[str] = (), length: int = CODE_LENGTH) -> str:
    """A random join code of unambiguous letters and digits, not one of ``taken``."""
    taken = set(taken)
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))
        if code not in taken:
            return code


def normalize_code(text: str) -> str:
    """What a participant typed, as a code: upper case, without spaces and dashes."""
    return re.sub(r"[\s-]+", "", text).upper()


def normalize_participant_name(text: str) -> str:
    """A participant's chosen name, checked: lower case, 1 to 20 letters, digits or '-'."""
    name = text.strip().lower()
    if not PARTICIPANT_NAME.match(name):
        raise WorkshopError(
            "Choose a name of 1 to 20 letters, digits or '-', starting with a letter"
            " (for example: alice or jo-smith)."
        )
    return name


def parse_time(value: Any, what: str) -> datetime:
    """An ISO 8601 time with its time zone (``2026-11-26T09:00:00Z``), as UTC."""
    if not isinstance(value, str):
        raise WorkshopError(f"Give the {what} time as text, e.g. 2026-11-26T09:00:00Z.")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise WorkshopError(
            f"The {what} time {value!r} is not a date and time like 2026-11-26T09:00:00Z."
        ) from None
    if moment.tzinfo is None:
        raise WorkshopError(
            f"Give the {what} time with its time zone, e.g. 2026-11-26T09:00:00Z or +10:00."
        )
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """A time as participants and admins read it: ``2026-11-26 09:00 UTC``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Workshop:
    """One workshop. ``cpu`` and ``memory`` (bytes) cap each participant's session;
    ``participants`` are the names they chose, in the order they joined."""

    name: str
    size: int
    start: datetime
    end: datetime
    environments: tuple[str, ...]
    code: str
    cpu: float | None = None
    memory: int | None = None
    instructors: tuple[str, ...] = ()
    participants: tuple[str, ...] = ()
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    prepulled_before_start: bool = False

    @property
    def group(self) -> str:
        return group_name(self.name)

    @property
    def role(self) -> str:
        return role_name(self.name)

    def usernames(self) -> list[str]:
        return [participant_username(self.name, p) for p in self.participants]

    def state(self, now: datetime) -> str:
        """``scheduled`` (before its start), ``running``, or ``ended``."""
        if now >= self.end:
            return "ended"
        return "running" if now >= self.start else "scheduled"

    def prepull_due(self, now: datetime, before: float) -> bool:
        """Whether its images should be pulled again now: ``before`` seconds before its
        start (once; the pull at its creation does not count unless it was that late)."""
        starts_soon = now >= self.start - timedelta(seconds=before)
        return not self.prepulled_before_start and starts_soon and self.state(now) != "ended"

    def join_refusal(self, name: str, now: datetime) -> str | None:
        """Why ``name`` may not join now (one sentence), or None."""
        state = self.state(now)
        if state == "scheduled":
            return f"This workshop starts at {format_time(self.start)}; join then."
        if state == "ended":
            return "This workshop has ended."
        if name in self.participants:
            return f"The name {name!r} is already taken in this workshop; choose another one."
        if len(self.participants) >= self.size:
            return "This workshop is full."
        return None

    def with_participant(self, name: str) -> Workshop:
        return replace(self, participants=(*self.participants, name))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "start": iso(self.start),
            "end": iso(self.end),
            "environments": list(self.environments),
            "code": self.code,
            "cpu": self.cpu,
            "memory": self.memory,
            "instructors": list(self.instructors),
            "participants": list(self.participants),
            "created": iso(self.created),
            "prepulled_before_start": self.prepulled_before_start,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Workshop:
        return cls(
            name=data["name"],
            size=int(data["size"]),
            start=parse_time(data["start"], "start"),
            end=parse_time(data["end"], "end"),
            environments=tuple(data["environments"]),
            code=data["code"],
            cpu=data.get("cpu"),
            memory=data.get("memory"),
            instructors=tuple(data.get("instructors", ())),
            participants=tuple(data.get("participants", ())),
            created=parse_time(data["created"], "creation"),
            prepulled_before_start=bool(data.get("prepulled_before_start", False)),
        )


def _size(value: Any, max_size: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_size:
        raise WorkshopError(f"The size must be a whole number from 1 to {max_size}.")
    return value


def _cpu(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        cpu = float(value)
    except (TypeError, ValueError):
        cpu = 0.0
    if isinstance(value, bool) or not 0 < cpu <= 256:
        raise WorkshopError("The CPU cap must be a number of CPUs above 0, e.g. 0.5 or 2.")
    return cpu


def _memory(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        memory = parse_memory(value)
    except (TypeError, ValueError):
        memory = 0
    if isinstance(value, bool) or memory < 64 * 1024**2:
        raise WorkshopError("The memory cap must be a size of at least 64M, e.g. 512M or 2G.")
    return memory


def _names(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[\s,]+", value) if v]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise WorkshopError(f"Give the {what} as a list of names.")
    return tuple(dict.fromkeys(v.strip() for v in value if v.strip()))


def workshop_from_request(
    body: Mapping[str, Any],
    *,
    now: datetime,
    environments: Iterable[str],
    is_user: Callable[[str], bool],
    taken_codes: Iterable[str] = (),
    max_size: int = 100,
    code_length: int = CODE_LENGTH,
) -> Workshop:
    """A new workshop from what an admin sent, checked against the catalogue's
    ``environments`` and the hub's users (``is_user``, for the instructors)."""
    unknown = [key for key in body if key not in SETTINGS]
    if unknown:
        raise WorkshopError(f"{unknown[0]!r} is not a workshop setting; use {', '.join(SETTINGS)}.")
    missing = [key for key in ("name", "size", "start", "end", "environments") if key not in body]
    if missing:
        raise WorkshopError(f"A workshop needs {', '.join(missing)}.")
    name = body["name"]
    if not isinstance(name, str) or not WORKSHOP_NAME.match(name):
        raise WorkshopError(
            "The workshop name must be 2 to 30 lowercase letters, digits or '-',"
            " starting with a letter (for example: intro-xrf)."
        )
    start, end = parse_time(body["start"], "start"), parse_time(body["end"], "end")
    if end <= start:
        raise WorkshopError("The end must come after the start.")
    if end <= now:
        raise WorkshopError("The end is already past.")
    known = list(environments)
    wanted = _names(body["environments"], "environments")
    if not wanted:
        raise WorkshopError("Choose at least one environment.")
    unknown_envs = [env for env in wanted if env not in known]
    if unknown_envs:
        raise WorkshopError(
            f"There is no environment named {unknown_envs[0]!r}; choose from {', '.join(known)}."
        )
    instructors = _names(body.get("instructors", []), "instructors")
    strangers = [i for i in instructors if not is_user(i)]
    if strangers:
        raise WorkshopError(f"There is no hub user named {strangers[0]!r} to be an instructor.")
    return Workshop(
        name=name,
        size=_size(body["size"], max_size),
        start=start,
        end=end,
        environments=wanted,
        code=new_code(taken_codes, code_length),
        cpu=_cpu(body.get("cpu")),
        memory=_memory(body.get("memory")),
        instructors=instructors,
        created=now,
    )


def patched(workshop: Workshop, body: Mapping[str, Any], max_size: int = 100) -> Workshop:
    """``workshop`` with an admin's change of its ``end`` or ``size``.

    An end in the past ends the workshop at the next check.
    """
    if not body or any(key not in PATCHABLE for key in body):
        raise WorkshopError('Send {"end": "2026-11-26T17:00:00Z"} and/or {"size": 40}.')
    changed = workshop
    if "end" in body:
        end = parse_time(body["end"], "end")
        if end <= workshop.start:
            raise WorkshopError("The end must come after the start.")
        changed = replace(changed, end=end)
    if "size" in body:
        size = _size(body["size"], max_size)
        if size < len(workshop.participants):
            raise WorkshopError(
                f"{len(workshop.participants)} participants have joined already;"
                " the size cannot be smaller."
            )
        changed = replace(changed, size=size)
    return changed
