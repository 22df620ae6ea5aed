"""Large bodies over TLS (`hmacfs.http.fast.tls`) on real sockets: the same answers, header for
header and byte for byte, as a server without the fast paths; a slow client never makes the
server hold the file; a client that goes away, a file that shrinks and pipelined requests end
as they should; large uploads arrive whole."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.certs import TestCA
from tests.e2e.test_http_e2e import get, sha256_of, write_file
from tests.helpers.client import curl
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import mac_v1

MIB = 1024 * 1024
#: Around the edges: below and at the size the TLS body producer starts at, past it, several
#: chunks and steps.
SIZES = (65535, 65536, 300_000, 5 * MIB + 3)
REQUESTS = (
    ("GET",),
    ("HEAD",),
    ("GET", "Range: bytes=1-"),
    ("GET", "Range: bytes=-70000"),
    ("GET", "Range: bytes=100-99999"),
    ("GET", "Range: bytes=0-9,100-199"),
    ("GET", "Range: bytes=99999999-"),
    ("GET", 'If-None-Match: "nope"'),
)


@dataclass
class TlsServer:
    server: Server
    base: str  # https://localhost:PORT
    ca: Path

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def url(self, rel: str) -> str:
        return f"{self.base}/upload/{rel}"


def _start(home: Path, ca: TestCA, server_toml: str = "") -> TlsServer:
    leaf = ca.issue(home.name)
    server = start_server(
        home,
        listen=("https://127.0.0.1:0",),
        server_toml=server_toml,
        extra_toml=f'[tls]\ncertificate = "{leaf.certificate}"\nkey = "{leaf.key}"\n',
        track=False,
    )
    address = next(a for a in server.addresses if a.startswith("https://"))
    return TlsServer(server, address.replace("https://127.0.0.1", "https://localhost"), ca.path)


def _put(server: TlsServer, rel: str, source: Path) -> int:
    url = server.url(rel) + f"?v={mac_v1(rel, source.stat().st_size)}"
    args = ["--cacert", str(server.ca), "-T", str(source), "-o", "/dev/null"]
    result = curl(*args, "-w", "%{http_code}", "-H", "Expect:", url)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TlsServer, TlsServer]]:
    ca = TestCA(tmp_path_factory.mktemp("pki"))
    fast = _start(tmp_path_factory.mktemp("fast"), ca)
    plain = _start(tmp_path_factory.mktemp("plain"), ca, "fast_paths = false")
    yield fast, plain
    assert stop_server(fast.server) == 0
    assert stop_server(plain.server) == 0


@pytest.fixture(scope="module")
def stored(
    servers: tuple[TlsServer, TlsServer], tmp_path_factory: pytest.TempPathFactory
) -> dict[int, str]:
    """Each size uploaded to both servers over TLS (the same path and mtime on both)."""
    source = tmp_path_factory.mktemp("bodies")
    paths = {}
    for size in (*SIZES, 64 * MIB):
        body = source / f"{size}.bin"
        write_file(body, size)
        rel = f"tls-{size}/f.bin"
        for each in servers:
            assert _put(each, rel, body) == 201
            os.utime(each.server.storage / f"tls-{size}" / "f.bin", (1.7e9, 1.7e9))
        paths[size] = rel
    return paths


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("request_", REQUESTS, ids=" ".join)
def test_answers_over_tls_are_the_same_with_and_without_the_fast_paths(
    servers: tuple[TlsServer, TlsServer],
    stored: dict[int, str],
    size: int,
    request_: tuple[str, ...],
) -> None:
    method, *headers = request_
    args = ["--cacert", str(servers[0].ca)] + (["-I"] if method == "HEAD" else [])
    for header in headers:
        args += ["-H", header]
    answers = []
    for each in servers:
        status, got, body = get(each.url(stored[size]), *args)
        got.pop("date")
        answers.append((status, got, body))
    (status, headers_fast, body_fast), (plain_status, headers_plain, body_plain) = answers
    if headers_fast.get("content-type", "").startswith("multipart/"):
        mark_fast = headers_fast["content-type"].split('"')[1].encode()
        mark_plain = headers_plain["content-type"].split('"')[1].encode()
        body_plain = body_plain.replace(mark_plain, mark_fast)
        headers_plain["content-type"] = headers_fast["content-type"]
    assert (status, headers_fast) == (plain_status, headers_plain)
    assert body_fast == body_plain
    if method == "GET" and not headers:
        assert status == 200 and len(body_fast) == size


# -- a client of our own, to read slowly, stop, or pipeline -----------------------------------


def _connect(server: TlsServer) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.ca))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return context.wrap_socket(raw, server_hostname="localhost")


def _request(rel: str, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return f"GET /upload/{rel} HTTP/1.1\r\nHost: localhost\r\n".encode() + connection + b"\r\n"


def _read_head(sock: ssl.SSLSocket, pending: bytes = b"") -> tuple[dict[str, str], bytes]:
    """The answer's head (status under "status") and what came after it."""
    while b"\r\n\r\n" not in pending:
        data = sock.recv(65536)
        assert data, "the connection ended before the head"
        pending += data
    head, _, rest = pending.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {"status": lines[0].split()[1]}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields, rest


