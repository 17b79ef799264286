"""The nodes' admin API and page on a real hub: what admins see, drain and undrain, and
who may do it."""

from __future__ import annotations

import json

import requests

from tests.harness import Hub


def user_token(hub: Hub, name: str) -> str:
    hub.ensure_user(name)
    response = hub.api("POST", f"/users/{name}/tokens", json={"note": "test"})
    response.raise_for_status()
    return response.json()["token"]


def as_user(hub: Hub, token: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(
        method,
        f"{hub.url}/hub/api{path}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
        **kwargs,
    )


def test_admin_sees_every_node_with_load_and_sessions(hub):
    hub.ensure_user("nora")
    hub.spawn_ready("nora")
    try:
        nodes = hub.api("GET", "/nodes").json()
    finally:
        hub.stop_server("nora")
    assert [n["name"] for n in nodes] == ["local"]
    local = nodes[0]
    assert local["reachable"] is True
    assert local["draining"] is False
    assert local["cpus"] >= 1 and local["memory"] > 0
    assert {
        "user": "nora",
        "server": "",
        "cpu": 0.25,
        "memory": 1024**3,
        "gpu": "none",
        "gpus": [],
    } in local["sessions"]
    assert local["reserved_cpu"] >= 0.25
    assert local["load"] is not None and local["memory_used"] > 0
    assert hub.api("GET", "/nodes/nowhere").status_code == 404


def test_a_drained_node_takes_no_new_session_and_keeps_running_ones(hub):
    hub.ensure_user("olga")
    hub.ensure_user("pete")
    hub.spawn_ready("olga")
    try:
        drained = hub.api("PATCH", "/nodes/local", data=json.dumps({"draining": True}))
        assert drained.status_code == 200, drained.text
        assert drained.json()["draining"] is True
        refused = hub.spawn("pete")
        assert refused.status_code == 503
        assert refused.json()["message"] == (
            "Cannot start now: 1 node is closed for maintenance; try again later."
        )
        assert hub.user_get("olga", "api/status").status_code == 200  # still served
        assert not [c for c in hub.containers() if c.name.endswith("-pete")]
    finally:
        undrained = hub.api("PATCH", "/nodes/local", data=json.dumps({"draining": False}))
    assert undrained.json()["draining"] is False
    # the drain is remembered across hub restarts, in the hub's state folder
    assert json.loads((hub.state / "nodes.json").read_text()) == {"draining": {"local": False}}
    hub.spawn_ready("pete")
    hub.stop_server("pete")
    hub.stop_server("olga")


def test_bad_drain_requests_get_one_sentence(hub):
    for body in ("{", "[]", '{"draining": "yes"}', '{"draining": true, "x": 1}'):
        response = hub.api("PATCH", "/nodes/local", data=body)
        assert response.status_code == 400
        assert response.json()["message"] == 'Send {"draining": true} or {"draining": false}.'


def test_users_cannot_see_or_drain_nodes(hub):
    token = user_token(hub, "quinn")
    assert as_user(hub, token, "GET", "/nodes").status_code == 403
    patch = as_user(hub, token, "PATCH", "/nodes/local", data='{"draining": true}')
    assert patch.status_code == 403
    assert hub.api("GET", "/nodes/local").json()["draining"] is False


def test_the_nodes_page_is_linked_from_the_admin_navigation(hub):
    session = hub.admin_session()
    admin = session.get(f"{hub.url}/hub/admin", timeout=30)
    assert 'href="/hub/nodes">Nodes</a>' in admin.text
    page = session.get(f"{hub.url}/hub/nodes", timeout=30)
    assert page.status_code == 200
    assert '<tr data-node="local">' in page.text
    assert "in service" in page.text
    assert 'data-draining="true"' in page.text  # the Drain button, for an admin
