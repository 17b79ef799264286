"""Several real Docker engines on one machine: "compute nodes" for multi-node tests.

Each node is a container of ``deskhub/test-node:latest`` (``tests/nodes/Dockerfile``)
running its own ``dockerd`` on the user-defined bridge network ``deskhub-test-nodes``
(172.31.250.0/24, or a spare /24 where an existing network overlaps it; nodes at .11,
.12, ...). The host reaches every node's engine API at
``tcp://IP:2375`` (plain) or ``tcp://IP:2376`` (mutual TLS, certificates made here with
``cryptography``), and reaches ports that containers inside a node publish on the node's
IP; containers inside a node reach the host at the network's gateway (``.1``).
Containers of the *host* engine on other bridge networks do not reach the nodes (Docker
isolates bridge networks from each other): attach them to this network if they must.

A GPU node has the stand-in ``nvidia-container-runtime-hook`` on dockerd's PATH, so its
engine registers the ``nvidia`` device driver and runs the whole GPU path of a device
request except the hardware; the stand-in records each call (see :meth:`hook_log`).

Used by pytest fixtures and by the benchmark script::

    cluster = EngineCluster(docker.from_env(), [NodeSpec("node-a"), NodeSpec("node-b",
                            tls=True)], workdir).start()
    try:
        cluster.load_images(cluster["node-a"], ["deskhub/base:latest"])
        site_nodes = cluster.site_nodes()
    finally:
        cluster.teardown()

Node engines keep their images in a volume at /var/lib/docker (overlay2 inside the node:
overlay2 on the container's own overlay root would fail); their nested containers' cgroups
live under ``/deskhubnode-NAME`` of the shared cgroup hierarchy. Every node reports the
whole machine's memory; ``NodeSpec.cpuset`` narrows the CPUs a node reports (NCPU).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.tls
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

NODES_DIR = Path(__file__).resolve().parent / "nodes"
NODE_IMAGE = "deskhub/test-node:latest"
TINY_IMAGE = "deskhub/test-tiny:latest"
DEFAULT_BASE = "deskhub/debian-local:bookworm"
NETWORK = "deskhub-test-nodes"
SUBNET = "172.31.250.0/24"
# used instead of SUBNET (or the one asked for) when an existing network overlaps it
SPARE_SUBNETS = ("10.251.250.0/24", "10.252.250.0/24", "192.168.250.0/24", "172.30.250.0/24")
FIRST_HOST = 11
CONTAINER_PREFIX = "deskhubnode-"
LABEL = "deskhub.test-node"
CONTEXT_LABEL = "deskhub.test-node.context"
STANDIN_DIR = "/opt/nvidia-standin"
HOOK_LOG = "/var/log/nvidia-hook.log"
TLS_DIR = "/etc/docker/tls"
PLAIN_PORT = 2375
TLS_PORT = 2376
API_VERSION = "1.41"  # Docker 20.10, the nodes' engine
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NodeError(RuntimeError):
    """A node did not start or did not answer; the message carries its log."""


# -- images -------------------------------------------------------------------------------


def _context_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(NODES_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _ensure_built(
    client: docker.DockerClient, tag: str, target: str | None, base: str, rebuild: bool
) -> str:
    context = _context_digest()
    try:
        old: str | None = client.images.get(tag).id
    except docker.errors.ImageNotFound:
        old = None
    if old and not rebuild:
        if client.images.get(old).labels.get(CONTEXT_LABEL) == context:
            return tag
        log.info("%s was built from other files in %s: rebuilding", tag, NODES_DIR)
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        raise NodeError(
            f"base image {base} is missing: build it (debootstrap + docker import, see "
            "images/build) or pass base= an image that exists"
        ) from None
    start = time.monotonic()
    # The SDK talks to the engine's classic builder (no BuildKit), as the Dockerfile needs.
    client.images.build(
        path=str(NODES_DIR),
        tag=tag,
        target=target,
        buildargs={"BASE": base},
        labels={CONTEXT_LABEL: context},
        rm=True,
        forcerm=True,
    )
    log.info("built %s in %.1f s", tag, time.monotonic() - start)
    if old and client.images.get(tag).id != old:
        # The replaced build would stay behind as a dangling image.
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(old)
    return tag


def ensure_node_image(
    client: docker.DockerClient, *, base: str = DEFAULT_BASE, rebuild: bool = False
) -> str:
    """Build ``deskhub/test-node:latest`` from tests/nodes unless it is there and current."""
    return _ensure_built(client, NODE_IMAGE, None, base, rebuild)


def ensure_tiny_image(
    client: docker.DockerClient, *, base: str = DEFAULT_BASE, rebuild: bool = False
) -> str:
    """Build ``deskhub/test-tiny:latest`` (busybox, ~2 MB) on the host engine."""
    return _ensure_built(client, TINY_IMAGE, "tiny", base, rebuild)


# -- TLS material -------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for one mutual-TLS engine: its CA, its server pair, a client pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass(frozen=True)
class CA:
    cert: Path
    key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=days)
    )


def make_ca(directory: Path, *, name: str = "deskhub test CA", days: int = 30) -> CA:
    """A self-signed CA in ``directory`` (``ca.pem``, ``ca-key.pem``); reused if present."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CA(directory / "ca.pem", directory / "ca-key.pem")
    if ca.cert.exists() and ca.key.exists():
        return ca
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(key_agreement=False, signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_key(ca.key, key)
    _write_cert(ca.cert, cert)
    return ca


def _key_usage(*, key_agreement: bool, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca: CA,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    key = _new_key()
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_agreement=True, signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_tls_material(
    directory: Path,
    ip: str,
    name: str | None = None,
    *,
    ca: CA | None = None,
    days: int = 30,
) -> TLSFiles:
    """Server and client pairs for an engine at ``ip`` (SAN: ip, name, localhost).

    ``ca`` defaults to a CA made (or reused) in ``directory``. The files that the engine
    needs (``ca.pem``, ``server-*.pem``) and the client pair all land in ``directory``;
    the CA key stays wherever ``ca`` keeps it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or make_ca(directory)
    ca_copy = directory / "ca.pem"
    if ca_copy != ca.cert:
        ca_copy.write_bytes(ca.cert.read_bytes())
    san: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(ip)),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    if name:
        san.insert(1, x509.DNSName(name))
    files = TLSFiles(
        ca=ca_copy,
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client-cert.pem",
        client_key=directory / "client-key.pem",
    )
    cert, key = _issue(ca, name or ip, ExtendedKeyUsageOID.SERVER_AUTH, san, days)
    _write_cert(files.server_cert, cert)
    _write_key(files.server_key, key)
    cert, key = _issue(ca, "deskhub hub", ExtendedKeyUsageOID.CLIENT_AUTH, None, days)
    _write_cert(files.client_cert, cert)
    _write_key(files.client_key, key)
    return files


# -- nodes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """What a node should be: its name, mutual TLS or plain TCP, a GPU stand-in or not.

    ``cpuset`` (e.g. ``"0"``) pins the node's engine to those CPUs, which is also the NCPU
    it reports; memory cannot be narrowed that way (every node reports the machine's).
    """

    name: str
    tls: bool = False
    gpu: bool = False
    cpuset: str | None = None


@dataclass
class EngineNode:
    """One running node: where its engine answers and how to talk to it."""

    name: str
    ip: str
    container: str
    tls: TLSFiles | None = None
    gpu: bool = False

    @property
    def port(self) -> int:
        return TLS_PORT if self.tls else PLAIN_PORT

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.ip}:{self.port}"

    def tls_config(self) -> docker.tls.TLSConfig | None:
        if self.tls is None:
            return None
        return docker.tls.TLSConfig(
            client_cert=(str(self.tls.client_cert), str(self.tls.client_key)),
            ca_cert=str(self.tls.ca),
            verify=True,
        )

    def client(self, timeout: int = 60) -> docker.DockerClient:
        """A client of this node's engine (mutual TLS for a TLS node).

        The client ignores the environment: otherwise requests lets REQUESTS_CA_BUNDLE or
        CURL_CA_BUNDLE (set on machines behind a TLS-inspecting proxy) replace the node's
        CA, and HTTPS_PROXY divert the connection.
        """
        client = docker.DockerClient(
            base_url=self.endpoint,
            tls=self.tls_config(),
            version=API_VERSION,  # "auto" would ask before trust_env is off
            timeout=timeout,
        )
        client.api.trust_env = False
        return client

    def site_entry(self, **extra: Any) -> dict[str, Any]:
        """This node's entry in deskhub's site YAML ``nodes`` list (``extra`` merged in)."""
        entry: dict[str, Any] = {"name": self.name, "endpoint": self.endpoint, "address": self.ip}
        if self.tls is not None:
            entry["tls"] = {
                "ca": str(self.tls.ca),
                "cert": str(self.tls.client_cert),
                "key": str(self.tls.client_key),
            }
        entry.update(extra)
        return entry


@dataclass(frozen=True)
class LoadResult:
    loaded: list[str]
    skipped: list[str]
    seconds: float


@dataclass
class EngineCluster:
    """Start, stop and remove node containers on the host engine ``host``.

    One cluster per network at a time: :meth:`start` first removes whatever an earlier
    (crashed) run left on this network under the same labels or container names.
    ``workdir`` holds the TLS material, bind-mounted read-only into TLS nodes.
    """

    host: docker.DockerClient
    specs: list[NodeSpec]
    workdir: Path
    network: str = NETWORK
    subnet: str = SUBNET
    first_host: int = FIRST_HOST
    prefix: str = CONTAINER_PREFIX
    image: str = NODE_IMAGE
    base: str = DEFAULT_BASE
    start_timeout: float = 60.0
    # the engines pull over plain HTTP from registries on the nodes' network (one the
    # test starts at the gateway's address, say)
    insecure_registry_subnet: bool = False
    nodes: dict[str, EngineNode] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"node names repeat: {names}")
        self._use_subnet(self.subnet)

    def _use_subnet(self, subnet: str) -> None:
        hosts = list(ipaddress.ip_network(subnet).hosts())
        if self.first_host + len(self.specs) > len(hosts):
            raise ValueError(f"{len(self.specs)} nodes do not fit in {subnet}")
        self.subnet = subnet
        self._ips = {
            spec.name: str(hosts[self.first_host - 1 + i]) for i, spec in enumerate(self.specs)
        }

    # -- dict-like access --
    def __getitem__(self, name: str) -> EngineNode:
        return self.nodes[name]

    def __iter__(self) -> Iterator[EngineNode]:
        return iter(self.nodes.values())

    def __enter__(self) -> EngineCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    @property
    def gateway(self) -> str:
        """The host's address on the nodes' network, which nested containers reach."""
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    def container_name(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def volume_name(self, name: str) -> str:
        return f"{self.prefix}{name}-docker"

    def site_nodes(self, **extra: Any) -> list[dict[str, Any]]:
        return [node.site_entry(**extra) for node in self.nodes.values()]

    # -- lifecycle --
    def start(self) -> EngineCluster:
        """Start every node and wait until each engine answers; returns ``self``."""
        begin = time.monotonic()
        ensure_node_image(self.host, base=self.base)
        self.timings["image"] = time.monotonic() - begin
        self._remove_leftovers()
        self._ensure_network()
        started = time.monotonic()
        try:
            for spec in self.specs:
                self.nodes[spec.name] = self._run_node(spec)
            self._wait_ready(list(self.nodes.values()))
        except BaseException:
            self.teardown()
            raise
        self.timings["start"] = time.monotonic() - started
        log.info(
            "%d nodes answered %.1f s after their start", len(self.nodes), self.timings["start"]
        )
        return self

    def stop_node(self, name: str, *, kill: bool = False, timeout: int = 10) -> None:
        """``docker stop`` (or ``kill``: no clean shutdown at all) the node's container."""
        container = self.host.containers.get(self.nodes[name].container)
        if kill:
            container.kill()
        else:
            container.stop(timeout=timeout)
        container.wait(timeout=timeout + 30)

    def start_node(self, name: str) -> None:
        """Start a stopped node again and wait until its engine answers."""
        node = self.nodes[name]
        self.host.containers.get(node.container).start()
        self._wait_ready([node])

    def teardown(self) -> None:
        """Remove the node containers, their volumes and the network."""
        self._remove_leftovers()
        for network in self.host.networks.list(names=[self.network]):
            if network.name != self.network:
                continue
            try:
                network.remove()
            except docker.errors.APIError as err:
                log.warning("could not remove network %s: %s", self.network, err)
        self.nodes.clear()

    # -- images and the GPU stand-in --
    def load_images(self, node: EngineNode | str, images: Iterable[str]) -> LoadResult:
        """Copy images from the host engine into ``node`` unless it has the same image id."""
        node = self.nodes[node] if isinstance(node, str) else node
        client = node.client(timeout=900)
        loaded: list[str] = []
        skipped: list[str] = []
        begin = time.monotonic()
        try:
            for name in images:
                image = self.host.images.get(name)
                try:
                    present = client.images.get(name).id == image.id
                except docker.errors.ImageNotFound:
                    present = False
                if present:
                    skipped.append(name)
                    continue
                one = time.monotonic()
                client.images.load(image.save(named=name))  # this tag, not tags[0]
                if client.images.get(name).id != image.id:
                    raise NodeError(f"{name} loaded into {node.name} under another id")
                loaded.append(name)
                log.info("loaded %s into %s in %.1f s", name, node.name, time.monotonic() - one)
        finally:
            client.close()
        return LoadResult(loaded, skipped, time.monotonic() - begin)

    def load_tiny_image(self, node: EngineNode | str) -> str:
        """Build (on the host) and load the busybox image into ``node``; returns its tag."""
        self.load_images(node, [ensure_tiny_image(self.host, base=self.base)])
        return TINY_IMAGE

    def exec(self, node: EngineNode | str, *cmd: str) -> tuple[int, str]:
        """Run a command in the node container itself (not in its engine)."""
        node = self.nodes[node] if isinstance(node, str) else node
        result = self.host.containers.get(node.container).exec_run(list(cmd))
        return result.exit_code, result.output.decode(errors="replace")

    def hook_log(self, node: EngineNode | str) -> list[dict[str, Any]]:
        """The GPU stand-in's records on ``node``: one dict per prestart call, oldest first.

        Each has ``hook``, ``id`` (the container id), ``bundle``, ``visible_devices`` and
        ``capabilities`` (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES, "" if unset).
        """
        code, output = self.exec(node, "cat", HOOK_LOG)
        if code != 0:
            return []
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def node_log(self, node: EngineNode | str, tail: int = 40) -> str:
        node = self.nodes[node] if isinstance(node, str) else node
        try:
            container = self.host.containers.get(node.container)
        except docker.errors.NotFound:
            return "(no container)"
        return container.logs(tail=tail).decode(errors="replace")

    # -- internals --
    def _labels(self, name: str) -> dict[str, str]:
        return {LABEL: "true", f"{LABEL}.network": self.network, f"{LABEL}.name": name}

    def _remove_leftovers(self) -> None:
        names = {self.container_name(spec.name) for spec in self.specs}
        names |= {node.container for node in self.nodes.values()}
        ours = self.host.containers.list(
            all=True, filters={"label": f"{LABEL}.network={self.network}"}
        )
        for container in ours:
            names.add(container.name)
        for name in sorted(names):
            try:
                container = self.host.containers.get(name)
            except docker.errors.NotFound:
                continue
            container.remove(force=True, v=True)
            log.info("removed node container %s", name)
        volumes = {self.volume_name(spec.name) for spec in self.specs}
        for volume in self.host.volumes.list(filters={"label": f"{LABEL}.network={self.network}"}):
            volumes.add(volume.name)
        for name in sorted(volumes):
            try:
                self.host.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                continue
        for spec in self.specs:
            _remove_cgroup_tree(f"/{self.container_name(spec.name)}")

    def _ensure_network(self) -> None:
        for network in self.host.networks.list(names=[self.network]):
            if network.name != self.network:
                continue
            subnets = [c.get("Subnet") for c in network.attrs["IPAM"].get("Config") or []]
            if self.subnet not in subnets:
                raise NodeError(
                    f"network {self.network} exists with subnets {subnets}, not {self.subnet}"
                )
            return
        # Docker hands out /16s of 172.17-31 and 192.168 in turn: one may already cover the
        # wanted subnet, so take the first candidate that overlaps no existing network
        taken = [
            ipaddress.ip_network(c["Subnet"])
            for n in self.host.networks.list()
            for c in (n.attrs.get("IPAM") or {}).get("Config") or []
            if c.get("Subnet") and ":" not in c["Subnet"]
        ]
        for candidate in [self.subnet, *SPARE_SUBNETS]:
            if not any(ipaddress.ip_network(candidate).overlaps(t) for t in taken):
                self._use_subnet(candidate)
                break
        else:
            raise NodeError(f"no free subnet for {self.network}: {[str(t) for t in taken]}")
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=self.subnet)])
        self.host.networks.create(self.network, driver="bridge", ipam=ipam, labels={LABEL: "true"})

    def _command(self, spec: NodeSpec) -> list[str]:
        path = f"{STANDIN_DIR}:{NODE_PATH}" if spec.gpu else NODE_PATH
        command = [
            "/usr/bin/tini",
            "--",
            "env",
            f"PATH={path}",
            "dockerd",
            "--host=unix:///var/run/docker.sock",
            f"--cgroup-parent=/{self.container_name(spec.name)}",
        ]
        if self.insecure_registry_subnet:
            command.append(f"--insecure-registry={self.subnet}")
        if spec.tls:
            command += [
                f"--host=tcp://0.0.0.0:{TLS_PORT}",
                "--tlsverify",
                f"--tlscacert={TLS_DIR}/ca.pem",
                f"--tlscert={TLS_DIR}/server-cert.pem",
                f"--tlskey={TLS_DIR}/server-key.pem",
            ]
        else:
            command += [f"--host=tcp://0.0.0.0:{PLAIN_PORT}", "--tls=false"]
        return command

    def _run_node(self, spec: NodeSpec) -> EngineNode:
        ip = self._ips[spec.name]
        container = self.container_name(spec.name)
        volume = self.volume_name(spec.name)
        self.host.volumes.create(volume, labels=self._labels(spec.name))
        tls: TLSFiles | None = None
        binds = {
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            volume: {"bind": "/var/lib/docker", "mode": "rw"},
        }
        if spec.tls:
            ca = make_ca(self.workdir / "ca")
            tls = make_tls_material(self.workdir / spec.name, ip, spec.name, ca=ca)
            binds[str(tls.server_cert.parent)] = {"bind": TLS_DIR, "mode": "ro"}
        api = self.host.api
        host_config = api.create_host_config(
            binds=binds,
            cap_add=["ALL"],
            cap_drop=["SYS_RESOURCE"],  # the VM's bounding set lacks it: --privileged fails
            security_opt=["seccomp=unconfined", "apparmor=unconfined"],
            cgroupns="host",
            tmpfs={"/run": "rw,exec,nosuid,nodev,mode=755"},  # no stale pid files on restart
            network_mode=self.network,
            cpuset_cpus=spec.cpuset,
        )
        # What the CLI's --security-opt systempaths=unconfined means: nothing masked or
        # read-only under /proc and /sys (the engine API has no such security option).
        host_config["MaskedPaths"] = []
        host_config["ReadonlyPaths"] = []
        networking = api.create_networking_config(
            {self.network: api.create_endpoint_config(ipv4_address=ip)}
        )
        created = api.create_container(
            self.image,
            command=self._command(spec),
            name=container,
            hostname=spec.name,
            labels=self._labels(spec.name),
            host_config=host_config,
            networking_config=networking,
        )
        api.start(created["Id"])
        return EngineNode(spec.name, ip, container, tls=tls, gpu=spec.gpu)

    def _wait_ready(self, nodes: list[EngineNode]) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = {node.name: node for node in nodes}
        errors: dict[str, str] = {}
        while pending:
            for name, node in list(pending.items()):
                container = self.host.containers.get(node.container)
                if container.status not in ("created", "running"):
                    raise NodeError(
                        f"node {name} ({node.container}) is {container.status}, exit code "
                        f"{container.attrs['State'].get('ExitCode')}; its log:\n"
                        + self.node_log(node)
                    )
                try:
                    client = node.client(timeout=3)
                    try:
                        client.ping()
                    finally:
                        client.close()
                except Exception as err:  # any failure means "not yet"
                    errors[name] = f"{type(err).__name__}: {err}"
                else:
                    del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                name, node = next(iter(pending.items()))
                raise NodeError(
                    f"node {name} did not answer at {node.endpoint} within "
                    f"{self.start_timeout:.0f} s (last error: {errors.get(name)}); its log:\n"
                    + self.node_log(node)
                )
            time.sleep(0.25)


def _remove_cgroup_tree(relative: str, root: str = "/sys/fs/cgroup") -> None:
    """Best effort: remove the empty cgroup directories a killed node's engine left behind."""
    if not os.path.isdir(root):
        return
    for hierarchy in os.listdir(root):
        top = os.path.join(root, hierarchy, relative.lstrip("/"))
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for current, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(current)
