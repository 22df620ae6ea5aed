"""HTTP: the channel that decides on an upload from its headers, and the resource tree.

Twisted hands a resource the request only after the whole body has arrived, and answers
``Expect: 100-continue`` by itself. To refuse an upload before a single body byte is stored
(and without inviting the body), and to stream an accepted body straight into its partial
file, `UploadChannel` hooks `allHeadersReceived` and `UploadRequest` takes the body chunks.
Those hooks use the channel's private `_command`/`_path` attributes, which have the same shape
from Twisted 22.4 to the newest release; `tests/protocol/test_twisted_canary.py` fails loudly
if that changes. Large bodies on plain connections then go from the socket to the file with
splice(2) (`hmacfs.http.fast.splice`), which takes over from Twisted only between the
headers and the end of the body.

A plain GET or HEAD of a small stored file that arrives in one piece is answered by the
channel itself (`UploadChannel.answer_quickly`), with the same headers the resource tree
would send, without a Request object; that needs the line receiver's and the channel's
between-requests state (`test_twisted_canary.py` pins those names down too).

Every domain error (`hmacfs.core.refusals.HttpError`, `hmacfs.core.auth.AuthError`) becomes a
response in exactly two places: `UploadChannel.refuse` (before the body) and `Root.render`
(after it).
"""

from __future__ import annotations

import email.utils
import functools
import io
import ipaddress
import math
import mimetypes
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, ISSLTransport, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import http, resource, server, static
from twisted.web.http import datetimeToString

from hmacfs.core import auth
from hmacfs.core.paths import decode_path, file_name, split_target
from hmacfs.core.refusals import (
    BadRequest,
    Conflict,
    HttpError,
    LengthRequired,
    MethodNotAllowed,
    NotFound,
    StorageFailure,
    TooLarge,
)
from hmacfs.core.settings import Config, HttpSettings
from hmacfs.core.units import format_size
from hmacfs.http.fast.sendfile import SendfileProducer, can_sendfile
from hmacfs.http.fast.splice import BodySplicer, SpliceSupport
from hmacfs.metrics import (
    DISCONNECTED,
    HealthReport,
    HealthResource,
    Metrics,
    MetricsResource,
    check_storage,
    reason_key,
)
from hmacfs.process.logs import LEVELS
from hmacfs.storage.local import CompareOnThread, PartialUpload, Storage, StoredFile

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
BlockingRunner = Callable[..., "defer.Deferred[Any]"]

SERVER_NAME = b"hmac-file-server"
ALLOWED_METHODS = "OPTIONS, HEAD, GET, PUT"
#: Requests other than PUT may carry a body this large at most (it is read and ignored).
MAX_OTHER_BODY = 64 * 1024
#: After a refusal, how long to keep reading (and discarding) what the client still sends, so
#: that it gets to read the answer instead of a connection reset.
LINGER_SECONDS = 5.0
CONTENT_SECURITY_POLICY = b"default-src 'none'; frame-ancestors 'none'; sandbox"
#: Headers on every answer of the resource tree.
BASE_HEADERS = (
    (b"Server", SERVER_NAME),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
    (b"Referrer-Policy", b"no-referrer"),
)
#: At shutdown, how long an idle connection may still start a request before it is closed.
IDLE_CLOSE_GRACE = 0.5
#: Files this large or larger are sent with sendfile(2) over plain connections.
SENDFILE_MIN = 64 * 1024
#: GETs and HEADs of files up to this size that come in one piece, unconditional and without
#: a range, are answered by the channel itself (`UploadChannel.answer_quickly`).
QUICK_MAX_SIZE = SENDFILE_MIN
#: A request head the channel may answer itself: GET or HEAD of an ASCII target, HTTP/1.1,
#: well-formed header lines, nothing after the blank line. Anything else takes the full path.
_QUICK_HEAD = re.compile(
    rb"(GET|HEAD) (/[\x21-\x7e]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
#: Headers that make the answer depend on more than the file (a body, conditions, ranges,
#: connection handling): a request with one of them takes the full path.
_QUICK_DECLINED = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"range",
        b"if-range",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
    }
)
#: Response headers a browser script may read (CORS).
EXPOSED_HEADERS = "Content-Length, Content-Range, Content-Disposition, ETag, Last-Modified"

_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # noqa: S105 (an RFC 9110 token, not a password)
_MEDIA_TYPE = re.compile(
    rf"^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*\s*$"
)
_ETAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')

_log = Logger(namespace="hmacfs.http.site")


#: The HTTP date of a whole second: Date (one new second at a time) and Last-Modified (files
#: asked for again and again).
http_date_of: Callable[[int], bytes] = functools.lru_cache(maxsize=1024)(datetimeToString)


def http_date_now() -> bytes:
    """The Date header's value for now (made once a second)."""
    return http_date_of(int(time.time()))


def safe_media_type(value: str | None) -> str | None:
    """`value` if it is a well-formed ASCII media type (parameters allowed), else None."""
    if not value or not value.isascii() or not _MEDIA_TYPE.match(value):
        return None
    return value.strip()


