"""The session's environment variables the spawner adds: DESKHUB_APPS, for the launchers."""

from __future__ import annotations

import json

from jupyterhub.objects import Hub, Server

from deskhub.spawner.catalogue import App, Environment
from deskhub.spawner.spawner import DeskhubSpawner


class User:
    """What JupyterHub's Spawner.get_env reads of its user."""

    name = "alice"
    escaped_name = "alice"
    url = "/user/alice/"
    settings: dict[str, object] = {}


def spawner() -> DeskhubSpawner:
    made = DeskhubSpawner(
        user=User(), hub=Hub(), api_token="token", oauth_client_id="jupyterhub-user-alice"
    )
    made.server = Server(base_url="/user/alice/")
    return made


def test_get_env_passes_the_chosen_environments_apps() -> None:
    chosen = spawner()
    chosen.chosen_environment = Environment(
        "mx",
        "MX",
        "",
        "deskhub/mx:latest",
        apps=(App("DIALS", "dials-terminal"), App("PyMOL", "pymol", gpu=True)),
    )
    env = chosen.get_env()
    assert json.loads(env["DESKHUB_APPS"]) == [
        {"name": "DIALS", "exec": "dials-terminal", "gpu": False},
        {"name": "PyMOL", "exec": "pymol", "gpu": True},
    ]
    assert env["JUPYTERHUB_USER"] == "alice"  # JupyterHub's own variables are kept


def test_get_env_without_apps_or_environment() -> None:
    none_chosen = spawner()
    assert "DESKHUB_APPS" not in none_chosen.get_env()
    no_apps = spawner()
    no_apps.chosen_environment = Environment("plain", "Plain", "", "deskhub/base:latest")
    assert no_apps.get_env()["DESKHUB_APPS"] == "[]"
