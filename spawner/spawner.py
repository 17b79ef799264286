"""DeskhubSpawner: DockerSpawner that validates the chosen environment, places the session
on a node, builds its container from a pure spec, and tells the user what it is doing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import docker.errors
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Callable, Dict, Int, List, Unicode, Union, default

from .catalogue import Catalogue, Environment
from .containerspec import SessionIdentity, build_container_spec, home_volume_labels
from .data import data_mounts_for
from .form import render_options_form
from .nodes import Node, NodePool
from .options import OptionsError, choose_environment, options_from_form
from .placement import NoPlacement, Reservation, place


class DeskhubSpawner(DockerSpawner):
    """Start each user's desktop session on the best node for its environment."""

    environments = Union(
        [Dict(), Callable()],
        default_value={},
        config=True,
        help="""
        The environments users can pick, by name, as in the site YAML's ``environments``.
        A dict, or a callable ``f(spawner) -> dict`` for per-user catalogues. Example::

            c.DeskhubSpawner.environments = {
                "xfm": {"title": "XFM", "description": "PyMca and silx",
                        "image": "deskhub/xfm:latest", "needs": {"cpu": 2, "memory": "4G"}},
            }
        """,
    )
    nodes = List(
        Dict(),
        default_value=[{"name": "local", "endpoint": "unix:///var/run/docker.sock"}],
        config=True,
        help="""
        The Docker engines sessions are placed on, e.g.
        ``[{"name": "node-1", "endpoint": "tcp://10.0.0.5:2376"}]``. The local engine is
        the default single node.
        """,
    )
    experiments = Union(
        [Dict(), Callable()],
        default_value={},
        config=True,
        help="""
        Experiment data folders and who may see them; each is mounted read-only at
        ``/data/NAME``. A dict or a callable ``f(spawner) -> dict``. Example::

            {"mx-2026-042": {"path": "/srv/data/mx-2026-042",
                             "users": ["alice"], "groups": ["mx-staff"]}}
        """,
    )
    session_uid = Int(1000, config=True, help="uid the session runs as (never 0). Example: 1000")
    session_gid = Int(1000, config=True, help="gid the session runs as. Example: 1000")
    pids_limit = Int(
        2048, config=True, help="Most processes one session may run (fork bombs stop here)."
    )
    home_volume_template = Unicode(
        "deskhub-home-{username}",
        config=True,
        help="Name of the per-user home volume; {username} is the escaped user name.",
    )
    node_name = Unicode(
        "", help="The node this session runs on: chosen at start, kept in the hub's state."
    )
    chosen_environment = AnyTrait(None, allow_none=True, help="The validated Environment.")

    @default("options_form")
    def _options_form_default(self) -> Any:
        return lambda spawner: render_options_form(spawner.catalogue())

    @default("options_from_form")
    def _options_from_form_default(self) -> Any:
        def parse(formdata: dict[str, list[Any]]) -> dict[str, str]:
            try:
                return options_from_form(formdata)
            except OptionsError as err:
                raise web.HTTPError(400, str(err)) from err

        return parse

    @default("apply_user_options")
    def _apply_user_options_default(self) -> Any:
        return DeskhubSpawner._apply_options

    def _apply_options(self, user_options: dict[str, Any]) -> None:
        try:
            env = choose_environment(user_options, self.catalogue())
        except OptionsError as err:
            raise web.HTTPError(400, str(err)) from err
        self.chosen_environment = env
        self.image = env.image

    # -- catalogue, nodes ---------------------------------------------------------------
    def catalogue(self) -> Catalogue:
        return Catalogue.from_site(self._eval_if_callable(self.environments))

    @property
    def pool(self) -> NodePool:
        return NodePool.shared(self.nodes)

    @property
    def node(self) -> Node:
        node = self.pool.get(self.node_name) if self.node_name else None
        if node is None:
            raise web.HTTPError(503, "This session's compute node is no longer configured.")
        return node

    @property
    def client(self) -> Any:
        return self.node.client

    def docker(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Every Docker call goes to this session's node, in that node's thread."""
        return asyncio.ensure_future(self.node.call(method, *args, **kwargs))

    # -- state survives hub restarts ------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.node_name:
            state["node"] = self.node_name
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.node_name = state.get("node", self.node_name)

    def clear_state(self) -> None:
        super().clear_state()
        self.node_name = ""

    # -- progress --------------------------------------------------------------------------
    def _say(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        sent = 0
        while True:
            events = getattr(self, "_events", [])
            while sent < len(events):
                yield events[sent]
                sent += 1
            if not self._spawn_pending:
                return
            await asyncio.sleep(0.3)

    # -- start ----------------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        self._events: list[dict[str, Any]] = []
        env = self.chosen_environment
        if env is None:  # apply_user_options not run (e.g. a restart after a hub upgrade)
            self._apply_options(self.user_options or {})
            env = self.chosen_environment
        assert isinstance(env, Environment)
        needs = env.needs.describe()
        self._say(5, f"Starting {env.title}: looking for a compute node with {needs}")
        key = f"{self.user.name}/{self.name}"
        if not self.node_name or not await self._container_exists():
            snapshots = await self.pool.ready()
            try:
                placement = place(env.needs, snapshots, image=env.image)
            except NoPlacement as err:
                self.log.warning("no node for %s: %s", key, [(s.name, s.error) for s in snapshots])
                raise web.HTTPError(503, str(err)) from err
            self.node_name = placement.node
            self._say(20, f"Placed on {placement.reason}")
        node = self.node
        node.reserve(key, Reservation(env.needs.cpu, env.needs.memory))
        try:
            await self._ensure_image(env)
            await self._ensure_home_volume()
            self._say(60, f"Starting the desktop container on {node.name}")
            ip_port = await super().start()
            self._say(
                80,
                f"Container started on {node.name}; waiting for JupyterLab and the desktop",
            )
            return ip_port
        except Exception:
            await self._remove_failed_container()
            raise
        finally:
            node.release(key)
            node.refresh_soon()

    # -- a session never placed has no container to look at ---------------------------
    async def get_object(self) -> dict[str, Any] | None:
        if not self.node_name or self.pool.get(self.node_name) is None:
            self.object_id = ""
            return None
        return await super().get_object()

    async def stop(self, now: bool = False) -> None:
        node = self.pool.get(self.node_name) if self.node_name else None
        if node is None:
            self.clear_state()
            return
        await super().stop(now)
        node.refresh_soon()

    async def _container_exists(self) -> bool:
        try:
            return await self.get_object() is not None
        except Exception:
            return False

    async def _ensure_image(self, env: Environment) -> None:
        try:
            await self.docker("inspect_image", env.image)
            return
        except docker.errors.NotFound:
            pass
        self._say(30, f"Pulling image {env.image} onto {self.node_name} (first use there)")
        repo, _, tag = (
            env.image.rpartition(":")
            if ":" in env.image.split("/")[-1]
            else (env.image, "", "latest")
        )
        try:
            await self.docker("pull", repo, tag)
            await self.docker("inspect_image", env.image)
        except docker.errors.DockerException as err:
            self.log.error("image %s unavailable on %s: %s", env.image, self.node_name, err)
            raise web.HTTPError(
                503,
                f"The environment '{env.title}' is not available right now (its image is"
                " missing); please tell your administrator.",
            ) from err

    def _home_volume(self) -> str:
        return self.home_volume_template.format(username=self.escaped_name)

    async def _ensure_home_volume(self) -> None:
        name = self._home_volume()
        try:
            await self.docker("inspect_volume", name)
        except docker.errors.NotFound:
            await self.docker("create_volume", name, labels=home_volume_labels(self.user.name))

    async def _remove_failed_container(self) -> None:
        """Leave nothing half-created: a container that never became ready is removed."""
        if not self.object_id:
            return
        try:
            await self.docker("remove_container", self.object_id, force=True)
        except docker.errors.DockerException as err:
            self.log.warning("could not remove failed container %s: %s", self.object_id, err)
        self.object_id = ""

    async def create_object(self) -> dict[str, Any]:
        env = self.chosen_environment
        assert isinstance(env, Environment)
        experiments = self._eval_if_callable(self.experiments)
        groups = [group.name for group in self.user.groups]
        spec = build_container_spec(
            container_name=self.container_name,
            identity=SessionIdentity(
                username=self.user.name,
                server_name=self.name,
                node=self.node_name,
                uid=self.session_uid,
                gid=self.session_gid,
            ),
            env=env,
            home_volume=self._home_volume(),
            data=data_mounts_for(self.user.name, groups, experiments),
            environment_vars=self.get_env(),
            command=await self.get_command(),
            network=self.network_name,
            port=self.port,
            pids_limit=self.pids_limit,
        )
        host_config = await self.docker("create_host_config", **spec["host_config"])
        try:
            return await self.docker("create_container", host_config=host_config, **spec["create"])
        except docker.errors.APIError as err:
            self.log.error("creating container for %s failed: %s", self._log_name, err)
            raise web.HTTPError(
                500,
                "Your session could not be created on its compute node; please try again,"
                " and tell your administrator if it keeps failing.",
            ) from err
