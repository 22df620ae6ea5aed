"""The life of a process that serves, as systemd sees it (the single-process node; the
supervisor, which runs without Twisted, does the same on its own loop).

- ready: "listening on ..." for every listener, READY=1 with the STATUS line, then STATUS=
  every STATUS_INTERVAL seconds and WATCHDOG=1 as often as systemd asks;
- SIGHUP: `hmacfs.process.reload.reload_config`, with the process's own `apply`;
- stop: STOPPING=1 naming the uploads in flight, and no more periodic messages.

Periodic work runs on `Timer`s on the process's reactor, so that all of it follows the
reactor's clock (a fake one in tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from hmacfs.core.settings import Config
from hmacfs.process.logs import LineObserver
from hmacfs.process.reload import reload_config
from hmacfs.process.services import Services, Timer
from hmacfs.process.systemd import STATUS_INTERVAL, Notifier, watchdog_interval


class ServerProcess(Services):
    """A process of the server as systemd sees it (the node).

    `started` fires with the listener descriptions once it is reachable (or fails with why
    not). Subclasses give `status_text` and `apply`, and call `went_ready` and
    `begin_stop`.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        notifier: Notifier | None,
        observer: LineObserver | None,
        log: Logger,
    ) -> None:
        super().__init__()
        #: Where its messages go (each kind of process under its own namespace).
        self.log = log
        self.config = config
        self.reactor = reactor
        self.notifier = notifier or Notifier({})
        self.observer = observer
        #: The https listeners' certificate (None without https listeners).
        self.tls: Any = None
        self.stopping = False
        self.started: defer.Deferred[list[str]] = defer.Deferred()
        self._timers: list[Timer] = []
        # One reload at a time: a SIGHUP during a reload (the supervisor's takes a while)
        # reads the file again once that one is done.
        self._reloads = defer.DeferredLock()

    # -- what subclasses give ----------------------------------------------------------------

    def status_text(self) -> str:
        """The one line `systemctl status` shows."""
        raise NotImplementedError

    def apply(self, config: Config) -> defer.Deferred[str | None] | str | None:
        """Use `config` (already checked, restart-only keys kept) from now on."""
        raise NotImplementedError

    # -- periodic work -----------------------------------------------------------------------

    def every(self, interval: float, call: Callable[[], object]) -> Timer:
        """Call `call` now and every `interval` seconds of the reactor's clock, until the
        process stops."""
        timer = Timer(interval, call, self.reactor)
        timer.setServiceParent(self)
        self._timers.append(timer)
        return timer

    def update_status(self) -> None:
        if not self.stopping:
            self.notifier.status(self.status_text())

    # -- life --------------------------------------------------------------------------------

    def announce(self, described: list[str]) -> None:
        """Log where it listens."""
        for address in described:
            self.log.info("listening on {address}", address=address)

    def went_ready(self) -> None:
        """Tell systemd: READY=1, then STATUS= and watchdog pings from now on."""
        self.notifier.ready(self.status_text())
        self.every(STATUS_INTERVAL, self.update_status)
        interval = watchdog_interval()
        if interval is not None and self.notifier.enabled:
            self.every(interval, self.notifier.watchdog)

    def reload(self, path: Path | None = None) -> defer.Deferred[bool]:
        """SIGHUP: re-read the configuration file (see `reload_config`), after the reload
        still under way, if any."""
        return self._reloads.run(reload_config, self, path)  # type: ignore[no-any-return]

    def begin_stop(self, uploads: int) -> defer.Deferred[Any]:
        """The first step of stopping: STOPPING=1 naming the `uploads` in flight; the
        periodic work ends (the Deferred fires once a call still running has)."""
        self.stopping = True
        timeout = self.config.server.shutdown_timeout
        self.notifier.stopping(
            f"stopping; waiting up to {timeout:g}s for {uploads} upload(s) in flight"
        )
        timers, self._timers = self._timers, []
        return defer.gatherResults(
            [defer.maybeDeferred(timer.disownServiceParent) for timer in timers],
            consumeErrors=True,
        )
