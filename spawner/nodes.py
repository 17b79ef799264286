"""Compute nodes: one Docker client, one executor thread and one watcher per node.

Every Docker call for a node runs in that node's own thread, so a slow or dead node never
blocks the hub's event loop nor another node. A background watcher per node keeps a
:class:`NodeSnapshot` fresh (reachability, capacity, deskhub sessions read from container
labels, images present); all spawns share it instead of querying nodes themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker

from .containerspec import LABEL_PREFIX
from .placement import NodeSnapshot, Reservation

log = logging.getLogger("deskhub.nodes")


def sessions_from_containers(containers: Iterable[Mapping[str, Any]]) -> dict[str, Reservation]:
    """What each running deskhub container reserved, keyed by ``user/server``."""
    sessions: dict[str, Reservation] = {}
    for container in containers:
        labels = container.get("Labels") or {}
        if labels.get(f"{LABEL_PREFIX}managed") != "true":
            continue
        key = f"{labels.get(f'{LABEL_PREFIX}user', '?')}/{labels.get(f'{LABEL_PREFIX}server', '')}"
        try:
            sessions[key] = Reservation(
                cpu=float(labels.get(f"{LABEL_PREFIX}reserved.cpu", 0)),
                memory=int(labels.get(f"{LABEL_PREFIX}reserved.memory", 0)),
            )
        except ValueError:
            log.warning("container %s has unreadable reservation labels", container.get("Id"))
    return sessions


class Node:
    """One Docker engine that runs sessions."""

    def __init__(
        self, name: str, endpoint: str, *, timeout: float = 10.0, interval: float = 5.0
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.timeout = timeout
        self.interval = interval
        self._client: docker.APIClient | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"docker-{name}")
        self.snapshot = NodeSnapshot(name=name, reachable=False, error="not contacted yet")
        self.polled_at = 0.0
        self._polled = asyncio.Event()
        self._pending: dict[str, Reservation] = {}
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[NodeSnapshot] | None = None

    # -- Docker calls, always in this node's thread -------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            # version negotiation talks to the engine: never on the event loop
            self._client = docker.APIClient(
                base_url=self.endpoint, version="auto", timeout=self.timeout
            )
        return getattr(self._client, method)(*args, **kwargs)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``APIClient.<method>`` in this node's thread and await its result."""
        future = self._executor.submit(self._call, method, *args, **kwargs)
        return await asyncio.wrap_future(future)

    @property
    def client(self) -> docker.APIClient | None:
        return self._client

    # -- the watcher ----------------------------------------------------------------------
    async def refresh(self) -> NodeSnapshot:
        try:
            info = await asyncio.wait_for(self.call("info"), self.timeout)
            containers = await asyncio.wait_for(
                self.call("containers", filters={"label": f"{LABEL_PREFIX}managed=true"}),
                self.timeout,
            )
            images = await asyncio.wait_for(self.call("images"), self.timeout)
        except Exception as err:  # any failure means: not usable now
            if self.snapshot.reachable:
                log.warning("node %s stopped answering: %s", self.name, err)
            self.snapshot = NodeSnapshot(
                name=self.name, reachable=False, error=f"{type(err).__name__}: {err}"
            )
        else:
            tags = frozenset(tag for image in images for tag in (image.get("RepoTags") or []))
            if not self.snapshot.reachable:
                log.info("node %s is reachable (%s CPUs)", self.name, info.get("NCPU"))
            self.snapshot = NodeSnapshot(
                name=self.name,
                reachable=True,
                cpus=float(info.get("NCPU", 0)),
                memory=int(info.get("MemTotal", 0)),
                sessions=sessions_from_containers(containers),
                images=tags,
            )
        self.polled_at = time.monotonic()
        self._polled.set()
        return self.snapshot

    async def watch(self) -> None:
        delay = self.interval
        while True:
            snapshot = await self.refresh()
            # back off while the node is down, up to 6 intervals; poll normally when up
            delay = self.interval if snapshot.reachable else min(delay * 2, self.interval * 6)
            await asyncio.sleep(delay)

    def refresh_soon(self) -> None:
        """Poll now, in the background (after a spawn or stop changed what runs here)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self.refresh())

    def start_watching(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.watch())

    async def wait_polled(self) -> None:
        await asyncio.wait_for(self._polled.wait(), self.timeout + 1)

    # -- reservations of spawns in flight --------------------------------------------------
    def reserve(self, key: str, reservation: Reservation) -> None:
        self._pending[key] = reservation

    def release(self, key: str) -> None:
        self._pending.pop(key, None)

    def planning_snapshot(self) -> NodeSnapshot:
        """The last snapshot with the reservations of spawns not yet visible in it."""
        snap = self.snapshot
        if not self._pending:
            return snap
        sessions = dict(snap.sessions)
        sessions.update(self._pending)
        return NodeSnapshot(
            name=snap.name,
            reachable=snap.reachable,
            cpus=snap.cpus,
            memory=snap.memory,
            sessions=sessions,
            images=snap.images,
            error=snap.error,
        )


class NodePool:
    """The hub's nodes, shared by all spawners of the process."""

    _shared: dict[tuple[tuple[str, str], ...], NodePool] = {}

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: dict[str, Node] = {node.name: node for node in nodes}

    @classmethod
    def shared(cls, config: Iterable[Mapping[str, Any]]) -> NodePool:
        """The one pool for this node list (so every spawner sees the same watchers)."""
        key = tuple((item["name"], item["endpoint"]) for item in config)
        if key not in cls._shared:
            cls._shared[key] = cls(Node(name, endpoint) for name, endpoint in key)
        return cls._shared[key]

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    async def ready(self) -> list[NodeSnapshot]:
        """Start the watchers if needed; wait for every node's first poll; snapshots."""
        for node in self.nodes.values():
            node.start_watching()
        waits = [node.wait_polled() for node in self.nodes.values()]
        await asyncio.gather(*waits, return_exceptions=True)
        return [node.planning_snapshot() for node in self.nodes.values()]