def is_inline(media_type: str) -> bool:
    """Whether a type may be shown in the browser (images, audio, video, plain text)."""
    essence = media_type.split(";", 1)[0].strip().lower()
    if essence == "image/svg+xml":
        return False  # scriptable: download only
    major = essence.split("/", 1)[0]
    return major in ("image", "video", "audio") or essence == "text/plain"


def content_disposition(kind: str, name: str) -> str:
    """An RFC 6266 header value: an ASCII fallback name plus the UTF-8 name in filename*."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\%;' else "_" for c in name
    )
    value = f'{kind}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def cors_headers(settings: HttpSettings, origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers for an actual (non-preflight) response to a request from `origin`."""
    if not settings.cors_enabled:
        return []
    out: list[tuple[str, str]] = []
    wildcard = "*" in settings.cors_origins
    if wildcard and not settings.cors_credentials:
        out.append(("Access-Control-Allow-Origin", "*"))
    else:
        out.append(("Vary", "Origin"))
        if origin is not None and (wildcard or origin in settings.cors_origins):
            out.append(("Access-Control-Allow-Origin", origin))
            if settings.cors_credentials:
                out.append(("Access-Control-Allow-Credentials", "true"))
        else:
            return out
    out.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
    return out


def preflight_headers(settings: HttpSettings, origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers answering a preflight OPTIONS."""
    out = cors_headers(settings, origin)
    if not any(name == "Access-Control-Allow-Origin" for name, _ in out):
        return out
    out.append(("Access-Control-Allow-Methods", ", ".join(settings.cors_methods)))
    out.append(("Access-Control-Allow-Headers", ", ".join(settings.cors_headers)))
    out.append(("Access-Control-Max-Age", str(int(settings.cors_max_age))))
    return out


@dataclass(frozen=True)
class Download:
    """How GET and HEAD answer about a stored file, whichever path answers them."""

    media_type: str
    etag: str
    #: Content-Disposition, ETag and Cache-Control.
    headers: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def of(cls, stored: StoredFile, now: float) -> Download:
        media_type, etag, fixed = _described(
            stored.rel, stored.content_type, stored.size, stored.mtime
        )
        max_age = 7 * 86400
        if stored.expires is not None:
            max_age = max(0, min(max_age, int(stored.expires - now)))
        return cls(media_type, etag, (*fixed, (b"Cache-Control", b"public, max-age=%d" % max_age)))


@functools.lru_cache(maxsize=1024)
def _described(
    rel: str, content_type: str | None, size: int, mtime: float
) -> tuple[str, str, tuple[tuple[bytes, bytes], ...]]:
    """Media type, ETag, and the Content-Disposition and ETag headers of a stored file (the
    same for every answer about it: worked out once for the files asked for most)."""
    name = file_name(rel)
    media_type = (
        safe_media_type(content_type)
        or mimetypes.guess_type(name, strict=False)[0]
        or "application/octet-stream"
    )
    kind = "inline" if is_inline(media_type) else "attachment"
    etag = f'"{size:x}-{int(mtime * 1_000_000):x}"'
    headers = (
        (b"Content-Disposition", content_disposition(kind, name).encode()),
        (b"ETag", etag.encode()),
    )
    return media_type, etag, headers


def _header(request: http.Request, name: bytes) -> str | None:
    value = request.requestHeaders.getRawHeaders(name)
    return value[0].decode("latin-1") if value else None


def _plain_headers(request: http.Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = name.decode("latin-1").lower()
        # auth signs text as UTF-8 with surrogateescape: this gives it back the exact bytes.
        texts = [v.decode("utf-8", "surrogateescape") for v in values]
        out[key] = "; ".join(texts) if key == "cookie" else texts[0]
    return out


def _etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    for match in _ETAG.finditer(header):
        is_weak, tag = match.group(1), match.group(2)
        if tag == etag.removeprefix("W/") and (weak or not is_weak):
            return True
    return False


class UploadSite(server.Site):  # type: ignore[misc]
    """The web site: configuration, storage and the admission of uploads."""

    noisy = False  # the listeners log where they listen; no "Starting factory" lines

    def __init__(
        self,
        config: Config,
        storage: Storage,
        reactor: IReactorTime,
        run_blocking: BlockingRunner | None = None,
    ) -> None:
        super().__init__(Root(self), timeout=config.server.idle_timeout, reactor=reactor)
        self.protocol = UploadChannel  # type: ignore[assignment,method-assign]
        self.requestFactory = UploadRequest
        self.metrics = Metrics()
        #: Large PUT bodies over plain connections go to their files with splice(2).
        self.body_splice = SpliceSupport()
        self._refilling = False
        self.health_resource = HealthResource(self.health)
        self.stopping = False
        self.config = config
        self._log_answers: bool = LEVELS[config.server.log_level] <= LogLevel.info
        self._proxies = _networks(config.server.trusted_proxies)
        self.storage = storage
        self.clock: Any = reactor
        #: Uploads receiving or committing a body, with their requests (to cut them off).
        self.in_flight: dict[PartialUpload, UploadRequest] = {}
        self._drain_waiters: list[defer.Deferred[None]] = []
        #: Requests being answered (downloads included), so that a stop lets them finish.
        self.active: set[UploadRequest] = set()
        #: Open connections, so that shutdown can close them after their last answer.
        self.channels: set[UploadChannel] = set()
        self._closed_waiters: list[defer.Deferred[None]] = []
        if run_blocking is None:
            pool = reactor.getThreadPool()  # type: ignore[attr-defined]

            def run_blocking(f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
                return deferToThreadPool(reactor, pool, f, *args)  # type: ignore[arg-type]

        self.run_blocking = run_blocking

        def in_background(f: Callable[..., object], *args: Any) -> None:
            run_blocking(f, *args).addErrback(
                lambda failure: _log.debug("{e}", e=failure.getErrorMessage())
            )

        storage.background = in_background

    def now(self) -> float:
        return float(self.clock.seconds())

    def reconfigure(self, config: Config) -> None:
        """Use `config` for requests from now on (SIGHUP); connections keep their channel."""
        self.config = config
        self._log_answers = LEVELS[config.server.log_level] <= LogLevel.info
        self.timeOut = config.server.idle_timeout
        self._proxies = _networks(config.server.trusted_proxies)

    def metrics_site(self) -> server.Site:
        """The site for the private metrics listeners: /metrics and /health only."""
        site = _QuietSite(MetricsResource(self.metrics, self.health), reactor=self.clock)
        site.timeOut = 60
        return site

    def secure(self, request: http.Request) -> bool:
        """Whether the client used TLS: to us, or to a trusted proxy (X-Forwarded-Proto)."""
        return self._secure(
            request.isSecure(),
            _peer_host(request),
            request.requestHeaders.getRawHeaders(b"x-forwarded-proto") or [],
        )

    def _secure(self, tls: bool, peer: str | None, proto: Sequence[bytes]) -> bool:
        if tls:
            return True
        if not self._proxies or peer is None or not _in(peer, self._proxies):
            return False
        # The first value is what the client used with the outermost proxy.
        first = proto[0].split(b",")[0].strip().lower() if proto else b""
        return first == b"https"

    def client_address(self, request: http.Request) -> str:
        """The client's address: the peer's, or the one a trusted proxy forwarded."""
        return self._client_address(
            _peer_host(request), request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        )

    def _client_address(self, peer: str | None, forwarded: Sequence[bytes]) -> str:
        address = peer if peer is not None else "unix"
        if not self._proxies or not _in(address, self._proxies):
            return address
        hops = [h.strip() for v in forwarded for h in v.decode("latin-1").split(",")]
        # The nearest hop that is not one of our proxies is the client.
        for hop in reversed(hops):
            if not hop:
                continue
            if not _in(hop, self._proxies):
                return hop
            address = hop
        return address

    # -- admission, from the headers alone ---------------------------------------------------

    def admit(
        self, method: bytes, target: bytes, request: UploadRequest, length: int | None
    ) -> None:
        """Decide on a request from its headers; raise HttpError/AuthError to refuse it.

        An accepted PUT gets its partial upload attached to `request`.
        """
        if method == b"PUT":
            self._admit_put(target, request, length)
        elif method in (b"GET", b"HEAD", b"OPTIONS"):
            if length is None or length > MAX_OTHER_BODY:
                raise TooLarge("request body too large")
        else:
            raise MethodNotAllowed("method not allowed", (("Allow", ALLOWED_METHODS),))

    def _admit_put(self, target: bytes, request: UploadRequest, length: int | None) -> None:
        config = self.config
        raw_path, raw_query = split_target(target)
        rel = decode_path(raw_path, config.server.upload_prefix)
        if rel == "":
            raise BadRequest("no file name in path")
        request.rel = rel
        if length is None or not request.requestHeaders.hasHeader(b"content-length"):
            raise LengthRequired("Content-Length required")
        headers = _plain_headers(request)
        attempt = auth.PutAttempt(
            method="PUT",
            path=rel,
            query=parse_qs(raw_query.decode("utf-8", "replace"), keep_blank_values=True),
            headers=headers,
            content_length=length,
        )
        grant = auth.verify(attempt, config.hmac, self.now())
        request.grant = grant
        if grant.size > config.server.max_upload_size:
            raise TooLarge(f"file too large (limit {format_size(config.server.max_upload_size)})")
        existing = self.storage.existing(rel)
        if existing is not None:
            if existing.size != grant.size:
                raise Conflict("file already exists")
            # Same path, same size: take the body and compare; an identical body is a client
            # retrying after it lost our 201, and gets its 201 now.
            request.same_size_stored = True
        content_type = safe_media_type(grant.content_type) or "application/octet-stream"
        upload = self.storage.begin(
            rel, grant.size, content_type, expires=grant.expires, scheme=grant.scheme
        )
        request.upload = upload
        request.upload_site = self
        self.in_flight[upload] = request
        self.metrics.upload_started()
        self._refill_partials()

    def _refill_partials(self) -> None:
        """Make partial files ahead of time, on a thread, when few are left."""
        if self._refilling or not self.storage.pool_low():
            return
        self._refilling = True

        def done(result: object) -> None:
            self._refilling = False
            if isinstance(result, Failure):
                # Disk full or the like: `begin` creates files itself, and reports the error.
                _log.debug("making partial files ahead failed: {e}", e=result.getErrorMessage())

        self.run_blocking(self.storage.fill_pool).addBoth(done)

    def upload_ended(self, request: UploadRequest, status: int) -> None:
        """Count an upload that was admitted and has now ended, one way or another."""
        grant = request.grant
        upload = request.upload
        self.metrics.upload_finished(
            status,
            grant.scheme if grant is not None else "",
            upload.received if upload is not None else 0,
            time.monotonic() - request.started,
        )

    def health(self) -> defer.Deferred[HealthReport]:
        """The health report: the storage must be usable, the server not shutting down."""
        if self.stopping:
            return defer.succeed(HealthReport(False, {"service": "shutting down"}))
        d = self.run_blocking(check_storage, self.storage.root, self.storage.partial_dir)
        return d.addCallback(lambda result: HealthReport.from_checks({"storage": result}))

    @property
    def uploads(self) -> frozenset[PartialUpload]:
        return frozenset(self.in_flight)

    def forget(self, upload: PartialUpload) -> None:
        self.in_flight.pop(upload, None)
        self._check_drained()

    def request_started(self, request: UploadRequest) -> None:
        self.active.add(request)

    def request_ended(self, request: UploadRequest) -> None:
        self.active.discard(request)
        self._check_drained()

    def _check_drained(self) -> None:
        if not self.in_flight and not self.active:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self, timeout: float) -> defer.Deferred[int]:
        """Fire once no upload is in flight and no request is being answered (a download).
        After `timeout` seconds, cut off what is still going on (an upload's body as a client
        disconnect would) and wait for the uploads already being committed. The result is how
        many uploads were cut off."""
        cut = [0]
        if not self.in_flight and not self.active:
            return defer.succeed(0)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._drain_waiters.append(waiter)

        def cut_off() -> None:
            for request in list(self.in_flight.values()):
                if not request.committing and request.channel is not None:
                    cut[0] += 1
                    transport: Any = request.channel.transport
                    transport.abortConnection()
            for request in list(self.active):
                if request.upload is None and request.channel is not None:
                    transport = request.channel.transport
                    transport.abortConnection()

        call = self.clock.callLater(timeout, cut_off)

        def done(_: None) -> int:
            if call.active():
                call.cancel()
            return cut[0]

        return waiter.addCallback(done)

    def channel_closed(self, channel: UploadChannel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiters, self._closed_waiters = self._closed_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self, timeout: float) -> defer.Deferred[None]:
        """Close every connection without cutting an answer: one in the middle of a request
        closes after its answer; an idle one gets a moment for a request that may already be
        on its way (a client that just connected), then closes. After `timeout`, whatever is
        still open is dropped."""
        if not self.channels:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._closed_waiters.append(waiter)

        def close_if_idle(channel: UploadChannel) -> None:
            if channel in self.channels and not channel.requests:
                transport: Any = channel.transport
                transport.loseConnection()

        for channel in list(self.channels):
            if channel.requests:
                channel.persistent = False  # Twisted closes it after the current answer
            else:
                # (not persistent=False here: Twisted would drop the request still to come;
                # allHeadersReceived makes a request that starts now the connection's last)
                self.clock.callLater(IDLE_CLOSE_GRACE, close_if_idle, channel)

        def abort() -> None:
            for channel in list(self.channels):
                transport: Any = channel.transport
                transport.abortConnection()

        call = self.clock.callLater(timeout, abort)

        def done(_: None) -> None:
            if call.active():
                call.cancel()

        return waiter.addCallback(done)

    def log(self, request: http.Request) -> None:
        """One line per finished request (Twisted calls this from Request.finish)."""
        grant = getattr(request, "grant", None)
        self.answered(
            client=_client(request),
            secure=self.secure(request),
            method=request.method,
            rel=getattr(request, "rel", None),
            status=request.code,
            size=request.sentLength if request.method != b"PUT" else _body_size(request),
            scheme=grant.scheme if grant is not None else None,
            started=getattr(request, "started", None),
        )

    @property
    def logs_answers(self) -> bool:
        """Whether `answered` logs (the log level is info or lower); else it only counts."""
        return self._log_answers

    def answered(
        self,
        *,
        client: str,
        secure: bool,
        method: bytes,
        rel: str | None,
        status: int,
        size: int,
        scheme: str | None,
        started: float | None,
    ) -> None:
        """Count and log a request that got its whole answer."""
        if method in (b"GET", b"HEAD") and rel:
            self.metrics.download_finished(status, size)
        if not self._log_answers:
            return  # (formatting the event would cost more than the answer)
        duration = time.monotonic() - started if started is not None else 0.0
        _log.info(
            "{client}{secure} {method} {path} -> {status} {size} bytes{scheme} {duration:.3f}s",
            client=client,
            secure=" (https)" if secure else "",
            method=method.decode("latin-1"),
            path=rel or "-",
            status=status,
            size=size,
            scheme=f" [{scheme}]" if scheme is not None else "",
            duration=duration,
        )


def _networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _in(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _peer_host(request: http.Request) -> str | None:
    host = getattr(request.getClientAddress(), "host", None)
    return str(host) if host is not None else None


def _client(request: http.Request) -> str:
    site = getattr(getattr(request, "channel", None), "site", None)
    if isinstance(site, UploadSite):
        return site.client_address(request)
    return _peer_host(request) or "-"


def _body_size(request: http.Request) -> int:
    upload = getattr(request, "upload", None)
    return upload.received if upload is not None else 0


class _QuietSite(server.Site):  # type: ignore[misc]
    """A site that logs nothing per request (metrics scrapes would flood the log)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


class UploadRequest(server.Request):  # type: ignore[misc]
    """A request whose PUT body goes to a partial upload instead of a buffer."""

    upload: PartialUpload | None = None
    upload_site: UploadSite | None = None
    _site: UploadSite | None = None
    grant: auth.Grant | None = None
    rel: str | None = None
    same_size_stored = False
    committing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()

    def gotLength(self, length: int | None) -> None:
        if self.upload is not None:
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        upload = self.upload
        if upload is None:
            super().handleContentChunk(data)
            return
        try:
            upload.write(data)
        except HttpError as e:
            self.body_failed(e)
            return
        if self.upload_site is not None:
            self.upload_site.metrics.bytes_received(len(data))

    def body_failed(self, e: HttpError) -> None:
        """The body cannot be stored (too long, disk full): drop the upload, answer `e`."""
        self._drop_upload(e.status)
        channel = self.channel
        if isinstance(channel, UploadChannel):
            channel.refuse(self, e.status, e.reason, e.headers)

    def _drop_upload(self, status: int) -> None:
        """Forget an upload that will not complete (disconnect, storage failure, shutdown)."""
        upload = self.upload
        site = self.upload_site
        if upload is None or self.committing or upload.done or site is None:
            return
        upload.abort()
        site.forget(upload)
        site.upload_ended(self, status)

    def process(self) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, UploadSite):
            self._site = site
            site.request_started(self)
        super().process()

    def finish(self) -> None:
        super().finish()
        if self._site is not None:
            self._site.request_ended(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A client that goes away mid-body leaves nothing visible; retrying the slot works.
        self._drop_upload(DISCONNECTED)
        super().connectionLost(reason)
        if self._site is not None:
            self._site.request_ended(self)


def _plain_socket(transport: Any) -> Any:
    """The socket of a plain TCP or Unix transport of the reactor's, else None (TLS, tests)."""
    if not can_sendfile(transport):
        return None
    return transport.socket


def _send_if_idle(transport: Any, sock: Any, data: bytes, channel: object) -> bytes:
    """Send what the socket takes of `data` now if nothing of the transport's waits to go
    before it and no producer other than `channel` (the usual one) feeds it; return the rest."""
    if (
        data
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.producer in (None, channel)
    ):
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0  # EAGAIN, or a broken connection the transport finds out about itself
        return data[sent:]
    return data


def write_now(transport: Any, data: bytes, channel: object) -> None:
    """Write `data` to `transport`, straight to its socket when nothing waits to go before it
    and no producer other than `channel` (the usual one) feeds it.

    Twisted's `write` only queues: the socket is written on the reactor's next turn, after two
    epoll changes (watch for writable, then stop). For a small answer on an idle plain TCP or
    Unix connection that round costs more than the answer; the socket takes it now. Whatever it
    does not take (and anything over TLS, or behind queued data) goes through `write`.
    """
    sock = getattr(transport, "socket", None)
    if sock is not None and not ISSLTransport.providedBy(transport):
        data = _send_if_idle(transport, sock, data, channel)
    if data:
        transport.write(data)


class _DirectWrites:
    """Stands in for a plain transport's `write` and `writeSequence` (instance attributes, as
    the reactor's own methods are looked up), so that every answer of the channel goes out as
    `write_now` sends it; the transport is known to be plain once, at `install`. `remove` puts
    Twisted's methods back."""

    def __init__(self, transport: Any, sock: Any, channel: object) -> None:
        self.transport = transport
        self.sock = sock
        self.channel = channel
        self.queue = transport.write
        transport.write = self.write
        transport.writeSequence = self.write_sequence

    @classmethod
    def install(cls, transport: Any, channel: object) -> _DirectWrites | None:
        """Stand in for `transport`'s writes if it is a plain socket transport; else None."""
        sock = _plain_socket(transport)
        return None if sock is None else cls(transport, sock, channel)

    def write(self, data: bytes) -> None:
        rest = _send_if_idle(self.transport, self.sock, data, self.channel)
        if rest:
            self.queue(rest)

    def write_sequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def remove(self) -> None:
        for name in ("write", "writeSequence"):
            vars(self.transport).pop(name, None)


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
    _direct_writes: _DirectWrites | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)
        self._direct_writes = _DirectWrites.install(self.transport, self)

    def getHost(self) -> Any:
        # Asked for by every request (Twisted's Request keeps it); the local address of a
        # connection does not change, so one getsockname(2) per connection is enough.
        if self._local_address is None:
            transport: Any = self.transport
            self._local_address = transport.getHost()
        return self._local_address

    def isSecure(self) -> bool:
        # Twisted answers by adapting the transport to ISSLTransport, for every request; a
        # connection does not change from plain to TLS (no STARTTLS in HTTP), so ask once.
        if self._over_tls is None:
            self._over_tls = bool(super().isSecure())
        return self._over_tls

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        # Twisted keeps the request line in these until the body is complete.
        method: bytes = self._command
        target: bytes = self._path  # type: ignore[assignment]
        try:
            self.site.admit(method, target, request, self.length)
        except (HttpError, auth.AuthError) as e:
            # Before super(): no "100 Continue" goes out for a refused request.
            self.refuse(request, e.status, e.reason, e.headers, body_left=self.length)
            return
        except Exception:
            _log.failure("admitting a request failed")
            self.refuse(request, 500, "internal error", (), body_left=self.length)
            return
        super().allHeadersReceived()
        if self.site.stopping:
            self.persistent = False  # the last request on this connection
        if request.upload is not None and self.site.body_splice.wanted(
            self.length, self.transport
        ):
            self._splice_request = request

    def refuse(
        self,
        request: UploadRequest,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]],
        body_left: int | None = None,
    ) -> None:
        """Answer `status` now, read no more of the request, and close the connection."""
        if self._refused:
            return
        self._refused = True
        self.setTimeout(None)
        body = (reason + "\n").encode("utf-8")
        lines = [
            b"HTTP/1.1 %d %s" % (status, http.RESPONSES.get(status, b"Error")),
            b"Date: " + http.datetimeToString(),
            b"Server: " + SERVER_NAME,
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
            b"X-Content-Type-Options: nosniff",
            b"Content-Security-Policy: " + CONTENT_SECURITY_POLICY,
        ]
        origin = _header(request, b"origin")
        for name, value in [*cors_headers(self.site.config.http, origin), *headers]:
            lines.append(f"{name}: {value}".encode("latin-1"))
        transport: Any = self.transport
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        grant = request.grant
        self.site.metrics.refused(
            status, reason_key(status, reason), grant.scheme if grant is not None else None
        )
        _log.info(
            "{client} {method} {path} -> {status} refused: {reason}",
            client=_client(request),
            method=getattr(self, "_command", b"-").decode("latin-1"),
            path=request.rel or "-",
            status=status,
            reason=reason,
        )
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

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            self._discard(data)
            return
        if data.endswith(b"\r\n\r\n") and self._between_requests() and self.answer_quickly(data):
            return
        super().dataReceived(data)
        if self._splice_request is not None and self._splicer is None:
            self._splicer = BodySplicer.attempt(
                self.site.body_splice, self, self._splice_request
            )

    def _between_requests(self) -> bool:
        """Whether Twisted holds nothing of a request: the next bytes begin a new one."""
        return not (
            self.requests
            or self._buffer
            or self.paused
            or not self.line_mode
            or self._handlingRequest
            or self._dataBuffer
        )

    def answer_quickly(self, head: bytes) -> bool:
        """Answer a plain GET or HEAD of a small stored file from its request head alone.

        Going through Twisted's Request, the resource tree and static.File costs several
        times what the answer itself does. The answer is the full path's, header for header
        (`Download`, `BASE_HEADERS`, `cors_headers`); whatever this does not answer exactly
        like that (conditions, ranges, errors, a head in pieces, anything unusual) returns
        False before anything is written, and takes the full path.
        """
        started = time.monotonic()
        match = _QUICK_HEAD.fullmatch(head)
        if match is None or len(head) > self.MAX_LENGTH or self.site.stopping:
            return False
        method, target, lines = match.groups()
        headers: dict[bytes, bytes] = {}
        for line in lines.split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name in headers or name in _QUICK_DECLINED:
                return False
            headers[name] = value.strip(b" \t")
        if headers.get(b"connection", b"keep-alive").lower() != b"keep-alive":
            return False
        site = self.site
        config = site.config
        raw_path, _ = split_target(target)
        health_path = config.metrics.health_path
        if health_path and raw_path == health_path.encode():
            return False
        try:
            rel = decode_path(raw_path, config.server.upload_prefix)
            stored = site.storage.lookup(rel) if rel else None
        except HttpError:
            return False
        if stored is None:
            return False
        if stored.size > QUICK_MAX_SIZE:
            self.looked_up = (rel, stored)  # the full path answers it in this same call
            return False
        body = b""
        if method == b"GET" and stored.size:
            try:
                fd = os.open(stored.fs_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    body = os.pread(fd, stored.size, 0)
                finally:
                    os.close(fd)
            except OSError:
                return False
            if len(body) != stored.size:
                return False
        download = Download.of(stored, site.now())
        origin = headers.get(b"origin")
        cors = cors_headers(config.http, origin.decode("latin-1") if origin is not None else None)
        out = [b"HTTP/1.1 200 OK", b"Date: " + http_date_now()]
        out += [name + b": " + value for name, value in BASE_HEADERS]
        out += [f"{name}: {value}".encode("latin-1") for name, value in cors]
        out += [name + b": " + value for name, value in download.headers]
        out += [
            b"Accept-Ranges: bytes",
            b"Content-Length: %d" % stored.size,
            b"Content-Type: " + download.media_type.encode("ascii"),
            b"Last-Modified: " + http_date_of(math.ceil(stored.mtime)),
        ]
        self.resetTimeout()
        transport: Any = self.transport
        transport.write(b"\r\n".join(out) + b"\r\n\r\n" + body)  # at once: see _DirectWrites
        client, secure = "", False
        if site.logs_answers:
            peer = getattr(transport.getPeer(), "host", None)
            proto, forwarded = headers.get(b"x-forwarded-proto"), headers.get(b"x-forwarded-for")
            client = site._client_address(peer, [forwarded] if forwarded is not None else [])
            secure = site._secure(self.isSecure(), peer, [proto] if proto is not None else [])
        site.answered(
            client=client,
            secure=secure,
            method=method,
            rel=rel,
            status=200,
            size=len(body),
            scheme=None,
            started=started,
        )
        return True

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            self._discard(data)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._splice_request = self._splicer = None
        if self._refused:
            return
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
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


class Root(resource.Resource):  # type: ignore[misc]
    """Everything under the site: uploads, downloads, CORS preflight."""

    isLeaf = True

    def __init__(self, site: UploadSite) -> None:
        super().__init__()
        self.site = site

    def render(self, request: UploadRequest) -> bytes | int:
        self._set_raw(request, BASE_HEADERS)
        origin = _header(request, b"origin")
        http_settings = self.site.config.http
        health_path = self.site.config.metrics.health_path
        if health_path and split_target(request.uri)[0] == health_path.encode():
            return self.site.health_resource.render(request)  # type: ignore[no-any-return]
        try:
            if request.method == b"OPTIONS":
                preflight = _header(request, b"access-control-request-method") is not None
                extra = (
                    preflight_headers(http_settings, origin)
                    if preflight
                    else cors_headers(http_settings, origin)
                )
                self._set(request, extra)
                request.setHeader(b"allow", ALLOWED_METHODS.encode())
                request.setHeader(b"content-length", b"0")
                return b""
            self._set(request, cors_headers(http_settings, origin))
            if request.method == b"PUT":
                return self._finish_put(request)
            if request.method in (b"GET", b"HEAD"):
                return self._download(request)
            raise MethodNotAllowed("method not allowed", (("Allow", ALLOWED_METHODS),))
        except HttpError as e:
            return self._error(request, e.status, e.reason, e.headers)

    @staticmethod
    def _set(request: http.Request, headers: Iterable[tuple[str, str]]) -> None:
        for name, value in headers:
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))

    @staticmethod
    def _set_raw(request: http.Request, headers: Iterable[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            request.setHeader(name, value)

    def _error(
        self, request: http.Request, status: int, reason: str, headers: Iterable[tuple[str, str]]
    ) -> bytes:
        request.setResponseCode(status)
        self._set(request, headers)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (reason + "\n").encode("utf-8")

    # -- PUT: the body is on disk; make it visible -------------------------------------------

    def _finish_put(self, request: UploadRequest) -> int:
        upload = request.upload
        if upload is None:
            raise BadRequest("upload was not admitted")
        request.committing = True
        compare = request.same_size_stored
        d: defer.Deferred[StoredFile]
        if upload.can_commit_inline(compare):
            # Fast mode: creating names waits for no disk, so the reactor does it at once.
            d = defer.maybeDeferred(upload.commit, compare, inline=True)
            d.addErrback(self._compare_on_thread, upload)
        else:
            d = self.site.run_blocking(upload.commit, compare)

        def done(stored: StoredFile) -> None:
            # Answer before forgetting the upload: a shutdown waiting for it then closes the
            # connection only after this answer is written.
            if not request._disconnected:
                request.setResponseCode(http.CREATED)
                request.setHeader(b"content-length", b"0")
                request.finish()
            self.site.forget(upload)
            self.site.upload_ended(request, http.CREATED)

        def failed(failure: Failure) -> None:
            if failure.check(HttpError):
                e = failure.value
                assert isinstance(e, HttpError)
                status, reason, headers = e.status, e.reason, e.headers
                if isinstance(e, StorageFailure):
                    _log.error("storing {path} failed: {reason}", path=upload.rel, reason=reason)
            else:
                _log.failure("storing {path} failed", failure, path=upload.rel)
                status, reason, headers = 500, "internal error", ()
            if not request._disconnected:
                body = self._error(request, status, reason, headers)
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
                request.finish()
            self.site.forget(upload)
            self.site.upload_ended(request, status)

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET  # type: ignore[no-any-return]

    def _compare_on_thread(
        self, failure: Failure, upload: PartialUpload
    ) -> defer.Deferred[StoredFile]:
        """A concurrent upload linked the path first: compare the bodies, on a thread."""
        failure.trap(CompareOnThread)
        return self.site.run_blocking(upload.commit, True)

    # -- GET/HEAD ----------------------------------------------------------------------------

    def _sendfile(
        self, request: UploadRequest, stored: StoredFile, media_type: str
    ) -> int | bytes | None:
        """Serve a GET with sendfile(2); None when static.File should answer instead."""
        range_header = _header(request, b"range")
        if range_header is None:
            first, last = 0, stored.size - 1
        else:
            chosen = single_range(range_header, stored.size)
            if chosen is None:
                return None
            first, last = chosen
        if request.setLastModified(stored.mtime) is http.CACHED:
            return b""
        try:
            fd = os.open(stored.fs_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise NotFound("not found") from None
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-type", media_type.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % (last - first + 1))
        if range_header is not None:
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(
                b"content-range", b"bytes %d-%d/%d" % (first, last, stored.size)
            )
        request.write(b"")  # the headers
        SendfileProducer(request, fd, first, last - first + 1).start()
        return server.NOT_DONE_YET  # type: ignore[no-any-return]

    def _stored(self, request: UploadRequest, rel: str) -> StoredFile:
        """The file at `rel`, as the quick path just found it, else looked up now."""
        channel = request.channel
        if isinstance(channel, UploadChannel) and channel.looked_up is not None:
            found, channel.looked_up = channel.looked_up, None
            if found[0] == rel:
                return found[1]
        return self.site.storage.lookup(rel)

    def _download(self, request: UploadRequest) -> bytes | int:
        raw_path, _ = split_target(request.uri)
        rel = decode_path(raw_path, self.site.config.server.upload_prefix)
        if rel == "":
            raise NotFound("not found")
        request.rel = rel
        stored = self._stored(request, rel)
        download = Download.of(stored, self.site.now())
        self._set_raw(request, download.headers)
        media_type, etag = download.media_type, download.etag

        if_match = _header(request, b"if-match")
        if if_match is not None and not _etag_matches(if_match, etag, weak=False):
            request.setResponseCode(http.PRECONDITION_FAILED)
            return b""
        if_none_match = _header(request, b"if-none-match")
        if if_none_match is not None:
            # RFC 9110: If-None-Match wins over If-Modified-Since.
            request.requestHeaders.removeHeader(b"if-modified-since")
            if _etag_matches(if_none_match, etag, weak=True):
                request.setResponseCode(http.NOT_MODIFIED)
                request.setHeader(
                    b"last-modified", http.datetimeToString(math.ceil(stored.mtime))
                )
                return b""
        if_range = _header(request, b"if-range")
        if if_range is not None and request.requestHeaders.hasHeader(b"range"):
            if if_range.strip().startswith(('"', "W/")):
                still_valid = if_range.strip() == etag
            else:
                parsed = email.utils.parsedate_tz(if_range)
                still_valid = (
                    parsed is not None and email.utils.mktime_tz(parsed) == int(stored.mtime)
                )
            if not still_valid:
                request.requestHeaders.removeHeader(b"range")

        if request.method == b"GET" and stored.size >= SENDFILE_MIN:
            transport = request.channel.transport if request.channel is not None else None
            if can_sendfile(transport):
                sent = self._sendfile(request, stored, media_type)
                if sent is not None:
                    return sent
        served = static.File(str(stored.fs_path))
        served.type = media_type
        served.encoding = None
        return served.render(request)  # type: ignore[no-any-return]


def single_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a satisfiable single-range header ("bytes=a-b", "bytes=a-",
    "bytes=-n"), or None for anything else (several ranges, malformed, unsatisfiable), which
    twisted.web.static.File then answers (multipart, or 416)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    first_text, last_text = first_text.strip(), last_text.strip()
    for text in (first_text, last_text):
        if text and not (text.isascii() and text.isdigit()):
            return None
    if first_text == "":
        if last_text == "" or int(last_text) == 0:
            return None
        return max(0, size - int(last_text)), size - 1
    first = int(first_text)
    last = size - 1 if last_text == "" else min(int(last_text), size - 1)
    if first > last or first >= size:
        return None
    return first, last


def make_site(
    config: Config,
    storage: Storage,
    reactor: IReactorTime,
    run_blocking: BlockingRunner | None = None,
) -> UploadSite:
    """The site for `config`, storing into `storage`."""
    return UploadSite(config, storage, reactor, run_blocking)
