"""The deskhub images on the real Docker engine, each run the way the spawner runs it
(uid 1000, all capabilities dropped, no-new-privileges), without a hub: a standalone
``jupyter lab`` with a token, on a network of its own, reached at the container's IP.

One running desktop per image is shared by the tests of that image; it gets the image's
applications in ``DESKHUB_APPS`` as the spawner passes them, so each application is started
through its desktop launcher. Build the images first with ``images/build``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
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

from deskhub.spawner.catalogue import Catalogue
from deskhub.spawner.containerspec import apps_environment
from deskhub.spawner.image_labels import NAME, spec_from_labels
from tests.harness import wait_for_background_images

pytestmark = pytest.mark.docker

BASE = "deskhub/base:latest"
XFM = "deskhub/xfm:latest"
NAMES = ("base", "xfm", "mx", "imaging")  # every environment image images/build makes
IMAGES = [f"deskhub/{name}:latest" for name in NAMES]
NETWORK = "deskhub-image-tests"
LABEL = "deskhub.test"  # every container made here carries it, for the cleanup
LABEL_VALUE = "images"
PORT = 8888
DESKTOP_TIMEOUT = 60.0
APP_TIMEOUT = 120.0  # an application's first window (Java and ParaView on 2 busy cores)
DATA_EXPERIMENT = "beamtime-1"  # a folder under /data in the shared desktops, as the spawner mounts
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

    def session_env(self) -> dict[str, str]:
        """The desktop session's environment (caja's, which starts the desktop's launchers)."""
        code, out = self.sh("tr '\\0' '\\n' </proc/$(pgrep -u 1000 -x -o caja)/environ")
        assert code == 0, out
        env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        # caja's own session id (mate-session started it; caja unset it for its children)
        env.pop("DESKTOP_AUTOSTART_ID", None)
        return env

    def launch(self, entry: str) -> None:
        """Open the launcher ``entry`` (a .desktop file) as the desktop does: GLib reads
        its Exec line, in the session's environment."""
        self.container.exec_run(
            ["sh", "-c", 'exec gio launch "$0" >>/tmp/launch.log 2>&1', entry],
            user="1000",
            environment=self.session_env(),
            detach=True,
        )

    def launchers(self, folder: str = "~/Desktop") -> dict[str, dict[str, str]]:
        """deskhub's launchers in ``folder``: file name -> their keys, plus ``mode``/``uid``."""
        code, out = self.py(LAUNCHERS.replace("FOLDER", folder))
        assert code == 0, out
        return json.loads(out)


def start_session(
    engine: docker.DockerClient,
    image: str,
    name: str,
    environment: dict[str, str] | None = None,
    data: bool = False,
) -> Session:
    """Start ``image`` like the spawner does, but with a plain ``jupyter lab``; wait for it.
    ``data``: an (empty) experiment folder at /data/beamtime-1, as the spawner mounts one."""
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
        environment=environment or {},
        tmpfs={f"/data/{DATA_EXPERIMENT}": "size=1m"} if data else {},
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


def start_desktop(
    engine: docker.DockerClient,
    image: str,
    name: str,
    environment: dict[str, str] | None = None,
    data: bool = False,
) -> Desktop:
    session = start_session(engine, image, name, environment, data)
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


def environment_apps(engine: docker.DockerClient, image: str) -> list[dict[str, object]]:
    """The image's applications as the spawner gets them: labels -> catalogue."""
    labels = engine.images.get(image).labels
    spec = spec_from_labels(labels, image)
    env = Catalogue.from_site({labels[NAME]: spec}).get(labels[NAME])
    assert env is not None
    return json.loads(apps_environment(env.apps)["DESKHUB_APPS"])


# An application whose name and command hold everything a shell or a desktop-entry parser
# could trip on; its command prints the arguments it got, which must be exactly these.
ODD_ARGS = [
    "a b",
    "$HOME",
    "100%",
    "%f",
    '"quoted"',
    "back\\slash",
    "semi;colon",
    "`tick`",
    "~",
    "it's",
]
ODD_APP = {
    "name": 'Odd "app" $(touch /tmp/pwned); \\ 100% %f',
    "exec": shlex.join(["sh", "-c", 'printf "%s\\n" "$@" >/tmp/odd-args', "odd", *ODD_ARGS]),
    "gpu": False,
}


