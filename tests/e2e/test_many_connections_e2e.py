"""Thousands of idle keep-alive connections on one server process, and the per-address cap.

The idle connections all come from 127.0.0.1, so the first server has no per-address cap;
the second has a small one (100) to show what a client over it gets: 503 with Retry-After at
once, and room again as soon as one of its connections has closed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import mac_v1

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
WANTED = 5000
AT_LEAST = 2000
#: Descriptors kept for the test itself (the server's pipes, the upload, pytest...).
FD_MARGIN = 200
SMALL = "many/small.txt"
SMALL_BODY = b"small and stored\n"
CHECK_EVERY = 50
PER_ADDRESS = 100
TIMEOUT = 30.0


def _nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the idle connections that fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = max(soft, WANTED + FD_MARGIN) if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # The server (same hard limit, raised at its start) holds the other end of each.
    return min(WANTED, soft - FD_MARGIN)


def _get(path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET /upload/{path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n".encode()


def _complete(buf: bytes | bytearray) -> tuple[bytes, bytes] | None:
    """(head, body) once `buf` holds a whole answer (Content-Length framed), else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if len(buf) < end + 4 + length:
        return None
    return head, bytes(buf[end + 4 : end + 4 + length])


def _read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = bytearray()
    while (answer := _complete(buf)) is None:
        chunk = sock.recv(1 << 16)
        assert chunk, f"connection closed after {len(buf)} bytes: {bytes(buf[:200])!r}"
        buf += chunk
    return answer


def _request(port: int, data: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        return _read_answer(sock)


def _put(port: int, rel: str, body: bytes) -> bytes:
    head, _ = _request(port, (
        f"PUT /upload/{rel}?v={mac_v1(rel, len(body))} HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    return head


def _open_idle(port: int, n: int, window: int = 256) -> list[socket.socket]:
    """`n` connections, each answered 200 to one GET of SMALL and then left open (idle):
    non-blocking sockets on one selector, `window` of them on their way at a time."""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytearray] = {}
    idle: list[socket.socket] = []
    started = 0
    try:
        while started < n or pending:
            while started < n and len(pending) < window:
                sock = socket.socket()
                sock.setblocking(False)
                started += 1
                pending[sock] = bytearray()
                assert sock.connect_ex((HOST, port)) in (0, errno.EINPROGRESS)
                sel.register(sock, selectors.EVENT_WRITE)
            events = sel.select(TIMEOUT)
            assert events, f"no progress for {TIMEOUT} s with {len(pending)} connections waiting"
            for key, _ in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.events == selectors.EVENT_WRITE:
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                    request = _get(SMALL)
                    assert sock.send(request) == len(request)
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                chunk = sock.recv(1 << 16)
                buf = pending[sock]
                buf += chunk
                answer = _complete(buf)
                if answer is None:
                    assert chunk, f"idle connection {len(idle)} closed: {bytes(buf)!r}"
                    continue
                assert answer[0].startswith(b"HTTP/1.1 200 "), answer[0]
                assert answer[1] == SMALL_BODY
                sel.unregister(sock)
                del pending[sock]
                idle.append(sock)
    except BaseException:
        for sock in [*pending, *idle]:
            sock.close()
        raise
    finally:
        sel.close()
    return idle


@pytest.fixture
def idle_server(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path, server_toml="max_connections_per_address = 0\nfsync = false",
                          log_level="warning", notify=True, track=False)
    try:
        yield server
    finally:
        assert stop_server(server) == 0


def test_thousands_of_idle_connections_leave_room_for_an_upload(idle_server: Server) -> None:
    n = _nofile()
    assert n >= AT_LEAST, f"RLIMIT_NOFILE's hard limit leaves room for only {n} connections"
    port = idle_server.port
    assert _put(port, SMALL, SMALL_BODY).startswith(b"HTTP/1.1 201 ")
    idle = _open_idle(port, n)
    try:
        assert len(idle) == n
        body = os.urandom(1 << 20)
        assert _put(port, "many/big.bin", body).startswith(b"HTTP/1.1 201 ")
        head, got = _request(port, _get("many/big.bin", close=True))
        assert head.startswith(b"HTTP/1.1 200 ")
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
        assert len(got) == len(body)
        for sock in idle[::CHECK_EVERY]:
            sock.setblocking(True)
            sock.settimeout(TIMEOUT)
            sock.sendall(_get(SMALL))
            head, got = _read_answer(sock)
            assert head.startswith(b"HTTP/1.1 200 ") and got == SMALL_BODY
        assert idle_server.process.poll() is None
    finally:
        for sock in idle:
            sock.close()


def test_the_per_address_cap_refuses_one_more_and_admits_again(tmp_path: Path) -> None:
    _nofile()
    server = start_server(tmp_path, server_toml=(
        f"max_connections_per_address = {PER_ADDRESS}\nfsync = false"),
        log_level="warning", notify=True, track=False)
    idle: list[socket.socket] = []
    try:
        port = server.port
        assert _put(port, SMALL, SMALL_BODY).startswith(b"HTTP/1.1 201 ")  # closed again
        idle = _open_idle(port, PER_ADDRESS)
        # One more from 127.0.0.1: answered at once, before it sends anything.
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as extra:
            head, _ = _read_answer(extra)
            assert extra.recv(1) == b""  # and closed
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
        assert any(line.lower().startswith(b"retry-after:") for line in lines[1:]), head
        # Close one: its last answer ends in EOF once the server has let it go.
        last = idle.pop()
        last.setblocking(True)
        last.settimeout(TIMEOUT)
        last.sendall(_get(SMALL, close=True))
        head, _ = _read_answer(last)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert last.recv(1) == b""
        last.close()
        idle += _open_idle(port, 1)
        assert len(idle) == PER_ADDRESS
    finally:
        for sock in idle:
            sock.close()
        assert stop_server(server) == 0
