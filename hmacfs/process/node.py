"""One server process: listeners, the site, the sweeper, systemd, reload and shutdown.

A node stands alone (`[server] workers = 1`) or is one of the workers a supervisor started
(`hmacfs.process.supervisor`); cli.serve drives it.

- start: every listener listens (or adopts its socket-activated descriptor); only then
  READY=1, with a STATUS line naming the listeners. A worker says "ready" to its supervisor
  instead, then beats. One worker (the one its plan says) sweeps, publishes each sweep's
  figures for the others' /metrics (`hmacfs.process.shared_metrics`) and reports it to the
  supervisor ("swept FILES BYTES"); at start it may also count the stored files for the
  quotas ("counted" once done). A worker that cannot use the storage reports why
  ("refused MESSAGE", from cli.serve) and exits.
- SIGHUP (`reload`, see `hmacfs.process.reload`): if the file is valid, new requests get the
  new limits, secrets, CORS settings and certificate; if not, the running settings stay.
- SIGTERM (`stopService`): STOPPING=1; the listeners close; uploads in flight get
  `shutdown_timeout` to finish, then are cut off as a client disconnect would be; open
  connections get their last answer (CLOSE_TIMEOUT at most), then close.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from hmacfs.core.settings import Config
from hmacfs.http.site import UploadSite
from hmacfs.metrics import FLUSH_INTERVAL
from hmacfs.process.lifecycle import ServerProcess
from hmacfs.process.listening import Listeners
from hmacfs.process.logs import LineObserver
from hmacfs.process.reload import log_certificate, tls_for
from hmacfs.process.services import Services
from hmacfs.process.shared_metrics import SweepFigures, shared_directory
from hmacfs.process.stores import open_storage
from hmacfs.process.sweeper import Sweeper, recount
from hmacfs.process.systemd import ActivatedSockets, Notifier, status_line
from hmacfs.process.worker import BEAT_INTERVAL, StatusPipe, WorkerPlan
from hmacfs.storage.backend import SweepReport
from hmacfs.storage.held import RELEASE_INTERVAL

if TYPE_CHECKING:
    from hmacfs.process.worker import Reporter

_log = Logger(namespace="hmacfs.process.node")

#: At shutdown, how long open connections get to take their last answer before they are dropped.
CLOSE_TIMEOUT = 5.0


class Node(ServerProcess):
    """The whole server in one process. `started` fires (with the listener descriptions)
    once it is reachable and READY=1 has been sent (or "ready" to the supervisor).

    As a worker (`worker` given), it listens on the sockets of its plan and reports to
    `reporter` (by default the plan's status pipe). Nothing starts until `startService`.
    Raises OSError when the storage directory cannot be used, TlsError when the certificate
    of an https listener cannot be loaded.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        notifier: Notifier | None = None,
        observer: LineObserver | None = None,
        activated: ActivatedSockets | None = None,
        worker: WorkerPlan | None = None,
        reporter: Reporter | None = None,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        super().__init__(config, reactor, notifier, observer, _log)
        self.worker = worker
        if worker is not None:
            activated = worker.activated
            if reporter is None:
                reporter = StatusPipe(worker.status_fd)
        #: A worker's line to its supervisor (None when this process stands alone).
        self.reporter = reporter
        self.activated = activated or ActivatedSockets()
        self.tls = tls_for(config, _log)
        self.storage = open_storage(config)
        if self.storage.remote:
            from hmacfs.http.objectstore import attach_streams

            attach_streams(self.storage, reactor)  # (its bodies stream on the reactor)
        self.site = UploadSite(config, self.storage, reactor, run_blocking)
        site = self.site
        self.listeners = Listeners(
            reactor,
            worker.listeners if worker is not None else config.server.listeners,
            site,
            lambda: self.tls,
            self.activated,
        )
        self.listeners.setServiceParent(self)
        metrics = worker.metrics_listeners if worker is not None else config.metrics.listeners
        self.metrics_listeners: Listeners | None = None
        if metrics:
            self.metrics_listeners = Listeners(
                reactor, metrics, site.metrics_site(), lambda: self.tls, self.activated
            )
            self.metrics_listeners.setServiceParent(self)
        self.sweeper = Sweeper(
            self.storage,
            config.server.sweep_interval,
            site.run_blocking,
            clock=reactor,
            active=lambda: frozenset(upload.name for upload in site.uploads)
            | self.storage.live_names(),
            metrics=site.metrics,
        )
        #: The workers' view of the sweeps (which one of them makes), for their /metrics.
        shared = shared_directory() if worker is not None else None
        self.figures = SweepFigures(shared) if shared is not None else None
        if worker is None or worker.sweeps:  # (the other workers leave it to that one)
            if worker is not None:
                self.sweeper.published = self._swept
            self.sweeper.setServiceParent(self)

    # -- start -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.worker is None:
            recount(self.storage, self.config, self.site.run_blocking)
        elif self.worker.recount:  # (the one worker the supervisor asked to)
            counting = recount(self.storage, self.config, self.site.run_blocking)
            if counting is None:
                self._report("counted")  # (nothing to count, as this configuration has it)
            else:
                counting.addBoth(lambda _: self._report("counted"))
        self.every(RELEASE_INTERVAL, self.storage.release_idle)
        self.every(FLUSH_INTERVAL, self.site.metrics.flush)
        waits = [self.listeners.ready]
        if self.metrics_listeners is not None:
            waits.append(self.metrics_listeners.ready)
        gathered: defer.Deferred[list[list[str]]] = defer.gatherResults(
            waits, consumeErrors=True
        )
        gathered.addCallbacks(self._up, _first_failure).chainDeferred(self.started)

    def _up(self, listening: list[list[str]]) -> list[str]:
        described = list(listening[0])
        for metrics in listening[1:]:
            described += [f"{address} (metrics)" for address in metrics]
        if self.reporter is not None:
            # A worker: its supervisor tells the world, once every worker is ready.
            self.reporter.send("ready")
            self.every(BEAT_INTERVAL, self._beat)
            return described
        self.announce(described)
        if self.tls is not None:
            log_certificate(self.tls, self.config, _log)
        self.went_ready()
        return described

    def _beat(self) -> None:
        self._report(f"beat {len(self.site.in_flight)}")
        if self.figures is not None:
            self.figures.take(self.site.metrics)

    def _report(self, line: str) -> None:
        if self.reporter is not None:
            self.reporter.send(line)

    def _swept(self, result: SweepReport) -> None:
        """The sweeping worker's sweep is over: its figures go to the other workers (through
        the shared directory) and the count of files to the supervisor's status line."""
        if self.figures is not None:
            self.figures.publish(result)
        self._report(f"swept {result.files} {result.bytes}")

    def status_text(self) -> str:
        """The one line `systemctl status` shows."""
        last = self.sweeper.last
        stored = None if last is None else last.files
        return status_line(self.listeners.describe(), len(self.site.in_flight), stored)

    # -- reload ------------------------------------------------------------------------------

    def apply(self, config: Config) -> None:
        """New requests get `config`; connections already open keep their channel."""
        self.config = config
        self.site.reconfigure(config)
        self.storage.fsync = config.server.fsync
        self.storage.file_ttl = config.server.file_ttl
        if config.quota.counts and self.storage.accounting is None:
            self.storage.count_usage()
            recount(self.storage, config, self.site.run_blocking)

    # -- stop --------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting, let uploads finish within shutdown_timeout, cut off the rest."""
        self.site.stopping = True
        uploads = len(self.site.in_flight)
        timers = self.begin_stop(uploads)
        timeout = self.config.server.shutdown_timeout

        @defer.inlineCallbacks
        def stop() -> Any:
            yield timers
            yield self.listeners.stopService()
            if self.metrics_listeners is not None:
                yield self.metrics_listeners.stopService()
            if uploads:
                _log.info(
                    "waiting up to {timeout}s for {count} upload(s) in flight",
                    timeout=timeout,
                    count=uploads,
                )
            cut = yield self.site.drain(timeout)
            if cut:
                _log.warn("cut off {count} unfinished upload(s) at shutdown", count=cut)
            yield self.site.close_connections(CLOSE_TIMEOUT)
            yield defer.maybeDeferred(Services.stopService, self)
            self.site.metrics.flush()  # (a worker's counts outlive it, in its files)
            self.storage.close()
            _log.info("stopped")

        return stop()  # type: ignore[no-any-return]


def _first_failure(failure: Any) -> Any:
    """The failure of the first listener group that failed (not gatherResults' wrapper)."""
    return failure.value.subFailure if hasattr(failure.value, "subFailure") else failure

