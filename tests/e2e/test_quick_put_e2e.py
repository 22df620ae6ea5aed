"""Small PUTs sent in one piece, as load generators and most clients send them, over real
sockets: with the fast paths (taken whole from one read) and without, in fast and durable
mode, they are stored and answered alike, one after another on one connection and pipelined."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator

import pytest

from tests.helpers.server import Server, start_server, stop_server, wait_logged
from tests.helpers.signing import mac_v1

Answer = tuple[int, dict[str, str], bytes]


def put_request(rel: str, body: bytes, *extra: str) -> bytes:
    lines = [
        f"PUT /upload/{rel}?v={mac_v1(rel, len(body))} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answers(data: bytes) -> tuple[list[Answer], bytes]:
    """The complete answers at the start of `data`, and what follows them."""
    out: list[Answer] = []
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return out, data
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return out, data
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]


class Connection:
    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def read(self, count: int) -> list[Answer]:
        got: list[Answer] = []
        while len(got) < count:
            chunk = self.sock.recv(1 << 16)
            assert chunk, f"closed after {got!r}"
            found, self.buffer = answers(self.buffer + chunk)
            got += found
        assert len(got) == count and self.buffer == b""
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module", params=["fast mode", "durable"])
def servers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    fsync = "false" if request.param == "fast mode" else "true"
    quick = start_server(
        tmp_path_factory.mktemp("quick"), server_toml=f"fsync = {fsync}", track=False
    )
    plain = start_server(
        tmp_path_factory.mktemp("plain"),
        server_toml=f"fsync = {fsync}\nfast_paths = false",
        track=False,
    )
    yield quick, plain
    assert stop_server(quick) == 0
    assert stop_server(plain) == 0


def test_one_piece_uploads_are_stored_and_answered_alike(
    servers: tuple[Server, Server],
) -> None:
    bodies = {f"one-{n}/f{n}.bin": os.urandom(n * 997) for n in range(1, 6)}
    got: list[list[Answer]] = []
    for server in servers:
        connection = Connection(server)
        try:
            for rel, body in bodies.items():
                connection.sock.sendall(put_request(rel, body, "Origin: https://web.example"))
                connection.sock.sendall(put_request(rel, body))  # a retry: 201 again
                connection.sock.sendall(put_request(rel, body[:-1] + bytes([body[-1] ^ 1])))
            got.append(connection.read(3 * len(bodies)))
        finally:
            connection.close()
        for rel, body in bodies.items():
            assert (server.storage / rel).read_bytes() == body
    for answer in got:
        for _, headers, _ in answer:
            headers.pop("date")
    assert got[0] == got[1]
    assert [status for status, _, _ in got[0]] == [201, 201, 409] * len(bodies)
    quick, _ = servers
    wait_logged(quick, "PUT one-5/f5.bin -> 201 4985 bytes [v]")


def test_a_request_sent_before_the_answer_comes_after_it(
    servers: tuple[Server, Server],
) -> None:
    for server in servers:
        connection = Connection(server)
        try:
            for n in range(20):
                rel = f"pipe-{n}/a.txt"
                body = hashlib.sha256(rel.encode()).digest()
                # Sent apart, so that the PUT is one read and the GET comes while the
                # upload may still be committed (durable mode: on a thread).
                connection.sock.sendall(put_request(rel, body))
                connection.sock.sendall(f"GET /upload/{rel} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                (put_status, _, _), (get_status, _, got) = connection.read(2)
                assert (put_status, get_status, got) == (201, 200, body)
        finally:
            connection.close()


def test_many_uploads_on_one_connection(servers: tuple[Server, Server]) -> None:
    quick, _ = servers
    connection = Connection(quick)
    try:
        for n in range(300):
            connection.sock.sendall(put_request(f"many-{n}/x.bin", n.to_bytes(2, "big") * 2048))
            ((status, _, _),) = connection.read(1)
            assert status == 201
    finally:
        connection.close()
    for n in range(300):
        assert (quick.storage / f"many-{n}" / "x.bin").read_bytes() == n.to_bytes(2, "big") * 2048
    assert not list((quick.storage / ".hmacfs" / "partial").iterdir())
