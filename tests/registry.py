"""A real container registry for tests: Debian's ``docker-registry`` (distribution v2),
storing in a scratch folder, listening on one address of this machine.

deploy/test installs the package (deploy/lib/prepare.sh ``ensure_test_registry``). Engines
push and pull over plain HTTP only to loopback or to registries their daemon lists as
insecure: test nodes get ``EngineCluster(insecure_registry_subnet=True)`` and the
registry listens on their network's gateway.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import requests
import yaml

from tests.harness import wait_until_serving

BINARY = "/usr/bin/docker-registry"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


def free_port_on(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


class Registry:
    """``docker-registry serve`` on ``address:port`` until :meth:`stop`."""

    def __init__(self, workdir: Path, address: str = "127.0.0.1", port: int | None = None) -> None:
        self.workdir = workdir
        self.address = address
        self.port = port or free_port_on(address)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "registry.log"
        # requests must not send this through a proxy from the environment
        self.http = requests.Session()
        self.http.trust_env = False

    @property
    def host(self) -> str:
        """What image references start with: ``ADDRESS:PORT``."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20) -> Registry:
        if not Path(BINARY).exists() and not shutil.which("docker-registry"):
            raise RuntimeError(
                f"{BINARY} is missing: apt-get install docker-registry (deploy/test does)"
            )
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        config_path = self.workdir / "registry.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [shutil.which("docker-registry") or BINARY, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_serving(
            self.proc,
            lambda: self.http.get(f"{self.url}/v2/", timeout=2).status_code == 200,
            timeout,
            f"the registry at {self.url}",
            self.log_tail,
        )
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def tags(self, repo: str) -> list[str]:
        response = self.http.get(f"{self.url}/v2/{repo}/tags/list", timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return sorted(response.json().get("tags") or [])

    def digest(self, repo: str, tag: str) -> str:
        """The manifest digest of ``repo:tag``, as ``docker pull`` reports it."""
        response = self.http.head(
            f"{self.url}/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES}, timeout=10
        )
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]
