"""Worker processes share their listening sockets: each takes one connection per wake-up."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactor

from hmacfs.process.listeners import accept_one_at_a_time


class Counting(protocol.Factory):
    def __init__(self) -> None:
        self.built: list[protocol.Protocol] = []

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        built = protocol.Protocol()
        self.built.append(built)
        return built


@pytest.fixture
def pending() -> Iterator[tuple[tcp.Port, Counting, list[socket.socket]]]:
    """A port on an inherited listening socket with three connections waiting in its backlog."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    listening.setblocking(False)
    factory = Counting()
    port = tcp.Port._fromListeningDescriptor(
        MemoryReactor(), listening.fileno(), socket.AF_INET, factory
    )
    port.startListening()
    clients = [socket.create_connection(listening.getsockname()) for _ in range(3)]
    yield port, factory, clients
    for built in factory.built:
        built.transport.socket.close()  # type: ignore[attr-defined]
    for client in clients:
        client.close()
    port.socket.close()
    listening.close()


def test_twisted_takes_the_whole_backlog_at_once(
    pending: tuple[tcp.Port, Counting, list[socket.socket]],
) -> None:
    port, factory, _ = pending
    port.doRead()
    assert len(factory.built) == 3


def test_one_connection_per_wake_up(
    pending: tuple[tcp.Port, Counting, list[socket.socket]],
) -> None:
    port, factory, _ = pending
    accept_one_at_a_time(port)
    for expected in (1, 2, 3, 3):
        port.doRead()
        assert len(factory.built) == expected
