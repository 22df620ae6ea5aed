"""Several worker processes on the same listening sockets, under one supervisor.

The supervisor binds every listening socket (or takes them from systemd socket activation)
and starts `workers` copies of the server (`hmac-file-server worker`), handing each the same
sockets; the kernel spreads new connections over the processes accepting on them. It alone
talks to systemd: READY=1 once every worker is ready, STATUS= with the uploads in flight of
all workers, WATCHDOG=1, RELOADING=1/READY=1 and STOPPING=1. It also runs the storage sweeper.

A worker reports over a pipe: "ready" once it accepts connections, then "beat N" every second
(N: its uploads in flight). A worker that dies is started again; one that stops beating (a hung
reactor) is killed and started again. SIGHUP checks the configuration, then replaces the
workers one at a time (a new one is ready before the old one is told to finish its requests
and stop), so service never pauses. SIGTERM stops every worker gracefully.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from hmacfs.core import config as config_module
from hmacfs.core.config import ConfigError, parse_listen
from hmacfs.core.settings import Config, Listener
from hmacfs.process.systemd import ActivatedSockets, Notifier, watchdog_interval
from hmacfs.storage.local import Storage

_log = Logger(namespace="hmacfs.process.supervisor")

#: Environment variable carrying a worker's sockets and status pipe (JSON).
WORKER_ENV = "HMACFS_WORKER"
BEAT_INTERVAL = 1.0
#: A worker silent for this long is taken for hung, killed and started again.
HANG_TIMEOUT = 10.0
READY_TIMEOUT = 60.0
STATUS_INTERVAL = 10.0
_SOCKET_BACKLOG = 1024


def worker_count(configured: int) -> int:
    """`configured`, or one per core for 0."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


@dataclass
class Bound:
    """A listening socket the supervisor holds for its workers."""

    entry: str
    listener: Listener
    sock: socket.socket
    metrics: bool

    @property
    def description(self) -> str:
        if self.sock.family == socket.AF_UNIX:
            name = self.sock.getsockname()
            return f"unix:{name.decode() if isinstance(name, bytes) else name}"
        host, port = self.sock.getsockname()[:2]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scheme = "https://" if self.listener.tls else ""
        return f"{scheme}{address}{' (metrics)' if self.metrics else ''}"


