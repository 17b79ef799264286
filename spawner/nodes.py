"""Compute nodes: one Docker client, one executor thread and one watcher per node.

Every Docker call for a node runs in that node's own thread, so a slow or dead node never
blocks the hub's event loop nor another node (the watcher's ``docker stats`` calls, one per
running container, have a second thread, so they never delay a spawn). A background watcher
per node keeps a :class:`NodeSnapshot` fresh (reachability, capacity, deskhub sessions and what they
reserved, read from container labels; live CPU load and memory of the node's containers;
images present, and the deskhub labels of those that describe an environment); all spawns
share it instead of querying nodes themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import docker
import docker.tls

from .catalogue import Needs
from .containerspec import LABEL_PREFIX
from .image_labels import environment_image_entries, environments_from_images
from .inventory import NodeConfig, node_from_spec
from .isolation import network_options
from .metrics import MetricsUnavailable, NodeMetrics, PrometheusSource
from .placement import SPREAD, NodeSnapshot, Placement, Policy, Reservation, place
from .pulling import PullProgress, pull

# a child of JupyterHub's own logger: same handler, format and level as the hub's lines
log = logging.getLogger("JupyterHub.deskhub.nodes")


def reservation_from_labels(labels: Mapping[str, str]) -> Reservation:
    gpus = labels.get(f"{LABEL_PREFIX}gpus", "")
    return Reservation(
        cpu=float(labels.get(f"{LABEL_PREFIX}reserved.cpu", 0)),
        memory=int(labels.get(f"{LABEL_PREFIX}reserved.memory", 0)),
        gpu=labels.get(f"{LABEL_PREFIX}gpu", "none"),
        gpus=tuple(g for g in gpus.split(",") if g),
    )


def session_key(labels: Mapping[str, str]) -> str:
    return f"{labels.get(f'{LABEL_PREFIX}user', '?')}/{labels.get(f'{LABEL_PREFIX}server', '')}"


def sessions_from_containers(containers: Iterable[Mapping[str, Any]]) -> dict[str, Reservation]:
    """What each deskhub container reserved, keyed by ``user/server``."""
    sessions: dict[str, Reservation] = {}
    for container in containers:
        labels = container.get("Labels") or {}
        if labels.get(f"{LABEL_PREFIX}managed") != "true":
            continue
        try:
            sessions[session_key(labels)] = reservation_from_labels(labels)
        except ValueError:
            log.warning("container %s has unreadable reservation labels", container.get("Id"))
    return sessions


@dataclass
class _CpuSample:
    container_ns: int
    system_ns: int


def cpu_cores_busy(
    previous: _CpuSample | None, stats: Mapping[str, Any]
) -> tuple[float, _CpuSample]:
    """CPUs a container kept busy since the previous sample (0 on the first sample)."""
    cpu = stats.get("cpu_stats") or {}
    sample = _CpuSample(
        container_ns=int((cpu.get("cpu_usage") or {}).get("total_usage", 0)),
        system_ns=int(cpu.get("system_cpu_usage", 0)),
    )
    if previous is None or sample.system_ns <= previous.system_ns:
        return 0.0, sample
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [1])
    used = max(sample.container_ns - previous.container_ns, 0)
    return used / (sample.system_ns - previous.system_ns) * online, sample


def memory_in_use(stats: Mapping[str, Any]) -> int:
    """Memory a container uses, without reclaimable page cache (as ``docker stats``)."""
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return max(int(memory.get("usage", 0)) - int(cache), 0)


class EngineClient(docker.APIClient):
    """docker-py's client that ignores the process environment's proxies and CA bundles.

    requests would otherwise let ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (set on hosts
    behind a TLS-inspecting proxy) replace the node's own CA, and send engine traffic
    through ``HTTPS_PROXY``. A class property, because ``requests.Session.__init__`` sets
    ``trust_env`` and the version is negotiated inside the constructor.
    """

    @property
    def trust_env(self) -> bool:  # type: ignore[override]
        return False

    @trust_env.setter
    def trust_env(self, value: bool) -> None:
        pass


def tls_config(node: NodeConfig) -> docker.tls.TLSConfig | None:
    if node.tls is None:
        return None
    return docker.tls.TLSConfig(
        client_cert=(node.tls.cert, node.tls.key), ca_cert=node.tls.ca, verify=True
    )


def engine_client(config: NodeConfig, timeout: float) -> EngineClient:
    """A client of the node's engine (mutual TLS when configured). It asks the engine for
    its API version at once: call it in a thread, never on the event loop."""
    return EngineClient(
        base_url=config.endpoint,
        version="auto",
        timeout=timeout,
        tls=tls_config(config) or False,
    )


# seconds a pull's stream may stay silent (the engine sends an event per layer step)
PULL_TIMEOUT = 300.0


class Node:
    """One Docker engine that runs sessions."""

    def __init__(self, config: NodeConfig, *, timeout: float = 10.0, interval: float = 3.0) -> None:
        self.config = config
        self.name = config.name
        self.endpoint = config.endpoint
        self.timeout = timeout
        self.interval = interval
        self.draining = config.draining
        self._client: EngineClient | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"docker-{self.name}")
        self._stats_client: EngineClient | None = None
        self._stats_executor = ThreadPoolExecutor(1, thread_name_prefix=f"stats-{self.name}")
        # pulls take minutes: they get threads of their own, so the node's calls (the
        # watcher's polls, other spawns) never wait behind one
        self._pull_executor = ThreadPoolExecutor(2, thread_name_prefix=f"pull-{self.name}")
        self.snapshot = NodeSnapshot(
            name=self.name,
            reachable=False,
            error="not contacted yet",
            labels=config.labels,
            gpus=config.gpus,
            draining=self.draining,
        )
        self.polled_at = 0.0
        self.down_since: float | None = None
        self._polled = asyncio.Event()
        self._pending: dict[str, tuple[Reservation, float | None]] = {}
        self._cpu: dict[str, _CpuSample] = {}
        self._networks: dict[str, dict[str, Any]] = {}
        self._network_lock = asyncio.Lock()
        # the firewall rules loaded per session bridge (netguard.ensure_isolated) since the
        # node was last reachable: a node that went away may come back rebooted, without them
        self.isolation_rules: dict[str, str] = {}
        self.isolation_lock = asyncio.Lock()
        # live load from Prometheus, when the pool has a source (else docker stats)
        self.metrics: NodeMetrics | None = None
        self.metrics_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[NodeSnapshot] | None = None
        # called after a poll that found other environment images (the pool re-reads them)
        self.on_refresh: Callable[[], None] | None = None

    # -- Docker calls, always in this node's threads ------------------------------------
    def _new_client(self) -> EngineClient:
        # version negotiation talks to the engine: never on the event loop
        return engine_client(self.config, self.timeout)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            self._client = self._new_client()
        return getattr(self._client, method)(*args, **kwargs)

    def _stats(self, container_id: str) -> Any:
        if self._stats_client is None:
            self._stats_client = self._new_client()
        return self._stats_client.stats(container_id, stream=False, one_shot=True)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``APIClient.<method>`` in this node's thread and await its result."""
        future = self._executor.submit(self._call, method, *args, **kwargs)
        return await asyncio.wrap_future(future)

    async def stats(self, container_id: str) -> Any:
        """One container's ``docker stats``, in the node's second thread (the watcher's
        measuring, one call per running container, never delays a spawn's calls)."""
        future = self._stats_executor.submit(self._stats, container_id)
        return await asyncio.wrap_future(future)

    def _pull(self, ref: str, progress: PullProgress) -> PullProgress:
        client = engine_client(self.config, max(self.timeout, PULL_TIMEOUT))
        try:
            return pull(client, ref, progress)
        finally:
            client.close()

    async def pull(self, ref: str, progress: PullProgress) -> PullProgress:
        """Pull ``ref`` onto this node in a pull thread, streaming into ``progress``
        (read it while this runs). Raises what :func:`pulling.pull` raises."""
        future = self._pull_executor.submit(self._pull, ref, progress)
        return await asyncio.wrap_future(future)

    @property
    def client(self) -> EngineClient | None:
        return self._client

    # -- the watcher ----------------------------------------------------------------------
    async def _measure(self, running: list[Mapping[str, Any]]) -> tuple[float, int]:
        """Live CPUs busy and memory used by the node's running containers."""
        load, used, seen = 0.0, 0, set()
        for container in running:
            cid = container["Id"]
            seen.add(cid)
            try:
                stats = await asyncio.wait_for(self.stats(cid), self.timeout)
            except (docker.errors.APIError, ValueError, TimeoutError):
                # gone (removed while measured, the engine may answer with an empty body:
                # a ValueError), or slow to answer: its share counts at the next poll. The
                # engine answered, so the node stays reachable
                continue
            busy, self._cpu[cid] = cpu_cores_busy(self._cpu.get(cid), stats)
            load += busy
            used += memory_in_use(stats)
        for gone in set(self._cpu) - seen:
            del self._cpu[gone]
        return load, used

    async def refresh(self) -> NodeSnapshot:
        started = time.monotonic()
        had = (self.snapshot.reachable, self.snapshot.environment_images)
        try:
            info = await asyncio.wait_for(self.call("info"), self.timeout)
            deskhub = await asyncio.wait_for(
                self.call("containers", all=True, filters={"label": f"{LABEL_PREFIX}managed=true"}),
                self.timeout,
            )
            running = await asyncio.wait_for(self.call("containers"), self.timeout)
            images = await asyncio.wait_for(self.call("images"), self.timeout)
        except Exception as err:  # any failure means: not usable now
            self.mark_unreachable(err)
            self._polled.set()
        else:
            metrics = self.fresh_metrics()
            gpus = metrics.gpus if metrics is not None else {}
            if not self.snapshot.reachable:
                log.info("node %s is reachable (%s CPUs)", self.name, info.get("NCPU"))
            self.down_since = None
            # a stopped (exited) deskhub container holds nothing
            live = [c for c in deskhub if c.get("State") in ("running", "created", "restarting")]
            self.snapshot = NodeSnapshot(
                name=self.name,
                reachable=True,
                cpus=float(info.get("NCPU", 0)),
                memory=int(info.get("MemTotal", 0)),
                sessions=sessions_from_containers(live),
                images=frozenset(tag for image in images for tag in image.get("RepoTags") or []),
                labels=self.config.labels,
                gpus=self.config.gpus,
                draining=self.draining,
                # the last measure until this poll's is done
                load=self.snapshot.load,
                memory_used=self.snapshot.memory_used,
                gpu_busy={k: g.utilisation / 100 for k, g in gpus.items()},
                gpu_memory_free={k: g.memory_free for k, g in gpus.items()},
                environment_images=environment_image_entries(images),
            )
            # spawns that finished before this poll began are in the snapshot now
            for key, (_, done_at) in list(self._pending.items()):
                if done_at is not None and done_at <= started:
                    del self._pending[key]
            # capacity and sessions are known: a waiting spawn may decide now, while the
            # live load (one stats call per container) is measured
            self._polled.set()
            if metrics is not None and metrics.load is not None:
                load, used = metrics.load, metrics.memory_used
            else:
                try:
                    load, used = await self._measure(running)
                except Exception as err:
                    self.mark_unreachable(err)
                    load = None
            if self.snapshot.reachable and load is not None:
                self.snapshot = replace(self.snapshot, load=load, memory_used=used)
        self.polled_at = time.monotonic()
        if self.on_refresh is not None and had != (
            self.snapshot.reachable,
            self.snapshot.environment_images,
        ):
            try:
                self.on_refresh()
            except Exception:  # never let it stop the watcher
                log.exception("reading the environments of %s's images failed", self.name)
        return self.snapshot

    def fresh_metrics(self) -> NodeMetrics | None:
        """Prometheus' last answer for this node, if it is recent (3 poll intervals)."""
        if self.metrics is None or time.monotonic() - self.metrics_at > 3 * self.interval:
            return None
        return self.metrics

    def mark_unreachable(self, err: BaseException) -> None:
        """The node failed a call: plan without it until a poll succeeds again."""
        if self.snapshot.reachable or self.down_since is None:
            log.warning("node %s is not answering: %s", self.name, err)
            self.down_since = time.monotonic()
        self.isolation_rules.clear()
        self._networks.clear()
        self.snapshot = NodeSnapshot(
            name=self.name,
            reachable=False,
            error=f"{type(err).__name__}: {err}",
            labels=self.config.labels,
            gpus=self.config.gpus,
            draining=self.draining,
        )

    async def watch(self) -> None:
        delay = self.interval
        while True:
            snapshot = await self.refresh()
            # back off while the node is down, up to 5 intervals; poll normally when up
            delay = self.interval if snapshot.reachable else min(delay * 2, self.interval * 5)
            await asyncio.sleep(delay)

    def refresh_soon(self) -> None:
        """Poll now, in the background (after a spawn or stop changed what runs here)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.get_running_loop().create_task(self.refresh())

    def start_watching(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.watch())

    async def wait_polled(self) -> None:
        await asyncio.wait_for(self._polled.wait(), self.timeout * 5 + 1)

    def set_draining(self, draining: bool) -> None:
        self.draining = draining
        self.snapshot = replace(self.snapshot, draining=draining)

    async def ensure_network(self, name: str) -> dict[str, Any]:
        """The sessions' bridge network on this node (created once if missing, with
        inter-container traffic off), as ``docker network inspect`` gives it."""
        if name in self._networks:
            return self._networks[name]
        # many spawns may land on a fresh node at once: Docker would create one network per
        # caller under the same name, and containers then fail on an ambiguous name
        async with self._network_lock:
            if name in self._networks:
                return self._networks[name]
            found = [n for n in await self.call("networks", names=[name]) if n["Name"] == name]
            if not found:
                await self.call(
                    "create_network",
                    name,
                    driver="bridge",
                    options=network_options(),
                    check_duplicate=True,
                    labels={f"{LABEL_PREFIX}managed": "true"},
                )
            self._networks[name] = await self.call("inspect_network", name)
            return self._networks[name]

    # -- reservations of spawns in flight --------------------------------------------------
    def reserve(self, key: str, reservation: Reservation) -> None:
        self._pending[key] = (reservation, None)

    def release(self, key: str) -> None:
        """The spawn failed: its reservation goes at once."""
        self._pending.pop(key, None)

    def started(self, key: str) -> None:
        """The spawn's container exists: keep its reservation until a poll sees it."""
        if key in self._pending:
            self._pending[key] = (self._pending[key][0], time.monotonic())

    def stopped(self, key: str) -> None:
        """The session's container is stopped: what it reserved is free at once, not only
        after the next poll (a user who stops one environment to start a bigger one)."""
        self._pending.pop(key, None)
        if key in self.snapshot.sessions:
            sessions = {k: r for k, r in self.snapshot.sessions.items() if k != key}
            self.snapshot = replace(self.snapshot, sessions=sessions)

    def planning_snapshot(self) -> NodeSnapshot:
        """The last snapshot with the reservations of spawns not yet visible in it."""
        snap = self.snapshot
        if not self._pending:
            return snap
        return snap.with_sessions({key: r for key, (r, _) in self._pending.items()})


