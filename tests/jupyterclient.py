"""A small client of a user's Jupyter server through the hub's proxy: start a kernel, run
code in it, and open the desktop's VNC websocket, as a browser would.

``server_url`` is the server's URL through the proxy (``f"{hub.url}/user/{name}"``), and
``token`` a token allowed to access that server (the harness token has
``access:servers``). Used by the integration tests and the load benchmark; every call is
synchronous (each websocket runs on a fresh event loop in a thread of its own, so callers
may use these from several threads at once).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from typing import Any

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.harness import run_async


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def _session() -> requests.Session:
    # traffic goes to the hub on loopback only: never through a proxy from the environment
    session = requests.Session()
    session.trust_env = False
    return session


def _ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http")


def _message(msg_type: str, content: dict[str, Any], session: str) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "deskhub-test",
            "session": session,
            "date": datetime.datetime.now(datetime.UTC).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
        "buffers": [],
    }


async def _connect(
    url: str, token: str, timeout: float, **kwargs: Any
) -> WebSocketClientConnection:
    request = HTTPRequest(
        url, headers=_headers(token), connect_timeout=timeout, request_timeout=timeout
    )
    return await asyncio.wait_for(websocket_connect(request, **kwargs), timeout)


async def _exchange(
    server_url: str, token: str, kernel_id: str, request: dict[str, Any], timeout: float
) -> tuple[str, dict[str, Any]]:
    """Send one shell request on the kernel's channels; return the stdout streamed for it
    and the content of its reply, once the reply and the kernel's "idle" after it (the
    reply comes on the shell channel and may overtake the output on iopub) are both in.
    Raises ``TimeoutError`` past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    url = _ws_url(f"{server_url}/api/kernels/{kernel_id}/channels")
    connection = await _connect(url, token, timeout)
    reply_type = request["header"]["msg_type"].replace("_request", "_reply")
    msg_id = request["header"]["msg_id"]
    stdout: list[str] = []
    reply: dict[str, Any] | None = None
    idle = False  # iopub's "idle" for this request: all its output has been sent
    try:
        await connection.write_message(json.dumps(request))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {reply_type} from kernel {kernel_id} in {timeout:.0f} s")
            raw = await asyncio.wait_for(connection.read_message(), left)
            if raw is None:
                raise RuntimeError(f"kernel {kernel_id}'s websocket closed before its reply")
            if isinstance(raw, bytes):
                continue  # messages with binary buffers: none of ours carries output
            message = json.loads(raw)
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message.get("msg_type") or message["header"]["msg_type"]
            content = message.get("content", {})
            if kind == "stream" and content.get("name") == "stdout":
                stdout.append(content.get("text", ""))
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
            elif kind == reply_type:
                reply = content
            if reply is not None and idle:
                return "".join(stdout), reply
    except TimeoutError:
        raise TimeoutError(f"no {reply_type} from kernel {kernel_id} in {timeout:.0f} s") from None
    finally:
        connection.close()


def start_kernel(server_url: str, token: str, timeout: float = 60) -> str:
    """Start a kernel on the user's server and wait until it answers; its id."""
    deadline = time.monotonic() + timeout
    with _session() as session:
        response = session.post(
            f"{server_url}/api/kernels", headers=_headers(token), json={}, timeout=timeout
        )
    if response.status_code != 201:
        raise RuntimeError(f"starting a kernel: {response.status_code} {response.text[:500]}")
    kernel_id: str = response.json()["id"]
    request = _message("kernel_info_request", {}, uuid.uuid4().hex)
    left = max(deadline - time.monotonic(), 1.0)
    run_async(_exchange(server_url, token, kernel_id, request, left))
    return kernel_id


def execute(server_url: str, token: str, kernel_id: str, code: str, timeout: float = 30) -> str:
    """Run ``code`` in the kernel; its stdout. ``RuntimeError`` (with the exception's name
    and value) on an error reply, ``TimeoutError`` when no reply came in ``timeout`` s."""
    content = {
        "code": code,
        "silent": False,
        "store_history": False,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    request = _message("execute_request", content, uuid.uuid4().hex)
    stdout, reply = run_async(_exchange(server_url, token, kernel_id, request, timeout))
    if reply.get("status") != "ok":
        raise RuntimeError(
            f"{reply.get('ename', reply.get('status'))}: {reply.get('evalue', '')}".strip()
        )
    return stdout


def delete_kernel(server_url: str, token: str, kernel_id: str) -> None:
    """Shut the kernel down (a kernel already gone is fine)."""
    with _session() as session:
        response = session.delete(
            f"{server_url}/api/kernels/{kernel_id}", headers=_headers(token), timeout=30
        )
    if response.status_code not in (204, 404):
        raise RuntimeError(f"deleting kernel {kernel_id}: {response.status_code} {response.text}")


async def _banner(server_url: str, token: str, timeout: float) -> bytes:
    url = _ws_url(f"{server_url}/desktop-websockify/")
    connection = await _connect(url, token, timeout, subprotocols=["binary"])
    try:
        first = await asyncio.wait_for(connection.read_message(), timeout)
    finally:
        connection.close()
    if first is None:
        raise RuntimeError("the desktop's websocket closed before the VNC server's greeting")
    return first if isinstance(first, bytes) else first.encode()


def desktop_handshake(server_url: str, token: str, timeout: float = 30) -> bytes:
    """Open the desktop's VNC websocket (jupyter-remote-desktop-proxy's
    ``desktop-websockify``, which starts the desktop on first use) and return the VNC
    server's RFB version banner, e.g. ``b"RFB 003.008\\n"``."""
    try:
        return run_async(_banner(server_url, token, timeout))
    except TimeoutError:
        raise TimeoutError(f"no VNC greeting from {server_url} in {timeout:.0f} s") from None
