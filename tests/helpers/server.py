"""The real server as a child process (`python -m hmacfs --config FILE run`) on port 0.

`start_server` writes a configuration, starts the server and waits until it is ready. The port
is never picked beforehand: the server listens on port 0 and the port it got is read from what
it reports, its log ("listening on ...") or, with `notify=True`, the STATUS of its READY=1 on a
notification socket of our own (for log levels that leave those lines out). The end-to-end and
interop tests start servers this way, and so do the benchmarks (bench/harness).

A server runs one process (`workers = 1`) unless the caller asks for more, so that a test runs
the same code on a machine of 2 cores as on one of 16.

Nothing here imports pytest or hmacfs: the benchmarks use this module while the server they
start may be another interpreter's copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn, TypeVar

from tests.helpers.signing import SECRET

T = TypeVar("T")

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
#: Every server started with `track=True` in this process, so that none outlives its test.
_STARTED: list[subprocess.Popen[bytes]] = []
_LISTENING = re.compile(r"listening on (.+)$")
_READY = re.compile(r"hmac-file-server \S+ ready")
_WORKERS_KEY = re.compile(r"^\s*workers\s*=", re.MULTILINE)


class ServerDidNotStart(AssertionError):
    """The server exited before it was ready, or was not ready in time (the message holds
    everything it wrote to stderr)."""


@dataclass
class Server:
    """A running `python -m hmacfs` and what it said on stderr."""

    process: subprocess.Popen[bytes]
    port: int
    storage: Path
    config_path: Path
    log: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, encoded_path: str) -> str:
        return f"{self.base}/upload/{encoded_path}"

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines the server wrote to stderr, for an error message."""
        return "\n".join(self.log[-lines:]) or "(nothing logged)"


def config_text(
    storage: Path,
    *,
    listen: Sequence[str] = ("127.0.0.1:0",),
    max_upload_size: str | int = "2G",
    workers: int | None = 1,
    log_level: str = "debug",
    server_toml: str = "",
    extra_toml: str = "",
    secret: bytes = SECRET,
) -> str:
    """The config.toml of a test server.

    `server_toml` goes at the end of [server], `extra_toml` after the [hmac] secret (it may
    open further sections). `workers` None leaves the key out (the server's default: one per
    core); a `workers` line in `server_toml` is taken instead of the argument.
    """
    # json.dumps gives a valid TOML basic string for any path or entry.
    lines = [
        "",
        "[server]",
        f"listen = [{', '.join(json.dumps(entry) for entry in listen)}]",
        'upload_prefix = "/upload/"',
        f"storage_dir = {json.dumps(str(storage))}",
        f"max_upload_size = {json.dumps(max_upload_size)}",
        f"log_level = {json.dumps(log_level)}",
    ]
    if workers is not None and not _WORKERS_KEY.search(server_toml):
        lines.append(f"workers = {workers}")
    lines += [server_toml, "[hmac]", f"secret = {json.dumps(secret.decode())}", extra_toml]
    return "\n".join(lines)