class NodePool:
    """The hub's nodes, shared by all spawners of the process.

    Decisions are made and reserved in one step under a lock (:meth:`decide`), so two
    spawns at the same moment never take the same exclusive GPU nor overfill a node.
    Drained nodes are remembered in ``state_file`` across hub restarts.
    """

    _shared: dict[str, NodePool] = {}

    def __init__(
        self,
        nodes: Iterable[Node],
        *,
        policy: Policy = SPREAD,
        state_file: str | Path | None = None,
        metrics: PrometheusSource | None = None,
    ) -> None:
        self.nodes: dict[str, Node] = {node.name: node for node in nodes}
        self.policy = policy
        self.metrics = metrics
        self._metrics_task: asyncio.Task[None] | None = None
        self._metrics_error = ""
        self.state_file = Path(state_file) if state_file else None
        self._lock = threading.Lock()
        for name, draining in self._load_drained().items():
            if name in self.nodes:
                self.nodes[name].set_draining(draining)
        self._images_read: list[Mapping[str, Any]] | None = None
        self._image_environments: tuple[dict[str, dict[str, Any]], list[str]] = ({}, [])
        self._warned: dict[str, set[str]] = {}
        for node in self.nodes.values():
            node.on_refresh = self.image_environments

    @classmethod
    def shared(
        cls,
        config: Iterable[Mapping[str, Any]],
        *,
        policy: Policy = SPREAD,
        state_file: str = "",
        timeout: float = 10.0,
        interval: float = 3.0,
        prometheus: Mapping[str, Any] | None = None,
    ) -> NodePool:
        """The one pool for this configuration (so every spawner sees the same watchers).

        ``prometheus``: ``{"url": ..., "rate_window": "1m"}`` to take live load from there.
        """
        config = list(config)
        key = json.dumps(
            [config, policy.mode, policy.image_bonus, state_file, prometheus], sort_keys=True
        )
        if key not in cls._shared:
            nodes = (
                Node(node_from_spec(spec), timeout=timeout, interval=interval) for spec in config
            )
            source = (
                PrometheusSource(
                    prometheus["url"],
                    timeout=timeout,
                    rate_window=prometheus.get("rate_window", "1m"),
                )
                if prometheus and prometheus.get("url")
                else None
            )
            cls._shared[key] = cls(
                nodes, policy=policy, state_file=state_file or None, metrics=source
            )
        return cls._shared[key]

    # -- live load from Prometheus ----------------------------------------------------------
    async def poll_metrics(self) -> None:
        """Ask Prometheus once for every node's load and GPU use (one query per metric)."""
        assert self.metrics is not None
        instances = {n.name: n.config.metrics_instance for n in self.nodes.values()}
        gpu_ids = {n.name: [g.id for g in n.config.gpus] for n in self.nodes.values()}
        try:
            found = await self.metrics.fetch(instances, gpu_ids)
        except MetricsUnavailable as err:
            if str(err) != self._metrics_error:
                log.warning("Prometheus unavailable, measuring containers instead: %s", err)
            self._metrics_error = str(err)
            return
        if self._metrics_error:
            log.info("Prometheus answers again")
        self._metrics_error = ""
        now = time.monotonic()
        for name, metrics in found.items():
            self.nodes[name].metrics, self.nodes[name].metrics_at = metrics, now

    async def _watch_metrics(self) -> None:
        interval = min(node.interval for node in self.nodes.values())
        while True:
            await self.poll_metrics()
            await asyncio.sleep(interval)

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    # -- environments described by the images on the nodes ----------------------------------
    def image_environments(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Environment specs from the labels of the images on reachable nodes, and warnings.

        Read again only when the images changed; a new warning is logged once.
        """
        images = [
            image
            for name in sorted(self.nodes)
            if self.nodes[name].snapshot.reachable
            for image in self.nodes[name].snapshot.environment_images
        ]
        if images != self._images_read:
            self._image_environments = environments_from_images(images)
            self._images_read = images
            self.log_warnings("images", self._image_environments[1])
        return self._image_environments

    def log_warnings(self, source: str, warnings: Iterable[str]) -> None:
        """Log each warning when it first appears (not at every poll); say when one goes."""
        now = set(warnings)
        before = self._warned.get(source, set())
        for warning in sorted(now - before):
            log.warning("environment warning: %s", warning)
        for warning in sorted(before - now):
            log.info("environment warning resolved: %s", warning)
        self._warned[source] = now

    async def ready(self) -> list[NodeSnapshot]:
        """Start the watchers if needed; wait for every node's first poll; snapshots."""
        if self.metrics is not None and (self._metrics_task is None or self._metrics_task.done()):
            self._metrics_task = asyncio.get_running_loop().create_task(self._watch_metrics())
        for node in self.nodes.values():
            node.start_watching()
        waits = [node.wait_polled() for node in self.nodes.values()]
        await asyncio.gather(*waits, return_exceptions=True)
        return self.snapshots()

    def snapshots(self) -> list[NodeSnapshot]:
        return [node.planning_snapshot() for node in self.nodes.values()]

    def decide(
        self, key: str, needs: Needs, image: str, exclude: frozenset[str] = frozenset()
    ) -> Placement:
        """Place the session and reserve its share on the chosen node, atomically."""
        with self._lock:
            placement = place(needs, self.snapshots(), image, self.policy, exclude)
            self.nodes[placement.node].reserve(key, placement.reservation(needs))
        return placement

    def find_session(self, key: str) -> str | None:
        """The node whose engine runs the session ``user/server`` (engines are the truth)."""
        for node in self.nodes.values():
            if key in node.snapshot.sessions:
                return node.name
        return None

    # -- draining ---------------------------------------------------------------------------
    def _load_drained(self) -> dict[str, bool]:
        if not self.state_file or not self.state_file.exists():
            return {}
        try:
            data = json.loads(self.state_file.read_text())
            return {str(k): bool(v) for k, v in data.get("draining", {}).items()}
        except (OSError, ValueError, AttributeError) as err:
            log.error("ignoring unreadable node state %s: %s", self.state_file, err)
            return {}

    def set_draining(self, name: str, draining: bool) -> None:
        self.nodes[name].set_draining(draining)
        log.warning("node %s %s", name, "drained" if draining else "undrained")
        if self.state_file:
            state = {n: node.draining for n, node in self.nodes.items()}
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"draining": state}, indent=1))
            tmp.replace(self.state_file)
