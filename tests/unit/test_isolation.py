"""The session firewall and its helper container, as plain data (spawner/isolation.py,
spawner/netguard.py). What the rules do on a real node: tests/integration/
test_network_isolation.py and test_multinode.py."""

from __future__ import annotations

import asyncio

import pytest

from deskhub.hub_config.site import SiteConfigError, load_site
from deskhub.spawner.isolation import (
    Allowed,
    AllowRuleError,
    Endpoint,
    bridge_name,
    chain_names,
    firewall_rules,
    icc_disabled,
    parse_allowed,
)
from deskhub.spawner.netguard import allowed_rules, hub_endpoint, netguard_spec
from deskhub.spawner.prepull import site_images

PRIVATE = [
    "-A DESKHUB-FWD-br-0123456789ab -d 10.0.0.0/8 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 172.16.0.0/12 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 192.168.0.0/16 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 100.64.0.0/10 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 169.254.0.0/16 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 198.18.0.0/15 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 0.0.0.0/8 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 224.0.0.0/4 -j DROP",
    "-A DESKHUB-FWD-br-0123456789ab -d 240.0.0.0/4 -j DROP",
]


def test_the_rules_of_the_hubs_own_node():
    rules = firewall_rules(
        bridge="br-0123456789ab",
        hub=Endpoint("172.21.0.1", 8081),
        hub_on_node=True,
        node_addresses=["10.0.0.12", "10.0.0.11"],
        allowed=[Allowed("10.20.0.0/16"), Allowed("10.1.2.3/32", 3128)],
        internet=True,
    )
    assert rules.splitlines() == [
        "*filter",
        ":DESKHUB-IN-br-0123456789ab - [0:0]",
        ":DESKHUB-FWD-br-0123456789ab - [0:0]",
        "-A DESKHUB-IN-br-0123456789ab -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        "-A DESKHUB-IN-br-0123456789ab -d 172.21.0.1/32 -p tcp --dport 8081 -j RETURN",
        "-A DESKHUB-IN-br-0123456789ab -j DROP",
        "-A DESKHUB-FWD-br-0123456789ab -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        "-A DESKHUB-FWD-br-0123456789ab -o br-0123456789ab -j DROP",
        "-A DESKHUB-FWD-br-0123456789ab -d 10.0.0.11/32 -j DROP",
        "-A DESKHUB-FWD-br-0123456789ab -d 10.0.0.12/32 -j DROP",
        "-A DESKHUB-FWD-br-0123456789ab -p udp --dport 53 -j RETURN",
        "-A DESKHUB-FWD-br-0123456789ab -p tcp --dport 53 -j RETURN",
        "-A DESKHUB-FWD-br-0123456789ab -d 10.20.0.0/16 -j RETURN",
        "-A DESKHUB-FWD-br-0123456789ab -d 10.1.2.3/32 -p tcp --dport 3128 -j RETURN",
        *PRIVATE,
        "COMMIT",
    ]


def test_a_remote_node_lets_its_sessions_reach_the_hub_before_dropping_nodes_and_the_internet():
    rules = firewall_rules(
        bridge="br-0123456789ab",
        hub=Endpoint("10.0.0.1", 8081),
        hub_on_node=False,
        node_addresses=["10.0.0.1"],  # the hub's host is also a node
        allowed=[],
        internet=False,
    ).splitlines()
    assert rules[3:] == [
        "-A DESKHUB-IN-br-0123456789ab -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        "-A DESKHUB-IN-br-0123456789ab -j DROP",
        "-A DESKHUB-FWD-br-0123456789ab -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        "-A DESKHUB-FWD-br-0123456789ab -o br-0123456789ab -j DROP",
        "-A DESKHUB-FWD-br-0123456789ab -d 10.0.0.1/32 -p tcp --dport 8081 -j RETURN",
        "-A DESKHUB-FWD-br-0123456789ab -d 10.0.0.1/32 -j DROP",
        "-A DESKHUB-FWD-br-0123456789ab -p udp --dport 53 -j RETURN",
        "-A DESKHUB-FWD-br-0123456789ab -p tcp --dport 53 -j RETURN",
        *PRIVATE,
        "-A DESKHUB-FWD-br-0123456789ab -j DROP",
        "COMMIT",
    ]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("10.20.0.0/16", [Allowed("10.20.0.0/16")]),
        ("10.20.1.7/16", [Allowed("10.20.0.0/16")]),
        ("10.1.2.3", [Allowed("10.1.2.3/32")]),
        (" 10.1.2.3:3128 ", [Allowed("10.1.2.3/32", 3128)]),
        ("10.1.0.0/24:443", [Allowed("10.1.0.0/24", 443)]),
        ("mirror.example.org:443", [Allowed("10.9.0.1/32", 443), Allowed("10.9.0.2/32", 443)]),
    ],
)
def test_allowed_destinations(entry, expected):
    assert parse_allowed(entry, resolve=lambda host: ["10.9.0.2", "10.9.0.1"]) == expected


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("mirror.example.org", "HOST:PORT"),
        ("10.1.2.3:0", "port must be a number from 1 to 65535"),
        ("10.1.2.3:http", "port must be a number"),
        ("10.1.2.3:70000", "port must be a number"),
        ("fd00::/8", "only IPv4"),
        ("", "give an address range"),
    ],
)
def test_bad_allowed_destinations_say_what_is_wrong(entry, says):
    with pytest.raises(AllowRuleError, match=says):
        parse_allowed(entry, resolve=lambda host: ["10.9.0.1"])


