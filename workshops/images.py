"""A workshop's images, pulled onto every node it may use before it starts.

The pulls reuse :func:`deskhub.spawner.prepull.prepull_node`, in threads of their own (never
on the hub's event loop); what they say is kept per workshop in memory and shown on the
admin page and in the REST API ("images ready on 2 of 3 nodes").
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from deskhub.spawner.catalogue import Catalogue, Environment
from deskhub.spawner.inventory import NodeConfig, node_from_spec
from deskhub.spawner.prepull import NodeResult, prepull_node

log = logging.getLogger("JupyterHub.deskhub.workshops")
_PULLS = ThreadPoolExecutor(8, thread_name_prefix="workshop-prepull")


@dataclass
class ImagesReport:
    """Where a workshop's images are, as the last pre-pull found them."""

    nodes: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # node -> why, one sentence
    running: bool = False
    finished: datetime | None = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def describe(self) -> str:
        if not self.nodes and not self.running and self.finished is None:
            return "images not checked since the hub started"
        if not self.nodes:
            return "no node can run this workshop's environments"
        text = f"images ready on {len(self.ready)} of {len(self.nodes)} nodes"
        if self.running:
            text += " (pulling)"
        if self.failed:
            text += "; " + "; ".join(f"{n}: {why}" for n, why in sorted(self.failed.items()))
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.describe(),
            "nodes": list(self.nodes),
            "ready": list(self.ready),
            "failed": dict(self.failed),
            "pulling": self.running,
            "finished": self.finished.isoformat() if self.finished else None,
            "log": list(self.lines),
        }


REPORTS: dict[str, ImagesReport] = {}


def report_of(workshop: str) -> ImagesReport:
    return REPORTS.setdefault(workshop, ImagesReport())


def fits(node: NodeConfig, env: Environment) -> bool:
    """Whether a session of ``env`` may be placed on ``node`` at all (labels, GPUs)."""
    if any(node.labels.get(k) != v for k, v in env.needs.node_labels):
        return False
    return env.needs.gpu == "none" or bool(node.gpus)


def pull_plan(
    node_specs: Iterable[Mapping[str, Any]], catalogue: Catalogue
) -> list[tuple[NodeConfig, list[str]]]:
    """Each node that may run one of ``catalogue``'s environments, with their images."""
    plan = []
    for spec in node_specs:
        node = node_from_spec(spec)
        images = list(dict.fromkeys(env.image for env in catalogue if fits(node, env)))
        if images:
            plan.append((node, images))
    return plan


async def prepull_workshop(name: str, plan: Sequence[tuple[NodeConfig, list[str]]]) -> ImagesReport:
    """Pull the planned images, all nodes at once, each in a thread; the report fills in
    as nodes finish."""
    report = report_of(name)
    if report.running:
        return report
    report.nodes = [node.name for node, _ in plan]
    report.ready, report.failed, report.running = [], {}, True
    report.lines.clear()

    def say(line: str) -> None:
        report.lines.append(line)
        log.info("workshop %s: %s", name, line)

    loop = asyncio.get_running_loop()

    async def one(node: NodeConfig, images: list[str]) -> None:
        result: NodeResult = await loop.run_in_executor(
            _PULLS, lambda: prepull_node(node, images, say)
        )
        if result.ok:
            report.ready.append(node.name)
        else:
            report.failed[node.name] = result.error or "; ".join(result.failed.values())

    try:
        await asyncio.gather(*(one(node, images) for node, images in plan))
    finally:
        report.running = False
        report.finished = datetime.now(UTC)
    say(report.describe())
    return report
