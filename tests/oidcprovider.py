"""A real OpenID Connect provider for the login tests: panva's certified ``oidc-provider``
(npm, installed into tests/oidc/node_modules by ``ensure_test_oidc`` in
deploy/lib/prepare.sh), run by Node on a free loopback port.

Its client, accounts and their claims come from a JSON file; the provider reads it again at
every login and userinfo request, so ``set_claims`` changes what the next refresh sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.harness import file_tail, free_port, stop_process_group, wait_until_serving

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
SCRIPT = OIDC_DIR / "provider.mjs"


def installed() -> str | None:
    """Why the provider cannot run here, or None when it can."""
    if not shutil.which("node"):
        return "node is not installed (deploy/test installs it)"
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        return f"oidc-provider is not installed in {OIDC_DIR} (run: npm ci --prefix {OIDC_DIR})"
    return None


class OIDCProvider:
    """``start`` / ``stop`` one provider; ``issuer`` is ``http://127.0.0.1:PORT``."""

    def __init__(
        self,
        workdir: Path,
        *,
        client_id: str,
        client_secret: str,
        accounts: list[dict[str, Any]],
        access_token_ttl: int = 3600,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "oidc-provider.json"
        self.log_path = workdir / "oidc-provider.log"
        self.config: dict[str, Any] = {
            "port": self.port,
            "client": {
                "client_id": client_id,
                "client_secret": client_secret,
                "redirect_uri": "",  # the hub's callback URL: set by start
            },
            "accounts": accounts,
            "access_token_ttl": access_token_ttl,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def _write(self) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config, indent=2))
        os.replace(tmp, self.config_path)  # the provider never reads half a file

    def set_claims(self, username: str, **claims: Any) -> None:
        """Change (or add) claims of an account, as the facility's directory would."""
        for account in self.config["accounts"]:
            if account["username"] == username:
                account["claims"].update(claims)
                self._write()
                return
        raise KeyError(username)

    def start(self, redirect_uri: str, timeout: float = 30) -> None:
        """Start with one client whose only redirect URI is ``redirect_uri``."""
        self.config["client"]["redirect_uri"] = redirect_uri
        self._write()
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            ["node", str(SCRIPT), str(self.config_path)],
            cwd=OIDC_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        discovery = f"{self.issuer}/.well-known/openid-configuration"
        wait_until_serving(
            self.proc,
            lambda: requests.get(discovery, timeout=2).ok,
            timeout,
            "the OpenID Connect provider",
            self.log_tail,
        )

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        return file_tail(self.log_path, lines)
