"""Prometheus metrics and a health report, for a listener of their own.

`Metrics` holds every metric of one server on its own `CollectorRegistry` (nothing is
registered globally, so several servers or tests in one process never share a number). The web
layer tells it what happened to each request; `MetricsResource` serves the exposition at
``/metrics`` and a JSON health report at ``/health``.

Label values are never taken from a request: statuses are three-digit codes, schemes and
refusal reasons come from fixed sets and anything else is counted as ``"other"``, so a hostile
client cannot create new time series.

Only prometheus-client API that exists from 0.16 (Debian 12) to the newest release is used.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from hmacfs.core.refusals import Reason
from hmacfs.core.settings import HEADER_SCHEMES, QUERY_SCHEMES

#: The text exposition format `generate_latest` writes. Spelled out rather than taken from
#: ``CONTENT_TYPE_LATEST``, which newer prometheus-client releases changed to ``version=1.0.0``
#: (for UTF-8 metric names, which this module does not use); 0.0.4 is what every Prometheus
#: release parses, and what those releases still send when the scraper asks for nothing else.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: The status to report for an upload whose client went away before it could be answered
#: (nginx's convention; no response carries it).
DISCONNECTED: Final = 499

#: Label values for ``scheme``: every signing scheme, ``"none"`` when no scheme was chosen yet.
SCHEMES: Final = frozenset((*QUERY_SCHEMES, *HEADER_SCHEMES))
NO_SCHEME: Final = "none"
OTHER: Final = "other"

#: Label values for ``reason``: every `Reason`.
REASONS: Final = frozenset({*(reason.value for reason in Reason), OTHER})

#: Upload durations from a small file on a LAN to a large one on a slow link (1 ms .. 30 min).
DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
)  # fmt: skip
#: Upload sizes, 1 KiB .. 4 GiB, by powers of four.
SIZE_BUCKETS: Final = tuple(float(1024 * 4**i) for i in range(12))


_ALLOWED: Final = b"GET, HEAD"

#: The counts of every upload and download are added up here and handed to prometheus-client
#: at most this many seconds later (and before any collection of this process's registry):
#: with workers, each of its increments is a write into a shared file, eight per small upload.
FLUSH_INTERVAL: Final = 0.5


def status_label(status: int) -> str:
    """The label value for an HTTP status: the code itself if it is one, else "other"."""
    return str(status) if 100 <= status <= 599 else OTHER


def scheme_label(scheme: str | None) -> str:
    """The label value for a signing scheme: the scheme, "none" for None, else "other"."""
    if scheme is None:
        return NO_SCHEME
    return scheme if scheme in SCHEMES else OTHER


def reason_label(reason: str) -> str:
    """The label value for a refusal reason: one of `REASONS`, else "other"."""
    return reason if reason in REASONS else OTHER


class Metrics:
    """Every metric of one server, on one registry.

    The methods are called from the reactor thread, once per event; they are cheap enough to
    call per body chunk (`bytes_received`). What each upload and download adds is kept here
    until `flush` (FLUSH_INTERVAL, a collection of the registry, `render`): another process's
    /metrics sees it up to that much later. Those counts are kept without a lock, so the
    methods of uploads and downloads, `flush` and collecting the registry belong to the one
    thread that serves (the others, such as `set_storage`, go to prometheus-client at once,
    which is thread-safe).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Register the metrics on `registry`.

        With no registry, a fresh one is made and the standard process, platform and garbage
        collector metrics (``process_*``, ``python_*``) are registered on it too, where the
        platform has them; a registry passed in gets only this server's metrics.

        Raises ValueError if `registry` already holds metrics of the same names (a second
        `Metrics` on one registry).
        """
        #: With worker processes, every process writes its values to files in this directory
        #: and /metrics adds them up (prometheus-client's multi-process mode).
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        if registry is None:
            registry = CollectorRegistry()
            if self.multiprocess_dir is None:
                ProcessCollector(registry=registry)  # silently empty where there is no /proc
                PlatformCollector(registry=registry)
                GCCollector(registry=registry)  # registers nothing outside CPython
        self.registry = registry
        #: Amounts not yet handed to prometheus-client, by the counter, gauge or histogram
        #: (child) they go to; each histogram's as its sum and its count per bucket.
        self._pending: dict[Any, float] = {}
        # First on the registry: whatever collects it sees the pending amounts too.
        registry.register(_Flusher(self))
        # Counter names are given without "_total": prometheus-client appends it.
        self._uploads = Counter(
            "hmacfs_uploads",
            "Uploads whose body was accepted for reading, by final status and signing scheme.",
            ("status", "scheme"),
            registry=registry,
        )
        self._upload_bytes = Counter(
            "hmacfs_upload_bytes",
            "Upload body bytes received and written to partial files.",
            registry=registry,
        )
        self._in_flight = Gauge(
            "hmacfs_uploads_in_flight",
            "Uploads whose body is being received or committed.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._duration = Histogram(
            "hmacfs_upload_duration_seconds",
            "Time from an upload's request headers to its answer.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._size = Histogram(
            "hmacfs_upload_size_bytes",
            "Body size (Content-Length) of uploads whose body was accepted for reading.",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self._duration_batch = _Observed.of(self._duration)
        self._size_batch = _Observed.of(self._size)
        self._refusals = Counter(
            "hmacfs_refusals",
            "Requests refused before or while their body was read (or when its commit "
            "found the path taken), by status and reason.",
            ("status", "reason"),
            registry=registry,
        )
        self._downloads = Counter(
            "hmacfs_downloads",
            "GET and HEAD responses, by status.",
            ("status",),
            registry=registry,
        )
        #: The labelled children of `_uploads` and `_downloads` (looked up once, not each time).
        self._upload_counters: dict[tuple[int, str], Any] = {}
        self._download_counters: dict[int, Any] = {}
        self._download_bytes = Counter(
            "hmacfs_download_bytes",
            "Response body bytes sent for GET requests.",
            registry=registry,
        )
        self._storage_files = Gauge(
            "hmacfs_storage_files",
            "Files in the storage directory at the last sweep.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._storage_bytes = Gauge(
            "hmacfs_storage_bytes",
            "Total size of the files in the storage directory at the last sweep.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._resumable_created = Counter(
            "hmacfs_resumable_created",
            "Resumable uploads announced to their client (104 Upload Resumption Supported).",
            registry=registry,
        )
        self._resumptions = Counter(
            "hmacfs_resumptions",
            "Appends to a resumable upload that an earlier request left incomplete.",
            registry=registry,
        )
        self._resumed_bytes = Counter(
            "hmacfs_resumed_bytes",
            "Upload body bytes received by appends to resumable uploads.",
            registry=registry,
        )
        self._quota_deleted = Counter(
            "hmacfs_quota_deleted_files",
            "Files deleted to bring an uploader back under [quota] uploader_soft_limit.",
            registry=registry,
        )
        self._partials_kept = Counter(
            "hmacfs_partials_kept",
            "Requests of resumable uploads that ended with the partial kept to be resumed"
            " (the connection broke, or the request sent one part).",
            registry=registry,
        )
        self._kept_partials = Gauge(
            "hmacfs_resumable_partials",
            "Partials of resumable uploads kept for a resumption, at the last sweep.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._kept_partial_bytes = Gauge(
            "hmacfs_resumable_partial_bytes",
            "Bytes held by the partials of resumable uploads, at the last sweep.",
            registry=registry,
            multiprocess_mode="livemax",
        )

    def _add(self, target: Any, amount: float) -> None:
        pending = self._pending
        pending[target] = pending.get(target, 0) + amount

    @staticmethod
    def _observe(histogram: Any, batch: _Observed | None, amount: float) -> None:
        if batch is None or math.isnan(amount):
            histogram.observe(amount)  # (a histogram of another make: as it comes)
        else:
            batch.add(amount)

    def flush(self) -> None:
        """Hand what was counted since the last flush to prometheus-client (and with workers,
        to this process's files). Reactor thread, or wherever the registry is collected."""
        pending, self._pending = self._pending, {}
        for target, amount in pending.items():
            if amount:
                target.inc(amount)
        for batch in (self._duration_batch, self._size_batch):
            if batch is not None:
                batch.flush()

    def upload_started(self) -> None:
        """An upload was admitted and its body is about to be read."""
        self._add(self._in_flight, 1)

    def upload_finished(self, status: int, scheme: str, size: int, seconds: float) -> None:
        """An upload that `upload_started` counted has ended: answered, refused or abandoned.

        Call it exactly once per started upload, with the status sent (`DISCONNECTED` when the
        client went away first), the grant's scheme, the upload's Content-Length and the
        seconds since its headers arrived. A refusal while the body is read is also reported
        to `refused`. Raises ValueError if `size` is negative.
        """
        if size < 0:
            raise ValueError(f"negative upload size {size}")
        key = (status, scheme)
        counter = self._upload_counters.get(key)
        if counter is None:
            counter = self._upload_counters[key] = self._uploads.labels(
                status_label(status), scheme_label(scheme)
            )
        pending, in_flight = self._pending, self._in_flight  # (`_add` twice, written out)
        pending[in_flight] = pending.get(in_flight, 0) - 1
        pending[counter] = pending.get(counter, 0) + 1
        self._observe(self._duration, self._duration_batch, max(seconds, 0.0))
        self._observe(self._size, self._size_batch, size)

    def refused(self, status: int, reason: Reason | str, scheme: str | None) -> None:
        """A request was refused before or while its body was read, or its commit found the
        path taken.

        `reason` is the refusal's `Reason` (a value of `REASONS`); `scheme` the signing scheme,
        None if none had been chosen yet. Unknown values are counted as "other". The scheme is
        accepted for the callers' convenience but not used as a label: the reason says more,
        and the upload counter already splits by scheme.
        """
        del scheme
        self._refusals.labels(status_label(status), reason_label(reason)).inc()

    def download_finished(self, status: int, size: int) -> None:
        """A GET or HEAD was answered with `status`, sending `size` body bytes.

        Raises ValueError if `size` is negative.
        """
        if size < 0:
            raise ValueError(f"negative download size {size}")
        counter = self._download_counters.get(status)
        if counter is None:
            counter = self._download_counters[status] = self._downloads.labels(status_label(status))
        self._add(counter, 1)
        self._add(self._download_bytes, size)

    def bytes_received(self, n: int) -> None:
        """`n` more upload body bytes arrived. Raises ValueError if `n` is negative."""
        if n < 0:
            raise ValueError(f"negative byte count {n}")
        self._add(self._upload_bytes, n)

    def bytes_resumed(self, n: int) -> None:
        """`n` of the bytes `bytes_received` counted came to an append of a resumable upload."""
        if n < 0:
            raise ValueError(f"negative byte count {n}")
        self._add(self._resumed_bytes, n)

    def resumable_created(self) -> None:
        """A resumable upload was announced (its 104 sent)."""
        self._resumable_created.inc()

    def resumed(self) -> None:
        """An append to a resumable upload was admitted."""
        self._resumptions.inc()

    def quota_deleted(self, count: int) -> None:
        """`count` of an uploader's oldest files were deleted under its soft limit."""
        self._quota_deleted.inc(count)

    def partial_kept(self) -> None:
        """A request of a resumable upload ended, leaving its partial for a resumption."""
        self._partials_kept.inc()

    def set_kept_partials(self, count: int, size: int) -> None:
        """What the last sweep found of partials kept for resumptions."""
        self._kept_partials.set(count)
        self._kept_partial_bytes.set(size)

    def set_storage(self, files: int, size: int) -> None:
        """What the last sweep found in the storage directory: `files` files, `size` bytes."""
        self._storage_files.set(files)
        self._storage_bytes.set(size)

    def render(self) -> tuple[bytes, str]:
        """The exposition text of the whole registry and its content type.

        Raises whatever a collector raises (the metrics defined here raise nothing).
        """
        if self.multiprocess_dir is not None:
            self.flush()  # (this process's own; the others' come within FLUSH_INTERVAL)
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined, path=self.multiprocess_dir)
            return generate_latest(combined), CONTENT_TYPE
        return generate_latest(self.registry), CONTENT_TYPE


