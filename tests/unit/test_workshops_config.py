"""The site YAML's ``workshops`` section as JupyterHub settings: what is added to ``c``,
what is kept of what was there, and the admin form's local times."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from deskhub.hub_config.site import SiteConfigError, load_site, validate
from deskhub.spawner.catalogue import Catalogue
from deskhub.workshops.config import configure_workshops, refuse_participant_passwords
from deskhub.workshops.handlers import CHECK_SCOPE, _local_time
from deskhub.workshops.model import Workshop
from deskhub.workshops.narrowing import WorkshopCatalogueFilter
from deskhub.workshops.store import WorkshopStore

NOW = datetime.now(UTC)


def saved(tmp_path, **changes) -> Workshop:
    workshop = Workshop(
        name="intro",
        size=5,
        start=NOW - timedelta(minutes=5),
        end=NOW + timedelta(hours=1),
        environments=("desktop",),
        code="ABCDEFGH",
        cpu=0.5,
        instructors=("ivy",),
        participants=("ann",),
    )
    for key, value in changes.items():
        workshop = Workshop(**{**workshop.__dict__, key: value})
    WorkshopStore(tmp_path / "workshops.json").put(workshop)
    return workshop


def configured(tmp_path, site_workshops=None) -> Config:
    c = Config()
    c.JupyterHub.services = [{"name": "idle-culler", "command": ["x"]}]
    c.JupyterHub.load_roles = [{"name": "idle-culler", "scopes": ["read:servers"]}]
    c.JupyterHub.extra_handlers = [("/nodes", object)]
    c.JupyterHub.template_paths = ["/hub/templates"]
    configure_workshops(c, {"workshops": site_workshops or {}}, tmp_path)
    return c


def test_the_hub_gets_pages_service_scope_and_roles(tmp_path):
    saved(tmp_path)
    c = configured(tmp_path, {"check_interval": 3})
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler", "workshops"]
    service = c.JupyterHub.services[1]
    assert service["command"] == [
        sys.executable,
        "-m",
        "deskhub.workshops.checker",
        "--interval=3",
    ]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["workshops-check"] == {
        "name": "workshops-check",
        "scopes": [CHECK_SCOPE],
        "services": ["workshops"],
    }
    # the instructors' role of a saved workshop survives the hub's start
    assert roles["workshop-intro-instructors"]["users"] == ["ivy"]
    assert "idle-culler" in roles
    assert CHECK_SCOPE in c.JupyterHub.custom_scopes
    routes = [h[0] for h in c.JupyterHub.extra_handlers]
    assert routes[0] == "/nodes" and "/workshops" in routes and "/workshop" in routes
    assert c.JupyterHub.template_paths[0] == "/hub/templates"
    assert c.JupyterHub.template_vars == {"deskhub_workshops": True}
    assert isinstance(c.DeskhubSpawner.catalogue_filter, WorkshopCatalogueFilter)


def test_disabled_adds_nothing(tmp_path):
    c = configured(tmp_path, {"enabled": False})
    assert [s["name"] for s in c.JupyterHub.services] == ["idle-culler"]
    assert "catalogue_filter" not in c.DeskhubSpawner


def test_an_unreadable_workshops_file_stops_the_hub_with_one_line(tmp_path, capsys):
    (tmp_path / "workshops.json").write_text("{not json")
    with pytest.raises(SystemExit):
        configured(tmp_path)
    assert "workshops.json cannot be read" in capsys.readouterr().err


def test_site_schema_checks_the_section():
    with pytest.raises(SiteConfigError, match="'workshops.check_intervall' is not a known"):
        validate({**load_site(None), "workshops": {"check_intervall": 5}}, "site.yaml")


def test_the_filter_narrows_participants_only_and_chains(tmp_path):
    saved(tmp_path)
    catalogue = Catalogue.from_site(
        {
            "desktop": {"image": "deskhub/base:latest", "needs": {"cpu": 1}},
            "xfm": {"image": "deskhub/xfm:latest", "needs": {"cpu": 2}},
        }
    )
    seen = []

    def chained(spawner, catalogue):
        seen.append(spawner.user.name if spawner.user else None)
        return catalogue

    narrow = WorkshopCatalogueFilter(tmp_path / "workshops.json", chained)

    def as_user(name):
        return SimpleNamespace(user=SimpleNamespace(name=name))

    mine = narrow(as_user("intro-ann"), catalogue)
    assert mine.names() == ["desktop"] and mine.get("desktop").needs.cpu == 0.5
    assert narrow(as_user("alice"), catalogue).names() == ["desktop", "xfm"]
    assert narrow(SimpleNamespace(user=None), catalogue).names() == ["desktop", "xfm"]
    assert seen == ["intro-ann", "alice", None]


def test_an_ended_workshop_offers_nothing(tmp_path):
    saved(tmp_path, start=NOW - timedelta(hours=2), end=NOW - timedelta(hours=1))
    catalogue = Catalogue.from_site({"desktop": {"image": "deskhub/base:latest"}})
    narrow = WorkshopCatalogueFilter(tmp_path / "workshops.json")
    assert len(narrow(SimpleNamespace(user=SimpleNamespace(name="intro-ann")), catalogue)) == 0


def test_password_logins_as_participants_are_refused(tmp_path):
    saved(tmp_path)
    hook = refuse_participant_passwords(tmp_path / "workshops.json")
    authenticator = SimpleNamespace(log=SimpleNamespace(warning=lambda *a: None))
    assert asyncio.run(hook(authenticator, None, {"name": "intro-ann"})) is None
    assert asyncio.run(hook(authenticator, None, {"name": "ivy"})) == {"name": "ivy"}


def test_the_admin_forms_local_times():
    assert _local_time("2026-11-26T10:00", "60", "start") == "2026-11-26T10:00:00+01:00"
    assert _local_time("2026-11-26T10:00", "-300", "end") == "2026-11-26T10:00:00-05:00"
    assert json.dumps(_local_time("2026-11-26T10:00", "", "end")).endswith('+00:00"')
