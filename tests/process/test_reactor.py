"""`hmacfs.process.reactor`: Twisted's epoll reactor without the per-event log context.

Each test runs a reactor of its own (not the global one) for real, on loopback sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol

from hmacfs.process.reactor import Reactor
from tests.process.fakes import LogCapture

#: No test's reactor runs longer than this (it is stopped once its exchange is done).
LIMIT = 10.0


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("a handler failed")
        self.transport.write(data.upper())


class Client(protocol.Protocol):
    def __init__(self, sends: list[bytes], done: Any) -> None:
        self.sends = sends
        self.got = b""
        self.lost = False
        self.done = done

    def connectionMade(self) -> None:
        self.transport.write(self.sends.pop(0))

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.sends:
            self.transport.write(self.sends.pop(0))
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.done()


def exchange(sends: list[bytes]) -> Client:
    """Run a fresh `Reactor` with an echo server and one client until the client is gone."""
    reactor = Reactor()
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    client = Client(sends, lambda: reactor.callLater(0, reactor.stop))
    protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
    limit = reactor.callLater(LIMIT, reactor.stop)
    reactor.run(installSignalHandlers=False)
    if limit.active():
        limit.cancel()
    port.stopListening()
    return client


def test_connections_are_served() -> None:
    client = exchange([b"one", b"two"])
    assert client.got == b"ONETWO" and client.lost


def test_a_failing_handler_closes_its_connection_and_is_logged(logs: LogCapture) -> None:
    client = exchange([b"first", b"boom"])
    assert client.got == b"FIRST" and client.lost  # (not the reactor's limit: the loop went on)
    failures = [str(e.get("log_failure") or e.get("failure")) for e in logs.events]
    assert any("a handler failed" in failure for failure in failures)