def start_image_desktop(engine: docker.DockerClient, name: str) -> Desktop:
    """The shared desktop of deskhub/NAME, with its apps in DESKHUB_APPS (base also gets the
    odd one) and an experiment folder under /data."""
    image = f"deskhub/{name}:latest"
    apps = environment_apps(engine, image) + ([ODD_APP] if name == "base" else [])
    env = {"DESKHUB_APPS": json.dumps(apps)}
    return start_desktop(engine, image, name, env, data=True)


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
    try:
        wait_for_background_images()
    except (RuntimeError, TimeoutError) as err:
        pytest.fail(str(err))
    missing = [image for image in IMAGES if not client.images.list(name=image)]
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


def desktop_fixture(name: str) -> Callable[..., Iterator[Desktop]]:
    @pytest.fixture(scope="module", name=f"{name}_desktop")
    def fixture(engine: docker.DockerClient) -> Iterator[Desktop]:
        desktop = start_image_desktop(engine, name)
        yield desktop
        desktop.container.remove(force=True)

    return fixture


base_desktop = desktop_fixture("base")
xfm_desktop = desktop_fixture("xfm")
mx_desktop = desktop_fixture("mx")
imaging_desktop = desktop_fixture("imaging")


def apps_fixture(name: str) -> Callable[..., Desktop]:
    """The NAME desktop once all its launchers were opened (at once: they start in parallel)."""

    @pytest.fixture(scope="module", name=f"{name}_apps")
    def fixture(request: pytest.FixtureRequest) -> Desktop:
        desktop: Desktop = request.getfixturevalue(f"{name}_desktop")
        for entry in desktop.launchers():
            desktop.launch(f"/home/deskhub/Desktop/{entry}")
        return desktop

    return fixture


base_apps = apps_fixture("base")
xfm_apps = apps_fixture("xfm")
mx_apps = apps_fixture("mx")
imaging_apps = apps_fixture("imaging")


# --- the desktop ---------------------------------------------------------------------


@pytest.mark.parametrize("image", NAMES)
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


@pytest.mark.parametrize("image", NAMES)
def test_software_opengl_is_llvmpipe(image: str, request: pytest.FixtureRequest) -> None:
    desktop: Desktop = request.getfixturevalue(f"{image}_desktop")
    code, out = desktop.x("glxinfo -B")
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


@pytest.mark.parametrize("image", IMAGES)
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


@pytest.mark.parametrize("image", IMAGES)
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


@pytest.mark.parametrize("name", NAMES)
def test_image_labels(engine: docker.DockerClient, name: str) -> None:
    """Each image describes its own environment; none has VirtualGL (the default build),
    and its label says so."""
    image = f"deskhub/{name}:latest"
    labels = engine.images.get(image).labels
    assert labels["deskhub.image"] == name
    assert labels["org.opencontainers.image.title"]
    spec = spec_from_labels(labels, image)
    assert labels[NAME] == ("desktop" if name == "base" else name)
    assert spec["apps"] and spec["virtualgl"] is False
    out = engine.containers.run(
        image,
        ["sh", "-c", "command -v vglrun /opt/VirtualGL/bin/vglrun || echo none"],
        remove=True,
        network_disabled=True,
        labels={LABEL: LABEL_VALUE},
    )
    assert out.decode().split() == ["none"]


# --- the applications, started through the desktop's launchers ---------------------------

# Every application of every image (its deskhub.apps) and the title of the window it opens.
APP_WINDOWS = [
    ("base", "Terminal", r"deskhub@[^\"]*"),  # bash's prompt sets it
    ("base", "Files", r"deskhub"),
    ("xfm", "PyMca", r"PyMca - \[Main Window\]"),
    ("xfm", "silx view", r"Silx viewer"),
    ("xfm", "pyFAI calibration", r"PyFAI Calibration"),
    ("mx", "DIALS", r"DIALS"),
    ("mx", "PyMOL", r"PyMOL[^\"]*"),
    ("imaging", "ImageJ", r"ImageJ"),
    ("imaging", "ParaView", r"ParaView[^\"]*"),
]


@pytest.mark.parametrize("name", NAMES)
def test_every_application_has_a_window_check(engine: docker.DockerClient, name: str) -> None:
    apps = {str(app["name"]) for app in environment_apps(engine, f"deskhub/{name}:latest")}
    assert apps == {app for image, app, _ in APP_WINDOWS if image == name}


