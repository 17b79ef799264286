"""Choosing the node for a session: filter the nodes that can take it, then score them.

Pure functions on plain data (node snapshots and an environment's needs), so the policy is
tested exhaustively without any Docker engine.

Policy ``spread`` (default): the node with the most free capacity after placement wins,
i.e. the least loaded one; ties are broken by node name so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .catalogue import Needs
from .units import format_cpu, format_memory


@dataclass(frozen=True)
class Reservation:
    cpu: float
    memory: int


@dataclass(frozen=True)
class NodeSnapshot:
    """What the node's watcher last saw, plus reservations of spawns still in flight."""

    name: str
    reachable: bool
    cpus: float = 0.0
    memory: int = 0
    sessions: Mapping[str, Reservation] = field(default_factory=dict)
    images: frozenset[str] = frozenset()
    error: str = ""

    @property
    def reserved_cpu(self) -> float:
        return sum(r.cpu for r in self.sessions.values())

    @property
    def reserved_memory(self) -> int:
        return sum(r.memory for r in self.sessions.values())


@dataclass(frozen=True)
class Placement:
    node: str
    reason: str


class NoPlacement(Exception):
    """No node can take the session; ``str()`` is one sentence for the user."""


def _fits(node: NodeSnapshot, needs: Needs) -> str | None:
    """None if the session fits on the node, else the kind of reason it does not."""
    if not node.reachable:
        return "unreachable"
    if node.cpus - node.reserved_cpu < needs.cpu:
        return "cpu"
    if node.memory - node.reserved_memory < needs.memory:
        return "memory"
    return None


def _free_fraction(node: NodeSnapshot, needs: Needs) -> float:
    cpu_free = (node.cpus - node.reserved_cpu - needs.cpu) / node.cpus
    mem_free = (node.memory - node.reserved_memory - needs.memory) / node.memory
    return min(cpu_free, mem_free)


_REFUSALS = {
    "unreachable": "no compute node is answering right now; try again in a minute",
    "cpu": "all compute nodes are busy (not enough free CPUs); try again later",
    "memory": "all compute nodes are busy (not enough free memory); try again later",
}


def place(needs: Needs, nodes: Iterable[NodeSnapshot], image: str = "") -> Placement:
    """The best node for a session with ``needs``, or :class:`NoPlacement`."""
    candidates: list[NodeSnapshot] = []
    refusals: dict[str, int] = {}
    for node in nodes:
        why = _fits(node, needs)
        if why is None:
            candidates.append(node)
        else:
            refusals[why] = refusals.get(why, 0) + 1
    if not candidates:
        if not refusals:
            raise NoPlacement("No compute node is configured; ask your administrator.")
        # report the reason that excluded the most nodes
        kind = max(refusals, key=lambda k: (refusals[k], k))
        raise NoPlacement(f"Cannot start now: {_REFUSALS[kind]}.")
    best = sorted(candidates, key=lambda n: (-_free_fraction(n, needs), n.name))[0]
    free_cpu = best.cpus - best.reserved_cpu
    free_mem = best.memory - best.reserved_memory
    reason = (
        f"{best.name}: {format_cpu(round(free_cpu, 2))} and {format_memory(free_mem)} free, "
        f"{len(best.sessions)} session(s) running"
    )
    if image and image in best.images:
        reason += ", image already there"
    return Placement(node=best.name, reason=reason)
