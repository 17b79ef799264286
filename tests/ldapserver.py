"""A real OpenLDAP server (Debian's ``slapd``) for tests: its own slapd.conf and mdb
database in a temporary directory, on a free loopback port, in the foreground (not a
daemon), with a small facility directory loaded from LDIF.

The directory (suffix ``dc=deskhub,dc=test``)::

    ou=people    posixAccount + shadowAccount users, password "<name>-pw"
    ou=groups    groupOfNames: exp-* experiment groups, deskhub-admins, deskhub-blocked
    ou=services  cn=hub, the service account (reads everything; password in a file)

Anonymous clients may only bind; users may read their own entry; the service account
reads all. ``modify`` changes the directory while the server runs (``ldapmodify``).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import file_tail, free_port, stop_process_group
from tests.multinode import make_tls_material

SUFFIX = "dc=deskhub,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=hub,ou=services,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
SLAPD = "/usr/sbin/slapd"


def ssha(password: str) -> str:
    """``{SSHA}`` hash, as ``slappasswd -h {SSHA}`` makes it."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class User:
    name: str
    uid: int
    groups: list[str] = field(default_factory=list)
    shadow_expire: int | None = None

    @property
    def dn(self) -> str:
        return f"uid={self.name},{PEOPLE}"

    @property
    def password(self) -> str:
        return f"{self.name}-pw"


def user_ldif(user: User) -> str:
    lines = [
        f"dn: {user.dn}",
        "objectClass: inetOrgPerson",
        "objectClass: posixAccount",
        "objectClass: shadowAccount",
        f"uid: {user.name}",
        f"cn: {user.name.title()}",
        f"sn: {user.name.title()}",
        f"uidNumber: {user.uid}",
        f"gidNumber: {user.uid}",
        f"homeDirectory: /home/{user.name}",
        f"userPassword: {ssha(user.password)}",
    ]
    if user.shadow_expire is not None:
        lines.append(f"shadowExpire: {user.shadow_expire}")
    return "\n".join(lines) + "\n"


def group_ldif(cn: str, members: list[str]) -> str:
    lines = [f"dn: cn={cn},{GROUPS}", "objectClass: groupOfNames", f"cn: {cn}"]
    # groupOfNames needs a member: an empty group holds the service account
    lines += [f"member: {dn}" for dn in (members or [SERVICE_DN])]
    return "\n".join(lines) + "\n"


def directory_ldif(users: list[User], service_password: str) -> str:
    groups: dict[str, list[str]] = {}
    for user in users:
        for group in user.groups:
            groups.setdefault(group, []).append(user.dn)
    parts = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
        "o: deskhub\ndc: deskhub\n",
        *(
            f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n"
            for ou in ("people", "groups", "services")
        ),
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: hub\nuserPassword: {ssha(service_password)}\n",
        *(user_ldif(user) for user in users),
        *(group_ldif(cn, members) for cn, members in sorted(groups.items())),
    ]
    return "\n".join(parts)


SLAPD_CONF = """\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args

database mdb
maxsize 67108864
suffix "{suffix}"
rootdn "{rootdn}"
rootpw {rootpw}
directory {dir}/db
index objectClass,uid,member eq

access to attrs=userPassword
    by dn.exact="{rootdn}" write
    by anonymous auth
    by * none
access to *
    by dn.exact="{service}" read
    by self read
    by * none
"""


