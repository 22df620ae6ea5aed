"""Idle keep-alive connections: opening many at once and what they cost a server's memory.

bench/idle_connections.py measures this at length (thousands of connections, the caps, honest
requests while they are held); bench/compare.py takes the short form (`open_idle` and
`tree_rss_kib` before and after) for both servers.
"""

from __future__ import annotations

import errno
import os
import resource
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.common import HOST, KIB, BenchError
from harness.sampling import process_tree, read_one_kib

#: Connections being opened (connecting, or waiting for their first answer) at one time.
OPEN_WINDOW = 256
IO_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- HTTP on sockets


def _head_end(buf: bytes | bytearray) -> int:
    return buf.find(b"\r\n\r\n")


def parse_response(buf: bytes | bytearray) -> tuple[int, dict[str, str], int] | None:
    """(status, headers, length of the whole response) once ``buf`` holds a complete answer
    (head plus Content-Length bytes of body), else None."""
    end = _head_end(buf)
    if end < 0:
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise BenchError(f"not an HTTP status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    total = end + 4 + int(headers.get("content-length", "0"))
    return (int(parts[1]), headers, total) if len(buf) >= total else None


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one whole answer from a blocking socket; raises BenchError at EOF before it."""
    buf = bytearray()
    while (parsed := parse_response(buf)) is None:
        chunk = sock.recv(256 * KIB)
        if not chunk:
            raise BenchError(f"connection closed after {len(buf)} bytes of an answer")
        buf += chunk
    status, headers, total = parsed
    return status, headers, bytes(buf[_head_end(buf) + 4 : total])


# --------------------------------------------------------------------------- idle connections


@dataclass
class Opened:
    idle: list[socket.socket] = field(default_factory=list)
    refused_503: int = 0
    reset: int = 0  # closed without a readable answer (over a cap, the 503 may be lost in RST)
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def open_idle(port: int, n: int, request: bytes, *, window: int = OPEN_WINDOW,
              timeout: float = 120.0) -> Opened:
    """Open ``n`` connections, ``window`` at a time, each sending ``request`` and reading its
    answer: those answered 200 stay open (idle, keep-alive) in ``idle``; the others are counted
    and closed. Non-blocking sockets on one selector."""
    out = Opened()
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytearray] = {}
    started = 0
    start = time.perf_counter()
    deadline = time.monotonic() + timeout

    def fail(sock: socket.socket, why: str, *, reset: bool = False) -> None:
        sel.unregister(sock)
        del pending[sock]
        sock.close()
        if reset:
            out.reset += 1
        else:
            out.failed += 1
            if len(out.errors) < 10:
                out.errors.append(why)

    try:
        while started < n or pending:
            while started < n and len(pending) < window:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                started += 1
                err = sock.connect_ex((HOST, port))
                if err not in (0, errno.EINPROGRESS):
                    sock.close()
                    out.failed += 1
                    out.errors.append(f"connect: {os.strerror(err)}")
                    continue
                pending[sock] = bytearray()
                sel.register(sock, selectors.EVENT_WRITE)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{len(pending)} connections still unanswered after "
                                 f"{timeout:.0f} s ({len(out.idle)} open)")
            for key, _ in sel.select(min(remaining, 1.0)):
                sock = key.fileobj  # type: ignore[assignment]
                assert isinstance(sock, socket.socket)
                if key.events == selectors.EVENT_WRITE:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(sock, f"connect: {os.strerror(err)}")
                        continue
                    try:
                        sent = sock.send(request)
                    except OSError as exc:
                        fail(sock, f"send: {exc}", reset=exc.errno in (errno.ECONNRESET,
                                                                       errno.EPIPE))
                        continue
                    if sent != len(request):
                        fail(sock, f"send: {sent} of {len(request)} bytes")
                        continue
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                buf = pending[sock]
                try:
                    chunk = sock.recv(64 * KIB)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(sock, f"recv: {exc}", reset=exc.errno == errno.ECONNRESET)
                    continue
                buf += chunk
                parsed = parse_response(buf)
                if parsed is None:
                    if not chunk:
                        fail(sock, f"EOF after {len(buf)} bytes", reset=not buf)
                    continue
                sel.unregister(sock)
                del pending[sock]
                if parsed[0] == 200:
                    out.idle.append(sock)
                    continue
                sock.close()
                if parsed[0] == 503:
                    out.refused_503 += 1
                else:
                    out.failed += 1
                    out.errors.append(f"status {parsed[0]}")
    except BaseException:
        for sock in [*pending, *out.idle]:
            sock.close()
        raise
    finally:
        sel.close()
    out.seconds = time.perf_counter() - start
    return out

def check_idle(socks: Sequence[socket.socket], every: int, request: bytes,
               body: bytes | None = None) -> tuple[int, int]:
    """Send ``request`` again on every ``every``-th idle connection: (asked, answered 200,
    with ``body`` if that is given)."""
    asked = ok = 0
    for sock in socks[::every]:
        asked += 1
        sock.setblocking(True)
        sock.settimeout(IO_TIMEOUT_S)
        try:
            sock.sendall(request)
            status, _, got = read_response(sock)
        except (OSError, BenchError):
            continue
        ok += status == 200 and (body is None or got == body)
    return asked, ok


# --------------------------------------------------------------------------- memory


def tree_rss_kib(pid: int) -> int | None:
    """The summed VmRSS of the server's processes (the supervisor and its workers)."""
    values = [v for p in process_tree(pid) if (v := read_one_kib(p, "VmRSS")) is not None]
    return sum(values) if values else None



def tree_rss_by_pid(pid: int) -> dict[int, int]:
    """VmRSS (KiB) of each of the server's processes now, by pid."""
    return {p: v for p in process_tree(pid) if (v := read_one_kib(p, "VmRSS")) is not None}


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; (soft, hard) now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft != target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)

