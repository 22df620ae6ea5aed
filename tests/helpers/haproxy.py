"""Debian's HAProxy in front of several of our servers, round robin, for the tests of several
nodes: `start_haproxy(directory, [(host, port), ...])` writes its configuration, starts it in
the foreground and waits until every node is seen up by its health checks; `start_tls_front`
puts it, ending TLS, in front of one plain HTTP server (an object store over https).

HAProxy cannot listen on port 0 and say which port it got, so its port is one the kernel
handed out to a socket of ours just before (a start that finds it taken is tried again).

Nothing here imports pytest or hmacfs.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HAPROXY = "/usr/sbin/haproxy"


@dataclass
class Balancer:
    process: subprocess.Popen[bytes]
    port: int
    stats: Path
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def states(self) -> dict[str, str]:
        """Each node's state as HAProxy sees it ("UP", "DOWN", ...), by name."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        states = {}
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "nodes" and fields[1] not in ("BACKEND",):
                states[fields[1]] = fields[17]
        return states

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(port: int, nodes: Sequence[tuple[str, int]], stats: Path) -> str:
    servers = "\n".join(
        f"    server n{index} {host}:{node_port} check inter 300ms fall 1 rise 1"
        for index, (host, node_port) in enumerate(nodes, start=1)
    )
    return f"""global
    maxconn 2000
    stats socket {stats} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    # A connection a dead node refused goes to another one.
    retries 3
    option redispatch 1

frontend uploads
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /health
{servers}
"""


def _start(
    directory: Path,
    config_of: Callable[[int, Path], str],
    ready: Callable[[Balancer], bool],
    timeout: float,
) -> Balancer:
    """HAProxy with the configuration `config_of(port, stats socket)`, once `ready` says so
    (on a free port: tried again if another process took it meanwhile). Raises RuntimeError
    with its log when it does not start."""
    directory.mkdir(parents=True, exist_ok=True)
    stats = directory / "haproxy.stats"
    log = directory / "haproxy.log"
    for _ in range(5):
        port = _free_port()
        path = directory / "haproxy.cfg"
        path.write_text(config_of(port, stats))
        with log.open("wb") as out:
            process = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(path)], stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        balancer = Balancer(process, port, stats, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                if ready(balancer):
                    return balancer
            time.sleep(0.05)
        balancer.stop()
        if "Address already in use" not in log.read_text(errors="replace"):
            break
    raise RuntimeError(f"HAProxy did not start:\n{log.read_text(errors='replace')}")


def start_haproxy(
    directory: Path, nodes: Sequence[tuple[str, int]], timeout: float = 20.0
) -> Balancer:
    """HAProxy in front of `nodes`, once every node is up. Raises RuntimeError with its log
    when it does not start."""

    def all_up(balancer: Balancer) -> bool:
        states = balancer.states()
        return len(states) == len(nodes) and all(s == "UP" for s in states.values())

    return _start(directory, lambda port, stats: config(port, nodes, stats), all_up, timeout)


def start_tls_front(
    directory: Path, target: tuple[str, int], certificate: Path, key: Path,
    timeout: float = 20.0,
) -> Balancer:
    """HAProxy ending TLS (with `certificate` and `key`) in front of the plain HTTP server
    at `target` (bytes passed on as they are). Raises RuntimeError with its log when it does
    not start."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / "front.pem"
    pem.write_bytes(certificate.read_bytes() + key.read_bytes())

    def front_config(port: int, stats: Path) -> str:
        return f"""global
    maxconn 200
    stats socket {stats} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s

frontend tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend plain

backend plain
    server s {target[0]}:{target[1]}
"""

    def listening(front: Balancer) -> bool:
        with socket.create_connection(("127.0.0.1", front.port), 1):
            return True

    return _start(directory, front_config, listening, timeout)
