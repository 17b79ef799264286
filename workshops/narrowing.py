"""What a participant may start: the workshop's environments, with their needs capped.

:class:`WorkshopCatalogueFilter` is ``c.DeskhubSpawner.catalogue_filter``; everyone who is
not a workshop participant keeps the catalogue unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deskhub.spawner.catalogue import Catalogue

from .model import Workshop
from .store import shared

CatalogueFilter = Callable[[Any, Catalogue], Catalogue]


def narrow(catalogue: Catalogue, workshop: Workshop) -> Catalogue:
    """The environments of ``catalogue`` the workshop allows, in the workshop's order, each
    needing at most the workshop's ``cpu`` and ``memory``; the first is the default (a
    spawn that names no environment gets it)."""
    entries = []
    for name in workshop.environments:
        env = catalogue.get(name)
        if env is None:
            continue
        needs = env.needs
        if workshop.cpu is not None:
            needs = replace(needs, cpu=min(needs.cpu, workshop.cpu))
        if workshop.memory is not None:
            needs = replace(needs, memory=min(needs.memory, workshop.memory))
        entries.append(replace(env, needs=needs, default=not entries))
    return Catalogue(entries)


class WorkshopCatalogueFilter:
    """``f(spawner, catalogue)``: a participant's catalogue, narrowed to their workshop's
    (nothing once it has ended); anyone else's as it is. Runs ``chained`` (a filter
    configured before the workshops) first."""

    def __init__(self, store_path: str | Path, chained: CatalogueFilter | None = None) -> None:
        self.store_path = Path(store_path)
        self.chained = chained

    def __call__(self, spawner: Any, catalogue: Catalogue) -> Catalogue:
        if self.chained is not None:
            catalogue = self.chained(spawner, catalogue)
        username = getattr(getattr(spawner, "user", None), "name", None)
        if not username:  # a spawner without a user (the admin pages' catalogue)
            return catalogue
        store = shared(self.store_path)
        workshop = store.of_user(username)
        if workshop is None:
            return catalogue
        if workshop.name in store.ending or workshop.state(datetime.now(UTC)) == "ended":
            return Catalogue([])
        return narrow(catalogue, workshop)
