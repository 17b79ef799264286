"""The site YAML's auth.ldap and auth.experiments: the schema stops typos with one line,
and ``configure`` turns a valid section into the authenticator's traits."""

from __future__ import annotations

import textwrap

import pytest
from traitlets.config import Config

from deskhub.authenticators import ldap
from deskhub.authenticators.config import configure_auth
from deskhub.authenticators.sources import FileSource, GroupSource, HTTPSource
from deskhub.hub_config.site import SiteConfigError, load_site

LDAP = """
auth:
  type: ldap
  ldap:
    server: ldap.facility.org
    user_search_base: ou=people,dc=facility,dc=org
    service_account:
      dn: cn=deskhub,ou=services,dc=facility,dc=org
      password_file: {password_file}
    group_search_base: ou=groups,dc=facility,dc=org
    admin_group: cn=deskhub-admins,ou=groups,dc=facility,dc=org
    blocked_group: deskhub-blocked
"""


def write(tmp_path, text: str):
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture()
def password_file(tmp_path):
    path = tmp_path / "ldap-password"
    path.write_text("service-secret\n")
    path.chmod(0o600)
    return path


def site_text(password_file, extra: str = "", experiments: str = "") -> str:
    """The LDAP site above, ``extra`` lines added to ``auth.ldap``, and ``experiments``
    (YAML flow mapping) as ``auth.experiments``."""
    text = LDAP.format(password_file=password_file)
    text += textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ") + "\n" if extra else ""
    return text + (f"  experiments: {experiments}\n" if experiments else "")


def test_a_full_ldap_section_is_valid(tmp_path, password_file):
    site = load_site(
        write(
            tmp_path,
            site_text(
                password_file,
                experiments="{source: http, token_file: /etc/deskhub/portal-token,"
                " url: 'https://portal.facility.org/api/users/{username}/proposals',"
                " timeout: 5, items_field: proposals}",
            ),
        )
    )
    assert site["auth"]["ldap"]["server"] == "ldap.facility.org"
    assert site["auth"]["experiments"]["source"] == "http"


@pytest.mark.parametrize(
    "extra, message",
    [
        ("admin_grup: admins", "'auth.ldap.admin_grup' is not a known setting"),
        ("tls: yes-please", "'auth.ldap.tls' must be one of ['starttls', 'ldaps', 'none']"),
        ("port: 0", "auth.ldap.port"),
        ("bind_dn_template: []", "auth.ldap.bind_dn_template"),
        ("ca_file: relative.pem", "'auth.ldap.ca_file' has the value 'relative.pem'"),
    ],
)
def test_a_typo_in_auth_ldap_stops_the_hub_with_one_line(tmp_path, password_file, extra, message):
    with pytest.raises(SiteConfigError) as err:
        load_site(write(tmp_path, site_text(password_file, extra)))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(str(tmp_path / "site.yaml"))


def test_a_typo_in_the_service_account_is_named(tmp_path, password_file):
    text = site_text(password_file).replace("password_file:", "pasword_file:")
    with pytest.raises(SiteConfigError, match="auth.ldap.service_account"):
        load_site(write(tmp_path, text))


def test_server_and_search_base_are_required(tmp_path):
    with pytest.raises(SiteConfigError, match="'server' is a required property"):
        load_site(write(tmp_path, "auth: {ldap: {user_search_base: dc=x}}\n"))


@pytest.mark.parametrize(
    "experiments, message",
    [
        ("{sorce: http}", "'auth.experiments.sorce' is not a known setting"),
        ("{source: portal}", "must be one of ['ldap-groups', 'http', 'file']"),
        ("{source: http}", "'url' is a required property"),
        ("{source: file}", "'path' is a required property"),
        ("{source: http, url: ftp://x}", "'auth.experiments.url' has the value 'ftp://x'"),
        ("{source: file, path: relative.csv}", "'auth.experiments.path'"),
        ("{timeout: 0}", "auth.experiments.timeout"),
    ],
)
def test_a_typo_in_auth_experiments_stops_the_hub(tmp_path, experiments, message):
    with pytest.raises(SiteConfigError) as err:
        load_site(write(tmp_path, f"auth:\n  experiments: {experiments}\n"))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# -- configure -----------------------------------------------------------------------
def configured(tmp_path, password_file, extra: str = "", experiments: str = "") -> Config:
    site = load_site(write(tmp_path, site_text(password_file, extra, experiments)))
    c = Config()
    configure_auth(c, site, tmp_path)
    return c


