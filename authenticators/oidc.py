"""Login through an OpenID Connect provider: oauthenticator's ``GenericOAuthenticator``
with the provider's claims mapped into ``auth_state`` (see :mod:`.experiments`).

oauthenticator does the protocol (authorization code flow with PKCE, token exchange,
userinfo, refresh with the stored access or refresh token before each spawn), admin and
allowed groups (``admin_groups``, ``allowed_groups``, ``manage_groups``) and
``blocked_users``. This module adds the claim mapping, a "disabled" claim that blocks a
login, and ``configure``, which turns the site YAML's ``auth.oidc`` section into traits
(finding the provider's endpoints by OIDC discovery at hub start).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyterhub.utils import maybe_future
from oauthenticator.generic import GenericOAuthenticator
from traitlets import Dict, Unicode, default

from .experiments import EXPERIMENTS, GID, GROUPS, UID, clean_experiments, posix_id
from .lockout import stop_servers
from .secretfile import SecretFileError, read_secret, stop_hub, warn_on_stderr
from .sources import make_source, resolve_experiments

CLASS = "deskhub.authenticators.oidc.DeskhubOIDCAuthenticator"
DISCOVERY_PATH = "/.well-known/openid-configuration"
DEFAULT_SCOPES = ["openid", "profile", "email"]
# the claim names a site YAML may set under auth.oidc.claims, and the trait each sets
CLAIM_TRAITS = {
    "username": "username_claim",
    "groups": "groups_claim",
    "experiments": "experiments_claim",
    "experiment_id": "experiment_id_field",
    "uid": "uid_claim",
    "gid": "gid_claim",
    "disabled": "disabled_claim",
}
TRUE_WORDS = {"true", "yes", "1", "disabled", "locked"}


class OIDCConfigError(ValueError):
    """The ``auth.oidc`` section cannot be used: one line that says why."""


# -- claims -> auth_state (pure) ------------------------------------------------------------
def as_list(value: Any) -> list[Any]:
    """A claim that should be a list: None -> [], a single value -> [value]."""
    if value is None:
        return []
    if isinstance(value, list | tuple | set):
        return list(value)
    return [value]


def experiment_ids(value: Any, id_field: str = "id") -> list[Any]:
    """The raw ids of an experiments claim: a list of ids, or of objects with ``id_field``.

    Numbers are ids too (proposal 42 -> ``"42"``), as in :mod:`.sources`. Nothing is
    validated here; :func:`clean_experiments` drops (and logs) what is unsafe.
    """
    ids = [item.get(id_field) if isinstance(item, Mapping) else item for item in as_list(value)]
    return [str(i) if isinstance(i, int) and not isinstance(i, bool) else i for i in ids]


def groups_of(value: Any) -> list[str]:
    """The groups claim as a sorted list of unique, non-empty names."""
    return sorted({item for item in as_list(value) if isinstance(item, str) and item})


def is_disabled(claims: Mapping[str, Any], claim: str) -> bool:
    """Whether the provider marks the account as disabled in ``claim`` ("" = never)."""
    if not claim:
        return False
    value = claims.get(claim)
    if isinstance(value, str):
        return value.strip().lower() in TRUE_WORDS
    return bool(value)


def claims_to_auth_state(
    claims: Mapping[str, Any],
    *,
    experiments_claim: str = "experiments",
    experiment_id_field: str = "id",
    uid_claim: str = "uid_number",
    gid_claim: str = "gid_number",
    groups_claim: str = "groups",
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> dict[str, Any]:
    """What deskhub keeps of a user's claims (the userinfo answer) in ``auth_state``."""
    log = log or logging.getLogger(__name__)
    user = claims.get("preferred_username") or claims.get("sub") or "?"
    raw = experiment_ids(claims.get(experiments_claim), experiment_id_field)
    return {
        EXPERIMENTS: clean_experiments(
            raw, log, f"OpenID Connect claim {experiments_claim!r} of {user!r}"
        ),
        UID: posix_id(claims.get(uid_claim)) if uid_claim else None,
        GID: posix_id(claims.get(gid_claim)) if gid_claim else None,
        GROUPS: groups_of(claims.get(groups_claim)),
    }


