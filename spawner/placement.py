"""Choosing the node for a session: filter the nodes that can take it, then score them.

Pure functions on plain data (node snapshots and an environment's needs), so the policy is
tested exhaustively without any Docker engine.

**Filter.** A node can take a session when it answers, is not being drained, carries every
label the environment asks for, has the GPUs the environment needs (a desktop slot on a
shared GPU, or N whole GPUs nobody else uses, each with enough GPU memory), and has the
CPUs and memory free that the session reserves.

**Score.** ``busy`` is the node's fullest dimension after placing the session: reserved
CPUs, reserved memory, for desktop GPU sessions the chosen GPU's desktop slots (and its
utilisation where Prometheus reports it), and, where the watcher measured them, the live CPU
load and memory in use (each as a fraction, 0 to 1).
Policy ``spread`` (default, for interactive sessions) scores ``1 - busy``: the least loaded
node wins. Policy ``pack`` scores ``busy``: the fullest node that still fits wins, keeping
whole nodes free. A node that already holds the environment's image gets ``image_bonus``
(default 0.25) on top: a multi-GB pull costs more than a somewhat busier node. Equal scores
go to the node whose name sorts first, so the choice is deterministic.

**GPUs.** A shared (desktop) session takes a slot on the GPU with the most free slots under
``spread`` (the fewest, but at least one, under ``pack``); an exclusive session takes the
first N GPUs of the node's inventory that no session uses. A GPU given exclusively is never
shared, and a shared GPU is never given exclusively.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .catalogue import Needs
from .units import format_cpu, format_memory

POLICIES = ("spread", "pack")


@dataclass(frozen=True)
class Gpu:
    """One GPU of a node's inventory, as the site config declares it."""

    id: str  # what Docker's device request names: a UUID (GPU-...) or an index
    model: str = ""
    memory: int = 0
    desktop_slots: int = 4  # desktop sessions that may share it through VirtualGL


@dataclass(frozen=True)
class Reservation:
    """What one session holds on its node (read back from its container's labels)."""

    cpu: float
    memory: int
    gpu: str = "none"
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuUse:
    shared: int = 0
    exclusive: bool = False


def _gpu_use(gpus: Iterable[Gpu], sessions: Iterable[Reservation]) -> dict[str, GpuUse]:
    use = {gpu.id: GpuUse() for gpu in gpus}
    for reservation in sessions:
        for gpu_id in reservation.gpus:
            old = use.get(gpu_id, GpuUse())
            if reservation.gpu == "exclusive":
                use[gpu_id] = GpuUse(old.shared, True)
            else:
                use[gpu_id] = GpuUse(old.shared + 1, old.exclusive)
    return use


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
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[Gpu, ...] = ()
    draining: bool = False
    load: float | None = None  # CPUs busy right now, where measured
    memory_used: int | None = None  # bytes in use right now, where measured
    # where Prometheus reports them (DCGM-exporter), by GPU id: busy fraction, free bytes
    gpu_busy: Mapping[str, float] = field(default_factory=dict)
    gpu_memory_free: Mapping[str, int] = field(default_factory=dict)
    # the images that describe an environment (image_labels.environment_image_entries)
    environment_images: tuple[Mapping[str, Any], ...] = ()

    # derived once, when the snapshot is made: a decision reads them for every node
    reserved_cpu: float = field(init=False, default=0.0)
    reserved_memory: int = field(init=False, default=0)
    live_busy: float = field(init=False, default=0.0)
    gpu_use: Mapping[str, GpuUse] = field(init=False, default_factory=dict)
    # per GPU: (index, id, memory, desktop slots, desktops on it, held exclusively)
    gpu_table: tuple[tuple[int, str, int, int, int, bool], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        sessions = self.sessions.values()
        derived = {
            "reserved_cpu": sum(r.cpu for r in sessions),
            "reserved_memory": sum(r.memory for r in sessions),
            # the measured load as a fraction: the larger of CPU load and memory in use
            "live_busy": max(
                self.load / self.cpus if self.load is not None and self.cpus else 0.0,
                self.memory_used / self.memory
                if self.memory_used is not None and self.memory
                else 0.0,
            ),
        }
        if self.gpus:
            use = _gpu_use(self.gpus, sessions)
            derived["gpu_use"] = use
            derived["gpu_table"] = tuple(
                (i, g.id, g.memory, g.desktop_slots, use[g.id].shared, use[g.id].exclusive)
                for i, g in enumerate(self.gpus)
            )
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def with_sessions(self, extra: Mapping[str, Reservation]) -> NodeSnapshot:
        """This snapshot with more sessions (reservations of spawns in flight)."""
        return replace(self, sessions={**self.sessions, **extra})


@dataclass(frozen=True)
class Placement:
    node: str
    reason: str
    gpus: tuple[str, ...] = ()

    def reservation(self, needs: Needs) -> Reservation:
        return Reservation(needs.cpu, needs.memory, needs.gpu, self.gpus)


@dataclass(frozen=True)
class Policy:
    mode: str = "spread"
    image_bonus: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"unknown placement policy {self.mode!r}; use spread or pack")


