"""The real server as a child process on a real socket (port 0), driven by curl."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import SECRET

READY_TIMEOUT = 30.0
#: Every server a test started, so that none outlives its test (even a failing one).
_STARTED: list[subprocess.Popen[bytes]] = []
_LISTENING = re.compile(r"listening on (.+)$")
_READY = re.compile(r"hmac-file-server \S+ ready")


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


def _pump(stream: object, lines: queue.Queue[str], log: list[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace").rstrip("\n")
        log.append(line)
        lines.put(line)


def start_server(
    tmp: Path,
    extra_toml: str = "",
    server_toml: str = "",
    *,
    listen: tuple[str, ...] = ("127.0.0.1:0",),
    env: dict[str, str] | None = None,
    argv_prefix: tuple[str, ...] = (),
    pass_fds: tuple[int, ...] = (),
    max_upload_size: str | int = "2G",
) -> Server:
    """Write a config under `tmp`, start the server, wait until it is ready.

    `extra_toml` goes after the [hmac] secret (it may open further sections)."""
    storage = tmp / "files"
    config_path = tmp / "config.toml"
    listen_toml = "[" + ", ".join(f'"{entry}"' for entry in listen) + "]"
    config_path.write_text(
        f"""
[server]
listen = {listen_toml}
upload_prefix = "/upload/"
storage_dir = "{storage}"
max_upload_size = {json.dumps(max_upload_size)}
log_level = "debug"
{server_toml}
[hmac]
secret = "{SECRET.decode()}"
{extra_toml}
"""
    )
    config_path.chmod(0o600)  # it holds the secret
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    process = subprocess.Popen(
        [*argv_prefix, sys.executable, "-m", "hmacfs", "--config", str(config_path), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
        pass_fds=pass_fds,
    )
    _STARTED.append(process)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []
    addresses: list[str] = []
    threading.Thread(target=_pump, args=(process.stderr, lines, log), daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            process.kill()
            raise AssertionError("server did not start:\n" + "\n".join(log))
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        match = _LISTENING.search(line)
        if match:
            addresses.append(match.group(1))
        if _READY.search(line):
            port = next(
                (int(a.rsplit(":", 1)[1]) for a in addresses if a.startswith("127.0.0.1:")), 0
            )
            return Server(process, port, storage, config_path, log, addresses)


def stop_server(server: Server) -> int:
    server.process.terminate()
    try:
        return server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError("server did not stop on SIGTERM") from None


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    """Stop (gracefully, then not) any server a test started and did not stop itself."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"))
    _STARTED.remove(srv.process)  # it lives for the whole module, stopped below
    yield srv
    assert stop_server(srv) == 0


def curl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run curl; `-w` output is on stdout's last line when the test asks for it."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "120", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=600,
    )
