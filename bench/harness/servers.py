"""The servers under test: ours and nginx, each stopped with its whole process group.

Ours is started the way the tests start it (tests.helpers.server.start_server): on port 0 of
127.0.0.1, ready once it sends READY=1 to a notification socket of ours, whose STATUS says
which port it got. No port is picked for it beforehand.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT
from harness.common import HOST, UPLOAD_PREFIX, BenchError, clean_env, tail
from harness.sampling import TreeSampler, process_tree
from harness.tls import CIPHERS, MIN_VERSION, TlsFiles, client_context
from tests.helpers.server import (
    Server,
    ServerDidNotStart,
    config_text,
    start_server,
    write_config,
)
from tests.helpers.signing import mac_v1

NGINX = "/usr/sbin/nginx"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
#: Starts of nginx, each on a fresh port, before a port taken under its feet ends the run.
NGINX_PORT_TRIES = 5


@dataclass
class BenchServer:
    """A running server under test: ours or nginx."""

    label: str
    kind: str  # "ours" or "nginx"
    proc: subprocess.Popen[bytes]
    port: int
    storage: Path
    processes: int
    sampler: TreeSampler
    log_tail: Callable[[], str]
    #: The certificate it serves https with; None: plain http.
    tls: TlsFiles | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def curl_args(self) -> list[str]:
        """What curl needs to talk to it: for https, to trust its certificate (and no more)."""
        return [] if self.tls is None else ["--cacert", str(self.tls.certificate)]

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A (not yet connected) keep-alive connection to it, https if it serves that."""
        if self.tls is None:
            return http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        return http.client.HTTPSConnection(HOST, self.port, timeout=timeout,
                                           context=client_context(self.tls.certificate))

    @property
    def put_statuses(self) -> frozenset[int]:
        return frozenset({201}) if self.kind == "ours" else frozenset({201, 204})

    def put_target(self, rel: str, size: int) -> str:
        """Request target of a PUT of ``size`` bytes to ``rel`` (signed, for ours: v1)."""
        if self.kind == "ours":
            return f"{UPLOAD_PREFIX}{rel}?v={mac_v1(rel, size)}"
        return UPLOAD_PREFIX + rel

    def get_target(self, rel: str) -> str:
        return UPLOAD_PREFIX + rel


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower())


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (SIGKILL after 10 s), then SIGKILL whatever is left of its group.

    Servers are started in a session of their own, so their process group id is their pid:
    worker processes that outlive their parent are ended by that id, and nothing else.
    """
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"  server pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; "
                      "killing", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- ours


def ours_supports_workers(python: str, workdir: Path) -> tuple[bool, str]:
    """Whether our server knows ``workers``: does `check-config` mention it?

    Raises BenchError if check-config fails or takes more than 60 s.
    """
    probe = workdir / "probe"
    probe.mkdir()
    config = probe / "config.toml"
    write_config(config, config_text(probe / "files", listen=(f"{HOST}:0",), workers=None,
                                     log_level="warning", server_toml="fsync = false"))
    try:
        proc = subprocess.run(
            [python, "-m", "hmacfs", "--config", str(config), "check-config"],
            capture_output=True, text=True, cwd=REPO_ROOT, env=clean_env(),
            timeout=60, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError("`python -m hmacfs check-config` did not finish in 60 s") from exc
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    if proc.returncode != 0:
        raise BenchError(f"`python -m hmacfs check-config` failed ({proc.returncode}): "
                         f"{proc.stderr.strip()}")
    return "workers" in (proc.stdout + proc.stderr).lower(), proc.stdout


@contextlib.contextmanager
def running_ours(
    python: str, workdir: Path, storage: Path, *, label: str, fsync: bool,
    workers: int | None, log_level: str = "warning", tls: TlsFiles | None = None,
) -> Iterator[Server]:
    """Our server (``python -m hmacfs``, cwd the repository) storing in ``storage``.

    ``workers`` None leaves the key out (the server's default). With ``tls`` it listens on
    https only (a `[tls]` section with that certificate and key, the other keys at their
    defaults) and ``port`` is that listener's. Its config and the rest of its own files go to
    a fresh directory under ``workdir``. Stopped with its process group afterwards. Raises
    BenchError if it does not start within 20 s.
    """
    home = Path(tempfile.mkdtemp(prefix=f"{_slug(label)}-", dir=workdir))
    storage.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, home, ignore_errors=True)
        server = _start_ours(python, home, storage, label=label, fsync=fsync, workers=workers,
                             log_level=log_level, tls=tls)
        cleanup.callback(stop_process_group, server.process)
        yield server


def _start_ours(python: str, home: Path, storage: Path, *, label: str, fsync: bool,
                workers: int | None, log_level: str, tls: TlsFiles | None) -> Server:
    extra = "" if tls is None else (f"[tls]\ncertificate = {json.dumps(str(tls.certificate))}\n"
                                    f"key = {json.dumps(str(tls.key))}\n")
    try:
        server = start_server(
            home,
            extra,
            server_toml=f"fsync = {'true' if fsync else 'false'}",
            listen=(f"{HOST}:0",) if tls is None else (f"https://{HOST}:0",),
            workers=workers,
            log_level=log_level,
            storage=storage,
            python=python,
            cwd=REPO_ROOT,
            env={"LC_ALL": "C"},
            # log levels above "info" say nothing when ready: READY=1 does, and where it listens
            notify=True,
            new_session=True,
            track=False,
            timeout=READY_TIMEOUT_S,
        )
    except ServerDidNotStart as exc:
        raise BenchError(f"our server ({label}): {exc}") from None
    if tls is not None:
        # start_server's port is the plain listener's; this one has only "https://HOST:PORT".
        prefix = f"https://{HOST}:"
        ports = [int(a.removeprefix(prefix)) for a in server.addresses if a.startswith(prefix)]
        if not ports:
            stop_process_group(server.process)
            raise BenchError(f"our server ({label}) did not say where it listens for https: "
                             f"{server.addresses}")
        server.port = ports[0]
    return server


@contextlib.contextmanager
def ours_server(
    python: str, workdir: Path, storage: Path, *, label: str, fsync: bool, workers: int | None,
    tls: TlsFiles | None = None,
) -> Iterator[BenchServer]:
    """Our server with its memory sampled while it runs; ``workers`` None: key left out;
    ``tls``: https only, with that certificate."""
    with running_ours(python, workdir, storage, label=label, fsync=fsync, workers=workers,
                      tls=tls) as server, _sampled(server.process) as sampler:
        yield BenchServer(label, "ours", server.process, server.port, storage, workers or 1,
                          sampler, server.log_tail, tls)


@contextlib.contextmanager
def _sampled(proc: subprocess.Popen[bytes]) -> Iterator[TreeSampler]:
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


# --------------------------------------------------------------------------- nginx


def _nginx_listen(port: int, tls: TlsFiles | None) -> str:
    """The server block's listen line, and for https the certificate and our server's
    protocol and cipher defaults (ours also prefers its own cipher order and sends no session
    tickets)."""
    if tls is None:
        return f"listen {HOST}:{port};"
    protocols = "TLSv1.2 TLSv1.3" if MIN_VERSION == "1.2" else "TLSv1.3"
    return f"""listen {HOST}:{port} ssl;
        ssl_certificate {tls.certificate};
        ssl_certificate_key {tls.key};
        ssl_protocols {protocols};
        ssl_ciphers {CIPHERS};
        ssl_prefer_server_ciphers on;
        ssl_session_tickets off;"""


def nginx_config_text(
    prefix: Path, port: int, storage: Path, body_temp: Path, workers: int,
    tls: TlsFiles | None = None,
) -> str:
    # `user root` only where we are root: nginx then keeps its workers' rights (able to write
    # into our temp dirs) instead of switching them to "nobody".
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# written by bench/compare.py
daemon off;
{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_max_body_size 2g;
    client_body_temp_path {body_temp};
    proxy_temp_path {prefix}/proxy-temp;
    fastcgi_temp_path {prefix}/fastcgi-temp;
    uwsgi_temp_path {prefix}/uwsgi-temp;
    scgi_temp_path {prefix}/scgi-temp;
    # wrk keeps its connections open; so does our server, without a request limit.
    keepalive_requests 1000000;
    server {{
        {_nginx_listen(port, tls)}
        location {UPLOAD_PREFIX} {{
            alias {storage}/;
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


class _PortTaken(Exception):
    """nginx could not bind its port: some other process has it."""


def _kernel_port() -> int:
    """A port the kernel hands out for 127.0.0.1 now (released again at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _listens(root: int, port: int) -> bool:
    """Whether a process of ``root``'s tree holds a listening TCP socket on HOST:port."""
    # /proc/net/tcp gives the address as the 32-bit value in this machine's byte order.
    address = int.from_bytes(socket.inet_aton(HOST), sys.byteorder)
    local = f"{address:08X}:{port:04X}"
    inodes = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for pid in process_tree(root) if inodes else ():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return True
    return False


def _new_log(log: Path, offset: int) -> str:
    with contextlib.suppress(OSError), open(log, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode("utf-8", "replace")
    return ""


def _wait_nginx(proc: subprocess.Popen[bytes], port: int, log: Path, offset: int,
                what: str) -> None:
    """Until nginx itself listens on ``port`` (at most 20 s).

    Raises _PortTaken if its bind failed (the port is in use), BenchError if it exits or is
    not listening in time.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        if "Address already in use" in _new_log(log, offset):
            raise _PortTaken
        if exited:
            raise BenchError(f"{what} exited with status {proc.returncode} before it was "
                             f"ready; log tail:\n{tail(log)}")
        if _listens(proc.pid, port):
            return
        time.sleep(0.1)
    raise BenchError(f"{what} was not listening on {HOST}:{port} within "
                     f"{READY_TIMEOUT_S:.0f} s; log tail:\n{tail(log)}")


@contextlib.contextmanager
def running_nginx(workdir: Path, storage: Path, body_temp: Path, *, label: str,
                  workers: int, tls: TlsFiles | None = None,
                  ) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """nginx with a private config, ready; yields (process, port, error log).

    ``body_temp`` must be on the storage's filesystem. With ``tls`` it listens with ``ssl``
    (that certificate, our server's protocols and ciphers). Raises BenchError if it does not
    start.
    """
    prefix = workdir / _slug(label)
    prefix.mkdir()
    storage.mkdir(parents=True, exist_ok=True)
    body_temp.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    log = prefix / "error.log"
    what = f"nginx ({label})"
    # nginx can neither listen on port 0 nor say which port it got, and cannot be handed a
    # socket of ours: it gets a port the kernel has just handed out (and released again). That
    # can race with another process taking the same port in between: then nginx's bind fails
    # with "Address already in use", and it is started again on a fresh port, a few times.
    # It counts as ready only once a process of its own listens on the port, so a connection
    # to whoever took the port is never mistaken for nginx.
    for attempt in range(1, NGINX_PORT_TRIES + 1):
        port = _kernel_port()
        conf.write_text(nginx_config_text(prefix, port, storage, body_temp, workers, tls),
                        encoding="utf-8")
        offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as log_fh:
            proc = subprocess.Popen(
                [NGINX, "-e", str(log), "-p", str(prefix), "-c", str(conf)],
                stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                cwd=prefix, env=clean_env(), start_new_session=True,
            )
        try:
            _wait_nginx(proc, port, log, offset, what)
        except _PortTaken:
            stop_process_group(proc)
            if attempt == NGINX_PORT_TRIES:
                raise BenchError(f"{what}: every one of {NGINX_PORT_TRIES} ports was taken "
                                 f"before nginx could bind it; log tail:\n{tail(log)}") from None
            print(f"  note: {what}: port {port} was taken; starting it again on another",
                  file=sys.stderr)
            continue
        except BaseException:
            stop_process_group(proc)
            raise
        break
    try:
        yield proc, port, log
    finally:
        stop_process_group(proc)


@contextlib.contextmanager
def nginx_server(workdir: Path, storage: Path, body_temp: Path, *, label: str,
                 workers: int, tls: TlsFiles | None = None) -> Iterator[BenchServer]:
    """nginx (see `running_nginx`) with its memory sampled while it runs."""
    with running_nginx(workdir, storage, body_temp, label=label, workers=workers,
                       tls=tls) as (proc, port, log), _sampled(proc) as sampler:
        yield BenchServer(label, "nginx", proc, port, storage, workers, sampler,
                          lambda: tail(log), tls)
