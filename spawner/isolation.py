"""What a session may reach over the network, as plain data: pure, tested line by line.

Two layers hold on every node, and both are set up by the hub itself through the node's
Docker API, so a node added to the site YAML is isolated at its first session:

* the sessions' bridge network is created with inter-container traffic off
  (``enable_icc=false``), so sessions on one node cannot talk to each other;
* a firewall in the node's own network namespace (:func:`firewall_rules`, loaded by the
  ``deskhub/netguard`` helper image, ``spawner/netguard.py``) lets traffic from that bridge
  reach the hub's API, DNS and what the site allows, and drops the rest: the node itself
  (its Docker API, node-exporter, SSH), every node's address (other nodes' sessions and
  engines), and private address ranges. Public addresses are allowed unless the site says
  ``network.internet: false``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# the helper image that loads the firewall on a node (images/netguard)
NETGUARD_IMAGE = "deskhub/netguard:latest"

# the Docker option that turns inter-container traffic off on a bridge network
ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"

# private, shared, link-local (cloud metadata at 169.254.169.254), benchmarking, multicast
# and reserved ranges: a session reaches none of them unless the site allows a part
PRIVATE_RANGES = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "198.18.0.0/15",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


class AllowRuleError(ValueError):
    """A ``network.allow`` entry that is not ``CIDR``, ``CIDR:PORT`` or ``HOST:PORT``."""


@dataclass(frozen=True)
class Allowed:
    """One destination the site allows: an address range, and a TCP port or any port."""

    cidr: str
    port: int | None = None

    def match(self) -> str:
        return f"-d {self.cidr}" + (f" -p tcp --dport {self.port}" if self.port else "")


@dataclass(frozen=True)
class Endpoint:
    """An address and TCP port (the hub's API as a node's sessions reach it)."""

    address: str
    port: int


def network_options() -> dict[str, str]:
    """Driver options of the sessions' bridge network on every node."""
    return {ICC_OPTION: "false"}


def icc_disabled(network: dict) -> bool:
    """Whether an existing network (``docker network inspect``) keeps sessions apart."""
    return (network.get("Options") or {}).get(ICC_OPTION) == "false"


def bridge_name(network: dict) -> str:
    """The Linux bridge of a Docker bridge network, as Docker names it."""
    options = network.get("Options") or {}
    return options.get(BRIDGE_NAME_OPTION) or f"br-{network['Id'][:12]}"


def chain_names(bridge: str) -> tuple[str, str]:
    """deskhub's two chains for one bridge: traffic to the node, traffic through it.
    iptables chain names have at most 28 characters; a bridge name has at most 15."""
    tag = bridge if len(bridge) <= 15 else hashlib.sha1(bridge.encode()).hexdigest()[:12]
    return f"DESKHUB-IN-{tag}", f"DESKHUB-FWD-{tag}"


def _cidr(text: str) -> str:
    network = ipaddress.ip_network(text, strict=False)
    if network.version != 4:
        raise AllowRuleError(f"{text}: only IPv4 ranges are supported")
    return str(network)


def parse_allowed(entry: str, resolve=None) -> list[Allowed]:
    """One ``network.allow`` entry: ``10.1.0.0/16``, ``10.1.2.3``, ``10.1.2.3:3128`` or
    ``mirror.example.org:443`` (a host name is resolved by ``resolve(host) -> [ip, ...]``
    when the rules are made, and needs a port)."""
    text = entry.strip()
    host, port_text = text, ""
    if text.count(":") == 1:  # more would be an IPv6 address, refused below
        host, port_text = text.split(":")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise AllowRuleError(f"{entry!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    try:
        return [Allowed(_cidr(host), port)]
    except AllowRuleError:
        raise
    except ValueError:
        pass
    if port is None:
        raise AllowRuleError(
            f"{entry!r}: give an address range (10.1.0.0/16), an address, or HOST:PORT"
        )
    if resolve is None:
        raise AllowRuleError(f"{entry!r}: host names need resolving")
    addresses = sorted(set(resolve(host)))
    if not addresses:
        raise AllowRuleError(f"{entry!r}: {host} has no IPv4 address")
    return [Allowed(_cidr(address), port) for address in addresses]


def firewall_rules(
    *,
    bridge: str,
    hub: Endpoint | None,
    hub_on_node: bool,
    node_addresses: Iterable[str],
    allowed: Sequence[Allowed],
    internet: bool,
) -> str:
    """The ``iptables-restore --noflush`` input of one node's session bridge.

    ``hub_on_node``: the hub listens on this node itself (the bridge's gateway), so its API
    is allowed in the chain for traffic to the node; otherwise in the forwarding chain.
    Declaring a chain in the input empties it, so loading the same rules again replaces
    them rather than adding to them.
    """
    to_node, through = chain_names(bridge)
    established = "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
    lines = ["*filter", f":{to_node} - [0:0]", f":{through} - [0:0]"]
    # to the node itself: the hub's API (when it runs there) and nothing else
    lines.append(f"-A {to_node} {established}")
    if hub is not None and hub_on_node:
        lines.append(f"-A {to_node} -d {hub.address}/32 -p tcp --dport {hub.port} -j RETURN")
    lines.append(f"-A {to_node} -j DROP")
    # through the node: never another session here, never a node; then the hub, DNS, the
    # site's list, and public addresses if allowed
    lines.append(f"-A {through} {established}")
    lines.append(f"-A {through} -o {bridge} -j DROP")
    if hub is not None and not hub_on_node:
        lines.append(f"-A {through} -d {hub.address}/32 -p tcp --dport {hub.port} -j RETURN")
    for address in sorted(set(node_addresses)):
        lines.append(f"-A {through} -d {_cidr(address)} -j DROP")
    for proto in ("udp", "tcp"):
        lines.append(f"-A {through} -p {proto} --dport 53 -j RETURN")
    for rule in allowed:
        lines.append(f"-A {through} {rule.match()} -j RETURN")
    for cidr in PRIVATE_RANGES:
        lines.append(f"-A {through} -d {cidr} -j DROP")
    if not internet:
        lines.append(f"-A {through} -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
