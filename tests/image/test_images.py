"""The deskhub images on the real Docker engine, each run the way the spawner runs it
(uid 1000, all capabilities dropped, no-new-privileges), without a hub: a standalone
``jupyter lab`` with a token, on a network of its own, reached at the container's IP.

One running desktop per image is shared by the tests of that image. Build the images
first with ``images/build``.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import docker
import jupyterhub
import pytest
import requests
from docker.models.containers import Container

pytestmark = pytest.mark.docker

BASE = "deskhub/base:latest"
XFM = "deskhub/xfm:latest"
NETWORK = "deskhub-image-tests"
LABEL = "deskhub.test"  # every container made here carries it, for the cleanup
LABEL_VALUE = "images"
PORT = 8888
DESKTOP_TIMEOUT = 60.0
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (requests.RequestException, OSError) as err:
            last_error, result = err, None
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last error: {last_error})")


@dataclass
class Session:
    """A running image: ``jupyter lab`` on port 8888 of ``ip``, reachable with ``token``."""

    container: Container
    ip: str
    token: str

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{PORT}"

    def get(self, path: str) -> requests.Response:
        return requests.get(
            f"{self.url}{path}", headers={"Authorization": f"token {self.token}"}, timeout=30
        )

    def sh(
        self, cmd: str, user: str = "1000", env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        result = self.container.exec_run(["sh", "-c", cmd], user=user, environment=env or {})
        return result.exit_code, result.output.decode(errors="replace")

    def py(self, code: str, user: str = "1000") -> tuple[int, str]:
        """Run Python ``code`` (the image's venv Python) in the container."""
        result = self.container.exec_run(["python3", "-c", code], user=user)
        return result.exit_code, result.output.decode(errors="replace")

    def xvnc_args(self) -> list[str]:
        """The running TigerVNC server's command line (empty while none runs)."""
        _, out = self.sh("ps -eo args=")
        for line in out.splitlines():
            args = line.split()
            if args and os.path.basename(args[0]) in ("Xvnc", "Xtigervnc"):
                return args
        return []

    @property
    def display(self) -> str:
        displays = [arg for arg in self.xvnc_args() if re.fullmatch(r":\d+", arg)]
        assert displays, "no TigerVNC server runs"
        return displays[0]

    @property
    def vnc_socket(self) -> str:
        args = self.xvnc_args()
        assert "-rfbunixpath" in args, f"TigerVNC has no unix socket: {args}"
        return args[args.index("-rfbunixpath") + 1]

    def x(self, cmd: str) -> tuple[int, str]:
        """Run ``cmd`` as the session's user on its X display."""
        return self.sh(cmd, env={"DISPLAY": self.display})

    def window_tree(self) -> str:
        code, out = self.x("xwininfo -root -tree")
        assert code == 0, out
        return out

    def processes(self) -> list[str]:
        return self.sh("ps -eo comm=")[1].split()

    def logs(self) -> str:
        return self.container.logs(tail=60).decode(errors="replace")


def start_session(engine: docker.DockerClient, image: str, name: str) -> Session:
    """Start ``image`` like the spawner does, but with a plain ``jupyter lab``; wait for it."""
    token = secrets.token_hex(16)
    container = engine.containers.run(
        image,
        [
            "jupyter",
            "lab",
            "--ip=0.0.0.0",
            f"--port={PORT}",
            f"--ServerApp.token={token}",
            "--no-browser",
        ],
        name=f"deskhub-image-tests-{name}-{secrets.token_hex(3)}",
        detach=True,
        network=NETWORK,
        security_opt=["no-new-privileges"],
        cap_drop=["ALL"],
        labels={LABEL: LABEL_VALUE},
    )
    container.reload()
    session = Session(
        container, container.attrs["NetworkSettings"]["Networks"][NETWORK]["IPAddress"], token
    )
    try:
        wait_for(
            f"jupyter lab in {image}", lambda: session.get("/api/status").status_code == 200, 60
        )
    except TimeoutError as err:
        raise AssertionError(f"{err}\n--- container log ---\n{session.logs()}") from None
    return session


def open_vnc_websocket(session: Session) -> bytes:
    """Open the desktop's websocket as noVNC does and return the first server frame's payload
    (TigerVNC's RFB banner). Opening it is what makes jupyter-server-proxy start TigerVNC."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    request = (
        f"GET /desktop-websockify/?token={session.token} HTTP/1.1\r\n"
        f"Host: {session.ip}:{PORT}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: binary\r\n\r\n"
    )
    with socket.create_connection((session.ip, PORT), timeout=DESKTOP_TIMEOUT) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        assert " 101 " in status, f"websocket refused: {status}\n{session.logs()}"
        while len(rest) < 2 or len(rest) < 2 + (rest[1] & 0x7F):
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        assert len(rest) >= 2 and rest[1] & 0x7F < 126, f"unexpected first frame {rest[:16]!r}"
        return rest[2 : 2 + (rest[1] & 0x7F)]


@dataclass
class Desktop(Session):
    """A session whose MATE desktop runs; ``banner`` is what the VNC websocket sent first."""

    banner: bytes = b""


def start_desktop(engine: docker.DockerClient, image: str, name: str) -> Desktop:
    session = start_session(engine, image, name)
    desktop = Desktop(session.container, session.ip, session.token)
    page = desktop.get("/desktop/")
    assert page.status_code == 200, f"/desktop/ answered {page.status_code}"
    desktop.banner = open_vnc_websocket(desktop)
    try:
        wait_for("mate-panel process", lambda: "mate-panel" in desktop.processes(), DESKTOP_TIMEOUT)
        wait_for(
            "mate-panel window", lambda: '"mate-panel"' in desktop.window_tree(), DESKTOP_TIMEOUT
        )
    except TimeoutError as err:
        _, tree = desktop.sh("ps -eo user,pid,args")
        raise AssertionError(
            f"{err}\n--- processes ---\n{tree}\n--- log ---\n{desktop.logs()}"
        ) from None
    return desktop


def remove_test_containers(engine: docker.DockerClient) -> None:
    for container in engine.containers.list(all=True, filters={"label": f"{LABEL}={LABEL_VALUE}"}):
        container.remove(force=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    """The local engine, the images present, and a network of the tests' own."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        pytest.fail(f"no Docker engine answers: {err}")
    missing = [image for image in (BASE, XFM) if not client.images.list(name=image)]
    if missing:
        pytest.fail(f"image(s) missing: {', '.join(missing)}; build them with images/build")
    remove_test_containers(client)
    for stale in client.networks.list(names=[NETWORK]):
        stale.remove()
    network = client.networks.create(NETWORK, driver="bridge", labels={LABEL: LABEL_VALUE})
    try:
        yield client
    finally:
        remove_test_containers(client)
        network.remove()


@pytest.fixture(scope="module")
def base_desktop(engine: docker.DockerClient) -> Iterator[Desktop]:
    desktop = start_desktop(engine, BASE, "base")
    yield desktop
    desktop.container.remove(force=True)


@pytest.fixture(scope="module")
def xfm_desktop(engine: docker.DockerClient) -> Iterator[Desktop]:
    desktop = start_desktop(engine, XFM, "xfm")
    yield desktop
    desktop.container.remove(force=True)


# --- the desktop ---------------------------------------------------------------------


@pytest.mark.parametrize("image", ["base", "xfm"])
def test_desktop_starts(image: str, request: pytest.FixtureRequest) -> None:
    desktop: Desktop = request.getfixturevalue(f"{image}_desktop")
    assert desktop.banner.startswith(b"RFB 003."), desktop.banner
    tree = desktop.window_tree()
    assert '"mate-panel"' in tree
    for process in ("mate-session", "marco", "mate-panel"):
        assert process in desktop.processes(), f"{process} does not run"


RUN_IN_KERNEL = """
import json, sys
from jupyter_client import BlockingKernelClient
from jupyter_core.paths import jupyter_runtime_dir
path = f"{jupyter_runtime_dir()}/kernel-{sys.argv[1]}.json"
print(json.load(open(path))["transport"])
client = BlockingKernelClient(connection_file=path)
client.load_connection_file()
client.start_channels()
client.wait_for_ready(timeout=30)
out = []
def hook(msg):
    if msg["msg_type"] == "stream":
        out.append(msg["content"]["text"])
client.execute_interactive("print(6 * 7)", output_hook=hook, timeout=30)
print("".join(out).strip())
"""

# Which sockets listen on TCP, and does a process of the container hold each (by inode)?
TCP_LISTENERS = """
import glob, os
held = set()
for fd in glob.glob("/proc/[0-9]*/fd/*"):
    try:
        link = os.readlink(fd)
    except OSError:
        continue
    if link.startswith("socket:["):
        held.add(link[8:-1])
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":  # LISTEN
            address, port = fields[1].rsplit(":", 1)
            print(int(port, 16), address, "process" if fields[9] in held else "none")
"""


def tcp_listeners(session: Session) -> list[tuple[int, str, bool]]:
    """(port, hex address, held by a process of the container) for each TCP listener."""
    code, out = session.py(TCP_LISTENERS)
    assert code == 0, out
    return [
        (int(port), address, holder == "process")
        for port, address, holder in (line.split() for line in out.splitlines())
    ]


def test_only_the_server_listens_on_tcp(base_desktop: Desktop) -> None:
    """With the desktop running, port 8888 is the only TCP listener of the container's
    processes. Docker's embedded DNS (127.0.0.11, held by the engine, not by a process in
    the container) shares the network namespace on user-defined networks."""
    assert base_desktop.get("/api/kernels").json() == [], "a kernel runs; this test needs none"
    listeners = tcp_listeners(base_desktop)
    assert {port for port, _, held in listeners if held} == {PORT}, listeners
    assert {address for _, address, held in listeners if not held} <= {"0B00007F"}, listeners


def test_kernel_runs_code_over_unix_sockets(base_desktop: Desktop) -> None:
    """Kernels use the ipc transport (the image's jupyter_server_config.json). ipykernel
    still binds one 127.0.0.1 port of its own: the pipe for output of forked
    subprocesses, hard-coded in ipykernel.iostream and authenticated by a random key."""
    response = requests.post(
        f"{base_desktop.url}/api/kernels",
        headers={"Authorization": f"token {base_desktop.token}"},
        json={"name": "python3"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    kernel_id: str = response.json()["id"]
    try:
        result = base_desktop.container.exec_run(
            ["python3", "-c", RUN_IN_KERNEL, kernel_id], user="1000"
        )
        output = result.output.decode(errors="replace")
        assert output.split() == ["ipc", "42"], output
        listeners = tcp_listeners(base_desktop)
        by_kernel = [address for port, address, held in listeners if held and port != PORT]
        assert by_kernel == ["0100007F"], listeners  # the pipe only, on 127.0.0.1
    finally:
        requests.delete(
            f"{base_desktop.url}/api/kernels/{kernel_id}",
            headers={"Authorization": f"token {base_desktop.token}"},
            timeout=30,
        )


def test_vnc_socket_is_closed_to_other_users(base_desktop: Desktop) -> None:
    path = base_desktop.vnc_socket
    probe = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({path!r})\n"
        "    print(s.recv(12).decode())\n"
        "except PermissionError:\n"
        "    print('denied')\n"
    )
    code, out = base_desktop.py(probe)
    assert (code, out.strip()) == (0, "RFB 003.008"), f"the session's own user must get in: {out}"
    code, out = base_desktop.py(probe, user="1001:1001")
    assert (code, out.strip()) == (0, "denied"), out


def test_software_opengl_is_llvmpipe(base_desktop: Desktop) -> None:
    code, out = base_desktop.x("glxinfo -B")
    assert code == 0, out
    renderer = re.search(r"OpenGL renderer string: (.*)", out)
    assert renderer and "llvmpipe" in renderer.group(1), out


def test_docker_stop_returns_well_inside_its_timeout(engine: docker.DockerClient) -> None:
    desktop = start_desktop(engine, BASE, "stop")
    try:
        start = time.monotonic()
        desktop.container.stop()  # the engine's default: SIGTERM, SIGKILL after 10 s
        took = time.monotonic() - start
        desktop.container.reload()
        state = desktop.container.attrs["State"]
        assert took < 8, f"docker stop took {took:.1f} s"
        assert state["ExitCode"] != 137, "the container had to be killed"
    finally:
        desktop.container.remove(force=True)


# --- the session user and the single-user server ---------------------------------------


@pytest.mark.parametrize("image", [BASE, XFM])
def test_runs_as_uid_1000_never_root(engine: docker.DockerClient, image: str) -> None:
    attrs = engine.images.get(image).attrs
    assert attrs["Config"]["User"] == "1000"
    out = engine.containers.run(
        image,
        ["sh", "-c", "id -u; id -g; echo $HOME"],
        remove=True,
        network_disabled=True,
        labels={LABEL: LABEL_VALUE},
    )
    assert out.decode().split() == ["1000", "1000", "/home/deskhub"]


def test_every_desktop_process_is_the_users(base_desktop: Desktop) -> None:
    code, out = base_desktop.sh("ps -eo uid=,comm=")
    assert code == 0, out
    not_user = [line for line in out.splitlines() if line.split()[0] != "1000"]
    assert not not_user


@pytest.mark.parametrize("image", [BASE, XFM])
def test_singleuser_matches_the_hub_version(engine: docker.DockerClient, image: str) -> None:
    out = engine.containers.run(
        image,
        ["jupyterhub-singleuser", "--version"],
        remove=True,
        network_disabled=True,
        labels={LABEL: LABEL_VALUE},
    )
    version = out.decode().strip().splitlines()[-1]
    assert version == jupyterhub.__version__
    assert engine.images.get(image).labels["deskhub.jupyterhub-version"] == version


@pytest.mark.parametrize(("image", "name"), [(BASE, "base"), (XFM, "xfm")])
def test_image_labels(engine: docker.DockerClient, image: str, name: str) -> None:
    labels = engine.images.get(image).labels
    assert labels["deskhub.image"] == name
    assert labels["org.opencontainers.image.title"]


# --- the XFM applications ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "title"),
    [("pymca", r"PyMca - \[Main Window\]"), ("silx view", r"Silx viewer")],
)
def test_xfm_application_opens_a_window(xfm_desktop: Desktop, command: str, title: str) -> None:
    xfm_desktop.container.exec_run(
        ["sh", "-c", f"exec {command} >/tmp/app.log 2>&1"],
        user="1000",
        environment={"DISPLAY": xfm_desktop.display},
        detach=True,
    )
    pattern = re.compile(rf'^\s+0x[0-9a-f]+ "{title}"', re.MULTILINE)
    try:
        found = wait_for(
            f"a {title} window", lambda: pattern.search(xfm_desktop.window_tree()), DESKTOP_TIMEOUT
        )
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{xfm_desktop.sh('cat /tmp/app.log')[1]}") from None
    assert found


@pytest.mark.parametrize("entry", ["pymca.desktop", "org.silx.SilxView.desktop"])
def test_xfm_applications_are_in_the_menu(xfm_desktop: Desktop, entry: str) -> None:
    code, out = xfm_desktop.sh(f"cat /usr/share/applications/{entry}")
    assert code == 0, out
    executable = re.search(r"^Exec=(\S+)", out, re.MULTILINE)
    assert executable, out
    assert xfm_desktop.sh(f"command -v {executable.group(1)}")[0] == 0


def test_xfm_notebooks_import_the_applications(xfm_desktop: Desktop) -> None:
    """The Python on PATH (the kernel's) sees Debian's silx and PyMca5."""
    code, out = xfm_desktop.py("import PyMca5, silx; print(silx.version)")
    assert code == 0, out
    assert out.strip().startswith("1.")
