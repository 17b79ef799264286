"""Facility login through LDAP or Active Directory: jupyterhub-ldapauthenticator checks the
password (a bind as the user); this thin subclass then reads the user's entry and groups
with the service account and decides the rest:

- refused: a username with characters outside ``valid_username_regex`` or any of
  ``*()\\`` and NUL (before any LDAP query), a member of ``blocked_group``, an account
  whose ``expiry_attribute`` date has passed, or, when ``login_groups`` is set, a user in
  none of them;
- ``admin``: a member of ``admin_group`` (or a name in ``admin_users``);
- ``auth_state`` (see ``experiments.py``): the experiments from the site's experiment
  source, the POSIX uid/gid and the group names.

``refresh_user`` reads the directory again (the hub calls it before every spawn and after
``auth_refresh_age``): a user added to an experiment sees it at the next spawn without
logging out; a user who is now blocked, expired or gone has every running server stopped
and must log in again (which they cannot). Accounts the directory never logged in (no
directory ``auth_state``: a workshop participant, say) are left alone.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldapauthenticator import LDAPAuthenticator
from traitlets import Dict, List, Unicode

from .experiments import EXPERIMENTS, GID, GROUPS, UID, posix_id
from .lockout import stop_servers
from .secretfile import SecretFileError, read_secret, stop_hub, warn_on_stderr
from .sources import ExperimentSource, make_source, resolve_experiments

# never part of a username, whatever valid_username_regex a site configures: they are the
# LDAP filter and DN metacharacters that injection attempts rely on
FORBIDDEN = frozenset('*()\\\x00,=+<>;"\n\r')
EPOCH = date(1970, 1, 1)


class DirectoryError(Exception):
    """The directory could not be asked (down, refused the service account, ...)."""


@dataclass
class DirectoryUser:
    """What the directory says about a user: their entry and the groups they are in."""

    dn: str
    attributes: dict[str, list[Any]]
    groups: list[tuple[str, str]] = field(default_factory=list)  # (dn, cn)

    @property
    def group_names(self) -> list[str]:
        return sorted({cn for _, cn in self.groups if cn})


# -- pure rules -----------------------------------------------------------------------
def username_is_safe(username: Any, regex: str) -> bool:
    """True when ``username`` may reach the directory: it matches ``regex`` entirely and
    holds none of the LDAP metacharacters in :data:`FORBIDDEN`."""
    return (
        isinstance(username, str)
        and bool(username)
        and not FORBIDDEN.intersection(username)
        and re.fullmatch(regex, username) is not None
    )


def _normal_dn(dn: str) -> str:
    return ",".join(part.strip() for part in dn.lower().split(","))


def in_group(wanted: str, groups: Iterable[tuple[str, str]]) -> bool:
    """True when ``wanted`` (a group DN, or a bare cn) is one of ``groups``."""
    if not wanted:
        return False
    if "=" in wanted:
        target = _normal_dn(wanted)
        return any(_normal_dn(dn) == target for dn, _ in groups)
    return any(cn.lower() == wanted.lower() for _, cn in groups)


def is_expired(value: Any, now: datetime | None = None) -> bool:
    """True when an expiry attribute's value has passed.

    An integer is days since 1970-01-01 (``shadowExpire``: the account is expired from
    that day on, as shadow(5) has it; 0 or less means never), a datetime is a moment
    (ldap3's reading of GeneralizedTime attributes and of Active Directory's
    ``accountExpires``, whose "never" reads as year 9999 or 1601). Missing or unreadable
    values never expire an account.
    """
    if isinstance(value, list | tuple):
        if not value:
            return False
        value = value[0]
    now = now or datetime.now(UTC)
    if isinstance(value, datetime):
        if value.year >= 9999 or value.year <= 1601:
            return False
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value <= now
    if isinstance(value, bool):
        return False
    try:
        days = int(value)
    except (TypeError, ValueError):
        return False
    return days > 0 and (now.date() - EPOCH).days >= days


class DeskhubLDAPAuthenticator(LDAPAuthenticator):
    admin_group = Unicode(
        "",
        config=True,
        help="""
        Members of this directory group are JupyterHub admins (given as a group DN or a
        bare cn); everyone else is not, unless named in ``admin_users``. Checked at every
        login and refresh. Example: ``cn=deskhub-admins,ou=groups,dc=facility,dc=org``.
        """,
    )
    blocked_group = Unicode(
        "",
        config=True,
        help="""
        Members of this directory group (DN or cn) cannot log in, and a refresh that finds
        a user in it stops their running servers. Example: ``deskhub-blocked``.
        """,
    )
    login_groups = List(
        Unicode(),
        config=True,
        help="""
        When not empty, only members of one of these groups (DNs or cns) may log in;
        empty (the default): every directory user who is neither blocked nor expired.
        Example: ``["cn=facility-users,ou=groups,dc=facility,dc=org"]``.
        """,
    )
    expiry_attribute = Unicode(
        "shadowExpire",
        config=True,
        help="""
        The user attribute that says when an account expires: days since 1970-01-01
        (``shadowExpire``; expired from that day on, 0 or less: never) or a
        GeneralizedTime/``accountExpires`` date. Empty: no expiry check. Example:
        ``accountExpires`` for Active Directory.
        """,
    )
    uid_attribute = Unicode(
        "uidNumber",
        config=True,
        help="""
        The user attribute holding the POSIX uid the session runs as (values under 1000
        are ignored: the site default applies). Example: ``uidNumber``.
        """,
    )
    gid_attribute = Unicode(
        "gidNumber",
        config=True,
        help="The user attribute holding the POSIX gid. Example: ``gidNumber``.",
    )
    group_search_base = Unicode(
        "",
        config=True,
        help="""
        Where the user's groups are searched (subtree), with ``group_search_filter``.
        Example: ``ou=groups,dc=facility,dc=org``.
        """,
    )
    experiment_source = Dict(
        config=True,
        help="""
        Where experiments come from: the site YAML's ``auth.experiments`` section (see
        ``sources.py``). Empty: the user's groups whose cn matches ``^exp-(?P<id>.+)$``.
        Example: ``{"source": "http", "url": "https://portal/api/users/{username}/proposals",
        "token_file": "/etc/deskhub/portal-token"}``.
        """,
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # built at start, so a bad pattern stops the hub instead of the first login
        self.source: ExperimentSource = make_source(self.experiment_source)

    # -- the directory ------------------------------------------------------------------
    def _search_attributes(self) -> list[str]:
        names = [self.uid_attribute, self.gid_attribute, self.expiry_attribute]
        return [name for name in names if name]

    def read_directory(self, username: str) -> DirectoryUser | None:
        """The user's entry and groups, read with the service account (blocking).
        None when the directory has no such user (or several); raises
        :class:`DirectoryError` when the directory cannot be asked."""
        try:
            conn = self.get_connection(self.lookup_dn_search_user, self.lookup_dn_search_password)
            if conn is None:
                raise DirectoryError("the service account's bind was refused")
            try:
                return self._read_with(conn, username)
            finally:
                conn.unbind()
        except LDAPException as err:
            raise DirectoryError(f"{type(err).__name__}: {err}") from err

    def _read_with(self, conn: ldap3.Connection, username: str) -> DirectoryUser | None:
        user_filter = self.lookup_dn_search_filter.format(
            login_attr=self.user_attribute, login=escape_filter_chars(username)
        )
        conn.search(
            search_base=self.user_search_base,
            search_scope=ldap3.SUBTREE,
            search_filter=user_filter,
            attributes=self._search_attributes(),
        )
        if len(conn.entries) != 1:
            self.log.warning(
                "%d directory entries for %r under %s: need exactly one",
                len(conn.entries),
                username,
                self.user_search_base,
            )
            return None
        entry = conn.entries[0]
        user = DirectoryUser(dn=entry.entry_dn, attributes=entry.entry_attributes_as_dict)
        if self.group_search_base:
            conn.search(
                search_base=self.group_search_base,
                search_scope=ldap3.SUBTREE,
                search_filter=self.group_search_filter.format(
                    userdn=escape_filter_chars(user.dn), uid=escape_filter_chars(username)
                ),
                attributes=["cn"],
            )
            for group in conn.entries:
                cn = group.entry_attributes_as_dict.get("cn") or [""]
                user.groups.append((group.entry_dn, str(cn[0])))
        return user

    def refusal(self, user: DirectoryUser) -> str | None:
        """Why ``user`` may not log in (or keep their sessions), or None."""
        if in_group(self.blocked_group, user.groups):
            return f"member of the blocked group {self.blocked_group}"
        if self.expiry_attribute and is_expired(user.attributes.get(self.expiry_attribute)):
            return f"account expired ({self.expiry_attribute})"
        if self.login_groups and not any(in_group(g, user.groups) for g in self.login_groups):
            return "in none of the login groups"
        return None

    async def auth_model(
        self, username: str, previous: list[str] | None, user: DirectoryUser | None = None
    ) -> dict[str, Any] | None:
        """The auth model the directory gives ``username`` now (``user``: their entry,
        already read), or None when refused. Raises :class:`DirectoryError` when the
        directory cannot be asked."""
        if user is None:
            user = await asyncio.to_thread(self.read_directory, username)
        if user is None:
            self.log.warning("refused %s: not found in the directory", username)
            return None
        reason = self.refusal(user)
        if reason:
            self.log.warning("refused %s: %s", username, reason)
            return None
        groups = user.group_names
        return {
            "name": username,
            "admin": in_group(self.admin_group, user.groups) or username in self.admin_users,
            "auth_state": {
                EXPERIMENTS: await resolve_experiments(
                    self.source, username, groups, previous, self.log
                ),
                UID: posix_id(user.attributes.get(self.uid_attribute)),
                GID: posix_id(user.attributes.get(self.gid_attribute)),
                GROUPS: groups,
            },
        }

    # -- JupyterHub's hooks ---------------------------------------------------------------
    async def authenticate(self, handler: Any, data: dict[str, Any]) -> dict[str, Any] | None:
        username = data.get("username")
        if not username_is_safe(username, self.valid_username_regex):
            # LDAP injection attempts end here, before any connection to the directory
            self.log.warning("refused login name %r: not a valid username", username)
            return None
        try:
            # the password: a bind as the user (ldapauthenticator's own login)
            model = await super().authenticate(handler, data)
            if model is None:
                return None
            return await self.auth_model(model["name"], previous=None)
        except (DirectoryError, LDAPException) as err:
            self.log.error("login of %s refused: the directory failed: %s", username, err)
            return None

    async def refresh_user(self, user: Any, handler: Any = None) -> dict[str, Any] | bool:
        """Read the directory again: the new auth model; False (and every running server
        stopped) when the user is now blocked, expired, not allowed or gone; True (nothing
        changed) when the directory cannot be asked, or for an account the directory never
        vouched for (no directory ``auth_state``, e.g. a workshop participant)."""
        state = await user.get_auth_state() or {}
        try:
            found = await asyncio.to_thread(self.read_directory, user.name)
            if found is None and GROUPS not in state:
                self.log.debug("%s is not a directory user: nothing to refresh", user.name)
                return True
            model = await self.auth_model(user.name, state.get(EXPERIMENTS), found)
        except DirectoryError as err:
            # a directory outage must not end every session: keep what was known
            self.log.error("cannot refresh %s (keeping the last login's state): %s", user.name, err)
            return True
        if model is None:
            await stop_servers(user, handler, self.log)
            return False
        return model


# -- the site YAML's auth.ldap -> traits --------------------------------------------------
TLS = {"starttls": "before_bind", "ldaps": "on_connect", "none": "insecure"}


def configure(c: Any, site: dict[str, Any], state: Path) -> None:
    """Login against the directory in ``auth.ldap``; experiments from ``auth.experiments``."""
    auth = site["auth"]
    ldap = auth.get("ldap")
    if not ldap:
        stop_hub("auth.type is ldap, so 'auth.ldap' must say which directory (see docs/login.md)")
    c.JupyterHub.authenticator_class = "deskhub.authenticators.ldap.DeskhubLDAPAuthenticator"
    a = c.DeskhubLDAPAuthenticator
    a.server_address = ldap["server"]
    tls = ldap.get("tls", "starttls")
    a.tls_strategy = TLS[tls]
    if "port" in ldap:
        a.server_port = ldap["port"]
    if tls != "none":
        # ldap3 does not check certificates unless told to
        a.tls_kwargs = {"validate": ssl.CERT_REQUIRED, "ca_certs_file": ldap.get("ca_file")}
    a.user_search_base = ldap["user_search_base"]
    a.user_attribute = ldap.get("user_attribute", "uid")
    if ldap.get("bind_dn_template"):
        a.bind_dn_template = ldap["bind_dn_template"]
        a.lookup_dn = False
    else:
        # find the user's DN with the service account, then bind as it
        a.lookup_dn = True
        a.bind_dn_template = []
        a.lookup_dn_user_dn_attribute = a.user_attribute
    account = ldap.get("service_account")
    if account:
        a.lookup_dn_search_user = account["dn"]
        try:
            a.lookup_dn_search_password = read_secret(
                account["password_file"],
                "auth.ldap.service_account.password_file",
                warn=warn_on_stderr,
            )
        except SecretFileError as err:
            stop_hub(str(err))
    if "valid_username_regex" in ldap:
        a.valid_username_regex = ldap["valid_username_regex"]
    a.group_search_base = ldap.get("group_search_base", "")
    if "group_search_filter" in ldap:
        a.group_search_filter = ldap["group_search_filter"]
    a.admin_group = ldap.get("admin_group", "")
    a.blocked_group = ldap.get("blocked_group", "")
    a.login_groups = list(ldap.get("allowed_groups", []))
    a.expiry_attribute = ldap.get("expiry_attribute", "shadowExpire") or ""
    a.uid_attribute = ldap.get("uid_attribute", "uidNumber")
    a.gid_attribute = ldap.get("gid_attribute", "gidNumber")
    a.experiment_source = dict(auth.get("experiments") or {})
    try:
        make_source(a.experiment_source)
    except re.error as err:
        stop_hub(f"'auth.experiments.pattern' is not a valid regular expression ({err})")
    except ValueError as err:
        stop_hub(str(err))
    # who may log in is decided by the directory (blocked, expired, allowed_groups)
    c.Authenticator.allow_all = True
    # a refresh that refuses the user also refuses their API tokens and admin spawns
    c.Authenticator.auth_refresh_strict = True