def write_config(path: Path, text: str) -> None:
    """Write a configuration only its owner can read (it holds the secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        out.write(text)


def start_server(
    tmp: Path,
    extra_toml: str = "",
    server_toml: str = "",
    *,
    listen: tuple[str, ...] = ("127.0.0.1:0",),
    env: Mapping[str, str] | None = None,
    argv_prefix: tuple[str, ...] = (),
    pass_fds: tuple[int, ...] = (),
    max_upload_size: str | int = "2G",
    workers: int | None = 1,
    log_level: str = "debug",
    storage: Path | None = None,
    python: str = sys.executable,
    cwd: Path | None = None,
    notify: bool = False,
    new_session: bool = False,
    track: bool = True,
    timeout: float = READY_TIMEOUT,
) -> Server:
    """Write `tmp`/config.toml, start the server, wait until it is ready.

    `extra_toml`, `server_toml` and `workers`: as in `config_text`. The files go to `storage`
    (default `tmp`/files). `env` is added to this process's environment. With `notify`, the
    server's NOTIFY_SOCKET is a socket of ours and readiness (and where it listens) comes from
    its READY=1: for log levels above "info", which leave out the lines read otherwise.
    `new_session` starts it in a session (and process group) of its own. `track`: stopped by
    `stop_started` (the end-to-end tests' cleanup after each test).

    Raises ServerDidNotStart (an AssertionError) with the server's output if it exits before
    it is ready or is not ready within `timeout` seconds (it is killed then); ValueError if
    `notify` is asked for with a NOTIFY_SOCKET in `env`.
    """
    if notify and env is not None and "NOTIFY_SOCKET" in env:
        raise ValueError("notify=True sets NOTIFY_SOCKET itself")
    storage = tmp / "files" if storage is None else storage
    config_path = tmp / "config.toml"
    write_config(
        config_path,
        config_text(
            storage,
            listen=listen,
            max_upload_size=max_upload_size,
            workers=workers,
            log_level=log_level,
            server_toml=server_toml,
            extra_toml=extra_toml,
        ),
    )
    # Its temporary files (the workers' shared metrics) under `tmp`: a server killed with
    # SIGKILL leaves them behind, in the test's directory rather than the system's.
    scratch = tmp / "tmp"
    scratch.mkdir(exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch), **(env or {})}
    listener: socket.socket | None = None
    if notify:
        listener, environment["NOTIFY_SOCKET"] = _notify_socket()
    try:
        process = subprocess.Popen(
            [*argv_prefix, python, "-m", "hmacfs", "--config", str(config_path), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=environment,
            pass_fds=pass_fds,
            cwd=cwd,
            start_new_session=new_session,
        )
        if track:
            _STARTED.append(process)
        lines: queue.Queue[str] = queue.Queue()
        log: list[str] = []
        assert process.stderr is not None
        pump = threading.Thread(target=_pump, args=(process.stderr, lines, log), daemon=True)
        pump.start()
        deadline = time.monotonic() + timeout
        try:
            if listener is not None:
                addresses = _wait_notified(process, listener, deadline, pump, log, new_session)
            else:
                addresses = _wait_logged(process, lines, deadline, pump, log, new_session)
        except BaseException:
            _kill(process, group=new_session)
            raise
    finally:
        if listener is not None:
            # Later messages (STATUS, WATCHDOG) then fail at once, and the server ignores that.
            listener.close()
    port = next((int(a.rsplit(":", 1)[1]) for a in addresses if a.startswith("127.0.0.1:")), 0)
    return Server(process, port, storage, config_path, log, addresses)


def start_https_server(tmp: Path, certificate: Path, key: Path) -> tuple[Server, str]:
    """`start_server` with a plain and a TLS listener on port 0 and the certificate for
    localhost; the server, and its https base URL under the name "localhost"."""
    server = start_server(
        tmp,
        listen=("127.0.0.1:0", "https://127.0.0.1:0"),
        extra_toml=f'[tls]\ncertificate = "{certificate}"\nkey = "{key}"\n',
    )
    address = next(a for a in server.addresses if a.startswith("https://"))
    return server, address.replace("https://127.0.0.1", "https://localhost")


def stop_server(server: Server, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM the server and return its exit status.

    Raises AssertionError if it has not exited within `timeout` seconds (it is killed then)."""
    server.process.terminate()
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError("server did not stop on SIGTERM") from None


def stop_started(timeout: float = 20.0) -> None:
    """Stop (gracefully, then not) every tracked server that is still running."""
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """`condition()`'s first true value, asked every 50 ms; AssertionError naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def wait_logged(server: Server, text: str, timeout: float = 10.0) -> list[str]:
    """The lines the server has logged that hold `text`, once there is one."""
    deadline = time.monotonic() + timeout
    while not (found := [line for line in list(server.log) if text in line]):
        assert time.monotonic() < deadline, f"{text!r} not logged; the log ends:\n" + (
            server.log_tail()
        )
        time.sleep(0.05)
    return found


def workers_of(server: Server, count: int) -> list[int]:
    """The pids of a supervisor's workers, once it has `count` of them."""
    return wait_for(
        lambda: ((pids := children(server.process.pid)) and len(pids) == count and pids) or None,
        20,
        f"{count} workers",
    )


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (a supervisor's workers), by pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def _pump(stream: IO[bytes], lines: queue.Queue[str], log: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        log.append(line)
        lines.put(line)


def _notify_socket() -> tuple[socket.socket, str]:
    """A datagram socket for sd_notify messages and its NOTIFY_SOCKET value.

    In the abstract namespace: a path under a test's directory can exceed sun_path's 108 bytes.
    """
    name = f"hmacfs-test-{os.getpid()}-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    return sock, "@" + name


def _wait_logged(
    process: subprocess.Popen[bytes],
    lines: queue.Queue[str],
    deadline: float,
    pump: threading.Thread,
    log: list[str],
    group: bool,
) -> list[str]:
    """The addresses logged before the "ready" line."""
    addresses: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            _did_not_start(process, pump, log, group)
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        match = _LISTENING.search(line)
        if match:
            addresses.append(match.group(1))
        if _READY.search(line):
            return addresses


def _wait_notified(
    process: subprocess.Popen[bytes],
    listener: socket.socket,
    deadline: float,
    pump: threading.Thread,
    log: list[str],
    group: bool,
) -> list[str]:
    """The addresses in the STATUS of the first READY=1 ("listening on A, B; ...")."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            _did_not_start(process, pump, log, group)
        listener.settimeout(min(remaining, 0.5))
        try:
            message = listener.recv(65536).decode("utf-8", "replace")
        except TimeoutError:
            continue
        fields = dict(line.split("=", 1) for line in message.splitlines() if "=" in line)
        if fields.get("READY") == "1":
            listening = fields.get("STATUS", "").split("; ")[0].removeprefix("listening on ")
            return [] if listening == "nothing" else listening.split(", ")


def _kill(process: subprocess.Popen[bytes], *, group: bool) -> None:
    """Kill the server (and with `group`, every process of its process group)."""
    if process.poll() is None:
        process.kill()
        process.wait()
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _did_not_start(
    process: subprocess.Popen[bytes], pump: threading.Thread, log: list[str], group: bool
) -> NoReturn:
    status = process.poll()
    _kill(process, group=group)
    # Everything it wrote before it ended, its last words (why it did not start) included.
    pump.join(timeout=5)
    why = "not ready in time" if status is None else f"exit status {status}"
    raise ServerDidNotStart(f"server did not start ({why}):\n" + "\n".join(log))


def hmacfs(
    server: Server, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """An admin command on `server`'s configuration (`env`: added to the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "hmacfs", "--config", str(server.config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env} if env else None,
    )
