"""Which experiment data folders a user's session gets, and as whom it runs.

Two sources, merged: the site YAML's ``data.experiments`` (each names a folder and the
users and JupyterHub groups who may see it), and the experiments the login found
(``auth_state["experiments"]``, see ``authenticators/experiments.py``), which live at
``data.root/EXPERIMENT`` and, when the site has one, ``data.processed_root/EXPERIMENT``.
Every id is validated again here, so a path is never built from an unchecked name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from deskhub.authenticators.experiments import (
    EXPERIMENTS,
    GID,
    UID,
    InvalidExperiment,
    posix_id,
    validate_experiment_id,
)

from .containerspec import DataMount

log = logging.getLogger(__name__)


def data_mounts_for(
    username: str, groups: Iterable[str], experiments: Mapping[str, Mapping[str, Any]]
) -> list[DataMount]:
    """The experiments whose ``users`` name the user or whose ``groups`` share one of theirs."""
    user_groups = set(groups)
    mounts = []
    for name, spec in sorted(experiments.items()):
        if username in spec.get("users", ()) or user_groups & set(spec.get("groups", ())):
            mounts.append(DataMount(experiment=name, source=spec["path"]))
    return mounts


@dataclass(frozen=True)
class Layout:
    """Where experiments live on every node (a shared filesystem, as at a facility)."""

    root: str = ""
    processed_root: str = ""


def login_mounts(
    experiment_ids: Iterable[Any],
    layout: Layout,
    exists: Callable[[str], bool] = lambda path: True,
) -> list[DataMount]:
    """Mounts for the experiments the login named: ``ROOT/ID`` read-only, and
    ``PROCESSED_ROOT/ID`` writable where it exists. An id that is not a safe name is
    refused and logged; an experiment whose folder is missing is left out and logged."""
    mounts: list[DataMount] = []
    if not layout.root:
        return mounts
    for value in experiment_ids:
        try:
            experiment = validate_experiment_id(value)
        except InvalidExperiment as err:
            log.warning("not mounted: %s", err)
            continue
        source = os.path.join(layout.root, experiment)
        if not exists(source):
            log.warning("experiment %s has no data folder %s: not mounted", experiment, source)
            continue
        mounts.append(DataMount(experiment, source))
        if layout.processed_root:
            processed = os.path.join(layout.processed_root, experiment)
            if exists(processed):
                mounts.append(DataMount(experiment, processed, processed=True))
    return mounts


def merge_mounts(*groups: Iterable[DataMount]) -> list[DataMount]:
    """One mount per target; the first source named for a target wins."""
    seen: dict[str, DataMount] = {}
    for group in groups:
        for mount in group:
            seen.setdefault(mount.target, mount)
    return sorted(seen.values(), key=lambda m: (m.processed, m.experiment))


def session_ids(
    auth_state: Mapping[str, Any] | None, default_uid: int, default_gid: int
) -> tuple[int, int]:
    """``(uid, gid)`` the session runs as: the directory's, else the site's default."""
    state = auth_state or {}
    uid = posix_id(state.get(UID))
    gid = posix_id(state.get(GID))
    return (uid or default_uid, gid or (default_gid if uid is None else uid))


def experiments_of(auth_state: Mapping[str, Any] | None) -> list[Any]:
    value = (auth_state or {}).get(EXPERIMENTS) or []
    return list(value) if isinstance(value, list | tuple) else []
