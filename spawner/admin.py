"""The nodes' admin page and REST API, served by the hub itself.

``GET  /hub/api/nodes``          every node: reachable, load, sessions, GPU use (read:servers)
``GET  /hub/api/nodes/NAME``     one node
``PATCH /hub/api/nodes/NAME``    ``{"draining": true|false}``: drain or undrain (admin:servers)
``GET  /hub/nodes``              the same as a page, linked from the hub's navigation bar

A drained node takes no new sessions and keeps its running ones.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from .nodes import Node, NodePool


def pool_of(handler: web.RequestHandler) -> NodePool:
    """The pool the hub's spawners use (same configuration, hence the same watchers)."""
    from .spawner import DeskhubSpawner

    return DeskhubSpawner(config=handler.settings["config"]).pool


def node_model(node: Node) -> dict[str, Any]:
    snap = node.planning_snapshot()
    use = snap.gpu_use
    metrics = node.fresh_metrics()
    measured = metrics.gpus if metrics is not None else {}
    sessions = []
    for key, r in sorted(snap.sessions.items()):
        user, _, server = key.partition("/")
        sessions.append(
            {
                "user": user,
                "server": server,
                "cpu": r.cpu,
                "memory": r.memory,
                "gpu": r.gpu,
                "gpus": list(r.gpus),
            }
        )
    return {
        "name": node.name,
        "endpoint": node.endpoint,
        "address": node.config.publish_address,
        "tls": node.config.tls is not None,
        "labels": dict(node.config.labels),
        "reachable": snap.reachable,
        "error": snap.error,
        "draining": node.draining,
        "polled_seconds_ago": round(time.monotonic() - node.polled_at, 1)
        if node.polled_at
        else None,
        "cpus": snap.cpus,
        "memory": snap.memory,
        "reserved_cpu": snap.reserved_cpu,
        "reserved_memory": snap.reserved_memory,
        "load": round(snap.load / snap.cpus, 3) if snap.load is not None and snap.cpus else None,
        "memory_used": snap.memory_used,
        "load_source": "prometheus" if metrics is not None else "docker stats",
        "images": len(snap.images),
        "sessions": sessions,
        "gpus": [
            {
                "id": gpu.id,
                "model": gpu.model,
                "memory": gpu.memory,
                "desktop_slots": gpu.desktop_slots,
                "desktops": use[gpu.id].shared,
                "exclusive": use[gpu.id].exclusive,
                "utilisation": measured[gpu.id].utilisation if gpu.id in measured else None,
                "memory_used": measured[gpu.id].memory_used if gpu.id in measured else None,
            }
            for gpu in snap.gpus
        ],
    }


class NodesAPIHandler(APIHandler):
    @needs_scope("read:servers")
    async def get(self) -> None:
        pool = pool_of(self)
        await pool.ready()
        self.write(json.dumps([node_model(node) for node in pool.nodes.values()]))


class NodeAPIHandler(APIHandler):
    def _node(self, pool: NodePool, node_name: str) -> Node:
        node = pool.get(node_name)
        if node is None:
            raise web.HTTPError(404, f"There is no node named {node_name!r}.")
        return node

    @needs_scope("read:servers")
    async def get(self, node_name: str) -> None:
        pool = pool_of(self)
        await pool.ready()
        self.write(json.dumps(node_model(self._node(pool, node_name))))

    @needs_scope("admin:servers")
    async def patch(self, node_name: str) -> None:
        pool = pool_of(self)
        node = self._node(pool, node_name)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if (
            not isinstance(body, dict)
            or set(body) != {"draining"}
            or not isinstance(body["draining"], bool)
        ):
            raise web.HTTPError(400, 'Send {"draining": true} or {"draining": false}.')
        pool.set_draining(node.name, body["draining"])
        self.log.info(
            "%s %s node %s",
            self.current_user.name,
            "drained" if node.draining else "undrained",
            node.name,
        )
        self.write(json.dumps(node_model(node)))


class NodesPageHandler(BaseHandler):
    @web.authenticated
    @needs_scope("read:servers")
    async def get(self) -> None:
        pool = pool_of(self)
        await pool.ready()
        nodes = [node_model(node) for node in pool.nodes.values()]
        html = await self.render_template(
            "nodes.html", nodes=nodes, can_drain="admin:servers" in self.expanded_scopes
        )
        self.finish(html)


HANDLERS = [
    (r"/nodes", NodesPageHandler),
    (r"/api/nodes", NodesAPIHandler),
    (r"/api/nodes/([^/]+)", NodeAPIHandler),
]
