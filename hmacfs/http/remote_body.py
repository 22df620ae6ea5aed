"""Download bodies from an object store: each range of the plan is a ranged GET to the store
whose answer is written to the request as it arrives.

The store's connection is the request's push producer while a range streams: when the
client's transport is full, Twisted pauses it, which pauses reading from the store. A slow
client so never makes the node hold more than a socket buffer of the object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import readBody

from hmacfs.core.download import Piece
from hmacfs.http import _twisted
from hmacfs.http.objectstore import RangeSender

_log = Logger(namespace="hmacfs.http")


class RemoteBody:
    """Writes a plan's pieces to a request, the file ranges streamed from the store."""

    def __init__(
        self,
        request: Any,
        pieces: tuple[Piece, ...],
        reader: Any,
        vanished: Callable[[], bytes] | None = None,
    ) -> None:
        self.request = request
        self.vanished = vanished
        self.pieces = list(reversed(pieces))
        self.reader = reader
        self._sender: RangeSender | None = None
        self._gone = False
        request.notifyFinish().addErrback(self._lost)

    def start(self) -> None:
        self._next()

    def _lost(self, _: Failure) -> None:
        self._gone = True
        if self._sender is not None:
            self._sender.stopProducing()

    def _next(self) -> None:
        while self.pieces and not self._gone:
            piece = self.pieces.pop()
            if isinstance(piece, bytes):
                self.request.write(piece)
                continue
            offset, count = piece
            if count == 0:
                continue
            self._range(offset, count)
            return
        if not self._gone:
            self.reader.close()
            self.request.finish()

    def _range(self, offset: int, count: int) -> None:
        last = offset + count - 1
        d = self.reader.streams.request(
            "GET", self.reader.key, (), {"range": f"bytes={offset}-{last}"}
        )
        d.addCallback(self._answered, offset, count)
        d.addErrback(self._failed)

    def _answered(self, response: Any, offset: int, count: int) -> defer.Deferred[Any] | None:
        if self._gone:
            response.deliverBody(_Discard())
            return None
        if response.code == 404 and self.vanished is not None and not self.request.startedWriting:
            # Removed (expired, deleted, replaced by a quota) since it was looked up, and
            # nothing of it sent yet: answered as what it now is.
            return readBody(response).addCallback(  # type: ignore[no-any-return]
                lambda _: self._vanish()
            )
        if response.code not in (200, 206) or (response.code == 200 and offset != 0):
            return readBody(response).addCallback(  # type: ignore[no-any-return]
                lambda body: self._cut(f"the store answered {response.code}")
            )
        left = [count]

        def write(data: bytes) -> None:
            if left[0] <= 0:
                return
            if len(data) > left[0]:
                data = data[: left[0]]
            left[0] -= len(data)
            self.request.write(data)

        done: defer.Deferred[int] = defer.Deferred()
        sender = RangeSender(write, done)
        self._sender = sender
        response.deliverBody(sender)
        self.request.registerProducer(sender, True)

        def ended(_: object) -> None:
            self._sender = None
            if _twisted.request_disconnected(self.request) or self._gone:
                return
            self.request.unregisterProducer()
            if left[0] > 0:
                self._cut("the object is shorter than its size")
                return
            self._next()

        def broke(failure: Failure) -> None:
            self._sender = None
            if self._gone:
                return
            self.request.unregisterProducer()
            self._cut(failure.getErrorMessage() or "the store's connection broke")

        done.addCallbacks(ended, broke)
        return None

    def _failed(self, failure: Failure) -> None:
        if not self._gone:
            self._cut(failure.getErrorMessage() or "the store cannot be reached")

    def _vanish(self) -> None:
        assert self.vanished is not None
        self._gone = True
        self.reader.close()
        if _twisted.request_disconnected(self.request):
            return
        _log.info("download of {key}: removed since it was looked up", key=self.reader.key)
        self.request.write(self.vanished())
        self.request.finish()

    def _cut(self, why: str) -> None:
        """The body cannot be sent whole: end the connection rather than send a short one."""
        _log.warn("download of {key} cut off: {why}", key=self.reader.key, why=why)
        self._gone = True
        self.reader.close()
        channel = self.request.channel
        if channel is not None:
            channel.loseConnection()


class _Discard(RangeSender):
    """The answer to a range the client went away before: not read at all."""

    def __init__(self) -> None:
        super().__init__(lambda data: None, defer.Deferred())

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        transport.stopProducing()
