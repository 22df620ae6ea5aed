"""Worker processes share their listening sockets: each takes one connection per wake-up.

With Twisted's own accept loop the worker that woke first would take the whole backlog; the
port a worker makes of its inherited socket must not.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactor

from hmacfs.http._twisted import accept_one_at_a_time
from hmacfs.process.listeners import activated_listener
from hmacfs.process.listening import Listeners
from hmacfs.process.systemd import ActivatedSockets
from tests.process.fakes import FakeReactor


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


def test_a_workers_port_accepts_one_connection_per_readiness_event() -> None:
    """The port made the way a worker makes it (Listeners, on a socket it was handed)."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    listening.setblocking(False)
    inherited = os.dup(listening.fileno())  # as the worker finds it (closed by Listeners)
    reactor = FakeReactor()
    factory = Counting()
    listeners = Listeners(
        reactor,
        [activated_listener("L0", tls=False)],
        factory,
        lambda: None,
        ActivatedSockets(fds=[inherited], names={"L0": inherited}),
    )
    listeners.startService()
    (port,) = reactor.ports
    clients = [socket.create_connection(listening.getsockname()) for _ in range(3)]
    try:
        for expected in (1, 2, 3, 3):
            port.doRead()  # the reactor's call when the socket is readable
            assert len(factory.built) == expected
    finally:
        for built in factory.built:
            built.transport.socket.close()  # type: ignore[attr-defined]
        for client in clients:
            client.close()
        listeners.stopService()
        reactor.advance(0)
        listening.close()
