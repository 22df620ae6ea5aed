"""Telling that a client is gone before the reactor has noticed (`_twisted.peer_gone`): what
keeps a request that was read late, or waited, from taking a resumable upload over after its
client gave up on it."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from hmacfs.http import _twisted


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


def wait_for_state(sock: socket.socket, state: int) -> None:
    for _ in range(10_000):
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == state:
            return
    raise AssertionError(f"the connection never reached TCP state {state}")


def test_an_open_connection_with_bytes_waiting_is_not_gone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    client.sendall(b"x" * 1000)
    assert not _twisted.peer_gone(SimpleNamespace(getHandle=lambda: server))


def test_a_reset_is_seen_though_the_bytes_before_it_are_still_unread(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    client.sendall(b"x" * 100_000)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_for_state(server, 7)
    transport = SimpleNamespace(getHandle=lambda: server)
    assert _twisted.peer_gone(transport)
    # Through a TLS wrapper (whose handle is its TLS connection, its transport's the socket).
    wrapper = SimpleNamespace(getHandle=object, transport=transport)
    assert _twisted.peer_gone(wrapper)
    # Nothing was read or cleared: the bytes and the reset are still there for the reactor.
    assert len(server.recv(1 << 20, socket.MSG_PEEK)) > 0
    assert _twisted.peer_gone(transport)


def test_a_closed_side_is_gone(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.shutdown(socket.SHUT_WR)
    wait_for_state(server, 8)
    assert _twisted.peer_gone(SimpleNamespace(getHandle=lambda: server))


def test_what_is_not_a_tcp_socket_is_never_taken_for_gone() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.close()
        assert not _twisted.peer_gone(SimpleNamespace(getHandle=lambda: right))
    assert not _twisted.peer_gone(SimpleNamespace())
