"""The nodes' admin page and REST API, served by the hub itself.

``GET  /hub/api/nodes``          every node: reachable, load, sessions, GPU use (read:servers)
``GET  /hub/api/nodes/NAME``     one node
``PATCH /hub/api/nodes/NAME``    ``{"draining": true|false}``: drain or undrain (admin:servers)
``GET  /hub/nodes``              the same as a page, linked from the hub's navigation bar
``GET  /hub/api/environments``   the environment catalogue: each entry with its source
                                 (``image``, ``site`` or ``image+site``) and the nodes
                                 holding its image, and the warnings about broken image
                                 labels or site entries (read:servers)

A drained node takes no new sessions and keeps its running ones. The nodes page shows the
environment warnings too.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from .catalogue import merge_environments, needs_from_spec
from .nodes import Node, NodePool

if TYPE_CHECKING:
    from .spawner import DeskhubSpawner


def spawner_of(handler: web.RequestHandler) -> DeskhubSpawner:
    """A spawner of the hub's configuration (for its pool and its environments)."""
    from .spawner import DeskhubSpawner

    return DeskhubSpawner(config=handler.settings["config"])


def pool_of(handler: web.RequestHandler) -> NodePool:
    """The pool the hub's spawners use (same configuration, hence the same watchers)."""
    return spawner_of(handler).pool


def environments_model(spawner: DeskhubSpawner) -> dict[str, Any]:
    """The merged catalogue as admins see it (hidden entries too), and its warnings."""
    pool = spawner.pool
    from_images, warnings = pool.image_environments()
    try:
        site = spawner._eval_if_callable(spawner.environments)
    except Exception as err:  # a per-user callable may need a user
        site = {}
        warnings = [
            *warnings,
            "the site's environments are chosen per user (a callable, which failed without"
            f" one: {err}); only the environments images describe are listed here",
        ]
    merged = merge_environments(site, from_images)
    holders: dict[str, list[str]] = {}
    for snap in pool.snapshots():
        for tag in snap.images if snap.reachable else ():
            holders.setdefault(tag, []).append(snap.name)
    entries = []
    for name, spec in merged.environments.items():
        needs = spec.get("needs", {})
        entries.append(
            {
                "name": name,
                "title": spec.get("title", name),
                "description": spec.get("description", ""),
                "image": spec["image"],
                "icon": spec.get("icon", ""),
                "needs": needs,
                "needs_text": needs_from_spec(needs).describe(),
                "apps": spec.get("apps", []),
                "virtualgl": spec.get("virtualgl"),
                "default": bool(spec.get("default", False)),
                "hidden": bool(spec.get("hidden", False)),
                "source": merged.sources[name],
                "nodes": holders.get(spec["image"], []),
            }
        )
    return {"environments": entries, "warnings": [*warnings, *merged.warnings]}


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
        spawner = spawner_of(self)
        pool = spawner.pool
        await pool.ready()
        nodes = [node_model(node) for node in pool.nodes.values()]
        html = await self.render_template(
            "nodes.html",
            nodes=nodes,
            can_drain="admin:servers" in self.expanded_scopes,
            environment_warnings=environments_model(spawner)["warnings"],
        )
        self.finish(html)


class EnvironmentsAPIHandler(APIHandler):
    @needs_scope("read:servers")
    async def get(self) -> None:
        spawner = spawner_of(self)
        await spawner.pool.ready()
        self.write(json.dumps(environments_model(spawner)))


HANDLERS = [
    (r"/nodes", NodesPageHandler),
    (r"/api/nodes", NodesAPIHandler),
    (r"/api/nodes/([^/]+)", NodeAPIHandler),
    (r"/api/environments", EnvironmentsAPIHandler),
]
