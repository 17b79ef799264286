"""Where a user's experiments come from, chosen by the site YAML's ``auth.experiments``.

``ldap-groups`` (the default)
    the user's directory groups whose name matches a pattern, e.g. ``exp-mx-2026-042``
    -> ``mx-2026-042`` with ``^exp-(?P<id>.+)$``.
``http``
    a facility's user portal: ``GET`` a URL template such as
    ``https://portal.example.org/api/users/{username}/proposals`` with a bearer token read
    from a file; the answer is a JSON list of ids, or of objects with an id field.
``file``
    a YAML mapping (``alice: [mx-2026-042]``) or a CSV file of ``username,experiment``
    rows, re-read when it changes: for small sites.

Each source returns the raw values it found; the authenticator passes them through
:func:`deskhub.authenticators.experiments.clean_experiments`, which drops (and logs) any
value that is not a safe experiment id. A source that cannot answer raises
:class:`SourceError`; the authenticator then keeps the experiments the user already had
(none at a first login) and logs why.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import yaml

from .experiments import clean_experiments

DEFAULT_PATTERN = r"^exp-(?P<id>.+)$"
DEFAULT_TIMEOUT = 10.0


class SourceError(Exception):
    """The source could not say which experiments the user has (and why)."""


# -- pure parsing and mapping -------------------------------------------------------------
def experiments_from_groups(groups: Iterable[str], pattern: str | re.Pattern[str]) -> list[str]:
    """The experiment ids in ``groups``' names: the ``id`` named group of ``pattern`` where
    it has one, else the whole match. Names that do not match are not experiments."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    found = []
    for name in groups:
        match = regex.search(name)
        if match:
            found.append(match.group("id") if "id" in regex.groupindex else match.group(0))
    return found


def experiments_from_json(data: Any, id_field: str = "id", items_field: str = "") -> list[Any]:
    """The ids in a portal's answer: a list of ids, or of objects carrying ``id_field``;
    ``items_field`` names the list inside an object answer (``{"proposals": [...]}``).
    Raises :class:`SourceError` on any other shape."""
    if items_field:
        if not isinstance(data, Mapping) or items_field not in data:
            raise SourceError(f"the answer has no {items_field!r} field")
        data = data[items_field]
    if not isinstance(data, list):
        raise SourceError(f"expected a JSON list, got {type(data).__name__}")
    ids = []
    for item in data:
        if isinstance(item, Mapping):
            if id_field not in item:
                raise SourceError(f"an entry has no {id_field!r} field: {item!r:.80}")
            ids.append(item[id_field])
        else:
            ids.append(item)
    # numbers are ids too (proposal 42 -> "42"); anything else is left to the validator
    return [str(i) if isinstance(i, int) and not isinstance(i, bool) else i for i in ids]


def table_from_yaml(text: str) -> dict[str, list[Any]]:
    """``{username: [experiment, ...]}`` from a YAML mapping of usernames to lists (or to
    one id)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SourceError(f"not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SourceError("the top level must map usernames to lists of experiments")
    table: dict[str, list[Any]] = {}
    for user, values in data.items():
        if values is None:
            values = []
        elif not isinstance(values, list):
            values = [values]
        table[str(user)] = list(values)
    return table


def table_from_csv(text: str) -> dict[str, list[Any]]:
    """``{username: [experiment, ...]}`` from ``username,experiment`` rows; blank lines,
    ``#`` comments and a ``username,experiment`` header are skipped."""
    table: dict[str, list[Any]] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2 or not cells[0]:
            raise SourceError(f"line {number}: expected 'username,experiment'")
        if number == 1 and cells[0].lower() in ("user", "username"):
            continue
        table.setdefault(cells[0], []).append(cells[1])
    return table


def portal_url(template: str, username: str) -> str:
    """The portal URL for ``username``: ``{username}`` replaced, URL-quoted (no ``/``)."""
    return template.replace("{username}", quote(username, safe=""))


