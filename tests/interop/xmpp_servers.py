"""Real Prosody and ejabberd processes on loopback, configured to hand out hmacfs upload URLs.

Each server is started from a template in `templates/` inside a directory of its own, with
free ports, and stopped (and waited for) by `stop()`. One process of each serves every URL
scheme: a virtual host per scheme (and, for Prosody, per upload mode), each configured with
the `UploadTarget` of that scheme. Nothing here touches the packages'
system-wide state: no /etc, no /var/lib, no system daemons, no epmd.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).parent / "templates"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
CTL_TIMEOUT = 60.0


@dataclass(frozen=True)
class UploadTarget:
    """What an XMPP virtual host is told about hmacfs: where uploads go and the shared secret.

    `base_url` has no trailing slash: ``http://127.0.0.1:PORT/upload`` for hmacfs's plain
    listener, ``https://localhost:PORT/upload`` for its TLS listener (the name its
    certificate is issued for, so clients check the hostname against it).
    """

    base_url: str
    secret: str
    xmpp_limit: int


@dataclass(frozen=True)
class HTTPSCertificate:
    """hmacfs's TLS certificate and the CA files the clients are given to trust."""

    certificate: Path  # for `localhost` only: an https://127.0.0.1 URL fails verification
    key: Path
    ca: Path  # the CA that issued `certificate`
    wrong_ca: Path  # an unrelated CA (same subject name), for the wrong-CA cells


@dataclass(frozen=True)
class Account:
    """An XMPP account a client logs in with, and where that server's c2s listener is."""

    username: str
    domain: str
    password: str
    host: str
    port: int

    @property
    def jid(self) -> str:
        return f"{self.username}@{self.domain}"


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for every XMPP domain of the matrix (c2s STARTTLS)."""

    cert: Path
    key: Path

    def combined_pem(self, target: Path) -> Path:
        """Certificate and key in one file, as ejabberd's `certfiles` wants them."""
        target.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        return target