def test_configure_sets_the_authenticator(tmp_path, password_file):
    c = configured(tmp_path, password_file)
    assert c.JupyterHub.authenticator_class == (
        "deskhub.authenticators.ldap.DeskhubLDAPAuthenticator"
    )
    auth = ldap.DeskhubLDAPAuthenticator(config=c)
    assert auth.server_address == "ldap.facility.org"
    assert auth.tls_strategy.name == "before_bind"
    assert auth.server_port == 389
    assert auth.tls_kwargs["validate"] == 2  # ssl.CERT_REQUIRED: ldap3 does not by default
    assert auth.lookup_dn is True and auth.bind_dn_template == []
    assert auth.user_attribute == "uid" and auth.lookup_dn_user_dn_attribute == "uid"
    assert auth.lookup_dn_search_user == "cn=deskhub,ou=services,dc=facility,dc=org"
    assert auth.lookup_dn_search_password == "service-secret"  # from the file, no newline
    assert auth.group_search_base == "ou=groups,dc=facility,dc=org"
    assert auth.admin_group == "cn=deskhub-admins,ou=groups,dc=facility,dc=org"
    assert auth.blocked_group == "deskhub-blocked"
    assert auth.expiry_attribute == "shadowExpire"
    assert auth.login_groups == []
    assert auth.allow_all is True
    assert auth.auth_refresh_strict is True
    assert auth.enable_auth_state is True
    assert auth.refresh_pre_spawn is True and auth.auth_refresh_age == 300
    assert isinstance(auth.source, GroupSource)


def test_configure_ldaps_bind_template_and_sources(tmp_path, password_file):
    c = configured(
        tmp_path,
        password_file,
        """
            tls: ldaps
            ca_file: /etc/ssl/facility-ca.pem
            bind_dn_template: uid={username},ou=people,dc=facility,dc=org
            allowed_groups: [facility-users]
            expiry_attribute: ""
        """,
        "{source: file, path: /etc/deskhub/experiments.csv}",
    )
    auth = ldap.DeskhubLDAPAuthenticator(config=c)
    assert auth.tls_strategy.name == "on_connect" and auth.server_port == 636
    assert auth.tls_kwargs["ca_certs_file"] == "/etc/ssl/facility-ca.pem"
    assert auth.lookup_dn is False
    assert auth.bind_dn_template == ["uid={username},ou=people,dc=facility,dc=org"]
    assert auth.login_groups == ["facility-users"]
    assert auth.expiry_attribute == ""
    assert isinstance(auth.source, FileSource)
    assert auth.source.path == "/etc/deskhub/experiments.csv"


def test_configure_http_source(tmp_path, password_file):
    c = configured(
        tmp_path,
        password_file,
        experiments="{source: http, url: 'https://portal/u/{username}', timeout: 3}",
    )
    source = ldap.DeskhubLDAPAuthenticator(config=c).source
    assert isinstance(source, HTTPSource) and source.timeout == 3


def test_a_password_file_others_can_read_is_warned_about(tmp_path, password_file, capsys):
    password_file.chmod(0o644)
    configured(tmp_path, password_file)
    assert "is readable by others; chmod 600 it" in capsys.readouterr().err
    password_file.chmod(0o600)
    configured(tmp_path, password_file)
    assert capsys.readouterr().err == ""


def test_an_unreadable_password_file_stops_the_hub_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        configured(tmp_path, tmp_path / "missing")
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "auth.ldap.service_account.password_file" in err and "cannot read it" in err


@pytest.mark.parametrize(
    "experiments, message",
    [
        ("{pattern: '^exp-(?P<id>.+'}", "'auth.experiments.pattern' is not a valid regular"),
        ("{url: 'https://p/{username}'}", "'auth.experiments.url' is not a setting of the ldap"),
    ],
)
def test_a_source_setting_that_does_not_fit_stops_the_hub(
    tmp_path, password_file, capsys, experiments, message
):
    with pytest.raises(SystemExit):
        configured(tmp_path, password_file, experiments=experiments)
    err = capsys.readouterr().err.strip()
    assert err.startswith("deskhub: site configuration error: ") and message in err
    assert "\n" not in err


def test_ldap_without_its_section_stops_the_hub(tmp_path, capsys):
    site = load_site(write(tmp_path, "auth: {type: ldap}\n"))
    with pytest.raises(SystemExit):
        configure_auth(Config(), site, tmp_path)
    assert "'auth.ldap' must say which directory" in capsys.readouterr().err