@pytest.mark.parametrize(
    ("name", "app", "title"), APP_WINDOWS, ids=[f"{n}-{a}" for n, a, _ in APP_WINDOWS]
)
def test_application_opens_its_window_from_its_launcher(
    name: str, app: str, title: str, request: pytest.FixtureRequest
) -> None:
    desktop: Desktop = request.getfixturevalue(f"{name}_apps")  # all launchers opened
    pattern = re.compile(rf'^\s+0x[0-9a-f]+ "({title})"', re.MULTILINE)
    try:
        found = wait_for(
            f"the {app} window", lambda: pattern.search(desktop.window_tree()), APP_TIMEOUT
        )
    except TimeoutError as err:
        _, log = desktop.sh("cat /tmp/launch.log; ps -eo pid,args")
        raise AssertionError(f"{err}\n{log}\n{desktop.window_tree()}") from None
    assert found


LAUNCHERS = """
import json, os, pathlib
out = {}
for path in sorted(pathlib.Path(os.path.expanduser("FOLDER")).glob("deskhub-*.desktop")):
    keys = dict(l.split("=", 1) for l in path.read_text().splitlines() if "=" in l)
    stat = path.stat()
    out[path.name] = {**keys, "mode": oct(stat.st_mode & 0o777), "uid": str(stat.st_uid)}
print(json.dumps(out))
"""


def unescape(value: str) -> str:
    """A desktop-entry string value as its reader sees it."""
    codes = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: codes.get(m.group(1), m.group(0)), value)


@pytest.mark.parametrize("name", NAMES)
def test_launchers_are_the_environments_apps(name: str, request: pytest.FixtureRequest) -> None:
    """One executable (so trusted by caja) launcher per app in DESKHUB_APPS, on the Desktop
    and in the menu; GL apps go through deskhub-launch --gpu."""
    desktop: Desktop = request.getfixturevalue(f"{name}_desktop")
    apps = json.loads(desktop.session_env()["DESKHUB_APPS"])
    on_desktop = desktop.launchers()
    assert on_desktop == desktop.launchers("~/.local/share/applications")
    assert sorted(unescape(e["Name"]) for e in on_desktop.values()) == sorted(
        str(a["name"]) for a in apps
    )
    for entry in on_desktop.values():
        app = next(a for a in apps if a["name"] == unescape(entry["Name"]))
        gpu = ["--gpu"] if app["gpu"] else []
        assert entry["Exec"].startswith(" ".join(["/usr/local/bin/deskhub-launch", *gpu, "--"]))
        assert (entry["Type"], entry["mode"], entry["uid"]) == ("Application", "0o755", "1000")


def test_an_odd_launcher_runs_exactly_its_command(base_apps: Desktop) -> None:
    """Quotes, $, backquotes, %, backslashes in an app's name and command reach the command
    as they are, through the desktop-entry parser (GLib's), with no shell in between."""
    out = wait_for("the odd app's output", lambda: base_apps.sh("cat /tmp/odd-args")[1].strip(), 30)
    assert out.split("\n") == ODD_ARGS
    assert base_apps.sh("test -e /tmp/pwned")[0] != 0


def test_data_links_and_home_icon(base_desktop: Desktop) -> None:
    """/data (the experiments' folders) is "Data" on the Desktop and ~/data, so JupyterLab's
    file browser, rooted at the home, shows the same folders; caja shows the Home icon."""
    code, out = base_desktop.sh("readlink ~/Desktop/Data ~/data")
    assert (code, out.split()) == (0, ["/data", "/data"])
    listing = base_desktop.get("/api/contents/data")
    assert listing.status_code == 200, listing.text
    assert [item["name"] for item in listing.json()["content"]] == [DATA_EXPERIMENT]
    code, out = base_desktop.x("gsettings get org.mate.caja.desktop home-icon-visible")
    assert (code, out.strip()) == (0, "true")