# -- the sources ------------------------------------------------------------------------
class ExperimentSource:
    """Says which experiments a user has; ``groups`` are their directory groups' names."""

    kind = ""

    def experiments(self, username: str, groups: Sequence[str]) -> list[Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind


@dataclass
class GroupSource(ExperimentSource):
    """Experiments are the user's groups whose name matches ``pattern``."""

    pattern: str = DEFAULT_PATTERN
    kind = "ldap-groups"

    def __post_init__(self) -> None:
        self._regex = re.compile(self.pattern)

    def experiments(self, username: str, groups: Sequence[str]) -> list[Any]:
        return experiments_from_groups(groups, self._regex)

    def describe(self) -> str:
        return f"ldap-groups {self.pattern!r}"


@dataclass
class HTTPSource(ExperimentSource):
    """Experiments come from a portal: ``GET url`` with ``Authorization: Bearer TOKEN``."""

    url: str
    token_file: str = ""
    timeout: float = DEFAULT_TIMEOUT
    id_field: str = "id"
    items_field: str = ""
    ca_file: str = ""
    kind = "http"

    def _token(self) -> str:
        if not self.token_file:
            return ""
        try:
            return Path(self.token_file).read_text().strip()
        except OSError as err:
            raise SourceError(f"cannot read token file {self.token_file}: {err.strerror}") from err

    def experiments(self, username: str, groups: Sequence[str]) -> list[Any]:
        url = portal_url(self.url, username)
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = requests.get(
                url, headers=headers, timeout=self.timeout, verify=self.ca_file or True
            )
        except requests.RequestException as err:
            raise SourceError(f"GET {url} failed: {err}") from err
        if response.status_code == 404:
            return []  # the portal does not know the user: no experiments
        if response.status_code != 200:
            raise SourceError(f"GET {url} answered HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError as err:
            raise SourceError(f"GET {url} did not answer JSON") from err
        try:
            return experiments_from_json(data, self.id_field, self.items_field)
        except SourceError as err:
            raise SourceError(f"GET {url}: {err}") from err

    def describe(self) -> str:
        return f"http {self.url}"


@dataclass
class FileSource(ExperimentSource):
    """Experiments come from a YAML (``.yaml``/``.yml``) or CSV file, re-read on change."""

    path: str
    kind = "file"
    _cache: tuple[float, dict[str, list[Any]]] | None = field(default=None, init=False, repr=False)

    def table(self) -> dict[str, list[Any]]:
        try:
            mtime = os.stat(self.path).st_mtime
            if self._cache and self._cache[0] == mtime:
                return self._cache[1]
            text = Path(self.path).read_text()
        except OSError as err:
            raise SourceError(f"cannot read {self.path}: {err.strerror}") from err
        parse = table_from_yaml if self.path.endswith((".yaml", ".yml")) else table_from_csv
        try:
            table = parse(text)
        except SourceError as err:
            raise SourceError(f"{self.path}: {err}") from err
        self._cache = (mtime, table)
        return table

    def experiments(self, username: str, groups: Sequence[str]) -> list[Any]:
        return list(self.table().get(username, []))

    def describe(self) -> str:
        return f"file {self.path}"


SOURCES: dict[str, Callable[..., ExperimentSource]] = {
    "ldap-groups": GroupSource,
    "http": HTTPSource,
    "file": FileSource,
}


def make_source(settings: Mapping[str, Any] | None) -> ExperimentSource:
    """The source the site YAML's ``auth.experiments`` section describes (already checked
    against the schema); ``ldap-groups`` with the default pattern when it is empty."""
    settings = dict(settings or {})
    kind = settings.pop("source", "ldap-groups")
    if kind not in SOURCES:
        raise ValueError(f"unknown experiment source {kind!r}")
    factory = SOURCES[kind]
    accepted = {f.name for f in fields(factory) if f.init} if is_dataclass(factory) else set()
    stray = sorted(set(settings) - accepted)
    if stray:
        raise ValueError(
            f"'auth.experiments.{stray[0]}' is not a setting of the {kind} source"
            f" (it takes {', '.join(sorted(accepted)) or 'nothing'})"
        )
    return factory(**settings)


async def resolve_experiments(
    source: ExperimentSource,
    username: str,
    groups: Sequence[str],
    previous: Sequence[Any] | None,
    log: logging.Logger | logging.LoggerAdapter,
) -> list[str]:
    """The user's valid experiment ids from ``source`` (asked in a thread: a portal may be
    slow); when it fails, ``previous`` (what the last login or refresh found; none at a
    first login), so an outage of the portal does not take data away mid-experiment."""
    where = f"{source.describe()} for {username}"
    try:
        found = await asyncio.to_thread(source.experiments, username, list(groups))
    except SourceError as err:
        kept = list(previous or [])
        log.error("experiments from %s failed: %s; keeping %s", where, err, kept)
        return clean_experiments(kept, log, where)
    return clean_experiments(found, log, where)