def _read_body(sock: ssl.SSLSocket, length: int, pending: bytes) -> tuple[bytes, bytes]:
    """`length` body bytes (fewer if the connection ends first) and what followed them."""
    chunks, have = [pending], len(pending)
    while have < length:
        try:
            data = sock.recv(min(1 << 20, length - have))
        except (ssl.SSLError, OSError):
            break
        if not data:
            break
        chunks.append(data)
        have += len(data)
    body = b"".join(chunks)
    return body[:length], body[length:]


def _rss(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open_files(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def _digest(server: TlsServer, rel: str) -> str:
    return sha256_of(server.server.storage / rel)


def test_a_large_download_over_tls_arrives_whole(
    servers: tuple[TlsServer, TlsServer], stored: dict[int, str]
) -> None:
    fast = servers[0]
    rel = stored[64 * MIB]
    with _connect(fast) as sock:
        sock.sendall(_request(rel))
        head, rest = _read_head(sock)
        assert head["status"] == "200" and head["content-length"] == str(64 * MIB)
        body, extra = _read_body(sock, 64 * MIB, rest)
    assert extra == b""
    assert hashlib.sha256(body).hexdigest() == _digest(fast, rel)


def test_a_slow_tls_client_never_makes_the_server_hold_the_file(
    servers: tuple[TlsServer, TlsServer], stored: dict[int, str]
) -> None:
    """A client that stops reading: the server stops producing (about a chunk held, the
    socket buffers full) instead of reading the 64 MiB file into memory; then it all comes."""
    fast = servers[0]
    rel = stored[64 * MIB]
    before = _rss(fast.server)
    with _connect(fast) as sock:
        sock.sendall(_request(rel))
        head, rest = _read_head(sock)
        assert head["status"] == "200"
        time.sleep(1.5)
        grown = _rss(fast.server) - before
        body, _ = _read_body(sock, 64 * MIB, rest)
    assert grown < 16 * MIB, f"the server grew by {grown} bytes while the client read nothing"
    assert hashlib.sha256(body).hexdigest() == _digest(fast, rel)


@pytest.mark.parametrize("abrupt", [False, True], ids=["close", "reset"])
def test_a_tls_client_that_goes_away_mid_body_leaves_nothing_open(
    servers: tuple[TlsServer, TlsServer], stored: dict[int, str], abrupt: bool
) -> None:
    fast = servers[0]
    rel = stored[64 * MIB]
    files = _open_files(fast.server)
    sock = _connect(fast)
    sock.sendall(_request(rel))
    _, rest = _read_head(sock)
    _read_body(sock, 2 * MIB, rest)
    if abrupt:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    deadline = time.monotonic() + 10
    while _open_files(fast.server) > files and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _open_files(fast.server) <= files  # the stored file and the socket are closed
    status, _, body = get(fast.url(stored[300_000]), "--cacert", str(fast.ca))
    assert status == 200 and len(body) == 300_000


def test_pipelined_requests_over_tls_are_answered_in_order(
    servers: tuple[TlsServer, TlsServer], stored: dict[int, str]
) -> None:
    fast = servers[0]
    order = (5 * MIB + 3, 65535, 300_000, 5 * MIB + 3)
    with _connect(fast) as sock:
        sock.sendall(b"".join(_request(stored[size]) for size in order))
        pending = b""
        for size in order:
            head, pending = _read_head(sock, pending)
            assert head["status"] == "200" and head["content-length"] == str(size)
            body, pending = _read_body(sock, size, pending)
            assert hashlib.sha256(body).hexdigest() == _digest(fast, stored[size])


def test_small_answers_over_tls_between_large_ones_on_one_connection(
    servers: tuple[TlsServer, TlsServer], stored: dict[int, str]
) -> None:
    """The answers written at once (small GETs and PUTs taken whole) and those Twisted and
    the body producer write, one after the other on one TLS connection, each whole and in
    its place."""
    fast = servers[0]
    rel = f"{uuid.uuid4()}/small.bin"
    body = os.urandom(4096)
    put = (
        f"PUT /upload/{rel}?v={mac_v1(rel, len(body))} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    steps: list[tuple[bytes, str, bytes | int | None]] = [
        (put, "201", None),
        (_request(rel), "200", body),
        (_request(stored[5 * MIB + 3]), "200", 5 * MIB + 3),  # (the body producer's)
        (_request(rel), "200", body),
        (_request(f"{uuid.uuid4()}/missing.bin"), "404", None),  # (Twisted's)
        (_request(stored[65535]), "200", 65535),
        (_request(rel), "200", body),
    ]
    with _connect(fast) as sock:
        pending = b""
        for _ in range(3):
            for request, status, expected in steps:
                sock.sendall(request)
                head, pending = _read_head(sock, pending)
                assert head["status"] == status, (request[:60], head)
                got, pending = _read_body(sock, int(head.get("content-length", "0")), pending)
                if isinstance(expected, bytes):
                    assert got == expected
                elif isinstance(expected, int):
                    assert len(got) == expected
                    assert hashlib.sha256(got).hexdigest() == _digest(
                        fast, stored[expected]
                    )
                assert pending == b""
            rel = f"{uuid.uuid4()}/small.bin"  # (a fresh path for the next round's PUT)
            put = (
                f"PUT /upload/{rel}?v={mac_v1(rel, len(body))} HTTP/1.1\r\n"
                f"Host: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            steps[0] = (put, "201", None)
            for index in (1, 3, 6):
                steps[index] = (_request(rel), "200", body)


def test_connection_close_after_a_body_over_tls_is_a_clean_tls_close(
    servers: tuple[TlsServer, TlsServer], stored: dict[int, str]
) -> None:
    fast = servers[0]
    size = 5 * MIB + 3
    with _connect(fast) as sock:
        sock.sendall(_request(stored[size], close=True))
        head, rest = _read_head(sock)
        assert head["status"] == "200" and head["connection"] == "close"
        body, extra = _read_body(sock, size, rest)
        assert hashlib.sha256(body).hexdigest() == _digest(fast, stored[size])
        assert extra == b"" and sock.recv(1) == b""  # (the server's close_notify)


@pytest.mark.parametrize("which", ["fast", "plain"])
def test_a_file_that_shrinks_while_sent_over_tls_ends_the_connection(
    servers: tuple[TlsServer, TlsServer], tmp_path: Path, which: str
) -> None:
    """A stored file cut short under the server (an admin's hand) while a client reads it
    slowly: the answer stops short of its Content-Length and the connection ends, rather
    than hanging or sending other bytes."""
    server = servers[0] if which == "fast" else servers[1]
    size = 32 * MIB
    source = tmp_path / "body"
    write_file(source, size)
    rel = f"{uuid.uuid4()}/shrinks.bin"
    assert _put(server, rel, source) == 201
    with _connect(server) as sock:
        sock.sendall(_request(rel))
        head, rest = _read_head(sock)
        assert head["content-length"] == str(size)
        time.sleep(0.5)  # (the socket buffers fill)
        os.truncate(server.server.storage / rel, MIB)
        started = time.monotonic()
        body, _ = _read_body(sock, size, rest)
    assert time.monotonic() - started < 20
    assert len(body) < size
    assert body[:MIB] == source.read_bytes()[:MIB]


def test_a_large_upload_over_tls_arrives_whole(
    servers: tuple[TlsServer, TlsServer], tmp_path: Path
) -> None:
    fast = servers[0]
    size = 24 * MIB + 7
    source = tmp_path / "body"
    digest = write_file(source, size)
    rel = f"{uuid.uuid4()}/up.bin"
    assert _put(fast, rel, source) == 201
    assert _digest(fast, rel) == digest
    assert _put(fast, rel, source) == 201  # (the same body again)
