"""Pure construction of a session container's Docker spec.

``build_container_spec`` takes plain data and returns plain data: the keyword arguments
for docker-py's ``APIClient.create_container`` (``create``) and for
``APIClient.create_host_config`` (``host_config``). No Docker client is touched here, so
the whole spec is tested against literal dicts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .catalogue import App, Environment

LABEL_PREFIX = "deskhub."
HOME_MOUNT = "/home/deskhub"
DATA_ROOT = "/data"
HOME_OWNER_LABEL = f"{LABEL_PREFIX}home-owner"
# the uid:gid the images' own /home/deskhub belongs to (images/base/Dockerfile)
IMAGE_HOME_OWNER = "1000:1000"


PROCESSED_ROOT = "/processed"


@dataclass(frozen=True)
class DataMount:
    """An experiment's host folder: its data read-only at ``/data/<experiment>``, or its
    shared ``processed`` area, writable by the experiment's members, at
    ``/processed/<experiment>``."""

    experiment: str
    source: str
    processed: bool = False

    @property
    def target(self) -> str:
        return f"{PROCESSED_ROOT if self.processed else DATA_ROOT}/{self.experiment}"


@dataclass(frozen=True)
class SessionIdentity:
    """Who and where: the user, their server, and the node the session is placed on."""

    username: str
    server_name: str
    node: str
    uid: int = 1000
    gid: int = 1000
    # supplementary groups: the owners of the experiments' processed areas
    groups: tuple[int, ...] = ()


# what the engine's nvidia driver is asked for: a desktop renders through VirtualGL's EGL
# back end (graphics); a whole-GPU session may also compute
GPU_CAPABILITIES = {
    "shared": ["gpu", "graphics", "utility"],
    "exclusive": ["gpu", "compute", "graphics", "utility"],
}


def device_requests(mode: str, gpus: Sequence[str]) -> list[dict[str, Any]]:
    """The Docker device request giving the session exactly the GPUs it was placed on."""
    if mode == "none" or not gpus:
        return []
    return [{"Driver": "nvidia", "DeviceIDs": list(gpus), "Capabilities": [GPU_CAPABILITIES[mode]]}]


def gpu_environment(mode: str, gpus: Sequence[str]) -> dict[str, str]:
    """What the desktop's launchers read to start GL applications through VirtualGL."""
    if mode == "none" or not gpus:
        return {}
    return {"DESKHUB_GPU": mode, "DESKHUB_GPUS": ",".join(gpus), "VGL_DISPLAY": "egl"}


def apps_environment(apps: Sequence[App]) -> dict[str, str]:
    """``DESKHUB_APPS``: the environment's applications as a JSON list of
    ``{"name", "exec", "gpu"}``, from which the desktop writes its launchers at every start
    (``deskhub-desktop-setup`` in images/base). Set even when empty, so that a home used by
    another environment before loses that one's launchers."""
    value = [{"name": a.name, "exec": a.exec, "gpu": a.gpu} for a in apps]
    return {"DESKHUB_APPS": json.dumps(value, ensure_ascii=False, separators=(",", ":"))}


def identity_environment(identity: SessionIdentity) -> dict[str, str]:
    """HOME and the user's name: a uid from the directory has no entry in the image's
    /etc/passwd, so without them HOME would be ``/`` and nothing could save settings."""
    return {"HOME": HOME_MOUNT, "USER": identity.username, "LOGNAME": identity.username}


def session_labels(
    identity: SessionIdentity, env: Environment, gpus: Sequence[str] = ()
) -> dict[str, str]:
    """Labels that make the engine the source of truth for who runs what, where."""
    labels = {
        f"{LABEL_PREFIX}managed": "true",
        f"{LABEL_PREFIX}user": identity.username,
        f"{LABEL_PREFIX}server": identity.server_name,
        f"{LABEL_PREFIX}environment": env.name,
        f"{LABEL_PREFIX}node": identity.node,
        f"{LABEL_PREFIX}reserved.cpu": f"{env.needs.cpu:g}",
        f"{LABEL_PREFIX}reserved.memory": str(env.needs.memory),
        f"{LABEL_PREFIX}gpu": env.needs.gpu,
    }
    if gpus:
        labels[f"{LABEL_PREFIX}gpus"] = ",".join(gpus)
    return labels


def home_volume_labels(username: str, owner: str = IMAGE_HOME_OWNER) -> dict[str, str]:
    """A home volume's labels; ``home-owner`` is the ``uid:gid`` it was given at creation."""
    return {
        f"{LABEL_PREFIX}managed": "true",
        f"{LABEL_PREFIX}home-of": username,
        HOME_OWNER_LABEL: owner,
    }


def home_owner_spec(image: str, home_volume: str, uid: int, gid: int) -> dict[str, dict[str, Any]]:
    """A one-shot container that gives a home volume to ``uid:gid`` (as Kubernetes sites do
    with an init container): the session itself never runs as root, so it cannot."""
    create = {
        "image": image,
        "command": ["chown", "-R", f"{uid}:{gid}", HOME_MOUNT],
        "user": "0:0",
        "labels": {f"{LABEL_PREFIX}helper": "home-owner"},
        "network_disabled": True,
    }
    host_config = {
        "mounts": [{"Type": "volume", "Source": home_volume, "Target": HOME_MOUNT}],
        "cap_drop": ["ALL"],
        "cap_add": ["CHOWN", "DAC_READ_SEARCH", "FOWNER"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "none",
        "mem_limit": 256 * 1024**2,
        "pids_limit": 64,
    }
    return {"create": create, "host_config": host_config}


def build_mounts(home_volume: str, data: Sequence[DataMount]) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"Type": "volume", "Source": home_volume, "Target": HOME_MOUNT, "ReadOnly": False}
    ]
    for item in sorted(data, key=lambda d: (d.processed, d.experiment)):
        mounts.append(
            {
                "Type": "bind",
                "Source": item.source,
                "Target": item.target,
                "ReadOnly": not item.processed,
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
    gpus: Sequence[str] = (),
    publish_address: str = "",
) -> dict[str, dict[str, Any]]:
    """The complete spec of one session container.

    ``gpus`` are the device ids placement chose on the node; ``publish_address`` is set for
    a remote node: the session's port is then published there (and only there) for the hub.
    """
    mode = env.needs.gpu
    create = {
        "name": container_name,
        "image": env.image,
        "command": list(command),
        "environment": {
            **identity_environment(identity),
            **environment_vars,
            **gpu_environment(mode, gpus),
        },
        "labels": session_labels(identity, env, gpus),
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
    if mode != "none":
        host_config["device_requests"] = device_requests(mode, gpus)
    if identity.groups:
        host_config["group_add"] = [str(gid) for gid in identity.groups]
    if publish_address:
        host_config["port_bindings"] = {port: (publish_address,)}
    return {"create": create, "host_config": host_config}
