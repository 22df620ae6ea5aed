"""What a client chooses (forwarded addresses, paths, methods) reaches the server's log
escaped, never as raw control characters, separators or escape sequences."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import mac_v1

RAW = ("\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\r")


def exchange(server: Server, head: str, body: bytes = b"") -> bytes:
    """Send one request on a connection of its own; the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode("utf-8") + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def request(server: Server, line: str, *headers: str, body: bytes = b"") -> bytes:
    fields = [line, "Host: h", "Connection: close", *headers]
    if body:
        fields.append(f"Content-Length: {len(body)}")
    return exchange(server, "\r\n".join(fields) + "\r\n\r\n", body)


def test_client_text_is_escaped_in_the_log(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml='trusted_proxies = ["127.0.0.1"]', workers=1)
    evil = "X-Forwarded-For: 1.2.3.4, ev\x1b[31mil\x7f"
    base = uuid.uuid4().hex
    for path in (f"{base}a%C2%85b", f"{base}a%E2%80%A8b", f"{base}a%5Cx85b"):
        assert request(server, f"GET /upload/{path} HTTP/1.1", evil).startswith(b"HTTP/1.1 404")
    # A signed name with a line separator is stored as it is; only its log line is escaped.
    name = f"{base}/x\u2029y.txt"
    put = f"PUT /upload/{base}/x%E2%80%A9y.txt?v={mac_v1(name, 1)} HTTP/1.1"
    assert request(server, put, evil, body=b"z").startswith(b"HTTP/1.1 201")
    assert (server.storage / name).read_bytes() == b"z"
    refused = f"PUT /upload/{base}/x%E2%80%A9y.txt?v={'0' * 64} HTTP/1.1"
    assert request(server, refused, evil, body=b"z").startswith(b"HTTP/1.1 403")
    assert stop_server(server) == 0

    raw = [line for line in server.log if any(c in line for c in RAW)]
    assert raw == [], "\n".join(map(repr, raw))
    text = "\n".join(server.log)
    assert f"127.0.0.1 GET {base}a\\x85b -> 404" in text
    assert f"127.0.0.1 GET {base}a\\u2028b -> 404" in text
    assert f"127.0.0.1 GET {base}a\\\\x85b -> 404" in text
    assert f"127.0.0.1 PUT {base}/x\\u2029y.txt -> 201" in text
    assert f"127.0.0.1 PUT {base}/x\\u2029y.txt -> 403 refused" in text
    assert "31mil" not in text and "1.2.3.4" not in text


def test_forwarded_addresses_as_proxies_write_them(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml='trusted_proxies = ["127.0.0.1"]', workers=1)
    for forwarded in ("203.0.113.9:5678", "[2001:db8::1]:1234, 127.0.0.1"):
        head = ("GET /upload/nothing-here HTTP/1.1", f"X-Forwarded-For: {forwarded}")
        assert request(server, *head).startswith(b"HTTP/1.1 404")
    assert stop_server(server) == 0
    assert any("203.0.113.9 GET nothing-here -> 404" in line for line in server.log)
    assert any("2001:db8::1 GET nothing-here -> 404" in line for line in server.log)