def test_desktop_setup_is_idempotent_and_keeps_others_files(base_desktop: Desktop) -> None:
    """Run again, nothing changes; another environment's apps replace the launchers; files
    that are not deskhub's launchers (even named like them) are never touched."""
    env = base_desktop.session_env()
    ours = base_desktop.launchers()
    mine = "printf '[Desktop Entry]\\nName=Mine\\n' >~/Desktop/deskhub-mine.desktop"
    assert base_desktop.sh(mine)[0] == 0
    before = base_desktop.launchers()
    stamps = "stat -c '%n %Y %i' ~/Desktop/deskhub-*.desktop"
    times = base_desktop.sh(stamps)[1]
    try:
        assert base_desktop.sh("deskhub-desktop-setup", env=env)[0] == 0
        assert base_desktop.launchers() == before
        assert base_desktop.sh(stamps)[1] == times  # not rewritten
        other = {**env, "DESKHUB_APPS": json.dumps([{"name": "Other", "exec": "true"}])}
        assert base_desktop.sh("deskhub-desktop-setup", env=other)[0] == 0
        assert list(base_desktop.launchers()) == ["deskhub-mine.desktop", "deskhub-other.desktop"]
        assert base_desktop.sh("deskhub-desktop-setup", env={**env, "DESKHUB_APPS": ""})[0] == 0
        assert list(base_desktop.launchers()) == ["deskhub-mine.desktop"]
    finally:
        base_desktop.sh("rm -f ~/Desktop/deskhub-mine.desktop")
        base_desktop.sh("deskhub-desktop-setup", env=env)
    assert base_desktop.launchers() == ours


# --- VirtualGL ---------------------------------------------------------------------------

STAND_IN_VIRTUALGL = r"""
set -eu
mkdir -p /tmp/vgl/DEBIAN /tmp/vgl/opt/VirtualGL/bin
cd /tmp/vgl
printf 'Package: virtualgl\nVersion: 9.9\nArchitecture: all\n' >DEBIAN/control
printf 'Maintainer: t <t@localhost>\nDescription: stand-in\n' >>DEBIAN/control
printf '#!/bin/sh\necho "$*" >>/tmp/vglrun.log\nshift 2\nexec "$@"\n' >opt/VirtualGL/bin/vglrun
chmod 0755 opt/VirtualGL/bin/vglrun
dpkg-deb --build /tmp/vgl /tmp/virtualgl.deb >/dev/null
deskhub-install-virtualgl /tmp/absent-*.deb /tmp/virtualgl.deb
touch /tmp/vglrun.log && chmod 0666 /tmp/vglrun.log
"""


def test_virtualgl_install_and_gpu_launch(engine: docker.DockerClient) -> None:
    """The install script, with a stand-in VirtualGL package (its vglrun records its
    arguments): vglrun lands on PATH, and deskhub-launch runs a GPU app through it exactly
    when the session has a GPU."""
    container = engine.containers.run(
        BASE,
        ["sleep", "300"],
        user="0",
        detach=True,
        network_disabled=True,
        labels={LABEL: LABEL_VALUE},
    )
    try:
        result = container.exec_run(["sh", "-c", STAND_IN_VIRTUALGL], user="0")
        assert result.exit_code == 0, result.output.decode()
        assert "vglrun is /usr/local/bin/vglrun" in result.output.decode()

        def launch(env: dict[str, str], *args: str) -> tuple[str, str]:
            run = container.exec_run(
                ["deskhub-launch", *args, "--", "sh", "-c", 'echo "ran $0"', "it"],
                user="1000",
                environment=env,
            )
            assert run.exit_code == 0, run.output.decode()
            log = container.exec_run(["cat", "/tmp/vglrun.log"]).output.decode()
            container.exec_run(["sh", "-c", ": >/tmp/vglrun.log"])
            return run.output.decode().strip(), log.strip()

        gpu = {"DESKHUB_GPU": "shared", "DESKHUB_GPUS": "GPU-a", "VGL_DISPLAY": "egl"}
        assert launch(gpu, "--gpu") == ("ran it", '-d egl sh -c echo "ran $0" it')
        card = {**gpu, "VGL_DISPLAY": "/dev/dri/card1"}
        assert launch(card, "--gpu")[1].startswith("-d /dev/dri/card1 sh")
        assert launch({"DESKHUB_GPU": "shared"}, "--gpu")[1].startswith("-d egl sh")
        assert launch(gpu) == ("ran it", "")  # not a GL app
        assert launch({}, "--gpu") == ("ran it", "")  # no GPU in this session
    finally:
        container.remove(force=True)


def test_gpu_launch_without_virtualgl_runs_in_software(base_desktop: Desktop) -> None:
    code, out = base_desktop.sh(
        "deskhub-launch --gpu -- sh -c 'echo ran'", env={"DESKHUB_GPU": "shared"}
    )
    # stdout and stderr reach docker exec as two streams: their order is not kept
    assert code == 0 and "ran" in out.splitlines(), out
    assert "no VirtualGL" in out


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
