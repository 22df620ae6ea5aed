"""Several worker processes on the same listening sockets, under one supervisor.

The supervisor binds every listening socket (or takes them from systemd socket activation)
and starts `workers` copies of the server (`hmac-file-server worker`), handing each the same
sockets; the kernel spreads new connections over the processes accepting on them. It alone
talks to systemd: READY=1 once every worker is ready, STATUS= with the uploads in flight of
all workers, WATCHDOG=1, RELOADING=1/READY=1 and STOPPING=1. Worker 0 sweeps the storage
(and, when the supervisor starts, or a reload sets the first limit on stored bytes, counts its
files for the quotas): it reports each sweep, whose count of files the status line shows, and
publishes its figures for the other workers' /metrics (`hmacfs.process.shared_metrics`).

It serves nothing, so it runs without Twisted, on the standard library's selectors
(`hmacfs.process.loop`): no reactor, no web layer, no prometheus_client, no pyOpenSSL, no
storage (its workers have them), and no configuration code either. The command that starts
it reads the configuration file, binds nothing yet, and hands this module a plan
(`SupervisorPlan`, made by `hmacfs.process.planner`): the listeners, the log level, the
values only a restart applies, ... Then it replaces itself (exec, the same process for
systemd) by a fresh interpreter without the site packages (`hmacfs.process.supervise`), which
imports this module, the loop and the standard library's sockets and JSON, and nothing more
(tests/unit/test_imports.py keeps it so). A reload asks a short-lived child that reads the
file (`python -m hmacfs.process.planner FILE`) for the new plan.

A worker that cannot use the storage says why and exits; that fails the start (or stops the
reload), with its message.

A worker reports over a pipe (`hmacfs.process.worker`). A worker that dies is started again,
after a delay that doubles with every crash in a row; one that stops beating (a hung reactor)
is killed and started again. SIGHUP reads the configuration file again, then replaces the
workers one at a time (a new one is ready before the old one is told to finish its requests
and stop), so service never pauses. SIGTERM stops every worker gracefully. The certificate of
https listeners is the workers' to check: one that refuses the configuration
(`ConfigRefused`) fails the start, or stops the reload with the running workers kept.

Everything runs on the loop it is given: processes are started with its `spawn` and time is
its `seconds()`, so a test can drive it all with a fake loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

from hmacfs.core.listener import Listener
from hmacfs.process.lines import (
    CONFIGURED,
    PlainLog,
    line_writer,
    say_ready,
    say_restart_needed,
)
from hmacfs.process.listeners import Bound, bind_all
from hmacfs.process.loop import (
    Exit,
    Loop,
    Outcome,
    ProcessGone,
    Repeating,
    gather,
    settled,
)
from hmacfs.process.shared_metrics import MULTIPROC_ENV, forget_live_gauges, remove_directory
from hmacfs.process.systemd import (
    STATUS_INTERVAL,
    ActivatedSockets,
    Notifier,
    status_line,
    watchdog_interval,
)
from hmacfs.process.worker import (
    BEAT_INTERVAL,
    EXIT_CONFIG,
    WORKER_ENV,
    ConfigRefused,
    StorageRefused,
    plan_text,
    start_failed,
)

TYPE_CHECKING = False  # (typing is one of the modules it does without)
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from hmacfs.process.lines import LineWriter

#: A worker silent for this long is taken for hung, killed and started again.
HANG_TIMEOUT = 10.0
#: A new worker that is not ready after this long counts as failed; so does a reading of the
#: configuration file, at a reload, that takes longer.
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
#: The directory this process imported hmacfs from, which the workers must find it in too.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
#: The variable that hands the supervisor its plan (JSON), across the exec.
SUPERVISOR_ENV = "HMACFS_SUPERVISOR"


class RollStopped(Exception):
    """Replacing the workers at a reload stopped before the end (the message says why)."""


class SupervisorPlan:
    """What the supervisor runs, as the configuration file says it (`hmacfs.process.planner`
    makes it; a plain dict of JSON values, `data`, which crosses the exec and the planner's
    pipe as it is):

    - `source`: the configuration file, which the workers read;
    - `listeners`, `metrics_listeners`: the `[server]` and `[metrics]` listeners to bind;
    - `log_level`, `storage_dir` (for the ready line), `shutdown_timeout` (seconds);
    - `counts_stored_files`: whether the quotas need the stored files counted, and
      `quota_counts`, whether they count any already;
    - `warnings`: what the configuration's reading warned of;
    - `restart_only`: the values only a restart applies, by the name the log gives them
      ("[server] listen", ...; `hmacfs.process.restart.RESTART_ONLY`);
    - `kept`: the `[server]` values of those that a worker started later keeps, whatever the
      file says by then (`hmacfs.process.restart.keep_running`).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data: dict[str, Any] = dict(data)
        self.source: str = data["source"]
        self.listeners = tuple(Listener(**item) for item in data["listeners"])
        self.metrics_listeners = tuple(Listener(**item) for item in data["metrics_listeners"])
        self.log_level: str = data["log_level"]
        self.storage_dir: str = data["storage_dir"]
        self.shutdown_timeout = float(data["shutdown_timeout"])
        self.counts_stored_files = bool(data["counts_stored_files"])
        self.quota_counts = bool(data["quota_counts"])
        self.warnings: list[str] = list(data["warnings"])
        self.restart_only: dict[str, Any] = dict(data["restart_only"])
        self.kept: dict[str, Any] = dict(data["kept"])

    def keeping(self, running: SupervisorPlan, log: PlainLog) -> SupervisorPlan:
        """This plan as a reload applies it: what only a restart applies keeps its `running`
        value (and the log says so)."""
        for name, value in self.restart_only.items():
            if running.restart_only.get(name) != value:
                say_restart_needed(log, name)
        kept = ("listeners", "metrics_listeners", "storage_dir", "restart_only", "kept")
        return SupervisorPlan({**self.data, **{key: running.data[key] for key in kept}})