# -- the authenticator -------------------------------------------------------------------------
class DeskhubOIDCAuthenticator(GenericOAuthenticator):
    """``GenericOAuthenticator`` that maps deskhub's claims into ``auth_state``."""

    groups_claim = Unicode(
        "groups",
        config=True,
        help="""
        Userinfo claim with the user's groups (a list of names). They become the user's
        JupyterHub groups (``manage_groups``), decide ``admin_groups`` and
        ``allowed_groups``, and are kept in ``auth_state["groups"]``. Example: ``groups``.
        """,
    )
    experiments_claim = Unicode(
        "experiments",
        config=True,
        help="""
        Userinfo claim with the user's experiments: a list of ids, or of objects whose
        ``experiment_id_field`` is the id. Ids that are not safe directory names are
        dropped and logged. Example: ``experiments``.
        """,
    )
    experiment_id_field = Unicode(
        "id",
        config=True,
        help="""
        When the experiments claim is a list of objects, the field that holds the id.
        Example: ``id`` (for ``[{"id": "mx-2026-042", "title": "..."}]``).
        """,
    )
    uid_claim = Unicode(
        "uid_number",
        config=True,
        help="""
        Userinfo claim with the user's POSIX uid (an integer >= 1000), kept in
        ``auth_state["uid"]``; absent or invalid: None (the site's default uid). Empty:
        never read. Example: ``uid_number``.
        """,
    )
    gid_claim = Unicode(
        "gid_number",
        config=True,
        help="""
        Userinfo claim with the user's POSIX gid, like ``uid_claim``. Example:
        ``gid_number``.
        """,
    )
    disabled_claim = Unicode(
        "",
        config=True,
        help="""
        Userinfo claim that, when true (``true``, ``"true"``, ``"yes"``, ``1``), means the
        account is disabled: its login is refused and its next refresh fails. Empty: no
        such claim. Example: ``disabled``.
        """,
    )

    experiment_source = Dict(
        {},
        config=True,
        help="""
        Where experiments come from instead of ``experiments_claim``: the site YAML's
        ``auth.experiments`` (docs/login.md), e.g. the facility's portal
        ``{"source": "http", "url": "https://portal/api/users/{username}/proposals",
        "token_file": "/etc/deskhub/portal-token"}``, a file, or ``ldap-groups``, which
        matches the groups claim against a pattern. Empty: the claim.
        """,
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # what the source last said per user: kept when it fails at a refresh
        self._last_experiments: dict[str, list[str]] = {}

    @default("login_service")
    def _login_service_default(self) -> str:
        return "OpenID Connect"

    @default("username_claim")
    def _username_claim_default(self) -> str:
        return "preferred_username"

    @default("scope")
    def _scope_default(self) -> list[str]:
        return list(DEFAULT_SCOPES)

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("auth_state_groups_key")
    def _auth_state_groups_key_default(self) -> str:
        return GROUPS

    def claims_to_auth_state(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        return claims_to_auth_state(
            claims,
            experiments_claim=self.experiments_claim,
            experiment_id_field=self.experiment_id_field,
            uid_claim=self.uid_claim,
            gid_claim=self.gid_claim,
            groups_claim=self.groups_claim,
            log=self.log,
        )

    async def build_auth_state_dict(
        self, token_info: dict[str, Any], user_info: dict[str, Any]
    ) -> dict[str, Any]:
        """oauthenticator's auth_state (tokens, userinfo) plus deskhub's keys; called at
        login and at every refresh, so the experiments always follow the latest claims
        (or the latest answer of ``experiment_source``)."""
        auth_state = super().build_auth_state_dict(token_info, user_info)
        auth_state.update(self.claims_to_auth_state(user_info))
        if self.experiment_source:
            username = self.normalize_username(self.user_info_to_username(user_info))
            found = await resolve_experiments(
                make_source(self.experiment_source),
                username,
                auth_state[GROUPS],
                self._last_experiments.get(username),
                self.log,
            )
            self._last_experiments[username] = found
            auth_state[EXPERIMENTS] = found
        return auth_state

    def _claims(self, auth_model: Mapping[str, Any] | None) -> Mapping[str, Any]:
        auth_state = (auth_model or {}).get("auth_state") or {}
        return auth_state.get(self.user_auth_state_key) or {}

    def check_blocked_users(
        self, username: str, authentication: dict[str, Any] | None = None
    ) -> bool:
        if not super().check_blocked_users(username, authentication):
            return False
        if is_disabled(self._claims(authentication), self.disabled_claim):
            self.log.warning(
                "%s is disabled at the provider (claim %r)", username, self.disabled_claim
            )
            return False
        return True

    async def refresh_user(
        self, user: Any, handler: Any = None, **kwargs: Any
    ) -> bool | dict[str, Any]:
        """oauthenticator's refresh (fresh userinfo with the stored tokens), then the same
        checks as a login: a user blocked, disabled or no longer allowed must log in again
        (and is refused there)."""
        state = await user.get_auth_state()
        if not state or GROUPS not in state:
            # an account the provider never signed in (a workshop participant, a user an
            # admin made through the REST API): nothing to refresh, nothing to refuse
            return True
        refreshed = await super().refresh_user(user, handler, **kwargs)
        if not isinstance(refreshed, dict):
            return refreshed
        if not self.check_blocked_users(user.name, refreshed):
            await stop_servers(user, handler, self.log)
            return False
        if not await maybe_future(self.check_allowed(user.name, refreshed)):
            self.log.warning("%s is no longer allowed; a new login is needed", user.name)
            await stop_servers(user, handler, self.log)
            return False
        return refreshed


# -- site YAML -> traits -----------------------------------------------------------------------
def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + DISCOVERY_PATH


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def discover(issuer: str, ca_file: str | None = None, timeout: float = 10) -> dict[str, Any]:
    """The provider's discovery document; :class:`OIDCConfigError` naming the URL if it
    cannot be read or does not describe ``issuer``."""
    url = discovery_url(issuer)
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ssl_context(ca_file)) as answer:
            document = json.load(answer)
    except urllib.error.HTTPError as err:
        raise OIDCConfigError(f"OpenID Connect discovery {url} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise OIDCConfigError(f"OpenID Connect discovery {url} is unreachable: {reason}") from None
    except ValueError as err:
        raise OIDCConfigError(f"OpenID Connect discovery {url} is not JSON: {err}") from None
    if not isinstance(document, dict) or str(document.get("issuer", "")).rstrip(
        "/"
    ) != issuer.rstrip("/"):
        found = document.get("issuer") if isinstance(document, dict) else None
        raise OIDCConfigError(
            f"OpenID Connect discovery {url} names issuer {found!r}, not {issuer!r}"
        )
    return document


def endpoints(section: Mapping[str, Any], document: Mapping[str, Any] | None) -> dict[str, str]:
    """authorize/token/userinfo URLs: explicit ones in ``section`` win over discovery's."""
    document = document or {}
    found = {
        "authorize_url": section.get("authorize_url") or document.get("authorization_endpoint"),
        "token_url": section.get("token_url") or document.get("token_endpoint"),
        "userdata_url": section.get("userinfo_url") or document.get("userinfo_endpoint"),
    }
    missing = [name for name, url in found.items() if not url]
    if missing:
        where = "its discovery document" if section.get("issuer") else "auth.oidc"
        raise OIDCConfigError(
            f"auth.oidc: no {', '.join(missing)} in {where}"
            " (give `issuer`, or authorize_url, token_url and userinfo_url)"
        )
    return {name: str(url) for name, url in found.items()}


def callback_url(section: Mapping[str, Any], bind_url: str) -> str:
    return section.get("callback_url") or bind_url.rstrip("/") + "/hub/oauth_callback"


def site_traits(
    section: Mapping[str, Any], bind_url: str, urls: Mapping[str, str], client_secret: str
) -> dict[str, Any]:
    """The authenticator's traits from the ``auth.oidc`` section (pure)."""
    traits: dict[str, Any] = {
        **urls,
        "client_id": section["client_id"],
        "client_secret": client_secret,
        "oauth_callback_url": callback_url(section, bind_url),
        "scope": list(section.get("scopes") or DEFAULT_SCOPES),
        "login_service": section.get("login_service", "OpenID Connect"),
        "manage_groups": True,
        "admin_groups": set(section.get("admin_groups", [])),
        "allowed_groups": set(section.get("allowed_groups", [])),
        "blocked_users": set(section.get("blocked_users", [])),
        # without allowed_groups, everyone the provider signs in may log in
        "allow_all": not section.get("allowed_groups"),
        "auto_login": bool(section.get("auto_login", False)),
    }
    for key, value in (section.get("claims") or {}).items():
        traits[CLAIM_TRAITS[key]] = value
    if section.get("ca_file"):
        traits["http_request_kwargs"] = {"ca_certs": section["ca_file"]}
    return traits


def configure(c: Any, site: dict[str, Any], state: Path) -> None:
    """Login through the OpenID Connect provider of ``auth.oidc`` (docs/login.md)."""
    section = site["auth"].get("oidc") or {}
    try:
        if not section.get("client_id") or not section.get("client_secret_file"):
            raise OIDCConfigError("auth.oidc needs client_id and client_secret_file")
        explicit = all(section.get(k) for k in ("authorize_url", "token_url", "userinfo_url"))
        document = None
        if section.get("issuer") and not explicit:
            document = discover(section["issuer"], section.get("ca_file"))
        urls = endpoints(section, document)
        secret = read_secret(
            section["client_secret_file"], "auth.oidc.client_secret_file", warn_on_stderr
        )
        source = dict(site["auth"].get("experiments") or {})
        if source:
            make_source(source)
    except (OIDCConfigError, SecretFileError) as err:
        stop_hub(str(err))
    except re.error as err:
        stop_hub(f"'auth.experiments.pattern' is not a valid regular expression ({err})")
    except ValueError as err:
        stop_hub(str(err))
    c.JupyterHub.authenticator_class = CLASS
    for name, value in site_traits(section, site["hub"]["bind_url"], urls, secret).items():
        setattr(c.DeskhubOIDCAuthenticator, name, value)
    c.DeskhubOIDCAuthenticator.experiment_source = source
