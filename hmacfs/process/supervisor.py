"""Several worker processes on the same listening sockets, under one supervisor.

The supervisor binds every listening socket (or takes them from systemd socket activation)
and starts `workers` copies of the server (`hmac-file-server worker`), handing each the same
sockets; the kernel spreads new connections over the processes accepting on them. It alone
talks to systemd: READY=1 once every worker is ready, STATUS= with the uploads in flight of
all workers, WATCHDOG=1, RELOADING=1/READY=1 and STOPPING=1. It also runs the storage sweeper,
whose figures the workers' /metrics show (`hmacfs.process.shared_metrics`).

It serves nothing, so it loads nothing that only serving needs: not the web layer
(`hmacfs.http`, twisted.web), not prometheus_client, not pyOpenSSL (tests/unit/test_imports.py
keeps it so). What it imports it shares with every process: Twisted's reactor, the
configuration, the storage for the sweeper.

A worker reports over a pipe (`hmacfs.process.worker`). A worker that dies is started again,
after a delay that doubles with every crash in a row; one that stops beating (a hung reactor)
is killed and started again. SIGHUP checks the configuration (`hmacfs.process.reload`), then
replaces the workers one at a time (a new one is ready before the old one is told to finish
its requests and stop), so service never pauses. SIGTERM stops every worker gracefully.
The certificate of https listeners is the workers' to check: one that refuses the
configuration (`ConfigRefused`) fails the start, or stops the reload with the running workers
kept.

Everything runs on the reactor it is given: processes are started with its `spawnProcess`
and time is its `seconds()`, so a test can drive it all with a fake reactor.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from hmacfs.core.settings import Config
from hmacfs.process.lifecycle import ServerProcess, status_line
from hmacfs.process.listeners import Bound, bind_all
from hmacfs.process.logs import LineObserver
from hmacfs.process.reload import ReloadStopped
from hmacfs.process.services import Services
from hmacfs.process.shared_metrics import SweepFigures, forget_live_gauges, shared_directory
from hmacfs.process.sweeper import Sweeper, open_storage, recount
from hmacfs.process.systemd import ActivatedSockets, Notifier
from hmacfs.process.worker import (
    BEAT_INTERVAL,
    EXIT_CONFIG,
    WORKER_ENV,
    ConfigRefused,
    plan_text,
)

_log = Logger(namespace="hmacfs.process.supervisor")

#: A worker silent for this long is taken for hung, killed and started again.
HANG_TIMEOUT = 10.0
#: A new worker that is not ready after this long counts as failed.
READY_TIMEOUT = 60.0
#: A dead worker is started again after RESTART_DELAY, doubled for every other crash within
#: CRASH_WINDOW, RESTART_DELAY_MAX at most.
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 30.0
CRASH_WINDOW = 60.0
#: At stop, a worker still running this long after shutdown_timeout is killed.
KILL_GRACE = 15.0
#: Variables meant for the supervisor alone (systemd's), not for its workers.
_NOT_FOR_WORKERS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")


class WorkerProcess(protocol.ProcessProtocol):
    """One worker, as the supervisor sees it."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        #: When it last said something, on the supervisor's clock.
        self.last_beat: float = supervisor.reactor.seconds()
        self.in_flight = 0
        self.retiring = False
        #: Kept from the start: the transport forgets it once the process has ended.
        self.pid: int | None = None
        self._buffer = b""

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.last_beat = self.supervisor.reactor.seconds()
            if line == b"ready":
                if not self.ready.called:
                    self.ready.callback(None)
            elif line.startswith(b"beat "):
                self.in_flight = int(line[5:] or b"0")

    def signal(self, name: str) -> None:
        """Send it signal `name` ("TERM", "KILL"), unless it has already ended."""
        transport: Any = self.transport
        with contextlib.suppress(ProcessExitedAlready, OSError):
            transport.signalProcess(name)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            if getattr(reason.value, "exitCode", None) == EXIT_CONFIG:
                self.ready.errback(
                    ConfigRefused(
                        "worker exited before it was ready: it found the configuration invalid"
                        " (its message says why)"
                    )
                )
            else:
                self.ready.errback(
                    RuntimeError(f"worker exited before it was ready: {reason.value}")
                )
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