class NotReady(Exception):
    """Workers were not ready within READY_TIMEOUT."""


class WorkerProcess:
    """One worker, as the supervisor sees it (the watcher of its child process)."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready = Outcome()
        self.ended = Outcome()
        #: When it last said something, on the supervisor's clock.
        self.last_beat: float = supervisor.loop.seconds()
        self.in_flight = 0
        self.retiring = False
        self.child: Any = None
        #: Kept from the start: the child forgets it once it has ended.
        self.pid: int | None = None
        #: Whether it sweeps, and whether it was asked to count the stored files.
        self.sweeps = False
        self.recounts = False
        #: Why it could not use the storage, if it said so.
        self.refused: str | None = None
        self._buffer = b""

    def child_data(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.last_beat = self.supervisor.loop.seconds()
            if line == b"ready":
                self.ready.succeed(None)
            elif line.startswith(b"beat "):
                with contextlib.suppress(ValueError):
                    self.in_flight = int(line[5:] or b"0")
            elif line.startswith(b"swept "):
                with contextlib.suppress(ValueError):
                    files, _size = (int(word) for word in line[6:].split())
                    self.supervisor.swept(files)
            elif line == b"counted":
                self.supervisor.counted(self)
            elif line.startswith(b"refused "):
                self.refused = line[8:].decode("utf-8", "replace")

    def signal(self, name: str) -> None:
        """Send it signal `name` ("TERM", "KILL"), unless it has already ended."""
        if self.child is not None:
            with contextlib.suppress(ProcessGone, OSError):
                self.child.signal(name)

    def child_ended(self, how: Exit) -> None:
        if self.refused is not None:
            self.ready.fail(StorageRefused(self.refused))
        elif how.code == EXIT_CONFIG:
            self.ready.fail(
                ConfigRefused(
                    "worker exited before it was ready: it found the configuration invalid"
                    " (its message says why)"
                )
            )
        else:
            self.ready.fail(RuntimeError(f"worker exited before it was ready: {how}"))
        self.ended.succeed(None)
        self.supervisor.worker_ended(self, how)


class Supervisor:
    """Starts, watches, replaces and stops the workers; talks to systemd."""

    def __init__(
        self,
        plan: SupervisorPlan,
        loop: Any,
        *,
        count: int,
        notifier: Notifier | None = None,
        activated: ActivatedSockets | None = None,
        writer: LineWriter | None = None,
    ) -> None:
        self.plan = plan
        self.loop = loop
        self.count = count
        self.notifier = notifier or Notifier({})
        self.activated = activated or ActivatedSockets()
        self.writer = writer
        self.log = PlainLog("hmacfs.process.supervisor", writer)
        self.bound: list[Bound] = []
        self.metrics_bound: list[Bound] = []
        self.workers: list[WorkerProcess] = []
        self.stopping = False
        #: Comes with the listener descriptions once every worker is ready (or fails: why not).
        self.started = Outcome()
        #: What the last sweep (of worker 0) found: how many files are stored.
        self.files_stored: int | None = None
        #: Whether the stored files are to be counted for the quotas (by worker 0, at its
        #: start), until a worker that was asked to has done it.
        self.recount_pending = plan.counts_stored_files
        self._timers: list[Repeating] = []
        #: When workers ended unexpectedly, within the last CRASH_WINDOW seconds.
        self._crashes: list[float] = []
        #: Reloads asked for, the first one under way (one at a time: a SIGHUP during a
        #: reload reads the file again once that one is done).
        self._reloads: list[tuple[str | None, Outcome]] = []

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.bound = bind_all(self.plan.listeners, self.activated)
            self.metrics_bound = bind_all(self.plan.metrics_listeners, self.activated)
            for index in range(self.count):
                self.workers.append(self._spawn(index))
        except (OSError, RuntimeError) as e:
            self._kill_all()
            self._close_sockets()
            self.started.fail(e)
            return
        gathered = gather(w.ready for w in self.workers)
        timeout = self.loop.call_later(
            READY_TIMEOUT,
            gathered.fail,
            NotReady(f"the workers were not ready within {READY_TIMEOUT:g}s"),
        )

        def up(_: object) -> None:
            timeout.cancel()
            described = self.described()
            for address in described:
                self.log.info("listening on {address}", address=address)
            self.log.info("{count} worker processes ready", count=self.count)
            self.notifier.ready(self.status_text())
            self.every(STATUS_INTERVAL, self.update_status)
            interval = watchdog_interval()
            if interval is not None and self.notifier.enabled:
                self.every(interval, self.notifier.watchdog)
            self.every(BEAT_INTERVAL, self._check_beats)
            self.started.succeed(described)

        def down(error: BaseException) -> None:
            timeout.cancel()
            self._kill_all()
            self._close_sockets()
            self.started.fail(error)

        gathered.then(up, down)

    def every(self, interval: float, call: Callable[[], object]) -> Repeating:
        """Call `call` now and every `interval` seconds, until the supervisor stops."""
        timer = Repeating(self.loop, interval, call)
        self._timers.append(timer)
        timer.start()
        return timer

    def described(self) -> list[str]:
        """Where the workers listen."""
        return [b.description for b in self.bound] + [
            f"{b.description} (metrics)" for b in self.metrics_bound
        ]

    def swept(self, files: int) -> None:
        """Worker 0 has swept the storage, and found `files` stored files."""
        self.files_stored = files

    def counted(self, worker: WorkerProcess) -> None:
        """A worker asked to count the stored files (see `recount_pending`) has done it."""
        if worker.recounts:
            self.recount_pending = False

    def _spawn(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(self, index)
        first = 3
        child_fds: dict[int, int | str] = {1: 1, 2: 2}
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
        env = child_environment()
        worker.sweeps = index == 0
        worker.recounts = worker.sweeps and self.recount_pending
        env[WORKER_ENV] = plan_text(
            index, status_fd, items[False], items[True], sweeps=worker.sweeps,
            recount=worker.recounts, kept=self.plan.kept,
        )
        # -OO: without docstrings (and asserts), about 2 MiB less per worker; nothing a worker
        # runs reads a docstring. Where its bytecode cannot be cached (a package's directory
        # the service user cannot write), it compiles its modules as it starts (~0.3 s).
        argv = python_command("-m", "hmacfs", "--config", self.plan.source, "worker")
        worker.child = self.loop.spawn(argv, env, child_fds, worker)
        worker.pid = worker.child.pid
        self.log.debug("started worker {index} (pid {pid})", index=index, pid=worker.pid)
        return worker

    # -- watching ----------------------------------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, how: Exit) -> None:
        """A worker's process ended: start it again (later, if it keeps crashing), unless it
        was meant to end."""
        _mark_dead(worker.pid)
        if worker.retiring or self.stopping or worker not in self.workers:
            return
        now = self.loop.seconds()
        self._crashes = [t for t in self._crashes if t > now - CRASH_WINDOW] + [now]
        delay = min(RESTART_DELAY_MAX, RESTART_DELAY * 2 ** (len(self._crashes) - 1))
        self.log.error(
            "worker {index} (pid {pid}) ended unexpectedly: {reason}; starting it again "
            "in {delay:g}s",
            index=worker.index,
            pid=worker.pid,
            reason=how,
            delay=delay,
        )
        self.loop.call_later(delay, self._replace_dead, worker)

    def _replace_dead(self, worker: WorkerProcess) -> None:
        if self.stopping or worker not in self.workers:
            return
        try:
            fresh = self._spawn(worker.index)
        except OSError as e:
            self.log.error("cannot start worker {index}: {e}; trying again", index=worker.index,
                           e=e)
            self.loop.call_later(RESTART_DELAY_MAX, self._replace_dead, worker)
            return
        self.workers[self.workers.index(worker)] = fresh

    def _check_beats(self) -> None:
        now = self.loop.seconds()
        for worker in self.workers:
            if worker.ready.done and now - worker.last_beat > HANG_TIMEOUT:
                self.log.error(
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
            self.files_stored,
            workers=len(self.workers),
        )

    def update_status(self) -> None:
        if not self.stopping:
            self.notifier.status(self.status_text())

    # -- reload ------------------------------------------------------------------------------

    def reload(self, path: str | None = None) -> Outcome:
        """SIGHUP: read the configuration file (`path`, by default the one in use) again
        and, if it is valid, replace the workers by workers that read it; after the reload
        under way, if any. Comes with whether the new configuration is in use; never fails
        (what goes wrong is logged, and the running configuration stays)."""
        outcome = Outcome()
        self._reloads.append((path, outcome))
        if len(self._reloads) == 1:
            self._next_reload()
        return outcome

    def _next_reload(self) -> None:
        path, outcome = self._reloads[0]

        def finished(in_use: bool) -> None:
            self._reloads.pop(0)
            outcome.succeed(in_use and not self.stopping)
            if self._reloads:
                self._next_reload()

        try:
            once = self._reload_once(path)
        except Exception as e:
            self.log.failure("applying the new configuration failed", e)
            self.notifier.ready(self.status_text())
            once = Outcome.of(False)
        once.then(finished)

    def _reload_once(self, path: str | None) -> Outcome:
        if self.stopping:
            return Outcome.of(False)
        self.notifier.reloading()
        done = Outcome()

        def read(answer: dict[str, Any]) -> None:
            if "error" in answer:
                refused(answer["error"])
                return
            new = SupervisorPlan(answer["plan"])
            for warning in new.warnings:
                self.log.warn("config: {warning}", warning=warning)
            applied = new.keeping(self.plan, self.log)
            if self.writer is not None:
                self.writer.level = CONFIGURED[applied.log_level]
            self.apply(applied).then(replaced, stopped)

        def refused(error: str) -> None:
            self.log.error("reload failed, keeping the running configuration: {error}",
                           error=error)
            self.notifier.ready(f"reload failed: {error}; {self.status_text()}")
            done.succeed(False)

        def replaced(summary: str | None) -> None:
            if not self.stopping:
                self.log.info("configuration reloaded; {summary}", summary=summary)
                self.notifier.ready(self.status_text())
            done.succeed(True)

        def stopped(error: BaseException) -> None:
            if not self.stopping:
                self.log.error("reload stopped: {error}", error=str(error))
                self.notifier.ready(self.status_text())
            done.succeed(False)

        # The certificate is the new workers' to check (they refuse to start without it), so
        # that this process never loads pyOpenSSL.
        self.read_plan(path or self.plan.source).then(read, lambda e: refused(str(e)))
        return done

    def read_plan(self, source: str) -> Outcome:
        """What a child reading `source` makes of it (`hmacfs.process.planner`): a dict with
        the new plan's data ("plan") or the reason the file does not load ("error"). Fails
        with PlanUnread when the child does not say (it crashed, or did not finish within
        READY_TIMEOUT)."""
        reader = PlanReader()
        timeout = self.loop.call_later(READY_TIMEOUT, reader.too_slow)
        reader.answer.then(lambda _: timeout.cancel(), lambda _: timeout.cancel())
        argv = python_command("-m", "hmacfs.process.planner", source)
        try:
            reader.child = self.loop.spawn(argv, child_environment(), {1: "r", 2: 2}, reader)
        except OSError as e:
            reader.answer.fail(PlanUnread(f"cannot read the configuration: {e}"))
        return reader.answer

    def apply(self, plan: SupervisorPlan) -> Outcome:
        """Replace the workers, one at a time, by workers that read the file again."""
        if plan.counts_stored_files and not self.plan.quota_counts:
            self.recount_pending = True  # (by the new worker 0)
        self.plan = plan
        return self._roll()

    def _roll(self) -> Outcome:
        done = Outcome()
        olds = list(self.workers)

        def replace(position: int) -> None:
            if self.stopping:
                done.succeed(None)
                return
            if position == len(olds):
                done.succeed(f"{len(self.workers)} workers replaced")
                return
            old = olds[position]
            try:
                fresh = self._spawn(old.index)
            except OSError as e:
                done.fail(RollStopped(f"a new worker did not start: {e}; keeping the running"
                                        " workers"))
                return
            timeout = self.loop.call_later(
                READY_TIMEOUT,
                fresh.ready.fail,
                NotReady(f"not ready within {READY_TIMEOUT:g}s"),
            )

            def up(_: object) -> None:
                timeout.cancel()
                if old in self.workers:
                    self.workers[self.workers.index(old)] = fresh
                    old.retiring = True
                    old.signal("TERM")  # it finishes what it has in flight, then exits
                else:  # (it died meanwhile, and was replaced already)
                    fresh.retiring = True
                    fresh.signal("TERM")
                replace(position + 1)

            def down(error: BaseException) -> None:
                timeout.cancel()
                fresh.retiring = True
                fresh.signal("KILL")
                done.fail(RollStopped(
                    f"a new worker did not start: {error}; keeping the running workers"
                ))

            fresh.ready.then(up, down)

        replace(0)
        return done

    # -- stop --------------------------------------------------------------------------------

    def stop(self) -> Outcome:
        """Tell every worker to stop (they finish their uploads within shutdown_timeout);
        kill those still running KILL_GRACE seconds after that. Comes once all have ended
        (worker 0 finishes a sweep under way first)."""
        uploads = sum(w.in_flight for w in self.workers)
        self.stopping = True
        timeout = self.plan.shutdown_timeout
        self.notifier.stopping(
            f"stopping; waiting up to {timeout:g}s for {uploads} upload(s) in flight"
        )
        timers, self._timers = self._timers, []
        waits = [timer.stop() for timer in timers]
        self._close_sockets()
        workers = list(self.workers)
        for worker in workers:
            worker.retiring = True
            worker.signal("TERM")

        def kill_all() -> None:
            for worker in workers:
                worker.signal("KILL")

        kill = self.loop.call_later(timeout + KILL_GRACE, kill_all)
        stopped = Outcome()

        def done(_: object) -> None:
            kill.cancel()
            self.log.info("stopped")
            stopped.succeed(None)

        settled([*waits, *(w.ended for w in workers)]).then(done)
        return stopped

    def _kill_all(self) -> None:
        for worker in self.workers:
            worker.retiring = True
            worker.signal("KILL")

    def _close_sockets(self) -> None:
        for bound in (*self.bound, *self.metrics_bound):
            bound.sock.close()


def _mark_dead(pid: int | None) -> None:
    """Let the multi-process metrics forget a dead worker's live gauges."""
    directory = os.environ.get(MULTIPROC_ENV)
    if pid is not None and directory:
        forget_live_gauges(pid, directory)


