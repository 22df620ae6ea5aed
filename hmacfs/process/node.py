"""Wiring: listeners, the site, the sweeper, systemd, reload and shutdown, as one service tree.

Life of the process (cli.serve drives it):

- start: every listener listens (or adopts its socket-activated descriptor); only then
  READY=1, with a STATUS line naming the listeners.
- SIGHUP (`reload`): RELOADING=1; the configuration file is read again; if it is valid, new
  requests get the new limits, secrets, CORS settings and certificate; if not, the running
  settings stay and the error is logged; READY=1 either way.
- SIGTERM (`stopService`): STOPPING=1; the listeners close; uploads in flight get
  `shutdown_timeout` to finish, then are cut off as a client disconnect would be.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from hmacfs.core import config as config_module
from hmacfs.core.config import ConfigError, parse_listen
from hmacfs.core.settings import Config
from hmacfs.http.site import make_site
from hmacfs.process.logs import LEVELS, LineObserver
from hmacfs.process.systemd import ActivatedSockets, Notifier, socket_family, watchdog_interval
from hmacfs.storage.local import Storage, SweepReport

_log = Logger(namespace="hmacfs.process.node")

#: At shutdown, how long open connections get to take their last answer before they are dropped.
CLOSE_TIMEOUT = 5.0
#: How often STATUS= is refreshed for `systemctl status`.
STATUS_INTERVAL = 10.0


def describe_port(port: Any, tls: bool) -> str:
    """"127.0.0.1:5050", "https://[::]:443", "unix:/run/x.sock" for a listening port."""
    host = port.getHost()
    scheme = "https://" if tls else ""
    if hasattr(host, "port"):
        address = f"[{host.host}]" if ":" in host.host else host.host
        return f"{scheme}{address}:{host.port}"
    name = getattr(host, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return f"unix:{name}"


def accept_one_at_a_time(port: Any) -> None:
    """Make `port` take one connection per readiness event.

    An inherited socket may be shared with other worker processes, which all wake when
    connections arrive. Twisted accepts up to a hundred at once, so the worker that woke first
    would take a whole burst (all of a client's parallel connections) and leave the others
    idle; one at a time, they share it (what nginx's default "multi_accept off" does).
    """
    read = port.doRead

    def do_read() -> Any:
        port.numberAccepts = 1
        return read()

    port.doRead = do_read


class Listeners(Service):  # type: ignore[misc]
    """Listens on a list of `listen` entries; `ready` fires once all of them listen."""

    def __init__(
        self,
        reactor: Any,
        entries: tuple[str, ...],
        factory: Any,
        tls: Callable[[], Any],
        activated: ActivatedSockets,
    ) -> None:
        self.reactor = reactor
        self.entries = entries
        self.factory = factory
        self.tls = tls
        self.activated = activated
        self.ports: list[tuple[Any, bool]] = []
        self.ready: defer.Deferred[list[tuple[Any, bool]]] = defer.Deferred()

    def _listen(self, entry: str) -> defer.Deferred[tuple[Any, bool]]:
        listener = parse_listen(entry)
        factory: Any = self.factory
        if listener.tls:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            context = self.tls()
            assert context is not None, "configuration check lets no https listener without TLS"
            factory = TLSMemoryBIOFactory(context, False, factory)
        if listener.activated is not None:
            try:
                fd = self.activated.find(listener.activated)
            except KeyError:
                return defer.fail(
                    RuntimeError(
                        f"{entry}: systemd passed no socket named {listener.activated!r} "
                        f"(passed: {', '.join(self.activated.names) or 'none'})"
                    )
                )
            try:
                port = self.reactor.adoptStreamPort(fd, socket_family(fd), factory)
            except Exception as e:  # reported as a listen failure
                return defer.fail(e)
            # The port works on a duplicate: close the original, or the socket would keep
            # accepting connections after stopListening.
            os.close(fd)
            accept_one_at_a_time(port)
            return defer.succeed((port, listener.tls))
        # Bound here and handed to the reactor like an inherited socket: the same path as
        # worker processes and socket activation take (and no endpoint parser to load).
        from hmacfs.process.supervisor import bind

        try:
            sock = bind(entry, self.activated)
        except (OSError, RuntimeError) as e:  # reported as a listen failure
            return defer.fail(e)
        try:
            port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        except Exception as e:  # reported as a listen failure
            return defer.fail(e)
        finally:
            sock.close()  # the port works on its own duplicate
        return defer.succeed((port, listener.tls))

    def startService(self) -> None:
        super().startService()
        attempts = []
        for entry in self.entries:
            try:
                attempts.append(self._listen(entry))
            except Exception as e:
                attempts.append(defer.fail(e))
        gathered = defer.gatherResults(attempts, consumeErrors=True)

        def listening(ports: list[tuple[Any, bool]]) -> list[tuple[Any, bool]]:
            self.ports = ports
            return ports

        def failed(failure: Any) -> Any:
            for attempt in attempts:
                attempt.addCallback(lambda p: p[0].stopListening()).addErrback(lambda _: None)
            return failure.value.subFailure

        gathered.addCallbacks(listening, failed)
        gathered.chainDeferred(self.ready)

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port, _ in ports], consumeErrors=True
        )

    def describe(self) -> list[str]:
        return [describe_port(port, tls) for port, tls in self.ports]


class Sweeper(Service):  # type: ignore[misc]
    """Removes expired files and abandoned partial uploads, on a thread, every interval.

    `active` names the partial files of uploads still in flight; `metrics`, if given, gets
    the storage figures of every sweep.
    """

    def __init__(
        self,
        storage: Storage,
        interval: float,
        run_blocking: Callable[..., defer.Deferred[Any]],
        *,
        active: Callable[[], frozenset[str]] = frozenset,
        metrics: Any = None,
    ) -> None:
        self.storage = storage
        self.interval = interval
        self.run_blocking = run_blocking
        self.active = active
        self.metrics = metrics
        self.clock: Any = None
        self.running_sweep: defer.Deferred[Any] | None = None
        self.last: SweepReport | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.running_sweep

    def sweep(self) -> None:
        if self.running_sweep is not None:
            return
        d = self.run_blocking(self.storage.sweep, self.active())

        def report(result: SweepReport) -> None:
            self.last = result
            if self.metrics is not None:
                self.metrics.set_storage(result.files, result.bytes)
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


class UploadService(MultiService):  # type: ignore[misc]
    """The whole server. `started` fires (with the listener descriptions) once it is reachable
    and READY=1 has been sent."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        notifier: Notifier | None = None,
        observer: LineObserver | None = None,
        activated: ActivatedSockets | None = None,
        status: Any = None,
    ) -> None:
        super().__init__()
        #: A worker's pipe to its supervisor (None when this process stands alone).
        self.status_pipe = status
        self.config = config
        self.reactor = reactor
        self.notifier = notifier or Notifier({})
        self.observer = observer
        self.activated = activated or ActivatedSockets()
        self.tls = _tls_for(config)
        self.storage = Storage(
            config.server.storage_dir,
            fsync=config.server.fsync,
            file_ttl=config.server.file_ttl,
            clock=reactor.seconds,
        )
        self.site = make_site(config, self.storage, reactor)
        self.listeners = Listeners(
            reactor, config.server.listen, self.site, lambda: self.tls, self.activated
        )
        self.listeners.setServiceParent(self)
        self.metrics_listeners: Listeners | None = None
        if config.metrics.listen:
            self.metrics_listeners = Listeners(
                reactor,
                config.metrics.listen,
                self.site.metrics_site(),
                lambda: self.tls,
                self.activated,
            )
            self.metrics_listeners.setServiceParent(self)
        site = self.site
        self.sweeper = Sweeper(
            self.storage,
            config.server.sweep_interval,
            site.run_blocking,
            active=lambda: frozenset(upload.name for upload in site.uploads)
            | self.storage.pooled_names(),
            metrics=site.metrics,
        )
        self.sweeper.clock = reactor
        if status is None:  # workers leave sweeping to their supervisor
            self.sweeper.setServiceParent(self)
        self._status = LoopingCall(self.update_status)
        self._status.clock = reactor
        self._watchdog: LoopingCall | None = None
        self.stopping = False
        self.started: defer.Deferred[list[str]] = defer.Deferred()

    # -- start -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        waits = [self.listeners.ready]
        if self.metrics_listeners is not None:
            waits.append(self.metrics_listeners.ready)
        gathered: defer.Deferred[Any] = defer.gatherResults(waits, consumeErrors=True)

        def up(_: object) -> list[str]:
            described = self.listeners.describe()
            if self.metrics_listeners is not None:
                described += [f"{d} (metrics)" for d in self.metrics_listeners.describe()]
            if self.status_pipe is not None:
                # A worker: its supervisor tells the world, once every worker is ready.
                self.status_pipe.send("ready")
                self._status = LoopingCall(
                    lambda: self.status_pipe.send(f"beat {len(self.site.in_flight)}")
                )
                self._status.clock = self.reactor
                self._status.start(1.0, now=True)
                return described
            for address in described:
                _log.info("listening on {address}", address=address)
            if self.tls is not None:
                self._log_certificate()
            self.notifier.ready(self.status_text())
            self._status.start(STATUS_INTERVAL, now=False)
            interval = watchdog_interval()
            if interval is not None and self.notifier.enabled:
                self._watchdog = LoopingCall(self.notifier.watchdog)
                self._watchdog.clock = self.reactor
                self._watchdog.start(interval, now=True)
            return described

        def down(failure: Any) -> Any:
            return failure.value.subFailure if hasattr(failure.value, "subFailure") else failure

        gathered.addCallbacks(up, down)
        gathered.chainDeferred(self.started)

    def status_text(self) -> str:
        """The one line `systemctl status` shows."""
        return status_line(self.listeners.describe(), len(self.site.in_flight), self.sweeper.last)

    def update_status(self) -> None:
        if not self.stopping:
            self.notifier.status(self.status_text())

    def _log_certificate(self) -> None:
        from hmacfs.process.tls import TlsError, certificate_summary, hostname_mismatch

        assert self.tls is not None
        try:
            summary = certificate_summary(self.tls.settings)
        except TlsError as e:
            _log.warn("{error}", error=str(e))
            return
        _log.info("TLS certificate for {summary}", summary=summary)
        public = self.site.config.server.public_url
        if public and public.startswith("https://"):
            host = public.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
            mismatch = hostname_mismatch(self.tls.settings, host)
            if mismatch:
                _log.warn(
                    "the TLS certificate does not cover public_url's host {host}: {why}",
                    host=host,
                    why=mismatch,
                )

    # -- reload ------------------------------------------------------------------------------

    def reload(self, path: Path | None = None) -> bool:
        """Re-read the configuration (SIGHUP). Returns whether the new one is in use."""
        source = path or self.config.source
        if source is None or self.stopping:
            return False
        self.notifier.reloading()
        try:
            new = config_module.load(source)
        except ConfigError as e:
            _log.error("reload failed, keeping the running configuration: {error}", error=str(e))
            self.notifier.ready(f"reload failed: {e}; {self.status_text()}")
            return False
        if self.tls is not None:
            # Always re-read: a renewed certificate usually keeps its file name.
            _tls_for(new, self.tls)
        for warning in new.warnings:
            _log.warn("config: {warning}", warning=warning)
        applied = reloadable(self.config, new)
        self.config = applied
        self.site.reconfigure(applied)
        self.storage.fsync = applied.server.fsync
        self.storage.file_ttl = applied.server.file_ttl
        if self.observer is not None:
            self.observer.level = LEVELS[applied.server.log_level]
        if self.tls is not None:
            self._log_certificate()
        _log.info("configuration reloaded from {source}", source=source)
        self.notifier.ready(self.status_text())
        return True

    # -- stop --------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting, let uploads finish within shutdown_timeout, cut off the rest."""
        self.stopping = True
        self.site.stopping = True
        timeout = self.config.server.shutdown_timeout
        uploads = len(self.site.in_flight)
        self.notifier.stopping(
            f"stopping; waiting up to {timeout:g}s for {uploads} upload(s) in flight"
        )
        for loop in (self._status, self._watchdog):
            if loop is not None and loop.running:
                loop.stop()

        @defer.inlineCallbacks
        def stop() -> Any:
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
            yield defer.maybeDeferred(MultiService.stopService, self)
            self.storage.drain_pool()
            _log.info("stopped")

        return stop()  # type: ignore[no-any-return]


#: `[server]` keys that a reload cannot apply (the sockets, the directory, the processes).
RESTART_ONLY = ("listen", "storage_dir", "workers", "sweep_interval")


def reloadable(old: Config, new: Config) -> Config:
    """`new` as a reload can apply it: what only a restart applies keeps its running value
    (and the log says so)."""
    kept = {}
    for key in RESTART_ONLY:
        if getattr(old.server, key) != getattr(new.server, key):
            _log.warn("[server] {key} changed: restart the service to apply it", key=key)
        kept[key] = getattr(old.server, key)
    if old.metrics.listen != new.metrics.listen:
        _log.warn("[metrics] listen changed: restart the service to apply it")
    return replace(
        new,
        server=replace(new.server, **kept),
        metrics=replace(new.metrics, listen=old.metrics.listen),
    )


def status_line(
    listening: list[str], uploads: int, sweep: SweepReport | None, workers: int | None = None
) -> str:
    """The STATUS= line: where it listens, (workers,) uploads in flight, files stored."""
    parts = [f"listening on {', '.join(listening) or 'nothing'}"]
    if workers is not None:
        parts.append(f"{workers} workers")
    parts.append(f"{uploads} upload{'s' if uploads != 1 else ''} in flight")
    if sweep is not None:
        parts.append(f"{sweep.files} files stored")
    return "; ".join(parts)


def _tls_for(config: Config, current: Any = None) -> Any:
    """The TLS context for `config`'s https listeners: a new one, or `current` updated.

    On reload a certificate that fails to load keeps the old one (and logs why)."""
    entries = (*config.server.listen, *config.metrics.listen)
    if not any(parse_listen(entry).tls for entry in entries):
        return current
    # Loaded only here: a server without TLS listeners never loads OpenSSL.
    from hmacfs.process.tls import ReloadableTls, TlsError

    try:
        if current is None:
            return ReloadableTls(config.tls)
        current.replace(config.tls)
        return current
    except TlsError as e:
        if current is None:
            raise
        _log.error("new TLS certificate not usable, keeping the old one: {error}", error=str(e))
        return current


def make_service(
    config: Config,
    reactor: Any,
    *,
    notifier: Notifier | None = None,
    observer: LineObserver | None = None,
    activated: ActivatedSockets | None = None,
    status: Any = None,
) -> UploadService:
    """Build the service tree for `config` on `reactor` (nothing starts until startService)."""
    return UploadService(
        config, reactor, notifier=notifier, observer=observer, activated=activated, status=status
    )