def test_a_site_yaml_with_a_bad_allow_entry_is_refused_naming_it(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("network:\n  allow: ['10.0.0.0/8', 'proxy.example.org']\n")
    with pytest.raises(SiteConfigError, match=r"'network.allow.1': 'proxy.example.org'"):
        load_site(site)
    site.write_text("network:\n  allow: ['proxy.example.org:3128']\n  internet: false\n")
    assert load_site(site)["network"] == {
        "isolation": True,
        "allow": ["proxy.example.org:3128"],
        "internet": False,
    }


def test_host_names_in_allow_are_resolved_when_the_rules_are_made():
    assert asyncio.run(allowed_rules(["localhost:3128", "10.0.0.0/8"])) == [
        Allowed("127.0.0.1/32", 3128),
        Allowed("10.0.0.0/8"),
    ]


def test_the_bridge_and_its_chains_are_named_after_the_network():
    made_by_us = {
        "Id": "0123456789abcdef",
        "Options": {"com.docker.network.bridge.enable_icc": "false"},
    }
    assert bridge_name(made_by_us) == "br-0123456789ab"
    assert icc_disabled(made_by_us)
    named = {"Id": "x", "Options": {"com.docker.network.bridge.name": "deskhub0"}}
    assert bridge_name(named) == "deskhub0"
    assert not icc_disabled(named)
    assert chain_names("br-0123456789ab") == (
        "DESKHUB-IN-br-0123456789ab",
        "DESKHUB-FWD-br-0123456789ab",
    )


def test_hub_endpoints():
    assert hub_endpoint("http://10.0.0.1:8081/hub/api") == ("10.0.0.1", 8081)
    assert hub_endpoint("https://hub.example.org/hub/api") == ("hub.example.org", 443)


def test_the_netguard_container_has_the_host_network_and_only_network_admin():
    assert netguard_spec("deskhub/netguard:latest", "br-0123456789ab", "*filter\nCOMMIT\n") == {
        "create": {
            "image": "deskhub/netguard:latest",
            "command": [
                "br-0123456789ab",
                "DESKHUB-IN-br-0123456789ab",
                "DESKHUB-FWD-br-0123456789ab",
            ],
            "environment": {"NETGUARD_RULES": "*filter\nCOMMIT\n"},
            "user": "0:0",
            "labels": {"deskhub.helper": "netguard"},
        },
        "host_config": {
            "network_mode": "host",
            "cap_drop": ["ALL"],
            "cap_add": ["NET_ADMIN", "NET_RAW"],
            "security_opt": ["no-new-privileges"],
            "mem_limit": 64 * 1024**2,
            "pids_limit": 32,
        },
    }


def test_prepull_puts_the_firewall_helper_on_the_nodes_where_sessions_are_isolated():
    site = {"environments": {"a": {"image": "deskhub/xfm:latest"}}}
    assert site_images(site) == ["deskhub/netguard:latest", "deskhub/xfm:latest"]
    site["network"] = {"netguard_image": "registry.example.org/deskhub/netguard:1"}
    assert "registry.example.org/deskhub/netguard:1" in site_images(site)
    site["network"] = {"isolation": False}
    assert site_images(site) == ["deskhub/xfm:latest"]
