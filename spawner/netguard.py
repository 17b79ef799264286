"""Setting up a node's session isolation through its own Docker API.

The hub already controls every node's engine, so it also isolates sessions there: before a
node's first session (and again after the node was unreachable, e.g. rebooted), it loads
the firewall of :mod:`.isolation` into the node's network namespace with a short-lived
``deskhub/netguard`` container (host network, ``NET_ADMIN``/``NET_RAW`` only). A node
where that fails takes no session: the spawn moves on to the next node.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import docker

from .containerspec import LABEL_PREFIX
from .isolation import (
    NETGUARD_IMAGE,
    Allowed,
    AllowRuleError,
    Endpoint,
    bridge_name,
    chain_names,
    firewall_rules,
    icc_disabled,
    parse_allowed,
)
from .pulling import PullProgress

log = logging.getLogger("JupyterHub.deskhub.netguard")

NETGUARD_TIMEOUT = 60.0


class IsolationFailed(RuntimeError):
    """The node's firewall could not be loaded (the detail is for the log)."""


@dataclass(frozen=True)
class IsolationPolicy:
    """The site's ``network`` section."""

    enabled: bool = True
    allow: tuple[str, ...] = ()
    internet: bool = True
    image: str = NETGUARD_IMAGE


def netguard_spec(image: str, bridge: str, rules: str) -> dict[str, dict[str, Any]]:
    """The one-shot container that loads ``rules`` for ``bridge`` into the node's iptables."""
    to_node, through = chain_names(bridge)
    create = {
        "image": image,
        "command": [bridge, to_node, through],
        "environment": {"NETGUARD_RULES": rules},
        "user": "0:0",
        "labels": {f"{LABEL_PREFIX}helper": "netguard"},
    }
    host_config = {
        "network_mode": "host",
        "cap_drop": ["ALL"],
        "cap_add": ["NET_ADMIN", "NET_RAW"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": 64 * 1024**2,
        "pids_limit": 32,
    }
    return {"create": create, "host_config": host_config}


def hub_endpoint(url: str) -> tuple[str, int]:
    """Host and port of a hub URL such as ``http://10.0.0.1:8081/hub/api``."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.hostname or "", port


def _is_address(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


async def resolve(host: str) -> list[str]:
    """IPv4 addresses of ``host`` (itself if it is one), without blocking the event loop."""
    if _is_address(host):
        return [host]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, None, family=socket.AF_INET, type=socket.SOCK_STREAM
    )
    return sorted({info[4][0] for info in infos})


async def allowed_rules(entries: Iterable[str]) -> list[Allowed]:
    """The site's ``network.allow`` entries as rules, host names resolved now."""
    rules: list[Allowed] = []
    for entry in entries:
        host = entry.strip().rpartition(":")[0]
        addresses: list[str] = []
        if host and not _is_address(host) and "/" not in host:
            try:
                addresses = await resolve(host)
            except OSError as err:
                raise AllowRuleError(f"{entry!r}: {host} does not resolve ({err})") from err
        rules.extend(parse_allowed(entry, resolve=lambda _name, found=addresses: found))
    return rules


async def node_addresses(configs: Sequence[Any]) -> list[str]:
    """Every remote node's address (sessions reach none of them)."""
    found: set[str] = set()
    for config in configs:
        host = config.publish_address
        if not host:
            continue
        try:
            found.update(await resolve(host))
        except OSError as err:
            log.warning("node %s: %s does not resolve (%s)", config.name, host, err)
    return sorted(found)


async def ensure_isolated(
    node: Any,
    network: dict[str, Any],
    *,
    policy: IsolationPolicy,
    hub_url: str,
    nodes: Sequence[Any],
) -> None:
    """Load the node's session firewall unless the same rules are loaded since the node
    was last reachable. Raises :class:`IsolationFailed` with the reason."""
    bridge = bridge_name(network)
    if not icc_disabled(network):
        log.warning(
            "node %s: network %s lets containers talk to each other (made by an older"
            " deskhub); the firewall still keeps sessions apart. Remove the network when no"
            " session uses it to have it made again.",
            node.name,
            network.get("Name"),
        )
    host, port = hub_endpoint(hub_url)
    try:
        hub_addresses = await resolve(host) if host else []
        allowed = await allowed_rules(policy.allow)
        addresses = await node_addresses(nodes)
    except (OSError, AllowRuleError) as err:
        raise IsolationFailed(str(err)) from err
    if node.config.is_local:
        gateway = network["IPAM"]["Config"][0]["Gateway"]
        hub = Endpoint(gateway, port)
        on_node = True
    else:
        hub = Endpoint(hub_addresses[0], port) if hub_addresses else None
        on_node = False
    rules = firewall_rules(
        bridge=bridge,
        hub=hub,
        hub_on_node=on_node,
        node_addresses=addresses,
        allowed=allowed,
        internet=policy.internet,
    )
    if node.isolation_rules.get(bridge) == rules:
        return
    async with node.isolation_lock:
        if node.isolation_rules.get(bridge) == rules:
            return
        output = await _run_netguard(node, policy.image, bridge, rules)
        node.isolation_rules[bridge] = rules
        log.info("node %s: sessions on %s isolated\n%s", node.name, bridge, output.strip())


async def _ensure_image(node: Any, image: str) -> None:
    try:
        await node.call("inspect_image", image)
    except docker.errors.NotFound:
        log.info("node %s: pulling %s", node.name, image)
        try:
            await node.pull(image, PullProgress(image))
        except Exception as err:
            raise IsolationFailed(f"{image} is not there and could not be pulled: {err}") from err


async def _run_netguard(node: Any, image: str, bridge: str, rules: str) -> str:
    await _ensure_image(node, image)
    spec = netguard_spec(image, bridge, rules)
    host_config = await node.call("create_host_config", **spec["host_config"])
    container = await node.call("create_container", host_config=host_config, **spec["create"])
    cid = container["Id"]
    try:
        await node.call("start", cid)
        result = await asyncio.wait_for(node.call("wait", cid), NETGUARD_TIMEOUT)
        output = (await node.call("logs", cid)).decode(errors="replace")
    except (docker.errors.DockerException, TimeoutError) as err:
        raise IsolationFailed(f"the netguard container failed: {err}") from err
    finally:
        try:
            await node.call("remove_container", cid, force=True)
        except docker.errors.DockerException as err:
            log.warning("node %s: could not remove netguard container: %s", node.name, err)
    if result.get("StatusCode") != 0:
        raise IsolationFailed(f"netguard exited with {result.get('StatusCode')}: {output.strip()}")
    return output