class _Flusher:
    """Collects nothing: has its `Metrics` flush, before the collectors after it collect."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self._metrics.flush()
        return []


class _Observed:
    """Observations of one histogram not yet handed to it: their sum and their count per
    bucket, added to its own values at a flush as `Histogram.observe` adds each."""

    __slots__ = ("bounds", "buckets", "counts", "histogram", "sum", "total")

    def __init__(self, histogram: Any, bounds: list[float], buckets: list[Any]) -> None:
        self.histogram = histogram
        self.bounds = bounds
        self.buckets = buckets
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.total = 0

    @classmethod
    def of(cls, histogram: Any) -> _Observed | None:
        """For a prometheus-client histogram as made since 0.16 (upper bounds, one value per
        bucket, one for the sum); None for anything else, observed as it comes."""
        bounds = getattr(histogram, "_upper_bounds", None)
        buckets = getattr(histogram, "_buckets", None)
        if (
            not isinstance(bounds, list)
            or not isinstance(buckets, list)
            or len(bounds) != len(buckets)
            or not bounds
            or bounds[-1] != math.inf
            or not hasattr(getattr(histogram, "_sum", None), "inc")
        ):
            return None
        return cls(histogram, bounds, buckets)

    def add(self, amount: float) -> None:
        # The first bucket whose bound is at least the amount, as `observe` finds it.
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount
        self.total += 1

    def flush(self) -> None:
        if not self.total:
            return
        counts, added = self.counts, self.sum
        self.counts, self.sum, self.total = [0] * len(self.bounds), 0.0, 0
        self.histogram._sum.inc(added)
        for bucket, count in zip(self.buckets, counts, strict=True):
            if count:
                bucket.inc(count)


@dataclass(frozen=True)
class HealthReport:
    """The answer to /health: healthy or not, and each check's result ("ok" or why not)."""

    ok: bool
    checks: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_checks(cls, checks: Mapping[str, str]) -> HealthReport:
        """A report that is ok exactly when every check says "ok"."""
        return cls(all(result == "ok" for result in checks.values()), dict(checks))

    def to_json(self) -> bytes:
        """The response body: ``{"status": "ok" | "fail", "checks": {...}}`` and a newline."""
        body = {"status": "ok" if self.ok else "fail", "checks": self.checks}
        return json.dumps(body, sort_keys=True).encode("ascii") + b"\n"


