"""Wiring: listeners, the site, the sweeper, as one Twisted service tree."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.logger import Logger

from hmacfs.config import listen_endpoint
from hmacfs.settings import Config
from hmacfs.storage import Storage, SweepReport
from hmacfs.web import UploadSite, make_site

_log = Logger(namespace="hmacfs.service")


class Listeners(Service):  # type: ignore[misc]
    """Listens on every configured address; `ready` fires once all of them listen."""

    def __init__(self, reactor: IReactorCore, site: UploadSite, listen: tuple[str, ...]) -> None:
        self.reactor = reactor
        self.site = site
        self.listen = listen
        self.ports: list[Any] = []
        self.ready: defer.Deferred[list[IListeningPort]] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        attempts = [
            serverFromString(self.reactor, listen_endpoint(entry)).listen(self.site)
            for entry in self.listen
        ]
        gathered = defer.gatherResults(attempts, consumeErrors=True)

        def listening(ports: list[IListeningPort]) -> list[IListeningPort]:
            self.ports = ports
            return ports

        def failed(failure: Any) -> Any:
            # Stop whatever did start, then report the first cause.
            for attempt in attempts:
                attempt.addCallback(lambda port: port.stopListening()).addErrback(lambda _: None)
            return failure.value.subFailure

        gathered.addCallbacks(listening, failed)
        gathered.chainDeferred(self.ready)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in ports], consumeErrors=True
        )


class Sweeper(TimerService):  # type: ignore[misc]
    """Removes expired files and abandoned partial uploads, on a thread, every interval."""

    def __init__(self, site: UploadSite, interval: float) -> None:
        super().__init__(interval, self.sweep)
        self.site = site
        self.running_sweep: defer.Deferred[Any] | None = None

    def sweep(self) -> defer.Deferred[Any] | None:
        if self.running_sweep is not None:
            return None
        active = frozenset(upload.name for upload in self.site.uploads)
        d = self.site.run_blocking(self.site.storage.sweep, active)

        def report(result: SweepReport) -> None:
            if result.expired or result.partials or result.orphans:
                _log.info(
                    "sweep removed {expired} expired files, {partials} abandoned partial"
                    " uploads, {orphans} stale metadata entries",
                    expired=result.expired,
                    partials=result.partials,
                    orphans=result.orphans,
                )

        def failed(failure: Any) -> None:
            _log.failure("sweeping the storage directory failed", failure)

        def finished(_: object) -> None:
            self.running_sweep = None

        d.addCallbacks(report, failed)
        d.addBoth(finished)
        self.running_sweep = d
        return None


class UploadService(MultiService):  # type: ignore[misc]
    """The whole server: `listeners.ready` fires when it is reachable."""

    def __init__(self, config: Config, reactor: Any, site: UploadSite) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.listeners = Listeners(reactor, site, config.server.listen)
        self.listeners.setServiceParent(self)
        self.sweeper = Sweeper(site, config.server.sweep_interval)
        self.sweeper.clock = reactor
        self.sweeper.setServiceParent(self)


def make_service(config: Config, reactor: Any) -> UploadService:
    """Build the service tree for `config` on `reactor` (nothing starts until startService)."""
    storage = Storage(
        config.server.storage_dir,
        fsync=config.server.fsync,
        file_ttl=config.server.file_ttl,
        clock=reactor.seconds,
    )
    site = make_site(config, storage, reactor)
    return UploadService(config, reactor, site)
