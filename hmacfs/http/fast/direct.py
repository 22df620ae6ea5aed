"""Answers written straight to an idle socket.

Twisted's `write` only queues: the socket is written on the reactor's next turn, after two
epoll changes (watch for writable, then stop). For a small answer on an idle TCP or Unix
connection that round costs more than the answer; the socket takes it now. Whatever it does
not take (and anything behind queued data) goes through the transport's own `write`.

Under Twisted's TLS wrapper the same stands in for the TCP transport's `write`, which the
wrapper hands each TLS record it makes; and `send_answer` has an answer written as a whole
encrypted at once, where Twisted (22.8 and later) would keep it for the next reactor turn
to gather small writes into larger records.
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
        """Stand in for `transport`'s writes if it is a plain socket transport, or for those
        of the socket transport under it if it is Twisted's TLS wrapper; else None."""
        sock = plain_socket(transport)
        if sock is not None:
            return cls(transport, sock, channel)
        inner = _under_tls(transport)
        sock = plain_socket(inner)
        # (the wrapper feeds the socket transport through the producer it registered there
        # for `channel`: that one may be written behind)
        return None if sock is None else cls(inner, sock, inner.producer)

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


def _under_tls(transport: Any) -> Any:
    """The socket transport under Twisted's TLS wrapper `transport`, else None."""
    if (
        transport is None
        or not ISSLTransport.providedBy(transport)
        or not hasattr(transport, "_flushSendBIO")
        or not hasattr(transport, "_tlsConnection")
    ):
        return None
    return getattr(transport, "transport", None)


def send_answer(transport: Any, data: bytes) -> None:
    """`transport.write(data)`, but through Twisted's TLS wrapper without waiting for the
    reactor's next turn: encrypted now (and, with `DirectWrites` under it, sent now) when
    nothing written earlier waits to be gathered with it."""
    aggregator = getattr(transport, "_aggregator", None)
    waiting = getattr(aggregator, "_buffer", None)
    if (
        isinstance(waiting, list)
        and not waiting
        and not transport.disconnecting
        and _under_tls(transport) is not None
    ):
        transport._write(data)  # (what the aggregator hands on; its order is kept)
        return
    transport.write(data)
