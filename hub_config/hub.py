"""Turn the validated site config into JupyterHub settings.

Called from the thin ``jupyterhub_config.py``. It only sets values on ``c``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import docker

from deskhub.authenticators.config import configure_auth
from deskhub.spawner.admin import HANDLERS as NODE_HANDLERS
from deskhub.workshops.config import configure_workshops

from .site import SiteConfigError, load_site

TEMPLATES = Path(__file__).parent / "templates"

DEFAULT_STATE_DIR = "/var/lib/deskhub"


def network_gateway(network: str, endpoint: str = "unix:///var/run/docker.sock") -> str:
    """The gateway address of the sessions' bridge network (created if missing).

    The hub listens there, so session containers reach its API and nothing else of the host
    needs to be exposed to them.
    """
    client = docker.APIClient(base_url=endpoint, version="auto", timeout=20)
    found = client.networks(names=[network])
    found = [n for n in found if n["Name"] == network]
    if not found:
        client.create_network(network, driver="bridge", labels={"deskhub.managed": "true"})
        found = [client.inspect_network(network)]
    config = client.inspect_network(found[0]["Id"])["IPAM"]["Config"]
    return config[0]["Gateway"]


def idle_culler(timeout: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The idle-culler service and the narrowest role it needs."""
    if timeout <= 0:
        return [], []
    service = {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={timeout}"],
    }
    role = {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }
    return [service], [role]


def configure(c: Any) -> dict[str, Any]:
    """Apply the site config to the JupyterHub config object ``c``; returns the site config."""
    try:
        site = load_site(os.environ.get("DESKHUB_SITE_CONFIG") or None)
    except SiteConfigError as err:
        print(f"deskhub: site configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    hub = site["hub"]
    state = Path(hub.get("state_dir") or os.environ.get("DESKHUB_STATE_DIR") or DEFAULT_STATE_DIR)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    sessions = site["sessions"]
    local = next(
        (n["endpoint"] for n in site["nodes"] if n["endpoint"].startswith("unix://")),
        "unix:///var/run/docker.sock",
    )
    gateway = network_gateway(hub["network"], local)

    c.JupyterHub.bind_url = hub["bind_url"]
    c.JupyterHub.hub_ip = gateway
    c.JupyterHub.hub_connect_ip = gateway
    c.JupyterHub.hub_port = hub["api_port"]
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.ConfigurableHTTPProxy.pid_file = str(state / "jupyterhub-proxy.pid")
    # sessions outlive the hub: a hub restart finds them through their containers
    c.JupyterHub.cleanup_servers = False

    configure_auth(c, site, state)

    c.JupyterHub.spawner_class = "deskhub.spawner.spawner.DeskhubSpawner"
    c.DeskhubSpawner.environments = site["environments"]
    c.DeskhubSpawner.experiments = site["data"]["experiments"]
    c.DeskhubSpawner.data_root = site["data"].get("root", "")
    c.DeskhubSpawner.processed_root = site["data"].get("processed_root", "")
    c.DeskhubSpawner.nodes = site["nodes"]
    placement = site["placement"]
    c.DeskhubSpawner.placement_policy = placement["policy"]
    c.DeskhubSpawner.image_bonus = float(placement["image_bonus"])
    c.DeskhubSpawner.start_attempts = placement["start_attempts"]
    c.DeskhubSpawner.node_timeout = float(placement["node_timeout"])
    c.DeskhubSpawner.node_poll_interval = float(placement["poll_interval"])
    c.DeskhubSpawner.node_lost_after = float(placement["node_lost_after"])
    c.DeskhubSpawner.prometheus = placement.get("prometheus", {})
    c.DeskhubSpawner.node_state_file = str(state / "nodes.json")
    remote = [n["name"] for n in site["nodes"] if not n["endpoint"].startswith("unix://")]
    if remote:
        # sessions on other hosts reach the hub's API through each node's hub_connect_url,
        # so the API listens on every interface (still token-authenticated)
        c.JupyterHub.hub_ip = "0.0.0.0"
    insecure = [
        n["name"] for n in site["nodes"] if n["endpoint"].startswith("tcp://") and "tls" not in n
    ]
    if insecure:
        print(
            f"deskhub: warning: nodes {', '.join(insecure)} are reached without TLS;"
            " anyone on that network controls their engines",
            file=sys.stderr,
        )
    c.DeskhubSpawner.network_name = hub["network"]
    c.DeskhubSpawner.use_internal_ip = True
    c.DeskhubSpawner.remove = True
    c.DeskhubSpawner.prefix = "deskhub"
    c.DeskhubSpawner.session_uid = sessions["uid"]
    c.DeskhubSpawner.session_gid = sessions["gid"]
    c.DeskhubSpawner.pids_limit = sessions["pids_limit"]
    c.DeskhubSpawner.start_timeout = sessions["start_timeout"]
    c.DeskhubSpawner.http_timeout = sessions["start_timeout"]
    c.Spawner.default_url = "/lab"
    # show the progress page for every real spawn (they take seconds), while bad options,
    # refused in milliseconds, still come back as HTTP 400 to the form and the REST API
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 1}

    # the nodes' admin page and REST API, and the navigation link to it
    c.JupyterHub.extra_handlers = list(NODE_HANDLERS)
    c.JupyterHub.template_paths = [str(TEMPLATES)]

    services, roles = idle_culler(sessions["idle_timeout"])
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    # after the services and handlers above: workshops add their own
    configure_workshops(c, site, state)
    return {**site, "hub": {**hub, "state_dir": str(state)}}
