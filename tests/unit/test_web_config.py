"""Web settings on plain data: ``hub.subdomain_host`` and ``hub.tls`` in the site YAML, what
``configure`` makes of them (cookies, XSRF), and the narrowest scopes for every service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from traitlets.config import Config

from deskhub.hub_config import hub as hub_module
from deskhub.hub_config.site import SiteConfigError, load_site, subdomain_host_problem
from tests.multinode import _issue, _write_cert, _write_key, make_ca

# every role the shipped config gives a service, with its exact scopes (docs/security.md)
SERVICE_SCOPES = {
    "idle-culler": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "workshops": ["custom:deskhub:workshops:check"],
}


def write_site(tmp_path: Path, hub: dict[str, Any], **sections: Any) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"hub": hub, **sections}))
    return path


def certificate(directory: Path) -> tuple[Path, Path]:
    ca = make_ca(directory / "ca")
    san = [x509.DNSName("deskhub.example.org"), x509.DNSName("*.deskhub.example.org")]
    cert, key = _issue(ca, "deskhub.example.org", ExtendedKeyUsageOID.SERVER_AUTH, san, 1)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    _write_cert(cert_path, cert)
    _write_key(key_path, key)
    return cert_path, key_path


# -- the site YAML ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["https://deskhub.example.org", "https://deskhub.example.org/", "http://deskhub.test:8000"],
)
def test_a_bare_origin_is_a_subdomain_host(url: str) -> None:
    assert subdomain_host_problem(url) == ""


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://deskhub.example.org/hub", "must not have a path"),
        ("https://deskhub.example.org?x=1", "must not have a path"),
        ("deskhub.example.org", "must start with https://"),
        ("ftp://deskhub.example.org", "must start with https://"),
        ("https://10.0.0.1", "must be a DNS name"),
        ("https://localhost:8000", "must be a DNS name"),
        ("https://deskhub.example.org:99999", "port"),
        ("https://me:secret@deskhub.example.org", "user name or password"),
    ],
)
def test_a_subdomain_host_with_more_than_an_origin_is_refused(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(SiteConfigError) as error:
        load_site(write_site(tmp_path, {"subdomain_host": url}))
    message = str(error.value)
    assert "'hub.subdomain_host'" in message and problem in message, message
    assert "\n" not in message


def test_tls_files_that_cannot_be_read_stop_the_hub_with_their_name(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    missing = tmp_path / "nowhere" / "key.pem"
    hub = {"bind_url": "https://0.0.0.0:443", "tls": {"cert": str(cert), "key": str(missing)}}
    with pytest.raises(SiteConfigError) as error:
        load_site(write_site(tmp_path, hub))
    assert str(error.value).endswith(
        f"'hub.tls.key' {missing} cannot be read (No such file or directory)"
    )


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    cert, _ = certificate(tmp_path / "one")
    _, other_key = certificate(tmp_path / "two")
    hub = {"bind_url": "https://0.0.0.0:443", "tls": {"cert": str(cert), "key": str(other_key)}}
    with pytest.raises(SiteConfigError, match=r"'hub.tls': .* are not a PEM certificate"):
        load_site(write_site(tmp_path, hub))


def test_tls_needs_https_urls(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    hub = {"bind_url": "http://0.0.0.0:8000", "tls": {"cert": str(cert), "key": str(key)}}
    with pytest.raises(SiteConfigError, match=r"'hub.bind_url' .* the hub serves https"):
        load_site(write_site(tmp_path, hub))


def test_a_misspelt_tls_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(SiteConfigError, match=r"'hub.tls.certificate' is not a known setting"):
        load_site(write_site(tmp_path, {"tls": {"cert": "/a", "key": "/b", "certificate": "/c"}}))


# -- configure(): what JupyterHub gets ----------------------------------------------------------
def configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site: Path | None) -> Config:
    """What JupyterHub gets from ``site`` (the gateway the hub would read from Docker given)."""
    if site is None:
        monkeypatch.delenv("DESKHUB_SITE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("DESKHUB_SITE_CONFIG", str(site))
    c = Config()
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    hub_module.apply_site(c, hub_module.read_site(), state, "172.30.0.1")
    return c


def test_subdomains_and_tls_reach_jupyterhub(tmp_path: Path, monkeypatch) -> None:
    cert, key = certificate(tmp_path)
    hub = {
        "bind_url": "https://0.0.0.0:443",
        "subdomain_host": "https://deskhub.example.org/",
        "tls": {"cert": str(cert), "key": str(key)},
    }
    c = configured(tmp_path, monkeypatch, write_site(tmp_path, hub))
    assert c.JupyterHub.subdomain_host == "https://deskhub.example.org"
    assert (c.JupyterHub.ssl_cert, c.JupyterHub.ssl_key) == (str(cert), str(key))
    assert c.JupyterHub.cookie_host_prefix_enabled is True
    settings = c.JupyterHub.tornado_settings
    assert settings["slow_spawn_timeout"] == 1  # merged, not overwritten
    assert settings["cookie_options"] == {"secure": True}
    assert settings["xsrf_cookie_kwargs"] == {"httponly": True, "secure": True}
    assert settings["xsrf_cookies"] is True


def test_plain_http_keeps_the_xsrf_cookie_httponly(tmp_path: Path, monkeypatch) -> None:
    c = configured(tmp_path, monkeypatch, None)
    assert "subdomain_host" not in c.JupyterHub and "ssl_cert" not in c.JupyterHub
    assert "cookie_host_prefix_enabled" not in c.JupyterHub
    settings = c.JupyterHub.tornado_settings
    assert settings["cookie_options"] == {}
    assert settings["xsrf_cookie_kwargs"] == {"httponly": True}
    assert settings["xsrf_cookies"] is True


def test_tls_behind_a_front_proxy_still_marks_cookies_secure(tmp_path: Path, monkeypatch) -> None:
    site = write_site(tmp_path, {"subdomain_host": "https://deskhub.example.org"})
    settings = configured(tmp_path, monkeypatch, site).JupyterHub.tornado_settings
    assert settings["cookie_options"] == {"secure": True}


def test_a_missing_certificate_stops_the_hub_with_one_line(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    hub = {"bind_url": "https://0.0.0.0:443", "tls": {"cert": "/nowhere/c.pem", "key": "/k"}}
    with pytest.raises(SystemExit) as stop:
        configured(tmp_path, monkeypatch, write_site(tmp_path, hub))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'hub.tls.cert' /nowhere/c.pem cannot be read" in lines[0]


# -- scopes: no blanket admin for any service ----------------------------------------------------
def service_roles(c: Config) -> dict[str, list[str]]:
    """Each service's scopes, from the roles that name it."""
    scopes: dict[str, list[str]] = {}
    for role in c.JupyterHub.load_roles:
        for service in role.get("services", []):
            assert role["name"] != "admin", role
            scopes.setdefault(service, []).extend(role.get("scopes", []))
    return scopes


def test_every_service_has_only_its_narrow_scopes(tmp_path: Path, monkeypatch) -> None:
    c = configured(tmp_path, monkeypatch, None)  # the shipped defaults: culler and workshops
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == set(SERVICE_SCOPES)
    assert not any(s.get("admin") for s in services.values())
    scopes = service_roles(c)
    assert scopes == SERVICE_SCOPES
    for granted in scopes.values():
        assert not [s for s in granted if s.startswith("admin") or s in ("tokens", "shutdown")]
        assert not [s for s in granted if s.split("!")[0] in ("access:servers", "proxy")]


def test_no_service_role_when_the_culler_and_workshops_are_off(tmp_path: Path, monkeypatch):
    site = write_site(tmp_path, {}, sessions={"idle_timeout": 0}, workshops={"enabled": False})
    c = configured(tmp_path, monkeypatch, site)
    assert c.JupyterHub.services == [] and service_roles(c) == {}
