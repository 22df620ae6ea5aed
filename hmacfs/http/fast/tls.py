"""Large bodies over TLS with fewer copies and fewer Python calls per byte.

Twisted's TLS wrapper (`twisted.protocols.tls`) works a TLS record (16 KiB) at a time. An answer
is copied four times in Python on its way (the small writes aggregator, its join, 16 KiB
slices, 32 KiB reads of the memory BIO) and written to the socket a record at a time on the
reactor's next turn, through a cooperator task; a body being received reaches the HTTP channel,
the request and the upload 16 KiB at a time. Two pieces here do it a buffer at a time:

- `TlsBodyProducer` sends a GET body of a local file: a chunk (`CHUNK`) read with preadv(2)
  into a buffer, encrypted, the ciphertext taken out of the memory BIO into another buffer and
  sent at once (`send_body` in `hmacfs.http.body` picks it, with the fast paths on);
- `BatchingTLS`, the wrapper of an https listener's connections (`tls_factory`), reads 256 KiB
  of the socket at a time (Twisted: 64 KiB) and hands the channel everything a read decrypts
  to in one call.

How `TlsBodyProducer` fits Twisted: the response headers go out through the request and the
wrapper as usual (flushed out of its small writes aggregator first). Then, for the length of the
body, it stands in for the wrapper's producer as the *TCP transport's* pull producer, as
`hmacfs.http.fast.sendfile` does on a plain connection. The transport asks for more exactly
when its own write buffer is empty, the only moment it is safe to write to the socket behind
its back. Whatever ciphertext the socket does not take goes into the transport's buffer (Twisted
sends it, in order, and asks for more once it has), and nothing is left in the memory BIO: TLS
records the wrapper writes meanwhile (an alert, a key update answered while reading) therefore
follow the ones sent here, as they follow each other in the BIO. A slow client makes this hold
at most one chunk of ciphertext. When the body is complete the wrapper's producer is put back
and the request finishes normally.

Twisted state read or overridden here, with the same shape from Twisted 22.4 to 26 and a way
out where it is missing: the wrapper's small writes aggregator (`_aggregator.flush`, 22.8 and
later) and its writes waiting for a renegotiation (`_appSendBuffer`, to be empty); the
wrapper's `_flushReceiveBIO` and `_flushSendBIO` and what they use (`_tlsConnection`,
`_lostTLSConnection`, `_aborted`, `_shutdownTLS`, `_tlsShutdownFinished`). pyOpenSSL's private
state is used only through `hmacfs.http.fast._pyopenssl`. `tests/protocol/test_tls_body.py`
checks all of it against the installed releases.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.protocols import tls as twisted_tls
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from hmacfs.http import _twisted
from hmacfs.http.fast._pyopenssl import Buffer, RawTls
from hmacfs.http.fast.sendfile import FileBody
from hmacfs.storage.backend import Reader

#: Bytes read from the file at a time, encrypted, and sent in one send(2).
CHUNK = 256 * 1024
#: Bytes sent per call from the transport (one reactor turn) at most, so that one large
#: download does not keep the reactor from other connections for long.
STEP = 1024 * 1024
#: Bytes read from the socket at a time on a TLS connection (Twisted reads 64 KiB).
READ_SIZE = 256 * 1024
#: Room for the ciphertext of `CHUNK` bytes: each TLS record of at most 16 KiB adds a header,
#: a tag and padding (at most 5 + 256 + 16 bytes, far less with AEAD ciphers).
CIPHER_ROOM = CHUNK + (CHUNK // 16384 + 1) * 512
#: Room for the plaintext of one socket read: what it brings, and a record begun before it.
PLAIN_ROOM = READ_SIZE + 32 * 1024
#: Plaintext asked of pyOpenSSL per call without `RawTls` (one record, 16 KiB at most).
_RECORD = 16 * 1024

_log = Logger(namespace="hmacfs.http.fast.tls")

_BUFFERING: Any = getattr(twisted_tls, "BufferingTLSTransport", None)
_WRAPPER: Any = _BUFFERING if _BUFFERING is not None else twisted_tls.TLSMemoryBIOProtocol


class Buffers:
    """The buffers the TLS connections of one listener read into, shared: each is filled and
    emptied again (copied out, or handed to OpenSSL) within one call, and the reactor runs
    one call at a time. Each is made when first used."""

    @functools.cached_property
    def file(self) -> Buffer:
        """A chunk of a file being sent."""
        return Buffer(CHUNK)

    @functools.cached_property
    def cipher(self) -> Buffer:
        """Ciphertext on its way to the socket."""
        return Buffer(CIPHER_ROOM)

    @functools.cached_property
    def plain(self) -> Buffer:
        """Plaintext of what was read from the socket."""
        return Buffer(PLAIN_ROOM)


def _writes_flushed(wrapper: Any) -> bool:
    """Push what the wrapper holds of earlier writes into the TLS connection (and so to the
    transport). False if it holds something that cannot be pushed now, or keeps its writes in
    a way not known here."""
    aggregator = getattr(wrapper, "_aggregator", None)
    if aggregator is not None:
        flush = getattr(aggregator, "flush", None)
        if not callable(flush):
            return False
        flush()
    elif _BUFFERING is not None and isinstance(wrapper, _BUFFERING):
        return False
    # Writes waiting for a renegotiation to finish (OpenSSL wanted to read first).
    pending = getattr(wrapper, "_appSendBuffer", None)
    return isinstance(pending, list) and not pending


def tls_connection(transport: Any) -> SSL.Connection | None:
    """The TLS connection under `transport` if it is Twisted's TLS wrapper over a TCP or Unix
    socket transport of the reactor's, open, with nothing of earlier writes held back (what it
    held is flushed to the transport now); else None."""
    if not isinstance(transport, twisted_tls.TLSMemoryBIOProtocol):
        return None
    if not getattr(transport, "connected", False) or getattr(transport, "disconnecting", True):
        return None
    lower = getattr(transport, "transport", None)
    if (
        lower is None
        or getattr(lower, "socket", None) is None
        or not hasattr(lower, "startWriting")
        or getattr(lower, "producer", None) is None
        or getattr(lower, "streamingProducer", None) is not True
        or not lower.connected
        or lower.disconnecting
    ):
        return None
    connection = transport.getHandle()
    if not isinstance(connection, SSL.Connection) or not _writes_flushed(transport):
        return None
    return connection


def _buffers_of(wrapper: Any) -> Buffers:
    """The buffers of the wrapper's listener, or new ones (a wrapper `tls_factory` did not
    make)."""
    buffers = getattr(getattr(wrapper, "factory", None), "buffers", None)
    return buffers if isinstance(buffers, Buffers) else Buffers()


class CipherOut:
    """Takes the ciphertext out of a TLS connection's memory BIO, a buffer at a time."""

    def __init__(self, connection: SSL.Connection, buffer: Buffer) -> None:
        self.connection = connection
        self.buffer = buffer
        self.raw = RawTls.of(connection)

    def take(self) -> memoryview | bytes:
        """The next piece of ciphertext, valid until the next call; empty once there is none.
        Raises SSL.Error."""
        if self.raw is not None:
            return self.buffer.view[: self.raw.cipher_into(self.buffer)]
        try:
            return self.connection.bio_read(len(self.buffer))
        except SSL.WantReadError:
            return b""


