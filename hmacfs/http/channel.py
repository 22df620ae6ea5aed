"""The channel: admits or refuses each request as soon as its headers are in.

Twisted hands a resource the request only after the whole body has arrived, and answers
``Expect: 100-continue`` by itself. To refuse an upload before a single body byte is stored
(and without inviting the body), `UploadChannel.allHeadersReceived` asks the site to admit
the request first; a refusal is written at once (`hmacfs.http.answers`) and nothing more of the
request is read. With the fast paths on, a small plain GET is answered from its head
(`hmacfs.http.fast.quick`), a large body on a plain connection is spliced into its file
(`hmacfs.http.fast.splice`), and answers go straight to an idle socket
(`hmacfs.http.fast.direct`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from hmacfs.core.refusals import Refusal, RequestTimeout, TooLarge
from hmacfs.http import _twisted
from hmacfs.http.answers import as_refusal, raw_refusal
from hmacfs.http.caps import refusal_bytes
from hmacfs.http.fast.direct import DirectWrites
from hmacfs.http.fast.quick import answer_quickly
from hmacfs.http.fast.quick_put import take_put
from hmacfs.http.fast.splice import BodySplicer
from hmacfs.http.request import UploadRequest
from hmacfs.metrics import DISCONNECTED
from hmacfs.storage.backend import StoredFile

if TYPE_CHECKING:
    from hmacfs.http.site import UploadSite

#: A Content-Length of more digits than this is no size any upload can have.
MAX_LENGTH_DIGITS = 18
#: After a refusal, how long to keep reading (and discarding) what the client still sends, so
#: that it gets to read the answer instead of a connection reset.
LINGER_SECONDS = 5.0

_log = Logger(namespace="hmacfs.http")


class UploadChannel(http.HTTPChannel):  # type: ignore[misc]
    """An HTTP/1.1 channel that admits or refuses a request as soon as its headers are in."""

    site: UploadSite
    _refused = False
    _linger_call: Any = None
    _discard_left: int | None = None
    #: A file the quick path looked up but left to the full path (too large), which the full
    #: path then takes instead of looking it up again: (signed path, file).
    looked_up: tuple[str, StoredFile] | None = None
    #: An admitted PUT whose body is to be spliced once Twisted has handed over what it holds.
    _splice_request: UploadRequest | None = None
    _splicer: BodySplicer | None = None
    _local_address: Any = None
    _over_tls: bool | None = None
    _direct_writes: DirectWrites | None = None
    #: A request whose admission waits, what arrived of its body meanwhile, and whether its
    #: (empty) body ended meanwhile.
    _pending: UploadRequest | None = None
    _held_back: list[bytes]
    _content_pending = False
    _lost = False
    #: While a PUT taken whole (`hmacfs.http.fast.quick_put`) is committed on a thread: what
    #: arrived meanwhile, handed on once it is answered.
    _held: list[bytes] | None = None
    _held_timeout: float | None = None
    #: The deadline of the request head being received (see `hmacfs.http.deadlines`).
    _head_timer: Any = None
    #: The peer's address as the connection caps counted it (None: not counted).
    counted_host: tuple[str | None] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)
        self.site.deadlines.connection_opened()
        over = self.site.connection_opened(self)
        if over is not None:
            self._refused = True
            transport: Any = self.transport
            transport.write(refusal_bytes(over))
            transport.loseConnection()
        if self.site.fast.enabled:
            self._direct_writes = DirectWrites.install(self.transport, self)

    def getHost(self) -> Any:
        # Asked for by every request; the local address of a connection does not change.
        if self._local_address is None:
            transport: Any = self.transport
            self._local_address = transport.getHost()
        return self._local_address

    def isSecure(self) -> bool:
        # A connection does not change from plain to TLS (no STARTTLS in HTTP): ask once.
        if self._over_tls is None:
            self._over_tls = bool(super().isSecure())
        return self._over_tls

    def headerReceived(self, line: bytes) -> bool:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and len(value.strip()) > MAX_LENGTH_DIGITS:
            # Twisted would take it to int(), which raises past 4300 digits.
            self.refuse(self.requests[-1], TooLarge("Content-Length too large"))
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        self._stop_head_timer()
        if self._refused:
            return  # (a header was refused already; what follows is discarded)
        request: UploadRequest = self.requests[-1]
        method, target = _twisted.request_line(self)
        try:
            pending = self.site.admit(method, target, request, self.length)
        except Exception as e:  # every failure is answered; a bug is logged
            # Before super(): no "100 Continue" goes out for a refused request.
            self.refuse(request, as_refusal(e, "admitting a request"), body_left=self.length)
            return
        if pending is not None:
            self._wait_for(request, pending)
            return
        self._admitted(request)

    def _admitted(self, request: UploadRequest) -> None:
        """`request` was admitted: announce a resumable upload, let the body come."""
        exchange = request.resumable
        if (
            exchange is not None
            and exchange.creation
            and request.upload is not None
            and _twisted.request_version(self) == b"HTTP/1.1"
        ):
            transport: Any = self.transport
            transport.write(self.site.resumptions.announcement(request))
        super().allHeadersReceived()
        if self.site.stopping:
            self.persistent = False  # the last request on this connection
        if request.upload is not None and self.site.fast.splice.wanted(self.length, self.transport):
            self._splice_request = request

    # -- a request whose admission waits (for another request to let go of an upload) -------

    def _wait_for(self, request: UploadRequest, pending: defer.Deferred[None]) -> None:
        """Read nothing more until `pending` decides on `request`; what had been read already
        (at most one read's worth) is held back and handed on once it is admitted."""
        self._pending = request
        self._held_back = []
        self._content_pending = False
        transport: Any = self.transport
        transport.pauseProducing()

        def decided(_: None) -> None:
            held, self._held_back = self._held_back, []
            content, self._content_pending = self._content_pending, False
            self._pending = None
            if self._lost:
                if request.upload is not None:
                    request.upload.abort(DISCONNECTED)
                return
            self._admitted(request)
            transport.resumeProducing()
            for data in held:
                http.HTTPChannel.rawDataReceived(self, data)
            if content:
                http.HTTPChannel.allContentReceived(self)

        def refused(failure: Failure) -> None:
            held, self._held_back = self._held_back, []
            self._pending = None
            if self._lost:
                return
            left = None if self.length is None else max(0, self.length - sum(map(len, held)))
            error = failure.value if failure.value is not None else Exception("no reason")
            self.refuse(request, as_refusal(error, "admitting a request"), body_left=left)
            if left != 0:
                transport.resumeProducing()

        pending.addCallbacks(decided, refused)

    def refuse(
        self,
        request: UploadRequest,
        refusal: Refusal,
        body_left: int | None = None,
        method: bytes | None = None,
    ) -> None:
        """Answer `refusal` now, read no more of the request, and close the connection
        (`method`: the request's, if the channel does not hold its request line)."""
        if self._refused:
            return
        self._refused = True
        self.setTimeout(None)
        origin = request.getHeader(b"origin")
        if method is None:
            method = _twisted.request_line(self)[0]
        transport: Any = self.transport
        transport.write(
            raw_refusal(
                refusal,
                self.site.config.http,
                origin.decode("latin-1") if origin is not None else None,
                request,
                head=method == b"HEAD",
            )
        )
        self.site.refused(request, method, refusal)
        self._discard_left = body_left
        if body_left == 0:
            self.loseConnection()
            return
        # Keep reading (and dropping) what the client is still sending for a moment, so it
        # reads our answer rather than a reset; a TCP half-close tells it we are done. Not over
        # TLS: its close_notify would end the session while the client's records still come
        # (the TLS wrapper also claims ITCPTransport, so ask about TLS first).
        if ITCPTransport.providedBy(transport) and not ISSLTransport.providedBy(transport):
            transport.loseWriteConnection()
        self._linger_call = self.callLater(LINGER_SECONDS, self._end_linger)

    def _end_linger(self) -> None:
        self._linger_call = None
        transport: Any = self.transport
        transport.abortConnection()

    def _discard(self, data: bytes) -> None:
        if self._discard_left is not None:
            self._discard_left -= len(data)
            if self._discard_left <= 0:
                self.loseConnection()

    @property
    def lost(self) -> bool:
        """Whether the connection is gone."""
        return self._lost

    def hold(self) -> None:
        """Read nothing more until `release` (an answer is being worked out off the channel);
        what was read already is kept for then."""
        if self._held is None:
            self._held = []
            # As Twisted does while a request is handled: no idle timeout meanwhile.
            self._held_timeout = self.setTimeout(None)
            transport: Any = self.transport
            transport.pauseProducing()

    def release(self) -> None:
        """Undo `hold`: read again, and on the reactor's next turn hand on what was kept."""
        held, self._held = self._held, None
        if held is None or self._lost:
            return
        self.setTimeout(self._held_timeout)
        transport: Any = self.transport
        transport.resumeProducing()
        if held:
            self.site.clock.callLater(0, self._hand_on, held)

    def _hand_on(self, held: list[bytes]) -> None:
        for data in held:
            if self._lost:
                return
            self.dataReceived(data)  # (kept again if a request holds the channel again)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            self._discard(data)
            return
        if self._held is not None:
            self._held.append(data)
            return
        if self.site.fast.enabled and _twisted.between_requests(self):
            if data.endswith(b"\r\n\r\n") and answer_quickly(self, data):
                return
            if data.startswith(b"PUT ") and take_put(self, data):
                return
        if self._head_timer is None and not self.requests and _twisted.between_requests(self):
            # A new request begins: its head must be in by the deadline, however it trickles.
            self._head_timer = self.callLater(
                self.site.config.server.head_timeout, self._head_too_slow
            )
        super().dataReceived(data)
        if self._splice_request is not None and self._splicer is None:
            self._splicer = BodySplicer.attempt(self.site.fast.splice, self, self._splice_request)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            self._discard(data)
            return
        if self._pending is not None:
            self._held_back.append(data)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._splice_request = self._splicer = None
        if self._refused:
            return
        if self._pending is not None:
            self._content_pending = True
            return
        super().allContentReceived()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._refused:
            return
        self._refused = True
        refusal = RequestTimeout("the request head is coming too slowly")
        self.site.metrics.refused(refusal.status, refusal.reason, None)
        _log.info("a request head came too slowly; closing the connection")
        transport: Any = self.transport
        transport.write(raw_refusal(refusal, self.site.config.http, None))
        transport.loseConnection()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._stop_head_timer()
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        if self._splicer is not None:
            self._splicer.stop()
        if self._direct_writes is not None:
            self._direct_writes.remove()  # (and no reference cycle is left behind)
            self._direct_writes = None
        super().connectionLost(reason)
        self.site.channel_closed(self)
