"""GET bodies over plain TCP or Unix sockets with sendfile(2): the kernel copies file to socket.

How it fits Twisted: the response headers go out through the request as usual. Then, for the
length of the body, this producer stands in for the HTTP channel as the *transport's* pull
producer. A transport asks its pull producer for more exactly when its own write buffer is
empty (`FileDescriptor.doWrite`), which is the only moment it is safe to write to the socket
behind its back; after each sendfile the producer asks to be woken when the socket is writable
again (`startWriting`). When the body is complete the channel is put back as the transport's
producer and the request finishes normally (keep-alive, pipelining and logging unchanged).

Each wake-up sends at most `CHUNK` bytes, so a large download never holds the reactor for
long. TLS transports are not file descriptors of their own: they keep Twisted's producer.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from zope.interface import implementer

from hmacfs.http import _twisted
from hmacfs.storage.backend import Reader

#: Bytes per sendfile call (one reactor turn).
CHUNK = 4 * 1024 * 1024

_log = Logger(namespace="hmacfs.http.fast.sendfile")


class FileBody:
    """What the producers that send a local file's bytes behind the transport's back share:
    bytes [offset, offset + count) of `reader` (which they close when done), the first call's
    wait for the headers to leave, the count of what was sent, and the close."""

    def __init__(self, request: Any, reader: Reader, offset: int, count: int) -> None:
        self.request = request
        self.channel = request.channel
        self.reader = reader
        fd = reader.fileno()
        assert fd is not None
        self.fd = fd
        self.offset = offset
        self.left = count
        self._primed = False
        self._done = False

    def _priming(self, transport: Any) -> bool:
        """True on the call at registration, which only lets `transport` flush the headers
        still in its buffer (it calls back once its buffer is empty)."""
        if self._primed:
            return False
        self._primed = True
        transport.startWriting()
        return True

    def _advance(self, count: int) -> None:
        self.offset += count
        self.left -= count
        self.request.sentLength += count  # (as it goes: the send deadline watches it)

    def _close(self) -> None:
        if not self._done:
            self._done = True
            self.reader.close()

    def stopProducing(self) -> None:
        # The connection is gone; the channel tells the request.
        self._close()


@implementer(IPullProducer)
class SendfileProducer(FileBody):
    """Sends bytes [offset, offset + count) of an open file to the request's socket."""

    def __init__(self, request: Any, reader: Reader, offset: int, count: int) -> None:
        """Send from `reader` (a local file), which this producer closes when done."""
        super().__init__(request, reader, offset, count)
        self.transport = self.channel.transport
        self.sent = 0

    def start(self) -> None:
        """Take over from the channel; the headers must already have been written."""
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._done or self._priming(self.transport):
            return
        if self.left <= 0:
            self._finish()
            return
        try:
            sent = os.sendfile(
                self.transport.socket.fileno(), self.fd, self.offset, min(self.left, CHUNK)
            )
        except BlockingIOError:
            sent = 0
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                sent = 0
            else:
                # The peer went away (EPIPE, ECONNRESET): the transport notices on its own.
                self._close()
                self.transport.unregisterProducer()
                self.transport.loseConnection()
                return
        if sent == 0 and self.left > 0 and not self._socket_writable_soon():
            self._finish_truncated()
            return
        self._advance(sent)
        self.sent += sent
        if self.left <= 0:
            self._finish()
        else:
            self.transport.startWriting()

    def _socket_writable_soon(self) -> bool:
        # sendfile returning 0 with bytes left means end of file: the file shrank under us.
        # (EAGAIN raises instead.) Stored files are never modified, so this is a bug or an
        # admin's hand; end the connection rather than send a short body silently.
        return False

    def _finish_truncated(self) -> None:
        _log.error("file shrank while being sent; closing the connection")
        self._close()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _finish(self) -> None:
        self._close()
        transport, channel, request = self.transport, self.channel, self.request
        transport.unregisterProducer()
        if transport.connected and not transport.disconnecting:
            transport.registerProducer(channel, True)
        if not _twisted.request_disconnected(request):
            request.finish()