SPREAD = Policy()


class NoPlacement(Exception):
    """No node can take the session; ``str()`` is one sentence for the user."""


# -- the filter ---------------------------------------------------------------------------
def _pick_gpus(node: NodeSnapshot, needs: Needs, spread: bool) -> tuple[str, tuple[int, ...]]:
    """("", indexes of the chosen GPUs) or (refusal kind, ())."""
    min_memory = needs.gpu_memory
    if needs.gpu == "shared":
        best: tuple[int, float, int] | None = None  # (free slots, -busy, -index)
        seen = False
        for i, gpu_id, memory, slots, shared, exclusive in node.gpu_table:
            if memory < min_memory or slots <= 0:
                continue
            seen = True
            free = slots - shared
            if exclusive or free <= 0:
                continue
            if min_memory:
                measured = node.gpu_memory_free.get(gpu_id)
                if measured is not None and measured < min_memory:
                    continue  # declared big enough, but others' desktops hold its memory now
            # spread: most free slots, then least busy; pack: fewest free slots
            key = (free, -node.gpu_busy.get(gpu_id, 0.0), -i)
            if best is None or (key > best if spread else key[0] < best[0]):
                best = key
        if best is None:
            return ("gpu_busy" if seen else "no_gpu"), ()
        return "", (-best[2],)
    count = needs.gpus
    if sum(1 for row in node.gpu_table if row[2] >= min_memory) < count:
        return "no_gpu", ()
    idle = [row[0] for row in node.gpu_table if row[2] >= min_memory and not row[4] and not row[5]]
    if len(idle) < count:
        return "gpu_busy", ()
    return "", tuple(idle[:count])


Evaluation = tuple[str, tuple[int, ...], float]


def evaluator(needs: Needs, policy: Policy, image: str) -> Callable[[NodeSnapshot], Evaluation]:
    """``evaluate(node)``: (refusal kind, (), 0) if the session does not fit on the node,
    else ("", indexes of the GPUs it would get, the node's score).

    What the session asks is bound once, so a decision over 1,000 nodes stays under 1 ms.
    """
    spread = policy.mode == "spread"
    bonus = policy.image_bonus
    labels = needs.node_labels
    gpu_mode = needs.gpu
    need_cpu, need_memory = needs.cpu, needs.memory

    def evaluate(node: NodeSnapshot) -> Evaluation:
        if not node.reachable:
            return "unreachable", (), 0.0
        if node.draining:
            return "draining", (), 0.0
        for key, value in labels:
            if node.labels.get(key) != value:
                return "labels", (), 0.0
        gpus: tuple[int, ...] = ()
        if gpu_mode != "none":
            if not node.gpus:
                return "no_gpu", (), 0.0
            why, gpus = _pick_gpus(node, needs, spread)
            if why:
                return why, (), 0.0
        cpu = node.reserved_cpu + need_cpu
        # a sum of decimal fractions is not exact (twenty 0.1 make 2.0000000000000004):
        # compare in millicores, Docker's own granularity being finer than anyone asks for
        if round(cpu * 1000) > round(node.cpus * 1000):
            return "cpu", (), 0.0
        memory = node.reserved_memory + need_memory
        if memory > node.memory:
            return "memory", (), 0.0
        # busy: the fullest dimension after placing the session, as a fraction
        busy = max(cpu / node.cpus, memory / node.memory, node.live_busy)
        if gpus and gpu_mode == "shared":
            gpu = node.gpus[gpus[0]]
            slots = (node.gpu_use[gpu.id].shared + 1) / gpu.desktop_slots
            busy = max(busy, slots, node.gpu_busy.get(gpu.id, 0.0))
        value = 1.0 - busy if spread else busy
        if image in node.images:
            value += bonus
        return "", gpus, value

    return evaluate