@implementer(IPullProducer)
class TlsBodyProducer(FileBody):
    """Sends bytes [offset, offset + count) of an open file to the request's TLS connection."""

    def __init__(
        self, request: Any, reader: Reader, offset: int, count: int, connection: SSL.Connection
    ) -> None:
        """Send from `reader` (a local file), which this producer closes when done;
        `connection` is `tls_connection(request.channel.transport)`."""
        super().__init__(request, reader, offset, count)
        self.wrapper = self.channel.transport
        self.transport = self.wrapper.transport  # the TCP (or Unix) connection
        self.connection = connection
        buffers = _buffers_of(self.wrapper)
        self.file = buffers.file.view
        self.out = CipherOut(connection, buffers.cipher)
        self._wrapper_producer: Any = None

    def start(self) -> None:
        """Take over from the TLS wrapper's producer; the headers must already have been
        written (and flushed: see `tls_connection`)."""
        transport = self.transport
        self._wrapper_producer = transport.producer
        # However the connection ends (even with this producer dropped unasked), the file is
        # closed.
        self.request.notifyFinish().addBoth(self._ended)
        transport.unregisterProducer()
        transport.registerProducer(self, False)

    def _ended(self, _: object) -> None:
        self._close()

    def resumeProducing(self) -> None:
        if self._done or self._priming(self.transport):
            return
        if self.wrapper.disconnecting or self.transport.disconnecting:
            # Closing under us (the client's TLS close, an abort): send nothing more.
            self._abandon()
            return
        budget = STEP
        while budget > 0 and self.left > 0:
            count = self._encrypt_chunk()
            if count <= 0:
                return  # (done with: see _encrypt_chunk)
            budget -= count
            if not self._send():
                break  # the socket is full: the transport asks again once it has sent
        if self.left <= 0:
            self._finish()
        else:
            self.transport.startWriting()

    def _encrypt_chunk(self) -> int:
        """Read the next chunk and hand it to OpenSSL; how many bytes, or 0 after giving the
        connection up (the file shrank or fails, the TLS connection broke) or handing the
        rest of the body over to the wrapper."""
        view = self.file[: min(len(self.file), self.left)]
        try:
            got = os.preadv(self.fd, [view], self.offset)
        except OSError as e:
            _log.error("cannot read a file being sent: {error}", error=os.strerror(e.errno or 0))
            self._abandon()
            return 0
        if got == 0:
            # Stored files are never modified: this is a bug or an admin's hand. End the
            # connection rather than send a short body silently.
            _log.error("file shrank while being sent; closing the connection")
            self._abandon()
            return 0
        done = 0
        send = self.connection.send
        try:
            while done < got:
                # One TLS record per call (pyOpenSSL asks OpenSSL for partial writes).
                done += send(view[done:got])
        except SSL.WantReadError:
            # OpenSSL must read before it writes again (a renegotiation): the wrapper knows
            # how to wait for that. It sends the rest of the body, from what was taken here.
            self._advance(done)
            self._send()
            self._hand_over()
            return 0
        except SSL.Error:
            _log.info("the TLS connection broke while a body was sent")
            self._send()
            self._abandon()
            return 0
        self._advance(got)
        return got

    def _send(self) -> bool:
        """Send all the ciphertext there is; True if the socket took it all, False if the
        rest went into the transport's buffer (the socket is full, or failed: the transport
        finds out and ends the connection)."""
        sock = self.transport.socket
        while True:
            data = self.out.take()
            if not data:
                return True
            try:
                sent = sock.send(data)
            except OSError:
                # EAGAIN: the socket is full. Anything else (EPIPE, ECONNRESET): the transport
                # meets it too when it sends what is queued, and ends the connection.
                sent = 0
            if sent < len(data):
                self.transport.write(bytes(data[sent:]))
                while data := self.out.take():
                    self.transport.write(bytes(data))
                return False

    def _hand_over(self) -> None:
        """Give the rest of the body to a pull producer writing through the wrapper."""
        from hmacfs.http.body import PiecesProducer

        self._give_back()
        rest = PiecesProducer(self.request, ((self.offset, self.left),), self.reader)
        self._done = True  # (the reader is the other producer's now)
        rest.start()

    def _give_back(self) -> None:
        transport = self.transport
        if transport.producer is self:
            transport.unregisterProducer()
        if transport.connected and not transport.disconnecting and transport.producer is None:
            transport.registerProducer(self._wrapper_producer, True)

    def _abandon(self) -> None:
        """Send nothing more and close the connection (TLS close, then TCP)."""
        self._close()
        self._give_back()
        self.channel.loseConnection()

    def _finish(self) -> None:
        self._close()
        self._give_back()
        if not _twisted.request_disconnected(self.request):
            self.request.finish()


