"""The site's compute nodes as plain data: endpoint, address, labels, GPUs, TLS files.

CPU count and memory are not declared here: each node's engine reports them. GPUs are
declared, because Docker does not report them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .placement import Gpu
from .units import parse_memory


@dataclass(frozen=True)
class TlsFiles:
    """Mutual TLS to a ``tcp://`` engine: the CA that signed the engine's certificate, and
    the hub's client certificate and key."""

    ca: str
    cert: str
    key: str


@dataclass(frozen=True)
class NodeConfig:
    name: str
    endpoint: str
    # where the hub reaches ports published on this node; "" for the local engine, whose
    # sessions the hub reaches on their internal network address
    address: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[Gpu, ...] = ()
    tls: TlsFiles | None = None
    # the hub's URL as seen from containers on this node ("" = the hub's default)
    hub_connect_url: str = ""
    draining: bool = False
    # the node's instance label in Prometheus (node-exporter), e.g. "10.0.0.5:9100"
    prometheus_instance: str = ""

    @property
    def is_local(self) -> bool:
        return self.endpoint.startswith("unix://")

    @property
    def metrics_instance(self) -> str:
        """The node-exporter ``instance`` label: as configured, else ``ADDRESS:9100``."""
        if self.prometheus_instance:
            return self.prometheus_instance
        return f"{self.publish_address}:9100" if self.publish_address else ""

    @property
    def publish_address(self) -> str:
        """The address session ports are published on (remote nodes only)."""
        if self.is_local:
            return ""
        return self.address or (urlparse(self.endpoint).hostname or "")


def gpu_from_spec(spec: Mapping[str, Any]) -> Gpu:
    return Gpu(
        id=str(spec["id"]),
        model=str(spec.get("model", "")),
        memory=parse_memory(spec.get("memory", 0)),
        desktop_slots=int(spec.get("desktop_slots", 4)),
    )


def node_from_spec(spec: Mapping[str, Any]) -> NodeConfig:
    """A node from one entry of the site YAML's ``nodes`` list (already schema-checked)."""
    tls = spec.get("tls")
    return NodeConfig(
        name=spec["name"],
        endpoint=spec["endpoint"],
        address=spec.get("address", ""),
        labels={str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
        gpus=tuple(gpu_from_spec(g) for g in spec.get("gpus") or ()),
        tls=TlsFiles(ca=tls["ca"], cert=tls["cert"], key=tls["key"]) if tls else None,
        hub_connect_url=spec.get("hub_connect_url", ""),
        draining=bool(spec.get("draining", False)),
        prometheus_instance=spec.get("prometheus_instance", ""),
    )