class LDAPServer:
    """``with LDAPServer(users) as ldap:`` a running slapd at ``ldap.uri``."""

    def __init__(self, users: list[User], workdir: Path | None = None, tls: bool = False) -> None:
        self.users = {user.name: user for user in users}
        self.tls = tls
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="deskhub-slapd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}"
        # with tls: StartTLS on ``port``, LDAPS on ``ldaps_port``; the certificate names
        # localhost and 127.0.0.1 and is signed by ``ca_file``'s CA
        self.ldaps_port = free_port()
        self.ca_file = self.dir / "tls" / "ca.pem"
        self.root_password = secrets.token_urlsafe(16)
        self.service_password = secrets.token_urlsafe(16)
        self.service_password_file = self.dir / "service-password"
        self.log_path = self.dir / "slapd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 20) -> LDAPServer:
        missing = [p for p in (SLAPD, "/usr/bin/ldapmodify") if not Path(p).exists()]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} missing: deploy/test installs Debian's slapd and"
                " ldap-utils (ensure_test_ldap in deploy/lib/prepare.sh)"
            )
        (self.dir / "db").mkdir(exist_ok=True)
        includes = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS)
        conf = self.dir / "slapd.conf"
        if self.tls:
            files = make_tls_material(self.dir / "tls", "127.0.0.1", "localhost")
            includes += (
                f"\nTLSCACertificateFile {files.ca}\nTLSCertificateFile {files.server_cert}"
                f"\nTLSCertificateKeyFile {files.server_key}"
            )
        conf.write_text(
            SLAPD_CONF.format(
                includes=includes,
                dir=self.dir,
                suffix=SUFFIX,
                rootdn=ROOT_DN,
                rootpw=ssha(self.root_password),
                service=SERVICE_DN,
            )
        )
        self.service_password_file.write_text(self.service_password + "\n")
        self.service_password_file.chmod(0o600)
        ldif = self.dir / "directory.ldif"
        ldif.write_text(directory_ldif(list(self.users.values()), self.service_password))
        subprocess.run(
            ["/usr/sbin/slapadd", "-q", "-f", str(conf), "-l", str(ldif)],
            check=True,
            capture_output=True,
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        # -d: stay in the foreground and log to stderr; 256 = stats (connections, operations)
        urls = self.uri + "/" + (f" ldaps://127.0.0.1:{self.ldaps_port}/" if self.tls else "")
        self.proc = subprocess.Popen(
            [SLAPD, "-f", str(conf), "-h", urls, "-d", "256"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited during start:\n{self.log_tail()}")
            if self.whoami(SERVICE_DN, self.service_password).returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"slapd did not answer in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LDAPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 40) -> str:
        return file_tail(self.log_path, lines)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients ----------------------------------------------------------------------
    def whoami(self, dn: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ldapwhoami", "-x", "-H", self.uri, "-D", dn, "-w", password],
            capture_output=True,
            text=True,
            timeout=10,
        )

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change (``changetype: modify`` ...) as the directory's root."""
        result = subprocess.run(
            ["ldapmodify", "-x", "-H", self.uri, "-D", ROOT_DN, "-w", self.root_password],
            input=ldif,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode != 0:
            raise RuntimeError(f"ldapmodify failed: {result.stderr}")

    def add_to_group(self, user: str, group: str) -> None:
        """Put ``user`` in group ``group`` (created if missing)."""
        dn = self.users[user].dn
        try:
            self.modify(f"dn: cn={group},{GROUPS}\nchangetype: modify\nadd: member\nmember: {dn}\n")
        except RuntimeError as err:
            if "No such object" not in str(err):
                raise
            first, rest = group_ldif(group, [dn]).split("\n", 1)
            self.modify(f"{first}\nchangetype: add\n{rest}")

    def remove_from_group(self, user: str, group: str) -> None:
        """Take ``user`` out of ``group`` (its last member: the service account stands in,
        as groupOfNames needs one)."""
        dn = self.users[user].dn
        head = f"dn: cn={group},{GROUPS}\nchangetype: modify\n"
        try:
            self.modify(f"{head}delete: member\nmember: {dn}\n")
        except RuntimeError as err:
            if "Object class violation" not in str(err):
                raise
            self.modify(f"{head}replace: member\nmember: {SERVICE_DN}\n")

    # -- what the hub's site YAML says about this directory -----------------------------
    def site_section(self, **extra: object) -> dict[str, object]:
        return {
            "server": "127.0.0.1",
            "port": self.port,
            "tls": "none",
            "user_search_base": PEOPLE,
            "service_account": {
                "dn": SERVICE_DN,
                "password_file": str(self.service_password_file),
            },
            "group_search_base": GROUPS,
            "admin_group": f"cn=deskhub-admins,{GROUPS}",
            "blocked_group": "deskhub-blocked",
            **extra,
        }
