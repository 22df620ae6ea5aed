"""The web site: configuration, storage, the admission of uploads, and the bookkeeping of
what is in flight (for metrics, logging, drain and shutdown).

The request path: `hmacfs.http.channel.UploadChannel` (admits or refuses from the headers),
`hmacfs.http.request.UploadRequest` (feeds the body to its `hmacfs.http.upload.Upload`),
`hmacfs.http.resources.Root` (commits uploads, answers downloads and preflights). Errors are
answered by `hmacfs.http.answers` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from hmacfs.core import auth
from hmacfs.core import resumable as wire
from hmacfs.core.headers import ALLOWED_METHODS, safe_media_type
from hmacfs.core.paths import decode_path, parse_query, split_target
from hmacfs.core.printable import printable
from hmacfs.core.refusals import (
    BadRequest,
    Conflict,
    LengthRequired,
    MethodNotAllowed,
    Reason,
    Refusal,
    TooLarge,
)
from hmacfs.core.settings import Config
from hmacfs.core.throttle import Throttle
from hmacfs.core.units import format_size
from hmacfs.http import quota
from hmacfs.http.caps import ConnectionCaps
from hmacfs.http.channel import UploadChannel
from hmacfs.http.deadlines import Deadlines
from hmacfs.http.fast import FastPaths
from hmacfs.http.proxies import TrustedProxies
from hmacfs.http.request import UploadRequest
from hmacfs.http.resources import Root
from hmacfs.http.resumable import Resumptions
from hmacfs.http.upload import Upload
from hmacfs.metrics import DISCONNECTED, HealthReport, HealthResource, Metrics, MetricsResource
from hmacfs.storage.backend import Backend, Partial, StoredFile

T = TypeVar("T")
BlockingRunner = Callable[..., "defer.Deferred[Any]"]

#: Requests other than PUT may carry a body this large at most (it is read and ignored).
MAX_OTHER_BODY = 64 * 1024
#: A hint about signatures that match no secret is logged at most once in this many seconds.
HINT_INTERVAL = 60.0
#: The storage check behind /health runs at most once in this many seconds.
HEALTH_CACHE = 5.0
#: At shutdown, how long an idle connection may still start a request before it is closed.
IDLE_CLOSE_GRACE = 0.5

_log = Logger(namespace="hmacfs.http")


def _logs_answers(config: Config) -> bool:
    """Whether a line per answer is logged (the log level is info or lower)."""
    return config.server.log_level in ("debug", "info")


def _peer_host(request: http.Request) -> str | None:
    host = getattr(request.getClientAddress(), "host", None)
    return str(host) if host is not None else None


class UploadSite(server.Site):  # type: ignore[misc]
    """The web site: configuration, storage and the admission of uploads."""

    noisy = False  # the listeners log where they listen; no "Starting factory" lines

    def __init__(
        self,
        config: Config,
        storage: Backend,
        reactor: IReactorTime,
        run_blocking: BlockingRunner | None = None,
        fast: FastPaths | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(Root(self), timeout=config.server.idle_timeout, reactor=reactor)
        self.protocol = UploadChannel  # type: ignore[assignment,method-assign]
        self.requestFactory = UploadRequest
        self.metrics = Metrics()
        if fast is None:
            # (the fast paths read and write local files; a remote store's go through threads)
            fast = FastPaths(
                enabled=config.server.fast_paths and not storage.remote
            )
        self.fast = fast
        self._refilling = False
        self.health_resource = HealthResource(self.public_health)
        self._health_last: tuple[float, HealthReport] | None = None
        self._health_waiters: list[defer.Deferred[HealthReport]] = []
        self.stopping = False
        self.config = config
        self._log_answers = _logs_answers(config)
        self.proxies = TrustedProxies(config.server.trusted_proxies)
        self.storage = storage
        #: Timers and durations (the reactor's clock, monotonic in a server).
        self.clock: Any = reactor
        #: The date, for what is compared with dates: expiry and ages.
        self.wall = wall
        self.resumptions = Resumptions(self)
        self.deadlines = Deadlines(self)
        self.caps = ConnectionCaps(self.now)
        #: Signatures that matched no secret, for a hint about them once in a while.
        self._mismatches = Throttle(self.now, HINT_INTERVAL)
        #: Uploads whose body is coming or being committed, with their requests (to cut them).
        self.in_flight: dict[Upload, UploadRequest] = {}
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
        """An instant on the timers' clock (for intervals; not a date: see `wall`)."""
        return float(self.clock.seconds())

    def reconfigure(self, config: Config) -> None:
        """Use `config` for requests from now on (SIGHUP); connections keep their channel."""
        self.config = config
        self._log_answers = _logs_answers(config)
        self.timeOut = config.server.idle_timeout
        self.proxies = TrustedProxies(config.server.trusted_proxies)

    def metrics_site(self) -> server.Site:
        """The site for the private metrics listeners: /metrics and /health only."""
        site = _QuietSite(MetricsResource(self.metrics, self.health), reactor=self.clock)
        site.timeOut = 60
        return site

    def secure(self, request: http.Request) -> bool:
        """Whether the client used TLS: to us, or to a trusted proxy (X-Forwarded-Proto)."""
        return self.proxies.secure(
            request.isSecure(),
            _peer_host(request),
            request.requestHeaders.getRawHeaders(b"x-forwarded-proto") or [],
        )

    def client_address(self, request: http.Request) -> str:
        """The client's address: the peer's, or the one a trusted proxy forwarded."""
        return self.proxies.client_address(
            _peer_host(request), request.requestHeaders.getRawHeaders(b"x-forwarded-for") or []
        )

    # -- admission, from the headers alone ---------------------------------------------------

    def admit(
        self, method: bytes, target: bytes, request: UploadRequest, length: int | None
    ) -> defer.Deferred[None] | None:
        """Decide on a request from its headers; raise a Refusal to refuse it. An accepted
        PUT gets its `Upload` attached to `request`. A request to a resumable upload's
        resource may have to wait for another request to let go of it: it gets a Deferred
        that fires once it is decided (or fails with the Refusal)."""
        split = split_target(target)
        raw_path = split[0]
        resources = self.resumptions.resource_prefix()
        if raw_path.startswith(resources):
            if method != b"PATCH":
                self._small_body(length)
            token = raw_path[len(resources) :].decode("latin-1")
            return self.resumptions.admit(method, token, request, length)
        if method == b"PUT":
            return self._admit_put(split, request, length, None)
        elif method == b"POST":
            creation = self.resumptions.creation(request.plain_headers())
            if creation is None:
                raise MethodNotAllowed("method not allowed", headers=(("Allow", ALLOWED_METHODS),))
            return self._admit_put(split, request, length, creation)
        elif method in (b"GET", b"HEAD", b"OPTIONS"):
            self._small_body(length)
        else:
            raise MethodNotAllowed("method not allowed", headers=(("Allow", ALLOWED_METHODS),))
        return None

    def admit_put(self, target: bytes, request: UploadRequest, length: int) -> Upload:
        """Admit a plain PUT (no resumable creation) whose whole body is at hand as `admit`
        would; raise a Refusal to refuse it (BadRequest for the resumable uploads' resources,
        which `admit` takes)."""
        split = split_target(target)
        if split[0].startswith(self.resumptions.resource_prefix()):
            raise BadRequest("not an upload path")
        pending = self._admit_put(split, request, length, None, whole=True)
        if pending is not None or request.upload is None:
            raise BadRequest("upload must wait for its storage")  # (a remote store's)
        return request.upload

    @staticmethod
    def _small_body(length: int | None) -> None:
        if length is None or length > MAX_OTHER_BODY:
            raise TooLarge("request body too large")

    def _admit_put(
        self,
        split: tuple[bytes, bytes],
        request: UploadRequest,
        length: int | None,
        creation: wire.Creation | None,
        *,
        whole: bool = False,
    ) -> defer.Deferred[None] | None:
        """Admit a PUT (or a resumable upload's creation): its upload is attached to
        `request` now, or, for a remote store, by the Deferred returned once the store said
        what is at the path.

        What is stored at the path is looked up first, so that a body that cannot be stored
        there is refused before it is read. For a `whole` body (all of it read already, and
        at most a small one) that is left to the commit, which finds the file there all the
        same (the link fails) and judges the body as it would have: unless the quotas need to
        know beforehand, since a retry of a stored upload adds nothing to what they count.
        """
        config = self.config
        raw_path, raw_query = split  # (the request target's, split once by the caller)
        rel = decode_path(raw_path, config.server.upload_prefix)
        if rel == "":
            raise BadRequest("no file name in path", Reason.BAD_PATH)
        request.rel = rel
        headers = request.plain_headers()
        if creation is None:
            creation = self.resumptions.creation(headers)
        has_length = length is not None and request.requestHeaders.hasHeader(b"content-length")
        if not has_length:
            raise LengthRequired("Content-Length required")
        assert length is not None
        size = length if creation is None else wire.total_size(creation, length)
        # (method, path, query, headers, content length: positional, as keywords would cost a
        # dictionary per upload)
        attempt = auth.PutAttempt("PUT", rel, parse_query(raw_query), headers, size)
        grant = auth.verify(attempt, config.hmac, self.wall())
        request.grant = grant
        if grant.size > config.server.max_upload_size:
            raise TooLarge(f"file too large (limit {format_size(config.server.max_upload_size)})")
        if self.storage.remote:
            # (the store's answers, and the usage in it, are waited for on a thread)
            looked_up = self.run_blocking(self._look_up_remote, grant, rel)
            return looked_up.addCallback(
                lambda existing: self._begin_upload(
                    request, grant, rel, creation, existing, checked=True, body=length
                )
            )
        if whole and not self.config.quota.min_free_space and self.storage.accounting is None:
            existing = None
        else:
            existing = self.storage.existing(rel)
        self._begin_upload(request, grant, rel, creation, existing)
        return None

    def _look_up_remote(self, grant: auth.Grant, rel: str) -> StoredFile | None:
        """What a remote store holds at `rel`, and, if nothing, whether the quotas leave room
        for the upload. Blocking."""
        existing = self.storage.existing(rel)
        if existing is None:
            quota.check(self, grant, quota.uploader_of(grant, self.config.quota))
        return existing

    def _begin_upload(
        self,
        request: UploadRequest,
        grant: auth.Grant,
        rel: str,
        creation: wire.Creation | None,
        existing: StoredFile | None,
        *,
        checked: bool = False,
        body: int | None = None,
    ) -> None:
        config = self.config
        # Same path, same size: take the body and compare; an identical body is a client
        # retrying after it lost our 201, and gets its 201 now.
        if existing is not None and existing.size != grant.size:
            raise Conflict("file already exists")
        uploader = quota.uploader_of(grant, config.quota)
        if existing is None and not checked:  # (a retry adds nothing)
            quota.check(self, grant, uploader)
        content_type = safe_media_type(grant.content_type)
        if content_type is None or content_type.lower().startswith(wire.PARTIAL_UPLOAD):
            content_type = "application/octet-stream"
        partial = self.storage.begin(
            rel,
            grant.size,
            content_type,
            expires=grant.expires,
            scheme=grant.scheme,
            uploader=uploader,
            reopenable=creation is not None,
            existing=existing,
        )
        if creation is not None:
            partial.body_end = body
        upload = self.start_upload(
            request,
            grant,
            partial,
            compare=existing is not None,
            completes=creation is None or creation.complete,
        )
        if creation is not None:
            self.resumptions.created(request, upload, creation)
        else:
            self._refill()

    def start_upload(
        self,
        request: UploadRequest,
        grant: auth.Grant,
        partial: Partial,
        *,
        compare: bool,
        completes: bool = True,
        resumed: bool = False,
    ) -> Upload:
        """The `Upload` of an admitted request, in flight from now on."""
        upload = Upload(  # (positional: keywords would cost a dictionary per upload)
            grant,
            partial,
            compare,
            self.metrics,
            self.run_blocking,
            self.now,  # clock
            self._upload_ended,  # ended
            completes,
            resumed,
        )
        self.in_flight[upload] = request
        request.upload = upload
        attach = getattr(partial, "attach", None)
        if attach is not None and request.channel is not None:
            # (a remote store pauses the client while it cannot take more)
            attach(request.channel.transport)
        return upload

    def _upload_ended(self, upload: Upload) -> None:
        request = self.in_flight.pop(upload, None)
        if upload.status == 201:
            quota.after_upload(self, upload.partial.uploader, upload.rel)
        if upload.status == DISCONNECTED and request is not None:
            # (a refusal mid-body was logged as one; this is a client gone, or cut off)
            _log.info(
                "{client} {method} {path} broke off after {received} of {size} bytes{what}",
                client=printable(self.client_address(request)),
                method="PATCH" if upload.resumed else "PUT",
                path=printable(upload.rel),
                received=upload.received,
                size=upload.size,
                what="; kept to resume" if upload.resumable else "",
            )
        self._check_drained()

    def _refill(self) -> None:
        """Have the storage prepare ahead (partial files), on a thread, when it wants to."""
        if self._refilling or not self.storage.wants_refill():
            return
        self._refilling = True

        def done(result: object) -> None:
            self._refilling = False
            if isinstance(result, Failure):
                # Disk full or the like: `begin` creates files itself, and reports the error.
                _log.debug("preparing partial files failed: {e}", e=result.getErrorMessage())

        self.run_blocking(self.storage.refill).addBoth(done)

    def refused(self, request: UploadRequest, method: bytes, refusal: Refusal) -> None:
        """Count and log a request refused before (or while) its body was read: at warning
        for what the admin must act on (the storage failing, a signature that does not
        match, with a hint once a minute), at info for what a client did."""
        scheme = request.grant.scheme if request.grant is not None else None
        self.metrics.refused(refusal.status, refusal.reason, scheme)
        if refusal.mismatch:
            self._mismatch_hint(refusal.scheme)
        emit = _log.warn if refusal.status >= 500 else _log.info
        emit(
            "{client} {method} {path} -> {status} refused: {reason}",
            client=printable(self.client_address(request)),
            method=printable(method.decode("latin-1")),
            path=printable(request.rel or "-"),
            status=refusal.status,
            reason=printable(refusal.text),
        )

    def _mismatch_hint(self, scheme: str | None) -> None:
        """At most once every HINT_INTERVAL: signatures do not match, and what to check (the
        MAC itself is never logged)."""
        count = self._mismatches.due()
        if count is None:
            return
        prefix = self.config.server.upload_prefix
        _log.warn(
            "{count} upload(s) with a signature that matches no secret ({scheme} scheme, "
            "paths under {prefix}) since the last such warning: if every upload fails so, "
            "the XMPP server signs with another secret or another path; compare [hmac] "
            "secret with its upload secret and upload_prefix with its upload URL's path",
            count=count,
            scheme=printable(scheme or "-"),
            prefix=printable(prefix),
        )

    def health(self) -> defer.Deferred[HealthReport]:
        """The health report: the storage must be usable, the server not shutting down.

        The storage is checked (a file written and removed, on a thread) at most once every
        HEALTH_CACHE seconds, however often /health is asked: requests meanwhile share the
        last result, or the check under way."""
        if self.stopping:
            return defer.succeed(HealthReport(False, {"service": "shutting down"}))
        now = self.now()
        cached = self._health_last
        if cached is not None and now - cached[0] < HEALTH_CACHE:
            return defer.succeed(cached[1])
        waiter: defer.Deferred[HealthReport] = defer.Deferred()
        self._health_waiters.append(waiter)
        if len(self._health_waiters) == 1:

            def checked(result: str | Failure) -> None:
                report = (
                    HealthReport.from_checks({"storage": result})
                    if isinstance(result, str)
                    else HealthReport(False, {"storage": "check failed"})
                )
                if isinstance(result, str):
                    self._health_last = (now, report)
                waiters, self._health_waiters = self._health_waiters, []
                for each in waiters:
                    each.callback(report)

            self.run_blocking(self.storage.check).addBoth(checked)
        return waiter

    def public_health(self) -> defer.Deferred[HealthReport]:
        """The health report for the upload listeners, which anyone may ask: each check's
        result is "ok" or "fail", without the reasons (such as the free disk space), which
        the metrics listener's /health gives."""

        def terse(report: HealthReport) -> HealthReport:
            checks = {
                name: "ok" if result == "ok" else "fail" for name, result in report.checks.items()
            }
            return HealthReport(report.ok, checks)

        return self.health().addCallback(terse)

    @property
    def uploads(self) -> frozenset[Upload]:
        return frozenset(self.in_flight)

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
            for upload, request in list(self.in_flight.items()):
                if upload.interruptible and request.channel is not None:
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

    def connection_opened(self, channel: UploadChannel) -> str | None:
        """Count a new connection against the caps; which cap it is over, if one."""
        server = self.config.server
        transport: Any = channel.transport
        host = getattr(transport.getPeer(), "host", None)
        over = self.caps.admit(
            host,
            server.max_connections,
            server.max_connections_per_address,
            server.trusted_proxies,
        )
        if over is None:
            channel.counted_host = (host,)
        return over

    def channel_closed(self, channel: UploadChannel) -> None:
        counted = getattr(channel, "counted_host", None)
        if counted is not None:
            channel.counted_host = None
            self.caps.release(counted[0])
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
        upload = getattr(request, "upload", None)
        self.answered(
            client=self.client_address(request),
            secure=self.secure(request),
            method=request.method,
            rel=getattr(request, "rel", None),
            status=request.code,
            size=request.sentLength if upload is None else upload.received,
            scheme=upload.grant.scheme if upload is not None else None,
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
        duration = max(0.0, self.now() - started) if started is not None else 0.0
        _log.info(
            "{client}{secure} {method} {path} -> {status} {size} bytes{scheme} {duration:.3f}s",
            client=printable(client),
            secure=" (https)" if secure else "",
            method=printable(method.decode("latin-1")),
            path=printable(rel or "-"),
            status=status,
            size=size,
            scheme=f" [{scheme}]" if scheme is not None else "",
            duration=duration,
        )


class _QuietSite(server.Site):  # type: ignore[misc]
    """A site that logs nothing per request (metrics scrapes would flood the log)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass
