"""Large PUT bodies over plain TCP or Unix sockets with splice(2): socket → pipe → partial file.

How it fits Twisted: an admitted body starts the ordinary way, and whatever Twisted has already
read goes through `UploadRequest.handleContentChunk`. Once the channel has handed over all it
holds and waits for more body, `BodySplicer` takes over the transport's reads by setting an
instance attribute `doRead` on the transport (the reactor calls `transport.doRead()` whenever
the socket is readable). Twisted's own startReading/stopReading are untouched, so backpressure,
`loseConnection`, `abortConnection` and the idle timeout work as before. Each call moves the
body from the socket into a pipe and from the pipe into the partial file, never more than what
is left of the body and at most `CHUNK` bytes, so that one large upload does not keep the
reactor from other connections. The bytes never enter Python.

When the body is complete the transport's own `doRead` is back (`del`), so what the client sent
after the body (a pipelined request) is read by Twisted, and the channel's transfer decoder is
told the body is done exactly as if its last byte had come through it. End of file and socket
errors are returned from `doRead` as the transport's own `doRead` returns them, so a client that
goes away mid-body is a disconnect like any other.

Twisted internals this relies on, with the same shape from Twisted 22.4 to the newest release:
`HTTPChannel._transferDecoder` (an `_IdentityTransferDecoder` whose `contentLength` counts the
body bytes still to come, `dataCallback` the request's `handleContentChunk`, `finishCallback`
the channel's `_finishRequestBody`) and LineReceiver's `_buffer`/`_busyReceiving`. `body_decoder`
checks that shape before every splice and declines otherwise (the body then takes the ordinary
path); `tests/protocol/test_twisted_canary.py` fails loudly if it changes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from hmacfs.core.printable import printable
from hmacfs.core.refusals import Refusal
from hmacfs.http import _twisted

#: Bodies with a Content-Length this large or larger are spliced. Measured on loopback: a
#: 256 KiB body costs the same CPU either way, from 1 MiB on splicing takes about half.
SPLICE_MIN = 512 * 1024
#: Bytes moved per readable event at most (one reactor turn): about half a millisecond, so
#: that small requests on other connections are not held up by a large upload (a GET takes a
#: few turns).
CHUNK = 1024 * 1024
#: The pipe's size, if the system allows (/proc/sys/fs/pipe-max-size, 1 MiB by default). Each
#: splice moves at most this much: a 1 GiB upload on loopback went from about 1.1 to 1.4 GB/s
#: when this grew from 128 KiB to 1 MiB (fewer calls per chunk). Under memory pressure one
#: call can take milliseconds.
PIPE_SIZE = 1024 * 1024
#: Errors that mean splice(2) cannot be used here at all.
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS)
_PIPE_MAX_SIZE = "/proc/sys/fs/pipe-max-size"

_log = Logger(namespace="hmacfs.http.fast.splice")


def _pipe_size() -> int:
    try:
        with open(_PIPE_MAX_SIZE, "rb") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        return PIPE_SIZE
    return max(4096, min(PIPE_SIZE, limit))


class SpliceSupport:
    """Whether this process splices bodies, and how many it has spliced (one per site)."""

    def __init__(self, minimum: int = SPLICE_MIN) -> None:
        self.minimum = minimum
        self.usable = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
        self.pipe_size = _pipe_size()
        #: Bodies spliced to their end, and the bytes spliced (of those and of any other).
        self.bodies = 0
        self.bytes = 0

    def wanted(self, length: int | None, transport: Any) -> bool:
        """Whether a body of `length` bytes arriving on `transport` should be spliced."""
        return (
            self.usable
            and length is not None
            and length >= self.minimum
            and can_splice(transport)
        )

    def unusable(self, e: OSError) -> None:
        """splice(2) failed in a way that says it never works here: stop using it."""
        if self.usable:
            self.usable = False
            _log.warn(
                "splice(2) is not usable here ({error}); bodies are read the ordinary way",
                error=os.strerror(e.errno or 0),
            )


def can_splice(transport: Any) -> bool:
    """Whether `transport` is a plain TCP or Unix stream connection whose reads can be taken."""
    return (
        isinstance(transport, tcp.Connection)
        and not ISSLTransport.providedBy(transport)
        and _twisted.reads_taken(transport) is None
        and bool(transport.connected)
        and not transport.disconnecting
    )


class BodySplicer:
    """Moves the rest of one request body from the connection's socket to its partial file.

    `request` is an `hmacfs.http.request.UploadRequest` with an upload; `channel` its
    channel. The bytes moved are reported to the request's `Upload`; a failure to store them
    goes to the request's `body_failed`, as for a body read the ordinary way.
    """

    def __init__(self, support: SpliceSupport, channel: Any, request: Any, decoder: Any) -> None:
        self.support = support
        self.channel = channel
        self.request = request
        self.upload = request.upload
        self.decoder = decoder
        self.transport = channel.transport
        self.left = _twisted.body_left(decoder)
        self.spliced = 0
        self._pipe: tuple[int, int] | None = None
        self._pipe_capacity = 0
        self._stopped = False

    @classmethod
    def attempt(cls, support: SpliceSupport, channel: Any, request: Any) -> BodySplicer | None:
        """Take over the rest of `request`'s body now, if possible; None if not (now)."""
        upload = request.upload
        if not support.usable or upload is None or not upload.interruptible:
            return None
        decoder = _twisted.body_decoder(channel, request)
        if decoder is None or not can_splice(channel.transport):
            return None
        if upload.size - upload.received != _twisted.body_left(decoder):
            return None  # not a state this module knows how to continue from
        splicer = cls(support, channel, request, decoder)
        return splicer if splicer._start() else None

    def _start(self) -> bool:
        try:
            read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            _log.warn("cannot make a pipe ({error}); reading a body the ordinary way",
                      error=os.strerror(e.errno or 0))
            return False
        self._pipe = (read_end, write_end)
        with contextlib.suppress(OSError):
            # EPERM once the user's pipes use up pipe-user-pages-soft: the default size works.
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, self.support.pipe_size)
        self._pipe_capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        _twisted.take_reads(self.transport, self._do_read)
        _log.debug("{path}: splicing the body, {left} bytes to go",
                   path=printable(self.upload.rel), left=self.left)
        return True

    def stop(self) -> None:
        """Give the transport's reads back to Twisted and close the pipe. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if _twisted.reads_taken(self.transport) == self._do_read:
            _twisted.give_back_reads(self.transport)
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def _do_read(self) -> object:
        """The transport's doRead while splicing: None, or why the connection ended."""
        upload = self.upload
        if self._pipe is None or not upload.interruptible:
            # Dropped under us (cut off, refused): nothing more goes to its file.
            self.stop()
            return None
        read_end, write_end = self._pipe
        sock = self.transport.fileno()
        budget = min(self.left, CHUNK)
        moved = 0
        ended: object = None
        fall_back = False
        try:
            file_fd = upload.fileno()
            while moved < budget:
                try:
                    got = os.splice(
                        sock,
                        write_end,
                        min(budget - moved, self._pipe_capacity),
                        flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                    )
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in _UNSUPPORTED:
                        # Nothing was taken from the socket: Twisted reads it from here on.
                        self.support.unusable(e)
                        fall_back = True
                    else:
                        ended = main.CONNECTION_LOST
                    break
                if got == 0:
                    ended = main.CONNECTION_DONE
                    break
                # Taken from the socket: the decoder must not count these again.
                self.left -= got
                _twisted.body_taken(self.decoder, got)
                fall_back = self._to_file(read_end, file_fd, got)
                upload.received_directly(got)
                moved += got
                if fall_back:
                    break
        except (Refusal, OSError) as e:
            failure = (
                e
                if isinstance(e, Refusal)
                else upload.failed(e)
            )
            self._count(moved)
            self.stop()
            self.request.body_failed(failure)
            return None
        self._count(moved)
        if self.left == 0:
            self._finish()
        elif ended is not None or fall_back:
            self.stop()
        return ended

    def _to_file(self, read_end: int, file_fd: int, count: int) -> bool:
        """Move `count` bytes from the pipe to the file. True if splice(2) cannot write to this
        file (they were copied instead) and the rest of the body must take the ordinary path.
        Raises OSError (the disk: ENOSPC, EIO, ...)."""
        while count:
            try:
                count -= os.splice(read_end, file_fd, count, flags=os.SPLICE_F_MOVE)
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                self.support.unusable(e)
                while count:
                    data = os.read(read_end, count)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(file_fd, view) :]
                    count -= len(data)
                return True
        return False

    def _count(self, moved: int) -> None:
        if not moved:
            return
        self.spliced += moved
        self.support.bytes += moved
        self.channel.resetTimeout()

    def _finish(self) -> None:
        """The whole body is in the file: hand the connection back and end the body."""
        self.stop()
        self.support.bodies += 1
        _log.debug(
            "{path}: {spliced} of {size} body bytes spliced",
            path=printable(self.upload.rel),
            spliced=self.spliced,
            size=self.upload.size,
        )
        _twisted.end_body(self.decoder)