# -- reading: everything a read decrypts to handed on at once --------------------------------


class BatchingTLS(_WRAPPER):  # type: ignore[misc,valid-type]
    """Twisted's TLS wrapper, reading larger pieces and handing on what they decrypt to at once.

    A read of the socket takes up to `READ_SIZE` bytes, and everything it decrypts to goes to
    the channel in one call (as a read of a plain connection does), then what there is to
    send (anything OpenSSL wrote while reading) goes to the transport in one write. The bytes,
    their order, and what happens at a TLS close or error are those of Twisted's wrapper:
    only the size of the pieces changes.
    """

    factory: BatchingTLSFactory
    _raw: RawTls | None = None
    _raw_checked = False
    _out: CipherOut | None = None

    def makeConnection(self, transport: Any) -> None:
        size = getattr(transport, "bufferSize", None)
        if isinstance(size, int) and size < READ_SIZE:
            transport.bufferSize = READ_SIZE  # (an instance attribute: this connection only)
        super().makeConnection(transport)

    def _raw_reads(self) -> RawTls | None:
        if not self._raw_checked:
            self._raw_checked = True
            self._raw = RawTls.of(self._tlsConnection)
        return self._raw

    def _flushReceiveBIO(self) -> None:
        raw = self._raw_reads()
        if raw is None:
            self._receive_records()
        else:
            buffer = self.factory.buffers.plain
            while not self._lostTLSConnection:
                count, error = raw.plain_into(buffer)
                if count and not self._aborted:
                    ProtocolWrapper.dataReceived(self, bytes(buffer.view[:count]))
                if error is not None:
                    self._stopped_at(error)
                elif count < len(buffer):
                    break  # (OpenSSL wants more ciphertext)
        self._flushSendBIO()

    def _receive_records(self) -> None:
        """`_flushReceiveBIO` through pyOpenSSL's public `recv`, a record per call."""
        pieces: list[bytes] = []
        recv = self._tlsConnection.recv
        while not self._lostTLSConnection:
            try:
                pieces.append(recv(_RECORD))
            except SSL.WantReadError:
                break
            except SSL.Error as e:
                if pieces and not self._aborted:
                    ProtocolWrapper.dataReceived(self, b"".join(pieces))
                pieces = []
                self._stopped_at(e)
        if pieces and not self._aborted:
            ProtocolWrapper.dataReceived(self, b"".join(pieces))

    def _stopped_at(self, error: SSL.Error) -> None:
        """What Twisted's wrapper does when `recv` raises `error`."""
        if isinstance(error, SSL.ZeroReturnError):
            # The peer's TLS close: answer it, and let the transport's reason stand.
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        else:
            self._tlsShutdownFinished(Failure(error))

    def _flushSendBIO(self) -> None:
        out = self._out
        if out is None:
            out = self._out = CipherOut(self._tlsConnection, self.factory.buffers.cipher)
        pieces = []
        while data := out.take():
            pieces.append(bytes(data))
        if pieces:
            self.transport.write(pieces[0] if len(pieces) == 1 else b"".join(pieces))


class BatchingTLSFactory(twisted_tls.TLSMemoryBIOFactory):  # type: ignore[misc]
    """Wraps an https listener's connections in `BatchingTLS`, with buffers they share."""

    protocol = BatchingTLS

    def __init__(self, creator: Any, wrapped: Any) -> None:
        super().__init__(creator, False, wrapped)
        self.buffers = Buffers()


def tls_factory(creator: Any, wrapped: Any) -> twisted_tls.TLSMemoryBIOFactory:
    """The TLS wrapping factory of an https listener serving `wrapped` (connections made by
    `creator`, a `hmacfs.process.tls.ReloadableTls`): `BatchingTLSFactory` with the fast paths
    of `wrapped` (a site) on, else Twisted's own."""
    fast = getattr(wrapped, "fast", None)
    if getattr(fast, "enabled", False):
        return BatchingTLSFactory(creator, wrapped)
    return twisted_tls.TLSMemoryBIOFactory(creator, False, wrapped)