# -- explanations -------------------------------------------------------------------------
def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def explain(node: NodeSnapshot, needs: Needs, gpus: tuple[int, ...], image: str) -> str:
    """Why this node: "node-3: GPU 1 (A40) has 2 of 4 desktop slots free, load 0.40, …"."""
    parts = []
    if needs.gpu == "shared" and gpus:
        gpu = node.gpus[gpus[0]]
        free = gpu.desktop_slots - node.gpu_use[gpu.id].shared
        model = f" ({gpu.model})" if gpu.model else ""
        busy = node.gpu_busy.get(gpu.id)
        measured = f" (busy {busy:.0%})" if busy is not None else ""
        parts.append(
            f"GPU {gpus[0]}{model} has {free} of {gpu.desktop_slots} desktop slots free{measured}"
        )
    elif needs.gpu == "exclusive" and gpus:
        models = sorted({node.gpus[i].model for i in gpus if node.gpus[i].model})
        model = f" ({', '.join(models)})" if models else ""
        indexes = ", ".join(str(i) for i in gpus)
        parts.append(f"{'GPUs' if len(gpus) > 1 else 'GPU'} {indexes}{model} free for you alone")
    free_cpu = round(node.cpus - node.reserved_cpu, 2)
    parts.append(
        f"{format_cpu(free_cpu)} and {format_memory(node.memory - node.reserved_memory)} free"
    )
    if node.load is not None and node.cpus:
        parts.append(f"load {node.load / node.cpus:.2f}")
    parts.append(f"{_plural(len(node.sessions), 'session')} running")
    if image:
        parts.append("image already there" if image in node.images else "image to be pulled")
    return f"{node.name}: " + ", ".join(parts)


def _nodes(group: list[NodeSnapshot], singular: str, plural: str) -> str:
    n = len(group)
    return f"1 node {singular}" if n == 1 else f"{n} nodes {plural}"


def refusal_sentence(refusals: Mapping[str, list[NodeSnapshot]], needs: Needs) -> str:
    """One sentence saying why no node fits, by kind of reason, and what the user can do.

    e.g. "Cannot start now: all 4 GPUs are in use and 1 node is not answering; try again
    later or pick a CPU environment."
    """
    phrases = []
    if "gpu_busy" in refusals:
        total = sum(1 for n in refusals["gpu_busy"] for g in n.gpus if g.memory >= needs.gpu_memory)
        if needs.gpu == "shared":
            phrases.append(
                "the only GPU's desktop slots are taken"
                if total == 1
                else f"no desktop slot is free on any of the {total} GPUs"
            )
        else:
            phrases.append(f"all {_plural(total, 'GPU')} are in use")
    if "cpu" in refusals:
        phrases.append(_nodes(refusals["cpu"], "has no CPUs free", "have no CPUs free"))
    if "memory" in refusals:
        phrases.append(_nodes(refusals["memory"], "is out of memory", "are out of memory"))
    if "draining" in refusals:
        phrases.append(
            _nodes(refusals["draining"], "is closed for maintenance", "are closed for maintenance")
        )
    if "unreachable" in refusals:
        phrases.append(_nodes(refusals["unreachable"], "is not answering", "are not answering"))
    if "no_gpu" in refusals:
        memory = f" with {format_memory(needs.gpu_memory)}" if needs.gpu_memory else ""
        wanted = f"{needs.gpus} GPUs" if needs.gpus > 1 else "a GPU"
        phrases.append(
            _nodes(refusals["no_gpu"], f"lacks {wanted}{memory}", f"lack {wanted}{memory}")
        )
    if "labels" in refusals:
        wanted = ", ".join(f"{k}={v}" for k, v in needs.node_labels)
        phrases.append(_nodes(refusals["labels"], f"is not for {wanted}", f"are not for {wanted}"))
    temporary = {"gpu_busy", "cpu", "memory", "draining", "unreachable"} & set(refusals)
    if not temporary:
        advice = "pick another environment or ask your administrator"
    elif "gpu_busy" in refusals:
        advice = "try again later or pick a CPU environment"
    else:
        advice = "try again later"
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"Cannot start now: {text}; {advice}."


# -- the decision -------------------------------------------------------------------------
def place(
    needs: Needs,
    nodes: Iterable[NodeSnapshot],
    image: str = "",
    policy: Policy = SPREAD,
    exclude: frozenset[str] = frozenset(),
) -> Placement:
    """The best node for a session with ``needs``, or :class:`NoPlacement`.

    ``exclude`` names nodes already tried for this spawn (a start that failed there).
    """
    best: NodeSnapshot | None = None
    best_score, best_gpus = 0.0, ()
    refusals: dict[str, list[NodeSnapshot]] = {}
    evaluate = evaluator(needs, policy, image)
    for node in nodes:
        if exclude and node.name in exclude:
            refusals.setdefault("unreachable", []).append(node)
            continue
        why, gpus, value = evaluate(node)
        if why:
            refusals.setdefault(why, []).append(node)
        elif best is None or value > best_score or (value == best_score and node.name < best.name):
            best, best_score, best_gpus = node, value, gpus
    if best is None:
        if not refusals:
            raise NoPlacement("No compute node is configured; ask your administrator.")
        raise NoPlacement(refusal_sentence(refusals, needs))
    return Placement(
        node=best.name,
        reason=explain(best, needs, best_gpus, image),
        gpus=tuple(best.gpus[i].id for i in best_gpus),
    )