#: What a reader of the configuration may write at most (more is no plan).
_MOST_A_PLAN_SAYS = 1 << 20


class PlanUnread(Exception):
    """The child reading the configuration file at a reload did not say what it found."""


class PlanReader:
    """Hears the child that reads the configuration file (`Supervisor.read_plan`): its one
    line of JSON on its standard output, and its end."""

    def __init__(self) -> None:
        self.answer = Outcome()
        self.child: Any = None
        self._said = b""

    def child_data(self, data: bytes) -> None:
        if len(self._said) <= _MOST_A_PLAN_SAYS:  # (a plan is a few KiB)
            self._said += data

    def child_ended(self, how: Exit) -> None:
        if how.code != 0:
            self.answer.fail(PlanUnread(f"reading the configuration failed: the reader {how}"))
            return
        try:
            answer = json.loads(self._said)
            if not isinstance(answer, dict) or not ("plan" in answer or "error" in answer):
                raise ValueError(answer)
        except ValueError:
            self.answer.fail(PlanUnread("reading the configuration failed: no plan came"))
            return
        self.answer.succeed(answer)

    def too_slow(self) -> None:
        if self.child is not None:
            with contextlib.suppress(ProcessGone, OSError):
                self.child.signal("KILL")
        self.answer.fail(PlanUnread(
            f"reading the configuration took longer than {READY_TIMEOUT:g}s"
        ))


