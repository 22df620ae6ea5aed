"""End to end: large PUT bodies that go from the socket to the file with splice(2).

The real server, real clients (curl, and raw sockets where a client must misbehave: send slowly,
stop, go away, pipeline). Every body is compared with what GET returns, and the server's debug
log shows whether a body was spliced ("<path>: N of M body bytes spliced").
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from hmacfs.http.fast.splice import SPLICE_MIN
from tests.certs import TestCA
from tests.helpers.client import curl
from tests.helpers.server import (
    Server,
    start_https_server,
    start_server,
    stop_server,
    wait_logged,
)
from tests.helpers.signing import mac_v1

MIB = 1024 * 1024


def write_file(path: Path, size: int) -> str:
    """`size` bytes of varied content at `path`; their SHA-256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def put_url(base: str, rel: str, size: int) -> str:
    return f"{base}/upload/{rel}?v={mac_v1(rel, size)}"


def curl_put(url: str, source: Path, *args: str) -> int:
    result = curl("-T", str(source), "-o", "/dev/null", "-w", "%{http_code}", *args, url)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def fetched_digest(url: str, *args: str) -> str:
    result = curl("-f", *args, url)
    assert result.returncode == 0, result.stderr
    return hashlib.sha256(result.stdout).hexdigest()


def spliced_line(server: Server, rel: str, timeout: float = 10.0) -> str | None:
    """The log line saying how much of `rel`'s body was spliced (None if none comes)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in list(server.log):
            if f"{rel}: " in line and "body bytes spliced" in line:
                return line
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def partial_bodies(server: Server) -> list[str]:
    """Partial files holding body bytes (the empty ones kept ready are not uploads)."""
    partial = server.storage / ".hmacfs" / "partial"
    return [name for name in os.listdir(partial) if (partial / name).stat().st_size > 0]


def open_upload(server: Server, rel: str, size: int, first: bytes = b"") -> socket.socket:
    """A raw connection that has sent a PUT's headers and the first bytes of its body."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (
        f"PUT /upload/{rel}?v={mac_v1(rel, size)} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    sock.sendall(head + first)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """Split what a server answered on one connection into (status, body) pairs (complete
    answers only)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if status == 100:
            data = rest
            continue
        if len(rest) < length:
            break
        out.append((status, rest[:length]))
        data = rest[length:]
    return out


def read_answer(sock: socket.socket, timeout: float = 30.0) -> list[tuple[int, bytes]]:
    """Read until one complete answer (after any "100 Continue") has arrived."""
    sock.settimeout(timeout)
    data = b""
    while not responses(data):
        chunk = sock.recv(1 << 16)
        assert chunk, f"connection closed after {data[:200]!r}"
        data += chunk
    return responses(data)


@pytest.mark.parametrize("expect", ["Expect:", "Expect: 100-continue"])
@pytest.mark.parametrize(
    "size", [SPLICE_MIN - 1, SPLICE_MIN, SPLICE_MIN + 1, 5 * MIB + 3], ids=str
)
def test_bodies_arrive_byte_exact(
    server: Server, tmp_path: Path, size: int, expect: str
) -> None:
    source = tmp_path / "body"
    digest = write_file(source, size)
    rel = f"{uuid.uuid4()}/body.bin"
    assert curl_put(put_url(server.base, rel, size), source, "-H", expect) == 201
    assert fetched_digest(server.url(rel)) == digest
    line = spliced_line(server, rel, timeout=10 if size >= SPLICE_MIN else 1)
    if size < SPLICE_MIN:
        assert line is None
    else:
        # Some of the body may have come with the headers; the rest was spliced.
        assert line is not None, "the body was not spliced"
        spliced, total = (int(n) for n in line.split(": ")[-1].split()[0:3:2])
        assert total == size and 0 < spliced <= size


def test_body_sent_slowly_keeps_the_connection_alive(tmp_path: Path) -> None:
    # Each gap is well under the idle timeout, the whole body takes longer than it.
    server = start_server(tmp_path, server_toml='idle_timeout = "2s"')
    body = os.urandom(4 * MIB)
    rel = f"{uuid.uuid4()}/slow.bin"
    with open_upload(server, rel, len(body), body[:1000]) as sock:
        wait_logged(server, f"{rel}: splicing the body")
        pieces = [body[i : i + 256 * 1024] for i in range(1000, len(body), 256 * 1024)]
        for piece in pieces:
            time.sleep(3.0 / len(pieces))
            sock.sendall(piece)
        answered = read_answer(sock)
    assert [status for status, _ in answered] == [201]
    assert fetched_digest(server.url(rel)) == hashlib.sha256(body).hexdigest()
    assert spliced_line(server, rel) is not None


