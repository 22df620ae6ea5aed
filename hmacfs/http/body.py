"""Download bodies: the pieces of a `hmacfs.core.download.Plan` written to a request.

A body of one piece of a local file goes out with sendfile(2) on a plain connection when the
fast paths are on, and is encrypted into the socket past Twisted's TLS wrapper on a TLS one
(`hmacfs.http.fast.tls`); anything else (small bodies, multipart answers, remote stores) is
read a chunk at a time by a pull producer, which the transport asks for more only when it has
room: a slow client never makes the server hold more than one chunk, and a client that
pipelines requests without reading the answers stops being read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPullProducer, ISSLTransport
from zope.interface import implementer

from hmacfs.core.download import Piece, Plan
from hmacfs.http import _twisted
from hmacfs.http.fast.direct import plain_socket
from hmacfs.http.fast.sendfile import SendfileProducer
from hmacfs.storage.backend import Reader

#: Bytes read per chunk by the pull producer.
CHUNK = 64 * 1024
#: Files this large or larger are sent with sendfile(2) over plain connections.
SENDFILE_MIN = 64 * 1024


def send_body(
    request: Any,
    plan: Plan,
    reader: Reader,
    *,
    sendfile: bool,
    vanished: Callable[[], bytes] | None = None,
) -> None:
    """Write `plan`'s body from `reader` (which this takes over and closes) and finish the
    request. `vanished`: for a remote store, what to answer instead (its status and headers
    set, its body returned) when the file is gone before a byte of it was sent."""
    pieces = plan.body
    stream = getattr(reader, "streams", None)
    if stream is not None:
        # (imported here: only a server on an object store streams from one)
        from hmacfs.http.remote_body import RemoteBody

        RemoteBody(request, pieces, reader, vanished).start()
        return
    if (
        sendfile
        and len(pieces) == 1
        and isinstance(pieces[0], tuple)
        and pieces[0][1] >= SENDFILE_MIN
        and reader.fileno() is not None
        and request.channel is not None
    ):
        offset, count = pieces[0]
        transport = request.channel.transport
        if plain_socket(transport) is not None:
            request.write(b"")  # the headers
            SendfileProducer(request, reader, offset, count).start()
            return
        if ISSLTransport.providedBy(transport):
            # (imported here: a server without TLS listeners never loads OpenSSL)
            from hmacfs.http.fast.tls import TlsBodyProducer, tls_connection

            request.write(b"")  # the headers
            connection = tls_connection(transport)
            if connection is not None:
                TlsBodyProducer(request, reader, offset, count, connection).start()
                return
    PiecesProducer(request, pieces, reader).start()


@implementer(IPullProducer)
class PiecesProducer:
    """Writes literal pieces and file ranges to a request, a chunk per `resumeProducing`."""

    def __init__(self, request: Any, pieces: tuple[Piece, ...], reader: Reader) -> None:
        self.request = request
        self.pieces = list(reversed(pieces))
        self.reader = reader
        self._done = False

    def start(self) -> None:
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._done:
            return
        if not self.pieces:
            self._finish()
            return
        piece = self.pieces.pop()
        if isinstance(piece, bytes):
            self.request.write(piece)
            return
        offset, count = piece
        data = self.reader.read(offset, min(count, CHUNK))
        if not data:
            # The file shrank under us (an admin's hand): end rather than send a short body.
            self._close()
            self.request.unregisterProducer()
            # (the channel's loseConnection: over TLS, the wrapper's alone would wait for ever
            # for the channel, its producer, to go)
            self.request.channel.loseConnection()
            return
        if count > len(data):
            self.pieces.append((offset + len(data), count - len(data)))
        self.request.write(data)

    def _finish(self) -> None:
        self._close()
        self.request.unregisterProducer()
        if not _twisted.request_disconnected(self.request):
            self.request.finish()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            self.reader.close()

    def stopProducing(self) -> None:
        self._close()
