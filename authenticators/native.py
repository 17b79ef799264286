"""Login for a small site: NativeAuthenticator (bcrypt-hashed passwords, sign-up that an
admin approves), plus a first admin account created from a credentials file on first run."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import bcrypt
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native_handlers
from nativeauthenticator.orm import UserInfo
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Unicode


def read_credentials(path: Path) -> tuple[str, str]:
    """``(username, password)`` from a file of ``username: NAME`` / ``password: SECRET`` lines."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    if not values.get("username") or not values.get("password"):
        raise ValueError(f"{path}: needs 'username:' and 'password:' lines")
    return values["username"], values["password"]


def password_matches(password: str, hashed: bytes) -> bool:
    """Whether ``password`` is the one bcrypt ``hashed`` (constant time)."""
    return bcrypt.checkpw(password.encode(), hashed)


class _NoStats:
    """Stands in for the statsd client that JupyterHub 6 removed from its handlers."""

    def timer(self, name: str) -> _NoStats:
        return self

    def start(self) -> _NoStats:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class LoginHandler(native_handlers.LoginHandler):
    """NativeAuthenticator 1.3's login page, mended for JupyterHub 6.

    Its handler times logins with ``self.statsd`` and renders without the ``sync`` flag
    JupyterHub 6 passes when it shows a login error; both broke every login (HTTP 500).
    """

    statsd = _NoStats()

    def _render(self, login_error=None, username=None, sync=False, **ignored):  # type: ignore[no-untyped-def]
        return self.render_template(
            "native-login.html",
            sync=sync,
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error,
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url),
                {"next": self.get_argument("next", "")},
            ),
        )


class DeskhubNativeAuthenticator(NativeAuthenticator):
    first_admin_file = Unicode(
        "",
        config=True,
        help="""
        File with the first admin's generated credentials (``username: admin`` and
        ``password: ...`` lines, mode 0600), written by ``deploy/up`` on first run. The
        account is created once, already approved, if it does not exist. Example:
        ``/var/lib/deskhub/admin-credentials``.
        """,
    )

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.first_admin_file and os.path.exists(self.first_admin_file):
            self.ensure_first_admin(Path(self.first_admin_file))

    def get_handlers(self, app):  # type: ignore[no-untyped-def]
        return [
            (r"/login", LoginHandler) if route == r"/login" else (route, handler)
            for route, handler in super().get_handlers(app)
        ]

    async def authenticate(self, handler, data):  # type: ignore[no-untyped-def]
        """NativeAuthenticator's check, with bcrypt (a quarter second of CPU per login) in
        a thread: ten logins at once held the hub's event loop for 3 s, stalling every
        other request (the load benchmark, docs/benchmarks.md)."""
        username = self.normalize_username(data["username"])
        user = self.get_user(username)
        if not user or (self.allowed_failed_logins and self.is_blocked(username)):
            return None
        matches = await asyncio.to_thread(password_matches, data["password"], user.password)
        checks = [user.is_authorized, matches]
        if user.has_2fa:
            checks.append(user.is_valid_token(data.get("2fa")))
        if all(checks):
            self.successful_login(username)
            return username
        self.add_login_attempt(username)
        return None

    def ensure_first_admin(self, path: Path) -> None:
        username, password = read_credentials(path)
        username = self.normalize_username(username)
        if self.get_user(username) is not None:
            return
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt())
        self.db.add(UserInfo(username=username, password=hashed, is_authorized=True))
        self.db.commit()
        self.admin_users = set(self.admin_users) | {username}
        self.log.info("created the first admin account %r from %s", username, path)


def configure(c: Any, site: dict[str, Any], state: Path) -> None:
    """Accounts kept in the hub's database, with sign-up an admin approves."""
    c.JupyterHub.authenticator_class = "deskhub.authenticators.native.DeskhubNativeAuthenticator"
    first_admin = state / "admin-credentials"
    c.DeskhubNativeAuthenticator.first_admin_file = str(first_admin)
    # the first admin stays one across restarts (a directory login never gets a
    # default "admin": a directory user of that name would become a hub admin)
    name = read_credentials(first_admin)[0] if first_admin.exists() else "admin"
    c.Authenticator.admin_users = set(site["hub"]["admin_users"]) | {name}
    # NativeAuthenticator itself refuses accounts an admin has not approved
    c.Authenticator.allow_all = True
