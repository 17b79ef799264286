"""A session attacks the network around it, on a real deskhub on this machine's engine.

From inside ann's container: bob's server, anything listening on the node itself, and a
private-network host stand-in (a network namespace this test creates) on a port the site
did not allow are all out of reach; the hub's API and the allowed port are reached. Each
"blocked" target really listens, so blocked is never confused with closed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import running
from tests.harness import Hub, example_site, make_data
from tests.netprobe import connect_from, listening, private_host

ALLOWED_PORT, OTHER_PORT = 8080, 9090


@pytest.fixture(scope="module")
def lan() -> Iterator[str]:
    with private_host("dhiso", "10.213.7.0", (ALLOWED_PORT, OTHER_PORT)) as address:
        yield address


@pytest.fixture(scope="module")
def iso(tmp_path_factory, docker_client, lan: str) -> Iterator[Hub]:
    work = tmp_path_factory.mktemp("isolation")
    site = example_site(make_data(work / "data"))
    site["network"] = {"allow": [f"{lan}:{ALLOWED_PORT}"]}
    with running(Hub(work, site, prefix="deskhubiso", network="deskhub-iso")) as hub:
        for user in ("ann", "bob"):  # both start at once
            hub.ensure_user(user)
            assert hub.spawn(user).status_code in (201, 202)
        for user in ("ann", "bob"):
            hub.wait_ready(user)
        yield hub


def gateway(hub: Hub) -> str:
    return hub.docker.networks.get(hub.network).attrs["IPAM"]["Config"][0]["Gateway"]


def server_address(hub: Hub, user: str) -> str:
    container = hub.container(user)
    ip = container.attrs["NetworkSettings"]["Networks"][hub.network]["IPAddress"]
    port = next(iter(container.attrs["Config"]["ExposedPorts"])).split("/")[0]
    return f"{ip}:{port}"


def test_sessions_reach_the_hub_api_and_what_the_site_allows(iso: Hub, lan: str):
    hub_api = f"{gateway(iso)}:{iso.api_port}"
    seen = connect_from(iso.container("ann"), [hub_api, f"{lan}:{ALLOWED_PORT}"])
    assert seen == {hub_api: "open", f"{lan}:{ALLOWED_PORT}": "open"}


def test_a_session_reaches_no_other_session_nor_the_node_nor_private_hosts(iso: Hub, lan: str):
    bob = server_address(iso, "bob")
    # bob's server answers where it should: the hub reaches it (through the proxy)
    assert iso.user_get("bob", "api/status").status_code == 200
    with listening(gateway(iso)) as on_node:  # e.g. a Docker API or node-exporter port
        targets = [bob, f"{bob.split(':')[0]}:5901", on_node.target, f"{lan}:{OTHER_PORT}"]
        seen = connect_from(iso.container("ann"), targets)
        assert on_node.accepted == 0
    # dropped, not merely closed: each of these but bob's VNC port has a listener
    assert seen == {
        bob: "timeout",
        targets[1]: "timeout",
        on_node.target: "timeout",
        f"{lan}:{OTHER_PORT}": "timeout",
    }


def test_the_firewall_is_on_the_node_and_sessions_are_apart_on_the_bridge(iso: Hub):
    network = iso.docker.networks.get(iso.network).attrs
    assert network["Options"] == {"com.docker.network.bridge.enable_icc": "false"}
    assert "sessions on br-" in iso.log_path.read_text()


CALL_HUB = r"""
import json, os, sys, urllib.error, urllib.request
api = os.environ["JUPYTERHUB_API_URL"]  # http://HOST:PORT/hub/api
root = api[: -len("/hub/api")]
token = os.environ["JUPYTERHUB_API_TOKEN"]
codes = {}
for name, url in json.loads(sys.argv[1]).items():
    headers = {"Authorization": f"token {token}"}
    request = urllib.request.Request(url.replace("ROOT", root), headers=headers)
    try:
        codes[name] = urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as err:
        codes[name] = err.code
print(json.dumps(codes))
"""


def test_a_sessions_token_reads_nothing_of_other_users_nor_the_hubs_metrics(iso: Hub):
    calls = {
        "self": "ROOT/hub/api/user",
        "bob": "ROOT/hub/api/users/bob",
        "users": "ROOT/hub/api/users",
        "metrics": "ROOT/hub/metrics",
        "bob-server": "ROOT/user/bob/api/status",
    }
    result = iso.container("ann").exec_run(["python3", "-c", CALL_HUB, json.dumps(calls)])
    codes = json.loads(result.output.decode().strip().splitlines()[-1])
    assert codes["self"] == 200
    # JupyterHub answers 404 for users a token may not see, 403 for what it may not do
    assert codes["bob"] in (403, 404)
    assert codes["users"] == 403
    assert codes["metrics"] == 403
    # the hub's API port serves no user's server
    assert codes["bob-server"] in (302, 403, 404)