HealthSource = Callable[[], "HealthReport | defer.Deferred[HealthReport]"]


class HealthResource(resource.Resource):
    """GET/HEAD: the health report as JSON, 200 when healthy and 503 otherwise; never cached.

    A leaf, so that it can also answer at a path of the upload site (``[metrics]
    health_path``): `render` may be called with any request; other methods get 405.

    `health` is called on the reactor thread for every request. It may return a Deferred (for
    checks run on a thread); a check that raises or fails answers 503 with the check named
    "health", and logs why (the response does not say).
    """

    isLeaf = True
    _log = Logger(namespace="hmacfs.metrics")

    def __init__(self, health: HealthSource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.health = health

    def render(self, request: server.Request) -> bytes | int:
        _no_cache(request)
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request)
        try:
            result = self.health()
        except Exception:
            self._log.failure("the health check failed")
            result = _failed_report()
        if not isinstance(result, defer.Deferred):
            return self._answer(request, result)

        def checked(report: HealthReport) -> None:
            if not request._disconnected:
                request.write(self._answer(request, report))  # type: ignore[no-untyped-call]
                request.finish()  # type: ignore[no-untyped-call]

        def failed(failure: Failure) -> HealthReport:
            self._log.failure("the health check failed", failure)
            return _failed_report()

        result.addErrback(failed).addCallback(checked)
        return server.NOT_DONE_YET

    @staticmethod
    def _answer(request: server.Request, report: HealthReport) -> bytes:
        status = http.OK if report.ok else http.SERVICE_UNAVAILABLE
        return _body(request, status, b"application/json", report.to_json())


