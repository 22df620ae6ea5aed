"""End to end: the real server process on a real socket, a real HTTP client (curl)."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import os
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.helpers.client import curl
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import SECRET, mac_v1, mac_v2


def write_file(path: Path, size: int) -> str:
    """Write `size` bytes of varied content without holding them in memory; return sha256."""
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def put(url: str, file: Path, *headers: str) -> int:
    args = ["-T", str(file), "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:"]
    for header in headers:
        args += ["-H", header]
    result = curl(*args, url)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def get(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    result = curl("-D", "-", *args, url)
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def slot() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize("size", [0, 1, 10_000_000])
def test_round_trip(server: Server, tmp_path: Path, size: int) -> None:
    source = tmp_path / "source"
    digest = write_file(source, size)
    rel = f"{slot()}/file.bin"
    assert put(server.url(rel) + f"?v={mac_v1(rel, size)}", source) == 201
    target = tmp_path / "target"
    result = curl("-o", str(target), "-w", "%{http_code}", server.url(rel))
    assert result.stdout == b"200"
    assert sha256_of(target) == digest


@pytest.mark.slow
def test_round_trip_1gib(server: Server, tmp_path: Path) -> None:
    size = 1 << 30
    source = tmp_path / "source"
    digest = write_file(source, size)
    rel = f"{slot()}/big.bin"
    assert put(server.url(rel) + f"?v={mac_v1(rel, size)}", source) == 201
    source.unlink()
    target = tmp_path / "target"
    result = curl("-o", str(target), "-w", "%{http_code}", server.url(rel))
    assert result.stdout == b"200"
    assert target.stat().st_size == size
    assert sha256_of(target) == digest


def test_non_ascii_name_in_prosody_and_ejabberd_spellings(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "s"
    source.write_bytes(b"caf\xc3\xa9")
    name = "très cool+1 & ;=.jpg"
    rel = f"{slot()}/{name}"
    lower = "/".join(quote(s, safe="").replace("%C3%A8", "%c3%a8") for s in rel.split("/"))
    mac = mac_v2(rel, 5, "image/jpeg")
    assert put(server.url(lower) + f"?v2={mac}", source, "Content-Type: image/jpeg") == 201
    upper = "/".join(quote(s, safe="") for s in rel.split("/"))
    status, headers, body = get(server.url(upper))
    assert status == 200
    assert body == b"caf\xc3\xa9"
    assert headers["content-type"] == "image/jpeg"
    assert headers["content-disposition"].startswith("inline;")
    assert "filename*=UTF-8''tr%C3%A8s%20cool%2B1%20%26%20%3B%3D.jpg" in headers[
        "content-disposition"
    ]
    # A client that sends the "+", "&", ";" and "=" unencoded reaches the same file.
    loose = f"{rel.split('/', maxsplit=1)[0]}/tr%C3%A8s%20cool+1%20&%20;=.jpg"
    assert get(server.url(loose))[0] == 200


def test_ejabberd_three_segment_path(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "s"
    source.write_bytes(b"x" * 33)
    user = hashlib.sha1(b"romeo@example.net").hexdigest()
    rel = f"{user}/{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}/holiday_photo.png"
    assert put(server.url(rel) + f"?v={mac_v1(rel, 33).upper()}", source) == 201
    assert get(server.url(rel))[0] == 200


def test_download_headers(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "page.html"
    source.write_bytes(b"<script>alert(1)</script>")
    rel = f"{slot()}/page.html"
    mac = mac_v2(rel, 25, "text/html")
    assert put(server.url(rel) + f"?v2={mac}", source, "Content-Type: text/html") == 201
    status, headers, _ = get(server.url(rel), "-H", "Origin: https://chat.example")
    assert status == 200
    assert headers["content-disposition"] == 'attachment; filename="page.html"'
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["access-control-allow-origin"] == "*"
    assert headers["content-length"] == "25"
    assert headers["accept-ranges"] == "bytes"
    # HEAD: the same headers, no body (Conversations reads Content-Length from it).
    status, head_headers, _ = get(server.url(rel), "-I", "-o", "/dev/null")
    assert status == 200
    assert head_headers["content-length"] == "25"
    assert head_headers["etag"] == headers["etag"]
    raw = raw_request(
        server, f"HEAD /upload/{rel} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert raw.endswith(b"\r\n\r\n")


def test_ranges_and_conditional_requests(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "digits"
    source.write_bytes(b"0123456789")
    rel = f"{slot()}/digits.txt"
    assert put(server.url(rel) + f"?v={mac_v1(rel, 10)}", source) == 201
    url = server.url(rel)
    status, headers, body = get(url, "-H", "Range: bytes=2-4")
    assert (status, body, headers["content-range"]) == (206, b"234", "bytes 2-4/10")
    status, _, body = get(url, "-H", "Range: bytes=7-")
    assert (status, body) == (206, b"789")
    status, _, body = get(url, "-H", "Range: bytes=-3")
    assert (status, body) == (206, b"789")
    status, headers, body = get(url, "-H", "Range: bytes=0-1,8-9")
    assert status == 206
    assert headers["content-type"].startswith("multipart/byteranges")
    assert b"01" in body and b"89" in body
    assert get(url, "-H", "Range: bytes=20-30")[0] == 416

    _, headers, _ = get(url)
    etag, modified = headers["etag"], headers["last-modified"]
    assert get(url, "-H", f"If-None-Match: {etag}")[0] == 304
    assert get(url, "-H", f'If-None-Match: "other", {etag}')[0] == 304
    assert get(url, "-H", 'If-None-Match: "other"')[0] == 200
    assert get(url, "-H", f"If-Modified-Since: {modified}")[0] == 304
    assert get(url, "-H", 'If-Match: "other"')[0] == 412
    assert get(url, "-H", f"If-Match: {etag}")[0] == 200
    assert get(url, "-H", f"If-Unmodified-Since: {modified}")[0] == 200
    assert get(url, "-H", "If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT")[0] == 412
    # If-Match decides alone when it is there (RFC 9110 13.2.2).
    long_ago = "If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT"
    assert get(url, "-H", f"If-Match: {etag}", "-H", long_ago)[0] == 200
    assert get(url, "-H", "If-Unmodified-Since: not a date")[0] == 200
    # If-Range with a stale validator gives the whole file, not a piece of a changed one.
    status, _, body = get(url, "-H", "Range: bytes=0-1", "-H", 'If-Range: "stale"')
    assert (status, body) == (200, b"0123456789")
    status, _, body = get(url, "-H", "Range: bytes=0-1", "-H", f"If-Range: {etag}")
    assert (status, body) == (206, b"01")
    # Last-Modified is never after Date (the mtime's second, rounded down), and If-Range
    # quoting it back holds.
    date = email.utils.parsedate_to_datetime(headers["date"])
    assert email.utils.parsedate_to_datetime(modified) <= date
    status, _, body = get(url, "-H", "Range: bytes=8-", "-H", f"If-Range: {modified}")
    assert (status, body) == (206, b"89")
    # A stored file never changes: caches need not ask again.
    assert headers["cache-control"].endswith(", immutable")


def test_conflict_leaves_the_first_file(server: Server, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first")
    second.write_bytes(b"other!")
    rel = f"{slot()}/same.txt"
    assert put(server.url(rel) + f"?v={mac_v1(rel, 5)}", first) == 201
    assert put(server.url(rel) + f"?v={mac_v1(rel, 6)}", second) == 409
    assert get(server.url(rel))[2] == b"first"


def test_cors_preflight(server: Server) -> None:
    status, headers, _ = get(
        server.url(f"{slot()}/x.png"),
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://converse.example",
        "-H",
        "Access-Control-Request-Method: PUT",
        "-H",
        "Access-Control-Request-Headers: content-type",
    )
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    assert "PUT" in headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    # Content-Type and every header XEP-0363 lets a slot carry (Converse.js copies Expires).
    assert {"content-type", "authorization", "cookie", "expires"} <= allowed


def raw_request(server: Server, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "target",
    [
        "/upload/../../../../etc/passwd",
        "/upload/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/upload/..%2f..%2f..%2fetc%2fpasswd",
        "/upload/a/%00/b",
        "/upload/.hmacfs/meta",
        "/upload/",
        "/upload",
        "/upload/" + "x" * 5000,
    ],
)
def test_traversal_and_listing_attempts(server: Server, target: str) -> None:
    response = raw_request(
        server, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    status = int(response.split(b" ", 2)[1])
    assert 400 <= status < 500
    assert b"root:" not in response


def test_directory_is_not_listed(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "s"
    source.write_bytes(b"hi")
    directory = slot()
    rel = f"{directory}/a.txt"
    assert put(server.url(rel) + f"?v={mac_v1(rel, 2)}", source) == 201
    status, _, body = get(server.url(directory))
    assert status == 404
    assert b"a.txt" not in body


def test_symlink_out_of_the_root_is_not_followed(server: Server, tmp_path: Path) -> None:
    secret_file = tmp_path / "outside.txt"
    secret_file.write_text("outside the storage")
    directory = server.storage / slot()
    directory.mkdir()
    (directory / "link.txt").symlink_to(secret_file)
    status, _, body = get(server.url(f"{directory.name}/link.txt"))
    assert status == 404
    assert b"outside" not in body


def test_refusal_reaches_a_client_that_sends_its_body_anyway(
    server: Server, tmp_path: Path
) -> None:
    source = tmp_path / "big"
    write_file(source, 50_000_000)
    rel = f"{slot()}/refused.bin"
    started = time.monotonic()
    assert put(server.url(rel) + "?v=" + "0" * 64, source) == 403
    assert time.monotonic() - started < 30
    assert not (server.storage / rel).exists()


def test_prosody_file_share_jwt(server: Server, tmp_path: Path) -> None:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    source = tmp_path / "s"
    source.write_bytes(b"jwt body")
    slot_id = slot()
    now = int(time.time())
    claims = {
        "sub": "juliet@example.com",
        "iat": now,
        "exp": now + 300,
        "slot": slot_id,
        "expires": now + 3600,
        "filename": "ça va.txt",
        "filesize": 8,
        "filetype": "text/plain",
    }
    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    signature = b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())
    token = f"{signing_input}.{signature}"
    url = server.url(f"{slot_id}/{quote('ça va.txt')}")
    assert put(url, source, f"Authorization: Bearer {token}") == 201
    status, headers, body = get(url)
    assert (status, body, headers["content-type"]) == (200, b"jwt body", "text/plain")
    assert put(url, source, "Authorization: Bearer x.y.z") == 401


def test_server_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    assert stop_server(srv) == 0


def test_large_file_ranges_and_keep_alive(server: Server, tmp_path: Path) -> None:
    """Files of 64 KiB and more go out with sendfile(2) on plain connections."""
    source = tmp_path / "large"
    write_file(source, 1_000_000)
    data = source.read_bytes()
    rel = f"{slot()}/large.bin"
    assert put(server.url(rel) + f"?v={mac_v1(rel, len(data))}", source) == 201
    url = server.url(rel)
    status, headers, body = get(url, "-H", "Range: bytes=1000-1999")
    assert (status, body) == (206, data[1000:2000])
    assert headers["content-range"] == "bytes 1000-1999/1000000"
    assert get(url, "-H", "Range: bytes=-100")[2] == data[-100:]
    assert get(url, "-H", "Range: bytes=999000-")[2] == data[999000:]
    assert get(url, "-H", "Range: bytes=999000-5000000")[2] == data[999000:]
    status, headers, body = get(url, "-H", "Range: bytes=0-9,20-29")
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
    assert get(url, "-H", "Range: bytes=2000000-")[0] == 416
    _, headers, _ = get(url)
    assert get(url, "-H", f"If-Modified-Since: {headers['last-modified']}")[0] == 304
    # Several requests on one connection: each answer complete and in order.
    first, second = tmp_path / "1", tmp_path / "2"
    result = curl("-o", str(first), url, "-o", str(second), url, "-w", "%{num_connects} ")
    assert first.read_bytes() == data and second.read_bytes() == data
    assert result.stdout.split() == [b"1", b"0"]


def test_client_that_never_reads_is_not_answered_into_memory(
    server: Server, tmp_path: Path
) -> None:
    """GETs sent one after another without reading the answers: once the answers back up, the
    server stops reading, so the client's sending blocks instead of the server buffering
    answers without end; every answer then arrives, complete and in order."""
    source = tmp_path / "small"
    write_file(source, 60_000)
    data = source.read_bytes()
    rel = f"{slot()}/small.bin"
    assert put(server.url(rel) + f"?v={mac_v1(rel, len(data))}", source) == 201
    request = (
        f"GET /upload/{rel} HTTP/1.1\r\nHost: x\r\nX-Pad: {'p' * 8000}\r\n\r\n"
    ).encode()
    limit = 64 * 1024 * 1024  # answers for this many request bytes: ~480 MB
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setblocking(False)
        sent = 0
        blocked_at = None
        deadline = time.monotonic() + 60
        while sent < limit and time.monotonic() < deadline:
            try:
                sent += sock.send(request[sent % len(request):])
            except BlockingIOError:
                # Blocked: give the server a moment in case it is only slow, then decide.
                time.sleep(0.5)
                try:
                    sent += sock.send(request[sent % len(request):])
                except BlockingIOError:
                    blocked_at = sent
                    break
        assert blocked_at is not None, f"sent {sent} bytes without the server pushing back"
        # Every complete request gets its answer (the server cannot read the rest of a partly
        # sent one while this client reads nothing, so that one stays unanswered).
        sock.settimeout(30)
        reader = sock.makefile("rb")
        for _ in range(sent // len(request)):
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = None
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert length == len(data)
            assert reader.read(length) == data
