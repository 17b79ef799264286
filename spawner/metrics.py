"""Live node load and GPU use read from Prometheus (node-exporter and DCGM-exporter metrics).

Where a site runs Prometheus, the node watchers take each node's live CPU load, memory in
use and GPU utilisation/memory from it instead of measuring containers themselves. One
instant query per metric covers all nodes together (never one query per node); the answers
are matched to nodes by label:

* node-exporter series by their ``instance`` label, against each node's
  ``prometheus_instance`` (e.g. ``"10.0.0.5:9100"``, exactly as Prometheus shows it);
* DCGM-exporter series by their ``UUID`` label, against the GPU ids the node declares
  (nodes that declare GPUs by index get no GPU metrics).

**The PromQL** (see :func:`queries`):

* ``load``: ``max by (instance) (sum by (instance, job)
  (rate(node_cpu_seconds_total{mode!~"idle|iowait"}[1m])))``, the CPUs kept busy over the
  last minute, in the unit of :attr:`NodeSnapshot.load` (CPUs), so directly comparable with
  the node's CPU count. Not ``node_load1``: the Linux load average counts tasks waiting in
  uninterruptible sleep (NFS, disk), so a node whose sessions wait on a slow file server
  shows a load of 50 with idle CPUs, and it is a damped average that trails a change by
  minutes. ``iowait`` is idle CPU time too (a CPU waiting for I/O can run another task), so
  it is excluded with ``idle``; ``steal`` counts as busy (the CPU is not ours to use). The
  inner ``sum`` adds a node's CPUs and modes; the outer ``max`` keeps one series per
  instance where several jobs scrape the same exporter (a ``sum`` would double it). The
  window must hold two scrapes: 1 minute suits scrape intervals up to 30 s
  (``rate_window`` changes it).
* ``memory_used``: ``MemTotal - MemAvailable``, memory applications hold without page
  cache the kernel can drop (as ``free`` shows it, and as the watcher's own measure).
* ``gpu_utilisation`` / ``gpu_memory_used`` / ``gpu_memory_free``: ``max by (UUID)`` of
  ``DCGM_FI_DEV_GPU_UTIL`` (percent, 0-100), ``DCGM_FI_DEV_FB_USED`` and
  ``DCGM_FI_DEV_FB_FREE`` (both MiB, converted to bytes here). The ``max by (UUID)`` drops
  the exporter's other labels (smaller answers) and merges duplicate scrapes of one GPU.

Missing data never fails a poll: a node without series gets ``None``, a GPU without all
three series is left out, and NaN or infinite values are ignored.

:func:`queries`, :func:`parse_vector` and :func:`metrics_by_node` are pure; only
:class:`PrometheusSource` talks to the server, with tornado's non-blocking HTTP client.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

MiB = 1024 * 1024

# the names of the queries, as keys of queries() and of metrics_by_node()'s ``results``
LOAD = "load"
MEMORY_USED = "memory_used"
GPU_UTILISATION = "gpu_utilisation"
GPU_MEMORY_USED = "gpu_memory_used"
GPU_MEMORY_FREE = "gpu_memory_free"

Series = tuple[dict[str, str], float]


@dataclass(frozen=True)
class GpuMetrics:
    """One GPU's live use, as DCGM-exporter reports it."""

    utilisation: float  # percent, 0-100, of the last sample period the GPU was busy
    memory_used: int  # bytes of GPU memory in use
    memory_free: int  # bytes of GPU memory free


@dataclass(frozen=True)
class NodeMetrics:
    """One node's live load; ``None`` (or a GPU absent) where Prometheus had no data."""

    load: float | None = None  # CPUs busy (as NodeSnapshot.load)
    memory_used: int | None = None  # bytes in use, without reclaimable page cache
    gpus: Mapping[str, GpuMetrics] = field(default_factory=dict)  # by GPU UUID


class MetricsUnavailable(Exception):
    """Prometheus could not be asked, or answered something unusable; ``str()`` says why."""


def queries(rate_window: str = "1m") -> dict[str, str]:
    """The PromQL instant queries, by name (see the module's docstring for why these).

    ``rate_window`` is a PromQL duration that must hold at least two scrapes of the
    node-exporters (four is safer): keep ``1m`` for scrape intervals up to 30 s.
    """
    busy = f'rate(node_cpu_seconds_total{{mode!~"idle|iowait"}}[{rate_window}])'
    return {
        LOAD: f"max by (instance) (sum by (instance, job) ({busy}))",
        MEMORY_USED: (
            "max by (instance) (node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes)"
        ),
        GPU_UTILISATION: "max by (UUID) (DCGM_FI_DEV_GPU_UTIL)",
        GPU_MEMORY_USED: "max by (UUID) (DCGM_FI_DEV_FB_USED)",
        GPU_MEMORY_FREE: "max by (UUID) (DCGM_FI_DEV_FB_FREE)",
    }


