"""Pure construction of a session container's Docker spec.

``build_container_spec`` takes plain data and returns plain data: the keyword arguments
for docker-py's ``APIClient.create_container`` (``create``) and for
``APIClient.create_host_config`` (``host_config``). No Docker client is touched here, so
the whole spec is tested against literal dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .catalogue import Environment

LABEL_PREFIX = "deskhub."
HOME_MOUNT = "/home/deskhub"
DATA_ROOT = "/data"


@dataclass(frozen=True)
class DataMount:
    """An experiment's host folder, mounted read-only at ``/data/<experiment>``."""

    experiment: str
    source: str


@dataclass(frozen=True)
class SessionIdentity:
    """Who and where: the user, their server, and the node the session is placed on."""

    username: str
    server_name: str
    node: str
    uid: int = 1000
    gid: int = 1000


def session_labels(identity: SessionIdentity, env: Environment) -> dict[str, str]:
    """Labels that make the engine the source of truth for who runs what, where."""
    return {
        f"{LABEL_PREFIX}managed": "true",
        f"{LABEL_PREFIX}user": identity.username,
        f"{LABEL_PREFIX}server": identity.server_name,
        f"{LABEL_PREFIX}environment": env.name,
        f"{LABEL_PREFIX}node": identity.node,
        f"{LABEL_PREFIX}reserved.cpu": f"{env.needs.cpu:g}",
        f"{LABEL_PREFIX}reserved.memory": str(env.needs.memory),
    }


def home_volume_labels(username: str) -> dict[str, str]:
    return {f"{LABEL_PREFIX}managed": "true", f"{LABEL_PREFIX}home-of": username}


def build_mounts(home_volume: str, data: Sequence[DataMount]) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"Type": "volume", "Source": home_volume, "Target": HOME_MOUNT, "ReadOnly": False}
    ]
    for item in sorted(data, key=lambda d: d.experiment):
        mounts.append(
            {
                "Type": "bind",
                "Source": item.source,
                "Target": f"{DATA_ROOT}/{item.experiment}",
                "ReadOnly": True,
            }
        )
    return mounts


def build_container_spec(
    *,
    container_name: str,
    identity: SessionIdentity,
    env: Environment,
    home_volume: str,
    data: Sequence[DataMount],
    environment_vars: Mapping[str, str],
    command: Sequence[str],
    network: str,
    port: int,
    pids_limit: int,
) -> dict[str, dict[str, Any]]:
    """The complete spec of one session container."""
    create = {
        "name": container_name,
        "image": env.image,
        "command": list(command),
        "environment": dict(environment_vars),
        "labels": session_labels(identity, env),
        "user": f"{identity.uid}:{identity.gid}",
        "ports": [port],
    }
    host_config = {
        "mounts": build_mounts(home_volume, data),
        "mem_limit": env.needs.memory,
        "memswap_limit": env.needs.memory,
        "nano_cpus": int(env.needs.cpu * 1e9),
        "pids_limit": pids_limit,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": network,
        "auto_remove": False,
        "shm_size": 256 * 1024**2,
    }
    return {"create": create, "host_config": host_config}