def python_command(*words: str) -> list[str]:
    """The command line of a child running Python (a worker, a reader of the configuration):
    this interpreter, with the site packages (which the supervisor does without).

    -P: the working directory is not put first on sys.path (as -m alone does), so a module
    there (an http.py, say) is never imported by a child; PYTHONPATH still counts (the
    starting command sets it when hmacfs is found only through the working directory, as
    for `python -m hmacfs` in a checkout: `child_search_path`). -OO: the docstrings (and
    asserts) are left out; nothing a child runs reads one."""
    return [sys.executable, "-P", "-OO", *words]


def child_environment() -> dict[str, str]:
    """This process's environment, without what is meant for the supervisor alone."""
    env = dict(os.environ)
    for variable in _NOT_FOR_WORKERS:
        env.pop(variable, None)
    return env


def supervise(plan: SupervisorPlan, *, count: int, activated: ActivatedSockets) -> int:
    """Run a supervisor of `count` workers until SIGTERM/SIGINT; SIGHUP reloads. Returns the
    exit status (`hmacfs.cli`'s): a start that fails (a worker that cannot use the storage,
    a socket that cannot be bound, ...) is said on stderr and in STATUS=."""
    loop = Loop()
    writer = line_writer(plan.log_level)
    log = PlainLog("hmacfs", writer)
    loop.uncaught = lambda error: log.failure("unexpected error", error)
    for warning in plan.warnings:
        log.warn("config: {warning}", warning=warning)
    notifier = Notifier()
    supervisor = Supervisor(
        plan, loop, count=count, notifier=notifier, activated=activated, writer=writer
    )
    status = [0]
    stopping = [False]

    def stop_once() -> None:
        # SIGTERM can come twice (from systemd, or SIGINT to a whole terminal's process
        # group): the first starts the graceful stop, the others wait.
        if not stopping[0]:
            stopping[0] = True
            log.info("stopping")
            supervisor.stop().then(lambda _: loop.stop())

    def listening(addresses: list[str]) -> None:
        say_ready(log, plan.storage_dir)

    def failed(error: BaseException) -> None:
        status[0] = start_failed(error, notifier)
        stop_once()

    loop.on_signal(signal.SIGHUP, supervisor.reload)
    loop.on_signal(signal.SIGTERM, stop_once)
    loop.on_signal(signal.SIGINT, stop_once)
    # (the starting command blocked them, so that none came between its exec and here)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    supervisor.start()
    supervisor.started.then(listening, failed)
    loop.run()
    return status[0]


#: The signals the supervisor handles (blocked across the exec that starts it).
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


def main() -> int:
    """The supervisor's process, as the starting command's exec left it
    (`hmacfs.process.supervise`): what it was handed is in SUPERVISOR_ENV."""
    handed = json.loads(os.environ.pop(SUPERVISOR_ENV))
    activated = ActivatedSockets(
        fds=list(handed["activated"]["fds"]), names=dict(handed["activated"]["names"])
    )
    for fd in activated.fds:  # (kept open across the exec; not for the children)
        os.set_inheritable(fd, False)
    try:
        return supervise(
            SupervisorPlan(handed["plan"]), count=int(handed["count"]), activated=activated
        )
    finally:
        remove_directory(handed["metrics_dir"])
