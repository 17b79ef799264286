"""Which experiment data folders a user may see."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .containerspec import DataMount


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
