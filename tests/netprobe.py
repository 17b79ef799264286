"""Network probes for isolation tests: TCP connects made from inside a session container,
and small listeners the test itself owns (on this machine, or in a network namespace it
creates), so that "blocked" is told apart from "nothing listens there"."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# run with the session's python3: connects to every target at once, 3 s each at most
PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
targets = json.loads(sys.argv[1])
def probe(target):
    host, port = target.rsplit(":", 1)
    sock = socket.socket()
    sock.settimeout(3)
    try:
        sock.connect((host, int(port)))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        return f"error: {err.strerror}"
    finally:
        sock.close()
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(dict(zip(targets, pool.map(probe, targets)))))
"""


def connect_from(container: Any, targets: Sequence[str]) -> dict[str, str]:
    """``{"HOST:PORT": "open" | "refused" | "timeout" | "error: ..."}`` as seen from inside
    ``container`` (a docker-py Container), as the session's own user."""
    result = container.exec_run(["python3", "-c", PROBE, json.dumps(list(targets))])
    if result.exit_code != 0:
        raise RuntimeError(f"probe failed in {container.name}: {result.output.decode()}")
    return json.loads(result.output.decode().strip().splitlines()[-1])


@dataclass
class Listener:
    """A TCP listener on this machine that counts the connections it accepted."""

    address: str
    port: int
    accepted: int = 0

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"


@contextmanager
def listening(address: str) -> Iterator[Listener]:
    """Listen on ``address`` (a port chosen by the system) until the block ends."""
    server = socket.socket()
    server.bind((address, 0))
    server.listen(16)
    server.settimeout(0.2)
    listener = Listener(address, server.getsockname()[1])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            listener.accepted += 1
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(2)
        server.close()


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def _wait_listening(address: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def private_host(name: str, subnet: str, ports: Sequence[int]) -> Iterator[str]:
    """A network namespace standing for a machine of the site's private network: reached
    from this machine through a veth pair, with an HTTP server on each of ``ports``.
    Yields its address (``.10`` of ``subnet``, a /24 such as ``10.213.7.0``)."""
    prefix = subnet.rsplit(".", 1)[0]
    outer, inner, address = f"{name}0", f"{name}1", f"{prefix}.10"
    _ip("netns", "del", name, check=False)
    _ip("link", "del", outer, check=False)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        _ip("netns", "add", name)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", name)
        _ip("addr", "add", f"{prefix}.1/24", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", name, "link", "set", inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "default", "via", f"{prefix}.1")
        for port in ports:
            servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", name, sys.executable, "-m", "http.server"]
                    + [str(port), "--bind", address],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            _wait_listening(address, port)
        yield address
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)
        _ip("link", "del", outer, check=False)
        _ip("netns", "del", name, check=False)