def make_certificate(directory: Path, domains: Iterable[str]) -> Certificate:
    """Create a self-signed EC certificate naming `domains` (clients verify it as their CA)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "xmpp.crt", directory / "xmpp.key"
    names = ",".join(f"DNS:{domain}" for domain in domains)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30",
            "-subj", "/CN=hmacfs interop", "-addext", f"subjectAltName={names}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Certificate(cert, key)


def free_port() -> int:
    """A TCP port on loopback that is free right now.

    The XMPP servers take their ports from configuration files, so unlike hmacfs they cannot
    listen on port 0 and report back; the window between closing and their bind is tiny.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT
) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`, or fail with the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening on port {port} after {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _substitute(template: str, **values: object) -> str:
    text = (TEMPLATES / template).read_text()
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def _render(template: str, target: Path, **values: object) -> Path:
    target.write_text(_substitute(template, **values))
    return target


def _stop_process(process: subprocess.Popen[bytes], name: str) -> None:
    """Wait for a process that was asked to stop; kill its process group if it does not.

    Every server is started in a session (process group) of its own, so this only ever
    reaches processes these tests started.
    """
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise RuntimeError(f"{name} did not stop within {STOP_TIMEOUT:.0f} s; killed") from None


class Prosody:
    """One Prosody 0.12 process with a VirtualHost per upload mode and URL scheme.

    Modes (`domain(kind, scheme)`, e.g. ``v1.https.prosody.test``):
    - `v1`: `mod_http_upload_external`, protocol v1 (`?v=`)
    - `v2`: `mod_http_upload_external`, protocol v2 (`?v2=`)
    - `jwt`: built-in `mod_http_file_share` in external mode (`Authorization: Bearer`)

    With `websocket`, Prosody also listens for plain HTTP on a loopback port of its own and
    serves WebSocket c2s there (`websocket_url`), for browser clients (tests/browser).
    """

    kinds = ("v1", "v2", "jwt")

    @staticmethod
    def domain(kind: str, scheme: str) -> str:
        return f"{kind}.{scheme}.prosody.test"

    @classmethod
    def domains(cls, schemes: Iterable[str]) -> list[str]:
        return [cls.domain(kind, scheme) for scheme in schemes for kind in cls.kinds]

    def __init__(
        self,
        directory: Path,
        targets: Mapping[str, UploadTarget],
        certificate: Certificate,
        *,
        websocket: bool = False,
    ) -> None:
        """`targets`: {scheme: where that scheme's VirtualHosts send uploads}."""
        self.directory = directory
        self.targets = targets
        self.certificate = certificate
        self.port = free_port()
        self.http_port = free_port() if websocket else None
        self.log = directory / "prosody.log"
        self.config = directory / "prosody.cfg.lua"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def websocket_url(self) -> str:
        if self.http_port is None:
            raise RuntimeError("this Prosody was made without websocket=True")
        return f"ws://127.0.0.1:{self.http_port}/xmpp-websocket"

    def write_config(self) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        virtual_hosts = [
            _substitute(
                "prosody-hosts.cfg.lua",
                scheme=scheme,
                base_url=target.base_url,
                secret=target.secret,
                xmpp_limit=target.xmpp_limit,
                **{f"{kind}_domain": self.domain(kind, scheme) for kind in self.kinds},
            )
            for scheme, target in self.targets.items()
        ]
        _render(
            "prosody.cfg.lua",
            self.config,
            dir=self.directory,
            c2s_port=self.port,
            certificate=self.certificate.cert,
            key=self.certificate.key,
            certdir=self.certificate.cert.parent,
            virtual_hosts="\n".join(virtual_hosts),
            http_ports="" if self.http_port is None else self.http_port,
            http_default_host=self.domains(self.targets)[0],
            extra_modules="" if self.http_port is None else ', "websocket", "blocklist"',
        )

    def register(self, username: str, domain: str, password: str) -> Account:
        """Create an account (works whether or not Prosody is running)."""
        result = subprocess.run(
            ["prosodyctl", "--config", str(self.config), "register", username, domain, password],
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"prosodyctl register {username}@{domain}: {result.stderr}")
        return Account(username, domain, password, "127.0.0.1", self.port)

    def start(self) -> None:
        # -F: foreground, so the process is our child and its exit status is ours to see.
        with (self.directory / "stdout.log").open("wb") as out:
            self.process = subprocess.Popen(
                ["prosody", "--config", str(self.config), "-F"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, self.process, self.log)
        if self.http_port is not None:
            wait_for_port(self.http_port, self.process, self.log)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        _stop_process(self.process, "prosody")


class Ejabberd:
    """One ejabberd 23.01 node with a virtual host per URL scheme (`domain(scheme)`, e.g.
    ``https.ejabberd.test``), each with `mod_http_upload` (`external_secret`, `put_url`,
    `get_url`) in its `host_config`.

    `ejabberdctl` runs the node as the `ejabberd` user, so everything lives in a directory
    that user owns (pytest's own temporary directories are private to root).
    """

    @staticmethod
    def domain(scheme: str) -> str:
        return f"{scheme}.ejabberd.test"

    @classmethod
    def domains(cls, schemes: Iterable[str]) -> list[str]:
        return [cls.domain(scheme) for scheme in schemes]

    def __init__(
        self, targets: Mapping[str, UploadTarget], certificate: Certificate, token: str
    ) -> None:
        """`targets`: {scheme: where that scheme's virtual host sends uploads}. `token` goes
        into the directory and node names, so that every process of this node can be
        recognised by it (see conftest's leftover check)."""
        self.targets = targets
        self.directory = Path(tempfile.mkdtemp(prefix=f"hmacfs-interop-{token}-")).resolve()
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"interop{token}@localhost"
        self.log = self.directory / "logs" / "ejabberd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.certificate = certificate

    def write_config(self) -> None:
        for sub in ("logs", "spool", "upload"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        pem = self.certificate.combined_pem(self.directory / "xmpp.pem")
        shutil.copy("/etc/ejabberd/inetrc", self.directory / "inetrc")
        host_config = [
            _substitute(
                "ejabberd-host.yml",
                scheme=scheme,
                domain=self.domain(scheme),
                base_url=target.base_url,
                secret=target.secret,
                xmpp_limit=target.xmpp_limit,
                docroot=self.directory / "upload",
            )
            for scheme, target in self.targets.items()
        ]
        _render(
            "ejabberd.yml",
            self.directory / "ejabberd.yml",
            dir=self.directory,
            hosts="".join(f'  - "{domain}"\n' for domain in self.domains(self.targets)),
            c2s_port=self.port,
            certfile=pem,
            host_config="".join(host_config),
        )
        _render(
            "ejabberdctl.cfg",
            self.directory / "ejabberdctl.cfg",
            dir=self.directory,
            dist_port=self.dist_port,
            cookie=secrets.token_hex(16),
        )
        user = pwd.getpwnam("ejabberd")
        for path in [self.directory, *self.directory.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        self.directory.chmod(0o750)
        (self.directory / "xmpp.pem").chmod(0o600)

    def ctl_command(self, *args: str) -> list[str]:
        d = self.directory
        return [
            "ejabberdctl",
            "--config-dir", str(d),
            "--config", str(d / "ejabberd.yml"),
            "--ctl-config", str(d / "ejabberdctl.cfg"),
            "--logs", str(d / "logs"),
            "--spool", str(d / "spool"),
            "--node", self.node,
            *args,
        ]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ctl_command(*args),
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            check=False,
        )

    def start(self) -> None:
        # `foreground` rather than `start`: the node stays our (grand)child, so stopping can
        # wait for exactly this process tree instead of searching for a detached VM.
        with (self.directory / "logs" / "foreground.log").open("wb") as out:
            self.process = subprocess.Popen(
                self.ctl_command("foreground"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for_port(self.port, self.process, self.log)

    def register(self, username: str, domain: str, password: str) -> Account:
        result = self.ctl("register", username, domain, password)
        if result.returncode != 0:
            raise RuntimeError(
                f"ejabberdctl register {username}@{domain}: {result.stdout}{result.stderr}"
            )
        return Account(username, domain, password, "127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            result = self.ctl("stop")
            if result.returncode != 0:
                os.killpg(self.process.pid, signal.SIGTERM)
            _stop_process(self.process, "ejabberd")

    def remove(self, keep_logs_in: Path | None) -> None:
        """Delete the node's directory, keeping its logs where pytest keeps its own files."""
        if keep_logs_in is not None:
            shutil.copytree(self.directory / "logs", keep_logs_in, dirs_exist_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)
