"""DeskhubSpawner: DockerSpawner that validates the chosen environment, places the session
on a node, builds its container from a pure spec, and tells the user what it is doing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import docker.errors
import requests.exceptions
from dockerspawner import DockerSpawner
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Any as AnyTrait
from traitlets import Bool, Callable, Dict, Float, Int, List, Tuple, Unicode, Union, default

from .catalogue import Catalogue, Environment, MergedEnvironments, merge_environments
from .containerspec import (
    HOME_OWNER_LABEL,
    IMAGE_HOME_OWNER,
    SessionIdentity,
    apps_environment,
    build_container_spec,
    home_owner_spec,
    home_volume_labels,
)
from .data import Layout, data_mounts_for, experiments_of, login_mounts, merge_mounts, session_ids
from .form import render_options_form
from .isolation import NETGUARD_IMAGE
from .netguard import IsolationFailed, IsolationPolicy, ensure_isolated
from .nodes import Node, NodePool
from .options import OptionsError, choose_environment, options_from_form
from .placement import POLICIES, NoPlacement, Policy
from .pulling import PullProgress


class DeskhubSpawner(DockerSpawner):
    """Start each user's desktop session on the best node for its environment."""

    environments = Union(
        [Dict(), Callable()],
        default_value={},
        config=True,
        help="""
        The environments users can pick, by name, as in the site YAML's ``environments``.
        They are laid over the environments the images on the nodes describe with their
        labels (see docs/environments.md): an entry here overrides such an environment key
        by key, ``{"hidden": True}`` hides it. A dict, or a callable ``f(spawner) -> dict``
        for per-user catalogues. Example::

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
        The Docker engines sessions are placed on, as in the site YAML's ``nodes``. The
        local engine is the default single node. Example::

            [{"name": "gpu-1", "endpoint": "tcp://10.0.0.5:2376", "address": "10.0.0.5",
              "tls": {"ca": "/etc/deskhub/ca.pem", "cert": "/etc/deskhub/hub.pem",
                      "key": "/etc/deskhub/hub-key.pem"},
              "labels": {"beamline": "mx"}, "hub_connect_url": "http://10.0.0.1:8081",
              "gpus": [{"id": "GPU-8f1c…", "model": "A40", "memory": "48G",
                        "desktop_slots": 4}]}]
        """,
    )
    placement_policy = Unicode(
        "spread",
        config=True,
        help="""
        How the node is chosen among those that fit: ``spread`` (the least loaded node,
        for interactive sessions) or ``pack`` (the fullest node that still fits, keeping
        whole nodes free). Example: ``c.DeskhubSpawner.placement_policy = "pack"``.
        """,
    )
    image_bonus = Float(
        0.25,
        config=True,
        help="""
        Score added to a node that already holds the environment's image (scores run from
        0 to 1), so a session avoids a multi-GB pull unless that node is much busier.
        Example: ``c.DeskhubSpawner.image_bonus = 0.5``.
        """,
    )
    start_attempts = Int(
        3,
        config=True,
        help="""
        Nodes tried for one spawn: a start that fails on one node (engine not answering,
        image missing, container not created) is retried on the next best node, at most
        this many in all. Example: ``c.DeskhubSpawner.start_attempts = 2``.
        """,
    )
    node_timeout = Float(
        10.0, config=True, help="Seconds a node's engine may take per call. Example: 5"
    )
    node_poll_interval = Float(
        3.0, config=True, help="Seconds between two polls of a node by its watcher. Example: 3"
    )
    prometheus = Dict(
        {},
        config=True,
        help="""
        Where live node load and GPU use come from, if not from ``docker stats``: a
        Prometheus server scraping node-exporter (and DCGM-exporter on GPU nodes). Nodes
        are matched by ``instance`` (``prometheus_instance``, default ``ADDRESS:9100``),
        GPUs by UUID. Example::

            c.DeskhubSpawner.prometheus = {"url": "http://prometheus:9090", "rate_window": "1m"}
        """,
    )
    node_lost_after = Float(
        20.0,
        config=True,
        help="""
        Seconds a node may stay unreachable before the hub reports its sessions stopped
        (their users can then start again elsewhere). Shorter blips lose nothing.
        Example: ``c.DeskhubSpawner.node_lost_after = 60``.
        """,
    )
    node_state_file = Unicode(
        "",
        config=True,
        help="""
        File where drained nodes are remembered across hub restarts, e.g.
        ``/var/lib/deskhub/nodes.json``; "" keeps drains in memory only.
        """,
    )
    pull_progress_interval = Float(
        1.0,
        config=True,
        help="""
        Seconds between two progress messages of an image pull on the spawn page
        ("Pulling deskhub/mx:latest onto node-a: 412 of 1,830 MB (7 of 23 layers)").
        Example: ``c.DeskhubSpawner.pull_progress_interval = 2``.
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
    catalogue_filter = Callable(
        None,
        allow_none=True,
        config=True,
        help="""
        A callable ``f(spawner, catalogue) -> Catalogue`` that narrows what this user may
        start: the spawn form, the REST API's ``user_options`` and the start itself all see
        its result. deskhub's workshops use it to offer a participant only the workshop's
        environments, with their needs capped. Example::

            def only_cpu(spawner, catalogue):
                return Catalogue(e for e in catalogue if e.needs.gpu == "none")
            c.DeskhubSpawner.catalogue_filter = only_cpu
        """,
    )
    data_root = Unicode(
        "",
        config=True,
        help="""
        Folder holding one folder per experiment, the same path on every node (a shared
        filesystem). Each experiment the user's login names (``auth_state["experiments"]``)
        is mounted read-only from ``DATA_ROOT/EXPERIMENT`` at ``/data/EXPERIMENT``; one
        without a folder there is left out and logged. "" mounts only the site's
        ``experiments``. Example: ``c.DeskhubSpawner.data_root = "/srv/data"``.
        """,
    )
    processed_root = Unicode(
        "",
        config=True,
        help="""
        Folder holding each experiment's shared, writable ``processed`` area, mounted at
        ``/processed/EXPERIMENT`` for the experiment's members when
        ``PROCESSED_ROOT/EXPERIMENT`` exists. The session also gets that folder's group as
        a supplementary group, so a folder owned by the experiment's group with mode 2770
        is writable by its members only. Example: ``"/srv/processed"``.
        """,
    )
    session_uid = Int(
        1000,
        config=True,
        help="""uid the session runs as (never 0) when the login gives none; a login from a
        directory (LDAP ``uidNumber``, an OIDC claim) gives the user's own. Example: 1000""",
    )
    session_gid = Int(
        1000,
        config=True,
        help="gid the session runs as when the login gives none. Example: 1000",
    )
    pids_limit = Int(
        2048, config=True, help="Most processes one session may run (fork bombs stop here)."
    )
    network_isolation = Bool(
        True,
        config=True,
        help="""Keep sessions apart on the network (site YAML ``network.isolation``): on
        every node, sessions cannot reach each other, the node itself, any node, or private
        address ranges; only the hub's API, DNS, ``network_allow`` and (if
        ``network_internet``) public addresses. Needs the engine's iptables (Docker's
        default) and the ``netguard_image``. Example: ``True``""",
    )
    network_allow = List(
        Unicode(),
        config=True,
        help="""Destinations sessions may reach besides the hub and the internet: address
        ranges, addresses, or ``HOST:PORT`` (TCP). Example:
        ``["10.20.0.0/16", "10.1.2.3:3128", "mirror.example.org:443"]``""",
    )
    network_internet = Bool(
        True,
        config=True,
        help="Whether sessions may reach public (non-private) addresses. Example: ``False``",
    )
    netguard_image = Unicode(
        NETGUARD_IMAGE,
        config=True,
        help="""The helper image that loads the session firewall on each node
        (images/netguard; pulled onto a node that lacks it).
        Example: ``"registry.example.org/deskhub/netguard:1.2"``""",
    )
    stop_grace = Float(
        10.0,
        config=True,
        help="""Seconds a stopping session gets after SIGTERM before it is killed (its
        applications can save their state). Example: ``10``""",
    )
    home_volume_template = Unicode(
        "deskhub-home-{username}",
        config=True,
        help="Name of the per-user home volume; {username} is the escaped user name.",
    )
    node_name = Unicode(
        "", help="The node this session runs on: chosen at start, kept in the hub's state."
    )
    gpus = Tuple(help="Device ids of the GPUs placement gave this session on its node.")
    chosen_environment = AnyTrait(None, allow_none=True, help="The validated Environment.")

    @default("options_form")
    def _options_form_default(self) -> Any:
        async def form(spawner: DeskhubSpawner) -> str:
            # the first form after a hub start waits for the nodes' images to be listed
            await spawner.pool.ready()
            return render_options_form(spawner.catalogue())

        return form

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

    async def _apply_options(self, user_options: dict[str, Any]) -> None:
        try:
            env = choose_environment(user_options, self.catalogue())
        except OptionsError as err:
            # environments described by images are known after the nodes' first poll
            # (right after a hub start): decide again once it is done
            if all(node.polled_at for node in self.pool.nodes.values()):
                raise web.HTTPError(400, str(err)) from err
            await self.pool.ready()
            try:
                env = choose_environment(user_options, self.catalogue())
            except OptionsError as again:
                raise web.HTTPError(400, str(again)) from again
        self.chosen_environment = env
        self.image = env.image

    # -- catalogue, nodes ---------------------------------------------------------------
    def environment_specs(self) -> MergedEnvironments:
        """The site's environments laid over those the nodes' images describe (as last
        polled); warnings of both kinds, each logged once."""
        from_images, image_warnings = self.pool.image_environments()
        merged = merge_environments(self._eval_if_callable(self.environments), from_images)
        self.pool.log_warnings("site", merged.warnings)
        return replace(merged, warnings=image_warnings + merged.warnings)

    def catalogue(self) -> Catalogue:
        catalogue = Catalogue.from_site(self.environment_specs().environments)
        if self.catalogue_filter is not None:
            catalogue = self.catalogue_filter(self, catalogue)
        return catalogue

    @property
    def pool(self) -> NodePool:
        if self.placement_policy not in POLICIES:
            raise web.HTTPError(500, f"placement_policy must be one of {', '.join(POLICIES)}")
        return NodePool.shared(
            self.nodes,
            policy=Policy(self.placement_policy, self.image_bonus),
            state_file=self.node_state_file,
            timeout=self.node_timeout,
            interval=self.node_poll_interval,
            prometheus=self.prometheus or None,
        )

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
    def get_env(self) -> dict[str, str]:
        """JupyterHub's environment for the session, plus ``DESKHUB_APPS``: the chosen
        environment's applications, which the desktop turns into its launchers."""
        env: dict[str, str] = super().get_env()
        if isinstance(self.chosen_environment, Environment):
            env.update(apps_environment(self.chosen_environment.apps))
        return env

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
        self.gpus = ()

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
    @property
    def _key(self) -> str:
        return f"{self.user.name}/{self.name}"

    async def start(self) -> tuple[str, int]:
        self._events: list[dict[str, Any]] = []
        env = self.chosen_environment
        if env is None:  # apply_user_options not run (e.g. a restart after a hub upgrade)
            await self._apply_options(self.user_options or {})
            env = self.chosen_environment
        assert isinstance(env, Environment)
        self._say(
            5, f"Starting {env.title}: looking for a compute node with {env.needs.describe()}"
        )
        tried: set[str] = set()
        failure = ""
        for _ in range(max(self.start_attempts, 1)):
            await self._place(env, frozenset(tried), failure)
            node = self.node
            try:
                ip_port = await self._start_on(node, env)
            except StartFailed as err:
                node.release(self._key)
                await self._remove_failed_container()
                failure, why = err.log_message or "", err.short
            except web.HTTPError:
                node.release(self._key)
                await self._remove_failed_container()
                raise
            except asyncio.CancelledError:
                # start_timeout, or the user cancelled: the hub stops (removes) it next
                node.release(self._key)
                raise
            except Exception as err:
                node.release(self._key)
                await self._remove_failed_container()
                if _is_connection_error(err):
                    node.mark_unreachable(err)
                    why = "its engine stopped answering"
                elif isinstance(err, docker.errors.APIError):
                    why = "its engine could not start the container"
                else:
                    why = type(err).__name__
                failure = (
                    "Your session could not be started; please try again, and tell your"
                    " administrator if it keeps failing."
                )
                self.log.error("starting %s on %s failed: %s", self._key, node.name, err)
            else:
                node.started(self._key)
                node.refresh_soon()
                return ip_port
            tried.add(node.name)
            node.refresh_soon()
            self._say(20, f"Could not start on {node.name} ({why}); trying another node")
        raise SpawnRefused(503, failure)

    async def _place(self, env: Environment, tried: frozenset[str], failure: str) -> None:
        """Choose the node (and GPUs) and reserve them; 503 with one sentence if none fits."""
        await self.pool.ready()
        try:
            placement = self.pool.decide(self._key, env.needs, env.image, exclude=tried)
        except NoPlacement as err:
            self.log.warning(
                "no node for %s: %s",
                self._key,
                [(s.name, s.error or "up") for s in self.pool.snapshots()],
            )
            # after failed attempts, the user hears what failed rather than "no node"
            raise SpawnRefused(503, failure or str(err)) from err
        self.node_name, self.gpus = placement.node, placement.gpus
        down = [s.name for s in self.pool.snapshots() if not s.reachable and s.name not in tried]
        note = f" ({', '.join(down)} not answering)" if down else ""
        self._say(20, f"Placed on {placement.reason}{note}")

    async def _start_on(self, node: Node, env: Environment) -> tuple[str, int]:
        try:
            return await self._start_steps(node, env)
        except docker.errors.APIError as err:
            if not _out_of_space(err):
                raise
            self.log.error("starting %s on %s failed: %s", self._key, node.name, err)
            raise self._no_disk_space() from err

    def _no_disk_space(self) -> StartFailed:
        """The node's Docker storage is full: one sentence, and the next node is tried."""
        return StartFailed(
            f"The compute node {self.node_name} is out of disk space, so your session cannot"
            " start there; please tell your administrator.",
            short="it is out of disk space",
        )

    async def _start_steps(self, node: Node, env: Environment) -> tuple[str, int]:
        await self._remove_stale_elsewhere(node)
        await self._ensure_image(env)
        await self._ensure_home_volume(env)
        network = await node.ensure_network(self.network_name)
        self.hub_connect_url = node.config.hub_connect_url or None
        await self._isolate(node, network)
        self._say(60, f"Starting the desktop container on {node.name}")
        ip, port = await super().start()
        self._say(80, f"Container started on {node.name}; waiting for JupyterLab and the desktop")
        await self._wait_serving(ip, port)
        return ip, port

    async def _isolate(self, node: Node, network: dict[str, Any]) -> None:
        """The node's session firewall is loaded, or the session goes to another node."""
        if not self.network_isolation:
            return
        self._say(55, f"Checking network isolation on {node.name}")
        policy = IsolationPolicy(
            allow=tuple(self.network_allow),
            internet=self.network_internet,
            image=self.netguard_image,
        )
        try:
            await ensure_isolated(
                node,
                network,
                policy=policy,
                hub_url=self.hub_connect_url or self.hub.api_url,
                nodes=[n.config for n in self.pool.nodes.values()],
            )
        except IsolationFailed as err:
            self.log.error("network isolation on %s failed: %s", node.name, err)
            raise StartFailed(
                "No compute node could keep your session isolated; please tell your administrator.",
                short="its network isolation could not be set up",
            ) from err

    async def _wait_serving(self, ip: str, port: int) -> None:
        """Return once the server answers HTTP at ``ip:port``; raise :class:`StartFailed`
        if its container stops first. JupyterHub's own wait never looks at the container:
        one that dies just after starting would cost the user ``http_timeout`` seconds
        instead of a retry on the next node. After ``http_timeout`` the hub's wait decides.
        """
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            try:
                # any HTTP answer, even 404, means the server is up
                await client.fetch(
                    f"http://{ip}:{port}/",
                    connect_timeout=2,
                    request_timeout=2,
                    follow_redirects=False,
                    raise_error=False,
                )
                return
            except Exception:  # refused, reset (a published port's proxy), timed out
                pass
            info = await self.docker("inspect_container", self.container_id)
            if not info["State"]["Running"]:
                raise self._stopped_at_once()
            await asyncio.sleep(0.5)

    def _stopped_at_once(self) -> StartFailed:
        self.log.error("%s on %s stopped while starting", self.container_name, self.node_name)
        return StartFailed(
            "Your session stopped as soon as it started; please try again, and tell your"
            " administrator if it keeps failing.",
            short="its container stopped at once",
        )

    async def _remove_stale_elsewhere(self, node: Node) -> None:
        """A session left on another node (e.g. one that was down) is removed first."""
        for other in self.pool.nodes.values():
            if other is node or self._key not in other.snapshot.sessions:
                continue
            self.log.warning("removing %s's stale container on %s", self._key, other.name)
            try:
                await other.call("remove_container", self.container_name, force=True)
            except docker.errors.DockerException as err:
                self.log.warning("could not remove it: %s", err)
            other.refresh_soon()

    async def get_ip_and_port(self) -> tuple[str, int]:
        address = self.node.config.publish_address
        if not address:
            return await super().get_ip_and_port()
        bindings = await self.docker("port", self.container_id, self.port)
        if not bindings:  # the container exited at once: it publishes nothing
            raise self._stopped_at_once()
        return address, int(bindings[0]["HostPort"])

    # -- a session never placed has no container to look at ---------------------------
    async def get_object(self) -> dict[str, Any] | None:
        if not self.node_name:
            # state without a node (an older hub): the engines know where it runs
            await self.pool.ready()
            self.node_name = self.pool.find_session(self._key) or ""
        if not self.node_name or self.pool.get(self.node_name) is None:
            self.object_id = ""
            return None
        return await super().get_object()

    async def poll(self) -> int | None:
        node = self.pool.get(self.node_name) if self.node_name else None
        if node is not None and not node.snapshot.reachable and node.down_since is not None:
            down_for = time.monotonic() - node.down_since
            if down_for < self.node_lost_after:
                return None  # a blip: keep the session until the node is lost for good
            self.log.warning(
                "%s's session is on %s, which is not answering (%s): reported stopped",
                self._log_name,
                node.name,
                node.snapshot.error,
            )
            return 1
        try:
            return await super().poll()
        except Exception as err:
            if node is None or not _is_connection_error(err):
                raise
            node.mark_unreachable(err)
            return None

    async def stop_object(self) -> None:
        """``docker stop`` without holding the node's Docker thread: SIGTERM, then wait here
        (polling), then SIGKILL after ``stop_grace`` seconds. A blocking ``docker stop``
        kept the node's one Docker thread for up to its grace period per session, so a
        wave of stops queued behind each other, and a slow one ran into the client's read
        timeout and made a reachable node look down."""
        if not await self._signal("SIGTERM"):
            return
        deadline = time.monotonic() + self.stop_grace
        while time.monotonic() < deadline:
            info = await self.docker("inspect_container", self.container_id)
            if not info["State"]["Running"]:
                return
            await asyncio.sleep(0.25)
        self.log.warning("%s did not stop in %g s; killing it", self._key, self.stop_grace)
        await self._signal("SIGKILL")

    async def _signal(self, signal: str) -> bool:
        """Send ``signal`` to the container; False when it is gone or not running."""
        try:
            await self.docker("kill", self.container_id, signal=signal)
        except docker.errors.APIError as err:
            if err.status_code in (404, 409):  # gone, or not running
                return False
            raise
        return True

    async def stop(self, now: bool = False) -> None:
        node = self.pool.get(self.node_name) if self.node_name else None
        if node is None:
            self.clear_state()
            return
        if not self.object_id:
            # a start that failed before (or after removing) its container: nothing to stop
            node.stopped(self._key)
            self.clear_state()
            return
        try:
            await super().stop(now)
        except Exception as err:
            if not _is_connection_error(err):
                raise
            # the node is down: the container is removed when a later start finds it
            self.log.warning("could not stop %s on %s: %s", self._key, node.name, err)
            node.mark_unreachable(err)
            self.clear_state()
        else:
            node.stopped(self._key)
        node.refresh_soon()

    async def _ensure_image(self, env: Environment) -> None:
        try:
            await self.docker("inspect_image", env.image)
            return
        except docker.errors.NotFound:
            pass
        node = self.node
        self._say(30, f"Pulling {env.image} onto {node.name} (first use there)")
        progress = PullProgress(env.image)
        # the pull runs in a thread of the node's; its progress is read here, once a second
        pulling = asyncio.ensure_future(node.pull(env.image, progress))
        said = ""
        try:
            while True:
                done, _ = await asyncio.wait({pulling}, timeout=self.pull_progress_interval)
                if done:
                    break
                text = progress.describe()
                if text and text != said:
                    said = text
                    self._say(
                        30 + int(25 * progress.fraction()),
                        f"Pulling {env.image} onto {node.name}: {text}",
                    )
            pulling.result()
            await self.docker("inspect_image", env.image)
        except docker.errors.DockerException as err:
            self.log.error("image %s unavailable on %s: %s", env.image, node.name, err)
            if _out_of_space(err):
                raise self._no_disk_space() from err
            raise StartFailed(
                f"The environment '{env.title}' is not available right now (its image is"
                " missing); please tell your administrator.",
                short="its image is missing there",
            ) from err
        self._say(
            55,
            f"Pulled {env.image} onto {node.name} in {progress.seconds():.0f} s: "
            f"{progress.describe() or 'nothing to download'}",
        )

    async def delete_forever(self) -> None:
        """The user is deleted (e.g. at a workshop's end): remove their home volume from
        every node. A node that does not answer keeps it (logged); the volume is named
        ``home_volume_template``, so an admin can remove it there by hand."""
        name = self._home_volume()  # one per user: a second server finds it gone
        for node in self.pool.nodes.values():
            try:
                await node.call("remove_volume", name, force=True)
            except docker.errors.NotFound:
                continue
            except Exception as err:  # node down, or the volume still in use
                self.log.warning("could not remove home %s on %s: %s", name, node.name, err)
            else:
                self.log.info("removed home %s of %s on %s", name, self.user.name, node.name)

    def _home_volume(self) -> str:
        return self.home_volume_template.format(username=self.escaped_name)

    async def _identity(self) -> tuple[int, int, list[Any]]:
        """``(uid, gid, experiments)`` from the login's auth_state (refreshed before every
        spawn), or the site's defaults."""
        auth_state = await self.user.get_auth_state()
        uid, gid = session_ids(auth_state, self.session_uid, self.session_gid)
        return uid, gid, experiments_of(auth_state)

    async def _ensure_home_volume(self, env: Environment) -> None:
        """The user's home volume on this node, owned by the uid:gid the session runs as."""
        name = self._home_volume()
        uid, gid, _ = await self._identity()
        owner = f"{uid}:{gid}"
        try:
            volume = await self.docker("inspect_volume", name)
            was = (volume.get("Labels") or {}).get(HOME_OWNER_LABEL, IMAGE_HOME_OWNER)
        except docker.errors.NotFound:
            labels = home_volume_labels(self.user.name, owner)
            await self.docker("create_volume", name, labels=labels)
            was = IMAGE_HOME_OWNER  # a new volume gets the image's home, owned by 1000
        if was != owner:
            await self._give_home(env.image, name, uid, gid)

    async def _give_home(self, image: str, volume: str, uid: int, gid: int) -> None:
        self._say(58, f"Preparing your home folder on {self.node_name}")
        spec = home_owner_spec(image, volume, uid, gid)
        host_config = await self.docker("create_host_config", **spec["host_config"])
        helper = await self.docker("create_container", host_config=host_config, **spec["create"])
        try:
            await self.docker("start", helper["Id"])
            result = await self.docker("wait", helper["Id"], timeout=120)
            if result.get("StatusCode") != 0:
                logs = await self.docker("logs", helper["Id"])
                self.log.error("giving %s to %s:%s failed: %s", volume, uid, gid, logs[-500:])
                raise StartFailed(
                    "Your home folder could not be prepared; tell your administrator.",
                    short="the home folder could not be prepared",
                )
        finally:
            await self.docker("remove_container", helper["Id"], force=True)

    async def _remove_failed_container(self) -> None:
        """Leave nothing half-created: a container that never became ready is removed."""
        if not self.object_id:
            return
        try:
            await self.docker("remove_container", self.object_id, force=True)
        except Exception as err:  # the node may be down: a later start removes it
            self.log.warning("could not remove failed container %s: %s", self.object_id, err)
        self.object_id = ""

    async def create_object(self) -> dict[str, Any]:
        env = self.chosen_environment
        assert isinstance(env, Environment)
        experiments = self._eval_if_callable(self.experiments)
        groups = [group.name for group in self.user.groups]
        uid, gid, from_login = await self._identity()
        local = self.node.config.is_local
        # the hub sees a local node's folders; a remote node's shared filesystem is trusted
        layout = Layout(self.data_root, self.processed_root)
        data = merge_mounts(
            data_mounts_for(self.user.name, groups, experiments),
            login_mounts(from_login, layout, os.path.isdir if local else lambda _: True),
        )
        extra_groups = tuple(
            sorted({os.stat(m.source).st_gid for m in data if m.processed and local} - {gid})
        )
        spec = build_container_spec(
            container_name=self.container_name,
            identity=SessionIdentity(
                username=self.user.name,
                server_name=self.name,
                node=self.node_name,
                uid=uid,
                gid=gid,
                groups=extra_groups,
            ),
            env=env,
            home_volume=self._home_volume(),
            data=data,
            environment_vars=self.get_env(),
            command=await self.get_command(),
            network=self.network_name,
            port=self.port,
            pids_limit=self.pids_limit,
            gpus=self.gpus,
            publish_address=self.node.config.publish_address,
        )
        host_config = await self.docker("create_host_config", **spec["host_config"])
        try:
            return await self.docker("create_container", host_config=host_config, **spec["create"])
        except docker.errors.APIError as err:
            self.log.error("creating container for %s failed: %s", self._log_name, err)
            if _out_of_space(err):
                raise self._no_disk_space() from err
            raise StartFailed(
                "Your session could not be created on its compute node; please try again,"
                " and tell your administrator if it keeps failing.",
                short="the engine refused the container",
            ) from err


class SpawnRefused(web.HTTPError):
    """An HTTP error whose one sentence is also what the spawn page's progress shows
    ("Spawn failed: SENTENCE", not "HTTP 503: ... (SENTENCE)")."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.jupyterhub_message = message


class StartFailed(SpawnRefused):
    """A start that failed on one node and may succeed on another (HTTP 503 if none)."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(503, message)
        self.short = short


def _out_of_space(err: BaseException) -> bool:
    """True when the engine failed because its storage (the Docker data root) is full."""
    return "no space left on device" in str(err).lower()


def _is_connection_error(err: BaseException) -> bool:
    """True when a Docker call failed because the engine could not be reached in time."""
    return isinstance(
        err,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | TimeoutError
        | ConnectionError,
    )
