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
from deskhub.spawner.isolation import network_options
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
        client.create_network(
            network,
            driver="bridge",
            options=network_options(),
            labels={"deskhub.managed": "true"},
        )
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


def cookie_settings(https: bool) -> dict[str, Any]:
    """Tornado settings for the hub's cookies.

    JupyterHub already marks its login and session cookies ``HttpOnly``, and ``Secure`` when
    the request came over https (the proxy says so in ``X-Forwarded-Proto``). With TLS,
    ``Secure`` is also set explicitly, so that a wrong header cannot drop it; the setting
    reaches the sessions' own cookies too (``JUPYTERHUB_COOKIE_OPTIONS``). The hub's
    ``_xsrf`` cookie is ``HttpOnly`` as well: the hub's pages get the token in the page
    (``jhdata.xsrf_token``, hidden form fields), never from ``document.cookie``.
    """
    secure = {"secure": True} if https else {}
    return {
        "cookie_options": secure,
        "xsrf_cookie_kwargs": {"httponly": True, **secure},
        # never turned off: every form and cookie-authenticated API call needs the token
        "xsrf_cookies": True,
    }


def configure_web(c: Any, hub: dict[str, Any]) -> None:
    """Per-user subdomains, TLS and the cookies' flags (docs/security.md, Web isolation)."""
    tls = hub.get("tls")
    if tls:
        c.JupyterHub.ssl_cert = tls["cert"]
        c.JupyterHub.ssl_key = tls["key"]
    subdomain_host = hub.get("subdomain_host", "")
    if subdomain_host:
        # USER.deskhub.example.org: each user's pages are an origin of their own
        c.JupyterHub.subdomain_host = subdomain_host.rstrip("/")
        if subdomain_host.startswith("https://"):
            # the hub's login cookie can then not be set (tossed) from a user's subdomain
            c.JupyterHub.cookie_host_prefix_enabled = True
    public = subdomain_host or hub["bind_url"]
    https = bool(tls) or public.startswith("https://")
    c.JupyterHub.tornado_settings = {
        **_current(c.JupyterHub, "tornado_settings", {}),
        **cookie_settings(https),
    }


def _current(section: Any, key: str, default: Any) -> Any:
    return section.get(key, default)


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def read_site() -> dict[str, Any]:
    """The site config ($DESKHUB_SITE_CONFIG over the defaults), or exit 2 with one line."""
    try:
        return load_site(os.environ.get("DESKHUB_SITE_CONFIG") or None)
    except SiteConfigError as err:
        print(f"deskhub: site configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def local_gateway(site: dict[str, Any]) -> str:
    """The sessions' bridge gateway on the hub's own engine (created if missing), or exit 2
    with one line naming the engine that does not answer."""
    local, where = next(
        (
            (n["endpoint"], f"'nodes.{i}.endpoint' ({n['name']})")
            for i, n in enumerate(site["nodes"])
            if n["endpoint"].startswith("unix://")
        ),
        ("unix:///var/run/docker.sock", "the local Docker engine"),
    )
    try:
        return network_gateway(site["hub"]["network"], local)
    except docker.errors.DockerException as err:
        source = os.environ.get("DESKHUB_SITE_CONFIG") or "defaults"
        print(
            f"deskhub: site configuration error: {source}: {where}: cannot reach the Docker"
            f" engine at {local} ({_first_line(err)})",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def configure(c: Any) -> dict[str, Any]:
    """Apply the site config to the JupyterHub config object ``c``; returns the site config."""
    site = read_site()
    hub = site["hub"]
    state = Path(hub.get("state_dir") or os.environ.get("DESKHUB_STATE_DIR") or DEFAULT_STATE_DIR)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    return apply_site(c, site, state, local_gateway(site))


def apply_site(c: Any, site: dict[str, Any], state: Path, gateway: str) -> dict[str, Any]:
    """Set JupyterHub's values from a validated site config (plain data in, values on ``c``
    out); ``gateway`` is the sessions' bridge gateway on the hub's engine."""
    hub = site["hub"]
    sessions = site["sessions"]

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
        # so the API listens on every interface (still token-authenticated), or on the one
        # address the site names (its address on the nodes' network)
        c.JupyterHub.hub_ip = hub.get("api_address") or "0.0.0.0"
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
    network = site["network"]
    c.DeskhubSpawner.network_isolation = network["isolation"]
    c.DeskhubSpawner.network_allow = network["allow"]
    c.DeskhubSpawner.network_internet = network["internet"]
    if "netguard_image" in network:
        c.DeskhubSpawner.netguard_image = network["netguard_image"]
    c.DeskhubSpawner.use_internal_ip = True
    c.DeskhubSpawner.remove = True
    c.DeskhubSpawner.prefix = "deskhub"
    c.DeskhubSpawner.session_uid = sessions["uid"]
    c.DeskhubSpawner.session_gid = sessions["gid"]
    c.DeskhubSpawner.pids_limit = sessions["pids_limit"]
    c.DeskhubSpawner.start_timeout = sessions["start_timeout"]
    c.DeskhubSpawner.http_timeout = sessions["start_timeout"]
    # a session whose container died (killed, its engine restarted) is reported stopped
    # within seconds, not JupyterHub's default 30 (a poll reads one container per session)
    c.DeskhubSpawner.poll_interval = 10
    c.Spawner.default_url = "/lab"
    # show the progress page for every real spawn (they take seconds), while bad options,
    # refused in milliseconds, still come back as HTTP 400 to the form and the REST API
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 1}
    configure_web(c, hub)

    # the nodes' admin page and REST API, and the navigation link to it
    c.JupyterHub.extra_handlers = list(NODE_HANDLERS)
    c.JupyterHub.template_paths = [str(TEMPLATES)]

    services, roles = idle_culler(sessions["idle_timeout"])
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles
    # after the services and handlers above: workshops add their own
    configure_workshops(c, site, state)
    return {**site, "hub": {**hub, "state_dir": str(state)}}