class MetricsResource(resource.Resource):
    """GET/HEAD ``/metrics`` (the exposition) and ``/health`` (see `HealthResource`).

    Meant as the root of a site of its own, on a listener that only the monitoring can reach.
    Any other path is 404 and any other method 405, as plain text; nothing is cached.
    """

    isLeaf = True
    _log = Logger(namespace="hmacfs.metrics")

    def __init__(self, metrics: Metrics, health: HealthSource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.metrics = metrics
        self.health = HealthResource(health)

    def render(self, request: server.Request) -> bytes | int:
        _no_cache(request)
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request)
        if request.postpath == [b"metrics"]:
            return self._metrics(request)
        if request.postpath == [b"health"]:
            return self.health.render(request)
        return _plain(request, http.NOT_FOUND, "not found")

    def _metrics(self, request: server.Request) -> bytes:
        try:
            body, content_type = self.metrics.render()
        except Exception:
            self._log.failure("rendering the metrics failed")
            return _plain(request, http.INTERNAL_SERVER_ERROR, "internal error")
        return _body(request, http.OK, content_type.encode("ascii"), body)


def _failed_report() -> HealthReport:
    return HealthReport(ok=False, checks={"health": "check failed"})


def _set_header(request: server.Request, name: bytes, value: bytes) -> None:
    # What Request.setHeader does; that one is not annotated.
    request.responseHeaders.setRawHeaders(name, [value])


def _no_cache(request: server.Request) -> None:
    _set_header(request, b"cache-control", b"no-store")
    _set_header(request, b"x-content-type-options", b"nosniff")


def _body(request: server.Request, status: int, content_type: bytes, body: bytes) -> bytes:
    """Set the status and headers for `body`; the bytes to send (none for HEAD)."""
    request.setResponseCode(status)
    _set_header(request, b"content-type", content_type)
    _set_header(request, b"content-length", b"%d" % len(body))
    return b"" if request.method == b"HEAD" else body


def _plain(request: server.Request, status: int, text: str) -> bytes:
    return _body(request, status, b"text/plain; charset=utf-8", (text + "\n").encode("utf-8"))


def _not_allowed(request: server.Request) -> bytes:
    _set_header(request, b"allow", _ALLOWED)
    return _plain(request, http.NOT_ALLOWED, "method not allowed")