def test_client_gone_mid_body_leaves_nothing_and_a_retry_works(
    server: Server, tmp_path: Path
) -> None:
    size = 6 * MIB
    source = tmp_path / "body"
    digest = write_file(source, size)
    data = source.read_bytes()
    rel = f"{uuid.uuid4()}/gone.bin"
    with open_upload(server, rel, size, data[:1000]) as sock:
        wait_logged(server, f"{rel}: splicing the body")
        sock.sendall(data[1000 : 3 * MIB])
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while partial_bodies(server):
        assert time.monotonic() < deadline, "the partial file was left behind"
        time.sleep(0.05)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", server.url(rel)).stdout == b"404"
    assert not (server.storage / rel).exists()
    assert curl_put(put_url(server.base, rel, size), source, "-H", "Expect:") == 201
    assert fetched_digest(server.url(rel)) == digest


def test_client_that_stalls_mid_body_is_timed_out(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml='idle_timeout = "1s"')
    size = 4 * MIB
    rel = f"{uuid.uuid4()}/stall.bin"
    with open_upload(server, rel, size, b"x" * 1000) as sock:
        wait_logged(server, f"{rel}: splicing the body")
        sock.sendall(b"y" * MIB)
        started = time.monotonic()
        # Nothing more: the server must give up on its own, well before our own limit.
        assert read_until_closed(sock, timeout=30) == b""
        assert time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while partial_bodies(server):
        assert time.monotonic() < deadline, "the partial file was left behind"
        time.sleep(0.05)
    assert not (server.storage / rel).exists()
    assert spliced_line(server, rel, timeout=0.5) is None


def test_request_pipelined_after_a_spliced_body_is_answered(
    server: Server, tmp_path: Path
) -> None:
    body = os.urandom(2 * MIB + 7)
    rel = f"{uuid.uuid4()}/piped.bin"
    pipelined = f"GET /upload/{rel} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with open_upload(server, rel, len(body)) as sock:
        # The body's end and the next request in one write: only the body may be spliced.
        sock.sendall(body + pipelined.encode())
        answered = responses(read_until_closed(sock))
    assert [status for status, _ in answered] == [201, 200]
    assert answered[1][1] == body
    assert spliced_line(server, rel) is not None


def test_sigterm_cuts_off_a_spliced_upload(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml='shutdown_timeout = "1s"')
    rel = f"{uuid.uuid4()}/cut.bin"
    with open_upload(server, rel, 8 * MIB, b"z" * 1000) as sock:
        wait_logged(server, f"{rel}: splicing the body")
        sock.sendall(b"z" * MIB)
        time.sleep(0.2)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
    assert not (server.storage / rel).exists()
    assert os.listdir(server.storage / ".hmacfs" / "partial") == []
    assert any("cut off 1 unfinished upload" in line for line in server.log)


def test_unix_socket_bodies_are_spliced(tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    server = start_server(tmp_path, listen=("127.0.0.1:0", f"unix:{path}"))
    source = tmp_path / "body"
    digest = write_file(source, 3 * MIB)
    rel = f"{uuid.uuid4()}/unix.bin"
    url = put_url("http://localhost", rel, 3 * MIB)
    assert curl_put(url, source, "--unix-socket", str(path), "-H", "Expect:") == 201
    assert fetched_digest(f"http://localhost/upload/{rel}", "--unix-socket", str(path)) == digest
    assert spliced_line(server, rel) is not None
    assert stop_server(server) == 0


def test_tls_bodies_take_the_ordinary_path(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue("localhost")
    server, base = start_https_server(tmp_path, leaf.certificate, leaf.key)
    source = tmp_path / "body"
    digest = write_file(source, 2 * MIB)
    rel = f"{uuid.uuid4()}/tls.bin"
    tls = ("--cacert", str(ca.path))
    assert curl_put(put_url(base, rel, 2 * MIB), source, *tls, "-H", "Expect:") == 201
    assert fetched_digest(f"{base}/upload/{rel}", *tls) == digest
    assert spliced_line(server, rel, timeout=0.5) is None
    assert stop_server(server) == 0


def test_spliced_retry_is_201_and_a_different_body_409(server: Server, tmp_path: Path) -> None:
    """A client that lost our 201 sends the same large body again: compared byte for byte
    with the stored file, it is a success; the same size with other bytes is a conflict."""
    size = 2 * MIB + 5
    source = tmp_path / "body"
    digest = write_file(source, size)
    rel = f"{uuid.uuid4()}/again.bin"
    url = put_url(server.base, rel, size)
    assert curl_put(url, source, "-H", "Expect:") == 201
    assert curl_put(url, source, "-H", "Expect:") == 201
    other = tmp_path / "other"
    data = bytearray(source.read_bytes())
    data[size // 2] ^= 0xFF
    other.write_bytes(bytes(data))
    assert curl_put(url, other, "-H", "Expect:") == 409
    assert fetched_digest(server.url(rel)) == digest
    assert spliced_line(server, rel, timeout=10) is not None
