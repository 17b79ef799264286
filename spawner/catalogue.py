"""The environments a user can pick: what each is, which image it runs, what it needs.

The catalogue is plain data. Today it is filled from the site config; later it can be
filled from image labels without the spawner noticing the difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .units import format_cpu, format_memory, parse_memory


@dataclass(frozen=True)
class Needs:
    """What a session of an environment reserves on its node."""

    cpu: float = 1.0
    memory: int = 2 * 1024**3
    gpu: str = "none"

    def describe(self) -> str:
        text = f"{format_cpu(self.cpu)}, {format_memory(self.memory)} memory"
        return text if self.gpu == "none" else f"{text}, GPU: {self.gpu}"


@dataclass(frozen=True)
class Environment:
    name: str
    title: str
    description: str
    image: str
    needs: Needs = Needs()
    default: bool = False


class Catalogue:
    """An ordered, read-only set of environments, looked up by name."""

    def __init__(self, environments: Iterable[Environment]) -> None:
        self._by_name: dict[str, Environment] = {}
        for env in environments:
            if env.name in self._by_name:
                raise ValueError(f"environment {env.name!r} is defined twice")
            self._by_name[env.name] = env

    @classmethod
    def from_site(cls, environments: Mapping[str, Mapping[str, Any]]) -> Catalogue:
        """Build from the site config's validated ``environments`` mapping."""
        entries = []
        for name, spec in environments.items():
            if spec.get("hidden", False):
                continue
            needs = spec.get("needs", {})
            entries.append(
                Environment(
                    name=name,
                    title=spec.get("title", name),
                    description=spec.get("description", ""),
                    image=spec["image"],
                    needs=Needs(
                        cpu=float(needs.get("cpu", Needs.cpu)),
                        memory=parse_memory(needs.get("memory", Needs.memory)),
                        gpu=needs.get("gpu", Needs.gpu),
                    ),
                    default=bool(spec.get("default", False)),
                )
            )
        return cls(entries)

    def __iter__(self) -> Iterator[Environment]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Environment | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def default(self) -> Environment | None:
        """The environment used when a spawn names none: the marked default, else the only one."""
        marked = [env for env in self if env.default]
        if marked:
            return marked[0]
        return next(iter(self)) if len(self) == 1 else None