def bind(entry: str, activated: ActivatedSockets) -> socket.socket:
    """A listening socket for one `listen` entry. Raises OSError/RuntimeError naming it."""
    listener = parse_listen(entry)
    if listener.activated is not None:
        try:
            fd = activated.find(listener.activated)
        except KeyError:
            raise RuntimeError(
                f"{entry}: systemd passed no socket named {listener.activated!r} "
                f"(passed: {', '.join(activated.names) or 'none'})"
            ) from None
        return socket.socket(fileno=os.dup(fd))
    address = entry.split("://", 1)[-1]
    try:
        if address.startswith("unix:"):
            path = address[len("unix:") :]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if os.path.exists(path) and not os.path.isfile(path):
                os.unlink(path)  # a stale socket from a previous run
            sock.bind(path)
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            infos = socket.getaddrinfo(
                host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        sock.listen(_SOCKET_BACKLOG)
    except OSError as e:
        raise OSError(e.errno, f"{entry}: {e.strerror}") from None
    # A reactor accepts without blocking (the flag is shared with every duplicate).
    sock.setblocking(False)
    return sock


class WorkerProcess(protocol.ProcessProtocol):
    """One worker, as the supervisor sees it."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.last_beat = time.monotonic()
        self.in_flight = 0
        self.retiring = False
        self._buffer = b""

    @property
    def pid(self) -> int | None:
        transport: Any = self.transport
        return transport.pid if transport is not None else None

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N803
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.last_beat = time.monotonic()
            if line == b"ready":
                if not self.ready.called:
                    self.ready.callback(None)
            elif line.startswith(b"beat "):
                self.in_flight = int(line[5:] or b"0")

    def signal(self, name: str) -> None:
        transport: Any = self.transport
        with contextlib.suppress(ProcessExitedAlready, OSError):
            transport.signalProcess(name)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"worker exited before it was ready: {reason.value}"))
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class Supervisor(MultiService):  # type: ignore[misc]
    """Starts, watches, replaces and stops the workers; talks to systemd."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        count: int,
        notifier: Notifier,
        activated: ActivatedSockets,
        observer: Any = None,
    ) -> None:
        super().__init__()
        if config.source is None:
            raise ValueError("worker processes read the configuration file: it needs one")
        self.config = config
        self.reactor = reactor
        self.count = count
        self.notifier = notifier
        self.activated = activated
        self.observer = observer
        self.bound: list[Bound] = []
        self.workers: list[WorkerProcess] = []
        self.stopping = False
        self.started: defer.Deferred[list[str]] = defer.Deferred()
        self.storage = Storage(
            config.server.storage_dir,
            fsync=config.server.fsync,
            file_ttl=config.server.file_ttl,
            clock=reactor.seconds,
        )
        # Workers leave sweeping to the supervisor (one sweep, not one per worker).
        from hmacfs.metrics import Metrics
        from hmacfs.process.node import Sweeper

        pool = reactor.getThreadPool()
        self.sweeper = Sweeper(
            self.storage,
            config.server.sweep_interval,
            lambda f, *args: deferToThreadPool(reactor, pool, f, *args),
            metrics=Metrics(),
        )
        self.sweeper.clock = reactor
        self._crashes: list[float] = []
        self._loops: list[LoopingCall] = []

    # -- start -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        try:
            self.bound = [
                Bound(e, parse_listen(e), bind(e, self.activated), False)
                for e in self.config.server.listen
            ] + [
                Bound(e, parse_listen(e), bind(e, self.activated), True)
                for e in self.config.metrics.listen
            ]
        except (OSError, RuntimeError) as e:
            self._close_sockets()
            self.started.errback(e)
            return
        for index in range(self.count):
            self.workers.append(self._spawn(index))
        gathered = defer.gatherResults([w.ready for w in self.workers], consumeErrors=True)
        timeout = self.reactor.callLater(READY_TIMEOUT, gathered.cancel)

        def up(_: object) -> list[str]:
            if timeout.active():
                timeout.cancel()
            described = [b.description for b in self.bound]
            for address in described:
                _log.info("listening on {address}", address=address)
            _log.info("{count} worker processes ready", count=self.count)
            self.notifier.ready(self.status_text())
            self._every(STATUS_INTERVAL, self.update_status)
            self._every(BEAT_INTERVAL, self._check_beats)
            self.sweeper.setServiceParent(self)
            interval = watchdog_interval()
            if interval is not None and self.notifier.enabled:
                self._every(interval, self.notifier.watchdog, now=True)
            return described

        def down(failure: Any) -> Any:
            if timeout.active():
                timeout.cancel()
            for worker in self.workers:
                worker.retiring = True
                worker.signal("KILL")
            self._close_sockets()
            value = failure.value
            return getattr(value, "subFailure", failure)

        gathered.addCallbacks(up, down).chainDeferred(self.started)

    def _every(self, interval: float, f: Any, now: bool = False) -> None:
        loop = LoopingCall(f)
        loop.clock = self.reactor
        loop.start(interval, now=now)
        self._loops.append(loop)

    def _spawn(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(self, index)
        first = 3
        child_fds: dict[int, Any] = {1: 1, 2: 2}
        listen: list[dict[str, Any]] = []
        metrics: list[dict[str, Any]] = []
        for offset, bound in enumerate(self.bound):
            fd = first + offset
            child_fds[fd] = bound.sock.fileno()
            name = f"L{offset}"
            item = {"name": name, "fd": fd, "entry": bound.entry, "tls": bound.listener.tls}
            (metrics if bound.metrics else listen).append(item)
        status_fd = first + len(self.bound)
        child_fds[status_fd] = "r"
        description = {"index": index, "status_fd": status_fd, "listen": listen, "metrics": metrics}
        env = dict(os.environ, **{WORKER_ENV: json.dumps(description)})
        for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"):
            env.pop(variable, None)
        source = self.config.source
        assert source is not None
        argv = [sys.executable, "-m", "hmacfs", "--config", str(source), "worker"]
        self.reactor.spawnProcess(worker, sys.executable, argv, env=env, childFDs=child_fds)
        _log.debug("started worker {index} (pid {pid})", index=index, pid=worker.pid)
        return worker

    # -- watching ----------------------------------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason: Any) -> None:
        _mark_dead(worker.pid)
        if worker.retiring or self.stopping:
            return
        if worker in self.workers:
            now = time.monotonic()
            self._crashes = [t for t in self._crashes if t > now - 60] + [now]
            delay = min(30.0, 0.5 * 2 ** (len(self._crashes) - 1))
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
        now = time.monotonic()
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
        from hmacfs.process.node import status_line

        return status_line(
            [b.description for b in self.bound],
            sum(w.in_flight for w in self.workers),
            self.sweeper.last,
            workers=len(self.workers),
        )

    def update_status(self) -> None:
        if not self.stopping:
            self.notifier.status(self.status_text())

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: check the configuration, then replace the workers one at a time."""
        if self.stopping:
            return
        self.notifier.reloading()
        source = self.config.source
        assert source is not None
        try:
            new = config_module.load(source)
        except ConfigError as e:
            _log.error("reload failed, keeping the running configuration: {error}", error=str(e))
            self.notifier.ready(f"reload failed: {e}; {self.status_text()}")
            return
        from hmacfs.process.node import reloadable

        self.config = reloadable(self.config, new)
        self.storage.file_ttl = new.server.file_ttl
        if self.observer is not None:
            from hmacfs.process.logs import LEVELS

            self.observer.level = LEVELS[new.server.log_level]
        self._roll().addBoth(lambda _: self.notifier.ready(self.status_text()))

    @defer.inlineCallbacks
    def _roll(self) -> Any:
        for old in list(self.workers):
            if self.stopping:
                return
            fresh = self._spawn(old.index)
            timeout = self.reactor.callLater(READY_TIMEOUT, fresh.ready.cancel)
            try:
                yield fresh.ready
            except Exception as e:
                fresh.retiring = True
                fresh.signal("KILL")
                _log.error("reload stopped: a new worker did not start: {error}", error=str(e))
                return
            finally:
                if timeout.active():
                    timeout.cancel()
            if old in self.workers:
                self.workers[self.workers.index(old)] = fresh
                old.retiring = True
                old.signal("TERM")  # it finishes what it has in flight, then exits
        _log.info("configuration reloaded; {count} workers replaced", count=len(self.workers))

    # -- stop --------------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        self.stopping = True
        uploads = sum(w.in_flight for w in self.workers)
        timeout = self.config.server.shutdown_timeout
        self.notifier.stopping(
            f"stopping; waiting up to {timeout:g}s for {uploads} upload(s) in flight"
        )
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._close_sockets()
        workers = list(self.workers)
        for worker in workers:
            worker.retiring = True
            worker.signal("TERM")
        ended = defer.gatherResults([w.ended for w in workers], consumeErrors=True)
        def kill_all() -> None:
            for worker in workers:
                worker.signal("KILL")

        kill = self.reactor.callLater(timeout + 15, kill_all)

        def done(_: object) -> Any:
            if kill.active():
                kill.cancel()
            _log.info("stopped")
            return MultiService.stopService(self)

        return ended.addBoth(done)  # type: ignore[no-any-return]

    def _close_sockets(self) -> None:
        for bound in self.bound:
            bound.sock.close()


def _mark_dead(pid: int | None) -> None:
    """Let the multi-process metrics forget a dead worker's live gauges."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if pid is None or not directory:
        return
    from prometheus_client import multiprocess

    # Metrics must never take the supervisor down.
    with contextlib.suppress(OSError, ValueError):
        multiprocess.mark_process_dead(pid, directory)


# -- the worker's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """What the supervisor handed a worker: its sockets (by name) and its status pipe."""

    index: int
    status_fd: int
    activated: ActivatedSockets
    listen: tuple[str, ...]
    metrics: tuple[str, ...]


def worker_plan(environ: dict[str, str] | None = None) -> WorkerPlan | None:
    """The plan in WORKER_ENV, or None when this process is not a worker."""
    env = os.environ if environ is None else environ
    text = env.get(WORKER_ENV)
    if not text:
        return None
    data = json.loads(text)
    activated = ActivatedSockets()
    listen: list[str] = []
    metrics: list[str] = []
    for key, target in (("listen", listen), ("metrics", metrics)):
        for item in data[key]:
            fd = int(item["fd"])
            os.set_blocking(fd, False)
            activated.fds.append(fd)
            activated.names[item["name"]] = fd
            target.append(("https+systemd:" if item["tls"] else "systemd:") + item["name"])
    return WorkerPlan(
        index=int(data["index"]),
        status_fd=int(data["status_fd"]),
        activated=activated,
        listen=tuple(listen),
        metrics=tuple(metrics),
    )


def worker_config(config: Config, plan: WorkerPlan) -> Config:
    """`config` as a worker runs it: on the sockets it was handed."""
    return replace(
        config,
        server=replace(config.server, listen=plan.listen),
        metrics=replace(config.metrics, listen=plan.metrics),
    )


class StatusPipe:
    """The worker's end of the pipe to the supervisor."""

    def __init__(self, fd: int, reactor: Any) -> None:
        self.fd = fd
        self.reactor = reactor
        self.closed = False

    def send(self, line: str) -> None:
        if self.closed:
            return
        try:
            os.write(self.fd, line.encode() + b"\n")
        except OSError:
            # The supervisor is gone: a worker must not outlive it.
            self.closed = True
            _log.error("the supervisor went away; stopping")
            os.kill(os.getpid(), signal.SIGTERM)  # the same graceful stop as ever


def ignore_hangup() -> None:
    """Workers are replaced, not reloaded: SIGHUP goes to the supervisor only."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def multiprocess_dir() -> Path:
    """A fresh directory for the workers' shared metrics (removed by the caller)."""
    import tempfile

    base = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
    return Path(tempfile.mkdtemp(prefix="hmacfs-metrics-", dir=base))