def parse_vector(response_json: Mapping[str, Any] | str | bytes) -> list[Series]:
    """The series of an ``/api/v1/query`` answer: ``[(labels, value), ...]``.

    ``response_json`` is the answer's body, decoded or not. Values are floats as Prometheus
    sends them (``"NaN"`` and ``"+Inf"`` included). Raises :class:`ValueError` when the
    answer is an error (``status`` not ``success``), not an instant vector, or malformed.
    """
    if isinstance(response_json, str | bytes):
        try:
            response_json = json.loads(response_json)
        except ValueError as err:
            raise ValueError(f"Prometheus answer is not JSON: {err}") from None
    if not isinstance(response_json, Mapping):
        raise ValueError(f"Prometheus answer is not a JSON object: {response_json!r:.200}")
    status = response_json.get("status")
    if status != "success":
        kind = response_json.get("errorType", "")
        error = response_json.get("error", "")
        detail = f"{kind}: {error}" if kind or error else f"status {status!r}"
        raise ValueError(f"Prometheus query failed: {detail}")
    data = response_json.get("data")
    if not isinstance(data, Mapping):
        raise ValueError("Prometheus answer has no data")
    if data.get("resultType") != "vector":
        raise ValueError(
            f"Prometheus answer is a {data.get('resultType')!r}, not an instant vector"
        )
    result = data.get("result")
    if not isinstance(result, list):
        raise ValueError("Prometheus answer has no result list")
    series: list[Series] = []
    for item in result:
        try:
            labels = item["metric"]
            _, value = item["value"]
            series.append(({str(k): str(v) for k, v in labels.items()}, float(value)))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(f"Prometheus answer has a malformed series: {item!r:.200}") from None
    return series


def _by_label(series: Iterable[Series], label: str) -> dict[str, float]:
    """Finite values by one label's value; the largest where one value has several."""
    values: dict[str, float] = {}
    for labels, value in series:
        key = labels.get(label)
        if key is None or not math.isfinite(value):
            continue
        if key not in values or value > values[key]:
            values[key] = value
    return values


def _mib_to_bytes(mib: float) -> int:
    """Bytes from DCGM's MiB (0 for a negative value, capped where absurdly large)."""
    return round(min(max(mib, 0.0), 2.0**53) * MiB)


def metrics_by_node(
    results: Mapping[str, Iterable[Series]],
    instances: Mapping[str, str],
    gpu_ids: Mapping[str, Iterable[str]],
) -> dict[str, NodeMetrics]:
    """Each node's :class:`NodeMetrics` from the queries' results.

    ``results`` maps the names of :func:`queries` to their parsed series (a name may be
    missing); ``instances`` maps node names to their ``instance`` label ("" or absent: no
    node-exporter); ``gpu_ids`` maps node names to their GPUs' UUIDs. Every node named in
    ``instances`` or ``gpu_ids`` gets an entry; series of other instances or GPUs are
    ignored.
    """
    load = _by_label(results.get(LOAD, ()), "instance")
    used = _by_label(results.get(MEMORY_USED, ()), "instance")
    utilisation = _by_label(results.get(GPU_UTILISATION, ()), "UUID")
    gpu_used = _by_label(results.get(GPU_MEMORY_USED, ()), "UUID")
    gpu_free = _by_label(results.get(GPU_MEMORY_FREE, ()), "UUID")
    nodes: dict[str, NodeMetrics] = {}
    for name in dict.fromkeys([*instances, *gpu_ids]):
        instance = instances.get(name, "")
        node_used = used.get(instance) if instance else None
        gpus = {
            uuid: GpuMetrics(
                utilisation=utilisation[uuid],
                memory_used=_mib_to_bytes(gpu_used[uuid]),
                memory_free=_mib_to_bytes(gpu_free[uuid]),
            )
            for uuid in gpu_ids.get(name, ())
            if uuid in utilisation and uuid in gpu_used and uuid in gpu_free
        }
        nodes[name] = NodeMetrics(
            load=max(load[instance], 0.0) if instance and instance in load else None,
            memory_used=round(max(node_used, 0.0)) if node_used is not None else None,
            gpus=gpus,
        )
    return nodes


class PrometheusSource:
    """Live metrics of all nodes from one Prometheus server (its HTTP API)."""

    def __init__(self, url: str, timeout: float = 5.0, *, rate_window: str = "1m") -> None:
        """``url``: the server's base URL, e.g. ``http://prometheus:9090`` (a path prefix
        is kept); ``timeout``: seconds each query may take, connecting included."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.queries = queries(rate_window)

    async def _query(self, promql: str) -> list[Series]:
        # the server gives up too, rather than compute an answer nobody waits for
        params = urlencode({"query": promql, "timeout": f"{self.timeout:g}"})
        request = HTTPRequest(
            f"{self.url}/api/v1/query?{params}",
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            headers={"Accept": "application/json"},
        )
        try:
            # raise_error=False: an error status (400, 422, 503) still has a JSON body;
            # no answer at all (refused, timed out) still raises
            response: HTTPResponse = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError, TimeoutError) as err:
            raise MetricsUnavailable(f"{self.url}: {type(err).__name__}: {err}") from err
        try:
            return parse_vector(response.body)
        except ValueError as err:
            raise MetricsUnavailable(f"{self.url}: HTTP {response.code}: {err}") from err

    async def fetch(
        self, instances: Mapping[str, str], gpu_ids: Mapping[str, Iterable[str]]
    ) -> dict[str, NodeMetrics]:
        """The live metrics of the given nodes (arguments as :func:`metrics_by_node`).

        Runs the queries concurrently; raises :class:`MetricsUnavailable` when any of them
        fails (connection refused or timed out, an error answer, not JSON).
        """
        names = list(self.queries)
        answers = await asyncio.gather(
            *(self._query(self.queries[name]) for name in names), return_exceptions=True
        )
        results: dict[str, list[Series]] = {}
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                if isinstance(answer, MetricsUnavailable):
                    raise MetricsUnavailable(f"query {name}: {answer}") from answer
                raise answer
            results[name] = answer
        return metrics_by_node(results, instances, gpu_ids)
