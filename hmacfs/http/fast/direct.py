"""Answers written straight to an idle plain socket.

Twisted's `write` only queues: the socket is written on the reactor's next turn, after two
epoll changes (watch for writable, then stop). For a small answer on an idle plain TCP or Unix
connection that round costs more than the answer; the socket takes it now. Whatever it does
not take (and anything behind queued data) goes through the transport's own `write`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import ISSLTransport

from hmacfs.http import _twisted


def plain_socket(transport: Any) -> Any:
    """The socket of a plain TCP or Unix transport of the reactor's, else None (TLS, tests)."""
    if (
        transport is None
        or ISSLTransport.providedBy(transport)
        or not hasattr(transport, "startWriting")
        or not hasattr(transport, "registerProducer")
        or getattr(transport, "producer", None) is None
    ):
        return None
    return getattr(transport, "socket", None)


class DirectWrites:
    """Stands in for a plain transport's `write` and `writeSequence`, so that every answer of
    the channel goes out at once when the socket is idle; `remove` puts Twisted's back."""

    def __init__(self, transport: Any, sock: Any, channel: object) -> None:
        self.transport = transport
        self.sock = sock
        self.channel = channel
        self.queue = _twisted.take_writes(transport, self.write, self.write_sequence)

    @classmethod
    def install(cls, transport: Any, channel: object) -> DirectWrites | None:
        """Stand in for `transport`'s writes if it is a plain socket transport; else None."""
        sock = plain_socket(transport)
        return None if sock is None else cls(transport, sock, channel)

    def write(self, data: bytes) -> None:
        if data and _twisted.transport_idle(self.transport, self.channel):
            try:
                sent = self.sock.send(data)
            except OSError:
                sent = 0  # EAGAIN, or a broken connection the transport finds out about
            data = data[sent:]
        if data:
            self.queue(data)

    def write_sequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def remove(self) -> None:
        _twisted.give_back_writes(self.transport)