#: The directory this process imported hmacfs from, which the workers must find it in too.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class Supervisor(ServerProcess):
    """Starts, watches, replaces and stops the workers; talks to systemd."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        count: int,
        notifier: Notifier | None = None,
        activated: ActivatedSockets | None = None,
        observer: LineObserver | None = None,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    ) -> None:
        super().__init__(config, reactor, notifier, observer, _log)
        if config.source is None:
            raise ValueError("worker processes read the configuration file: it needs one")
        self.count = count
        self.activated = activated or ActivatedSockets()
        self.bound: list[Bound] = []
        self.metrics_bound: list[Bound] = []
        self.workers: list[WorkerProcess] = []
        self.storage = open_storage(config)
        if run_blocking is None:
            pool = reactor.getThreadPool()

            def run_blocking(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
                return deferToThreadPool(reactor, pool, f, *args)

        # The supervisor serves nothing, so it has no metrics (nor prometheus_client) of its
        # own: its workers show the figures of its sweeps.
        shared = shared_directory()
        self.figures = SweepFigures(shared) if shared is not None else None
        self.sweeper = Sweeper(
            self.storage,
            config.server.sweep_interval,
            run_blocking,
            clock=reactor,
            published=self.figures.publish if self.figures is not None else None,
        )
        #: When workers ended unexpectedly, within the last CRASH_WINDOW seconds.
        self._crashes: list[float] = []

    # -- start -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        try:
            self.bound = bind_all(self.config.server.listeners, self.activated)
            self.metrics_bound = bind_all(self.config.metrics.listeners, self.activated)
        except (OSError, RuntimeError) as e:
            self._close_sockets()
            self.started.errback(e)
            return
        recount(self.storage, self.config, self.sweeper.run_blocking)
        for index in range(self.count):
            self.workers.append(self._spawn(index))
        gathered = defer.gatherResults([w.ready for w in self.workers], consumeErrors=True)
        timeout = self.reactor.callLater(READY_TIMEOUT, gathered.cancel)

        def up(_: object) -> list[str]:
            if timeout.active():
                timeout.cancel()
            described = self.described()
            self.announce(described)
            _log.info("{count} worker processes ready", count=self.count)
            self.went_ready()
            self.every(BEAT_INTERVAL, self._check_beats)
            self.sweeper.setServiceParent(self)
            return described

        def down(failure: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            for worker in self.workers:
                worker.retiring = True
                worker.signal("KILL")
            self._close_sockets()
            return getattr(failure.value, "subFailure", failure)

        gathered.addCallbacks(up, down).chainDeferred(self.started)

    def described(self) -> list[str]:
        """Where the workers listen."""
        return [b.description for b in self.bound] + [
            f"{b.description} (metrics)" for b in self.metrics_bound
        ]

    def _spawn(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(self, index)
        first = 3
        child_fds: dict[int, Any] = {1: 1, 2: 2}
        items: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        every = [(b, False) for b in self.bound] + [(b, True) for b in self.metrics_bound]
        for offset, (bound, metrics) in enumerate(every):
            fd = first + offset
            child_fds[fd] = bound.sock.fileno()
            items[metrics].append(
                {"name": f"L{offset}", "fd": fd, "entry": bound.listener.text,
                 "tls": bound.listener.tls}
            )
        status_fd = first + len(every)
        child_fds[status_fd] = "r"
        env = dict(os.environ)
        env[WORKER_ENV] = plan_text(index, status_fd, items[False], items[True])
        for variable in _NOT_FOR_WORKERS:
            env.pop(variable, None)
        source = self.config.source
        assert source is not None
        # -P: the working directory is not put first on sys.path (as -m alone does), so a
        # module there (an http.py, say) is never imported by a worker; PYTHONPATH still counts,
        # and names where this process found hmacfs itself (a checkout run in place).
        # -OO: without docstrings (and asserts), about 2 MiB less per worker; nothing a worker
        # runs reads a docstring. Where its bytecode cannot be cached (a package's directory
        # the service user cannot write), it compiles its modules as it starts (~0.3 s).
        argv = [sys.executable, "-P", "-OO", "-m", "hmacfs", "--config", str(source), "worker"]
        # (sys.path[0] is the working directory or the script's, which a worker has not)
        inherited = sys.path if sys.flags.safe_path else sys.path[1:]
        if _PACKAGE_ROOT not in {os.path.realpath(p) for p in inherited if p}:
            # Found only through it: `python -m hmacfs` in a checkout.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p
            )
        self.reactor.spawnProcess(worker, sys.executable, argv, env=env, childFDs=child_fds)
        _log.debug("started worker {index} (pid {pid})", index=index, pid=worker.pid)
        return worker

    # -- watching ----------------------------------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason: Any) -> None:
        """A worker's process ended: start it again (later, if it keeps crashing), unless it
        was meant to end."""
        _mark_dead(worker.pid)
        if worker.retiring or self.stopping or worker not in self.workers:
            return
        now = self.reactor.seconds()
        self._crashes = [t for t in self._crashes if t > now - CRASH_WINDOW] + [now]
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY * 2 ** (len(self._crashes) - 1))
        _log.error(
            "worker {index} (pid {pid}) ended unexpectedly: {reason}; starting it again "
            "in {delay:g}s",
            index=worker.index,
            pid=worker.pid,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self.reactor.callLater(delay, self._replace_dead, worker)

    def _replace_dead(self, worker: WorkerProcess) -> None:
        if self.stopping or worker not in self.workers:
            return
        fresh = self._spawn(worker.index)
        self.workers[self.workers.index(worker)] = fresh

    def _check_beats(self) -> None:
        now = self.reactor.seconds()
        for worker in self.workers:
            if worker.ready.called and now - worker.last_beat > HANG_TIMEOUT:
                _log.error(
                    "worker {index} (pid {pid}) stopped answering; killing it",
                    index=worker.index,
                    pid=worker.pid,
                )
                worker.last_beat = now
                worker.signal("KILL")

    def status_text(self) -> str:
        """The one line `systemctl status` shows."""
        return status_line(
            self.described(),
            sum(w.in_flight for w in self.workers),
            self.sweeper.last,
            workers=len(self.workers),
        )

    # -- reload ------------------------------------------------------------------------------

    def apply(self, config: Config) -> defer.Deferred[str | None]:
        """Replace the workers, one at a time, by workers that read the file again."""
        self.config = config
        self.storage.fsync = config.server.fsync
        self.storage.file_ttl = config.server.file_ttl
        if config.quota.counts and self.storage.accounting is None:
            self.storage.count_usage()
            recount(self.storage, config, self.sweeper.run_blocking)
        return self._roll()

    @defer.inlineCallbacks
    def _roll(self) -> Any:
        for old in list(self.workers):
            if self.stopping:
                return None
            fresh = self._spawn(old.index)
            timeout = self.reactor.callLater(READY_TIMEOUT, fresh.ready.cancel)
            try:
                yield fresh.ready
            except Exception as e:
                fresh.retiring = True
                fresh.signal("KILL")
                raise ReloadStopped(
                    f"a new worker did not start: {e}; keeping the running workers"
                ) from None
            finally:
                if timeout.active():
                    timeout.cancel()
            if old in self.workers:
                self.workers[self.workers.index(old)] = fresh
                old.retiring = True
                old.signal("TERM")  # it finishes what it has in flight, then exits
        return f"{len(self.workers)} workers replaced"

    # -- stop --------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        """Tell every worker to stop (they finish their uploads within shutdown_timeout);
        kill those still running KILL_GRACE seconds after that."""
        timers = self.begin_stop(sum(w.in_flight for w in self.workers))
        self._close_sockets()
        workers = list(self.workers)
        for worker in workers:
            worker.retiring = True
            worker.signal("TERM")

        def kill_all() -> None:
            for worker in workers:
                worker.signal("KILL")

        kill = self.reactor.callLater(self.config.server.shutdown_timeout + KILL_GRACE, kill_all)

        def done(_: object) -> Any:
            if kill.active():
                kill.cancel()
            _log.info("stopped")
            return Services.stopService(self)

        ended = defer.gatherResults([timers] + [w.ended for w in workers], consumeErrors=True)
        return ended.addBoth(done)  # type: ignore[no-any-return]

    def _close_sockets(self) -> None:
        for bound in (*self.bound, *self.metrics_bound):
            bound.sock.close()


def _mark_dead(pid: int | None) -> None:
    """Let the multi-process metrics forget a dead worker's live gauges."""
    directory = shared_directory()
    if pid is not None and directory is not None:
        forget_live_gauges(pid, directory)
