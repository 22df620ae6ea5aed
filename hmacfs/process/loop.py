"""A small event loop for the supervisor, on the standard library alone.

The supervisor serves nothing: it waits for its workers' status lines, for timers, for
signals and for children that end. Twisted's reactor does that too, but brings a dozen
MiB of modules (Failure, Deferred, asyncio, zope.interface, attrs) into a process that only
waits; this loop is `selectors`, a heap of timers and `posix_spawn`.

- `Loop`: timers on the monotonic clock (`call_later`, `seconds`), readers, calls from other
  threads and from signal handlers (`call_soon_threadsafe`, `on_signal`), child processes
  (`spawn`);
- `Outcome`: a result to come, with callbacks (the part of a Deferred the supervisor uses);
- `Child` and `Exit`: a started process, and how it ended.

Everything the supervisor does goes through a loop it is given, so a test drives it with a
fake one (tests/process/fakes.py) and plays the children.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import heapq
import itertools
import os
import selectors
import signal
import time

# (typing and dataclasses are not imported: the supervisor runs on this loop, and holds only
# what it needs; `hmacfs.process.supervisor`)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any, Protocol


class Outcome:
    """A value or an error to come, once. Callbacks added after it came run at once."""

    def __init__(self) -> None:
        self.done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._waiting: list[tuple[Callable[[Any], object], Callable[[BaseException], object]]]
        self._waiting = []

    @classmethod
    def of(cls, value: Any) -> Outcome:
        """An outcome that has come, with `value`."""
        outcome = cls()
        outcome.succeed(value)
        return outcome

    def succeed(self, value: Any = None) -> None:
        self._settle(value, None)

    def fail(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, value: Any, error: BaseException | None) -> None:
        if self.done:
            return  # (the first word counts: a timeout that lost the race says nothing)
        self.done, self._value, self._error = True, value, error
        waiting, self._waiting = self._waiting, []
        for on_value, on_error in waiting:
            self._call(on_value, on_error)

    def then(
        self,
        on_value: Callable[[Any], object],
        on_error: Callable[[BaseException], object] | None = None,
    ) -> Outcome:
        """Call `on_value` with the value, or `on_error` with the error (by default, the
        error is dropped). Returns itself."""
        handlers = (on_value, on_error or _ignore)
        if self.done:
            self._call(*handlers)
        else:
            self._waiting.append(handlers)
        return self

    def _call(
        self, on_value: Callable[[Any], object], on_error: Callable[[BaseException], object]
    ) -> None:
        if self._error is None:
            on_value(self._value)
        else:
            on_error(self._error)

    def result(self) -> Any:
        """The value (raising the error); RuntimeError if it has not come."""
        if not self.done:
            raise RuntimeError("no outcome yet")
        if self._error is not None:
            raise self._error
        return self._value

    @property
    def failed(self) -> bool:
        return self.done and self._error is not None


def _ignore(_: object) -> None:
    pass


def gather(outcomes: Iterable[Outcome]) -> Outcome:
    """An outcome with the list of every value, or the first error."""
    outcomes = list(outcomes)
    gathered = Outcome()
    values: list[Any] = [None] * len(outcomes)
    left = [len(outcomes)]

    def one(index: int) -> Callable[[Any], None]:
        def got(value: Any) -> None:
            values[index] = value
            left[0] -= 1
            if left[0] == 0:
                gathered.succeed(values)

        return got

    for index, outcome in enumerate(outcomes):
        outcome.then(one(index), gathered.fail)
    if not outcomes:
        gathered.succeed([])
    return gathered


def settled(outcomes: Iterable[Outcome]) -> Outcome:
    """An outcome that comes (with None) once every one of `outcomes` has, however."""
    outcomes = list(outcomes)
    every = Outcome()
    left = [len(outcomes)]

    def one(_: object) -> None:
        left[0] -= 1
        if left[0] == 0:
            every.succeed(None)

    for outcome in outcomes:
        outcome.then(one, one)
    if not outcomes:
        every.succeed(None)
    return every


class Call:
    """A call scheduled on a loop."""

    __slots__ = ("args", "called", "cancelled", "function", "time")

    def __init__(self, when: float, function: Callable[..., object], args: tuple[Any, ...]):
        self.time = when
        self.function = function
        self.args = args
        self.called = False
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def active(self) -> bool:
        return not (self.called or self.cancelled)


class Exit:
    """How a child process ended: its exit status, or the signal that killed it."""

    __slots__ = ("code", "signal")

    def __init__(self, code: int | None = None, signal: int | None = None) -> None:
        self.code = code
        self.signal = signal

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Exit):
            return NotImplemented
        return (self.code, self.signal) == (other.code, other.signal)

    def __hash__(self) -> int:
        return hash((self.code, self.signal))

    def __repr__(self) -> str:
        return f"Exit(code={self.code!r}, signal={self.signal!r})"

    @classmethod
    def of_status(cls, status: int) -> Exit:
        """From a wait(2) status."""
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.waitstatus_to_exitcode(status))

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with status {self.code}"


if TYPE_CHECKING:

    class ChildWatcher(Protocol):
        """What hears from a child: its lines on the status pipe, and its end."""

        def child_data(self, data: bytes) -> None:
            """Bytes the child wrote to its status pipe."""

        def child_ended(self, how: Exit) -> None:
            """The child has ended (everything it wrote has been received)."""


class ProcessGone(Exception):
    """The child has ended already."""


class Child:
    """A process started by `Loop.spawn`."""

    def __init__(self, loop: Loop, pid: int, pipe: int | None, watcher: ChildWatcher) -> None:
        self.loop = loop
        self.pid: int | None = pid
        self.pipe = pipe
        self.watcher = watcher

    def signal(self, name: str) -> None:
        """Send it signal `name` ("TERM", "KILL"); ProcessGone once it has ended."""
        if self.pid is None:
            raise ProcessGone()
        os.kill(self.pid, getattr(signal, f"SIG{name}"))

    def _readable(self) -> None:
        if self.pipe is None:
            return
        while True:
            try:
                data = os.read(self.pipe, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_pipe()
                return
            self.watcher.child_data(data)

    def _close_pipe(self) -> None:
        if self.pipe is not None:
            self.loop.remove_reader(self.pipe)
            os.close(self.pipe)
            self.pipe = None

    def _reap(self) -> bool:
        """Whether it has ended (and then: what it wrote last is received, it is told)."""
        if self.pid is None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return False
        self.pid = None
        self._readable()  # (what it wrote just before it ended)
        self._close_pipe()
        self.watcher.child_ended(Exit.of_status(status))
        return True


class Loop:
    """Timers, readers, signals and children, run by `run` until `stop`."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Call]] = []
        self._order = itertools.count()
        self._soon: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]]
        self._soon = collections.deque()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, self._woken)
        self._children: dict[int, Child] = {}
        self._running = False
        #: The handlers its own replaced, by signal.
        self._handled: dict[int, Any] = {}
        #: Told of an exception a call raised (the loop goes on); by default, stderr is.
        self.uncaught: Callable[[BaseException], object] = _print_exception

    # -- time --------------------------------------------------------------------------------

    @staticmethod
    def seconds() -> float:
        """Now, on the monotonic clock (not a date)."""
        return time.monotonic()

    def call_later(self, delay: float, function: Callable[..., object], *args: Any) -> Call:
        call = Call(self.seconds() + max(0.0, delay), function, args)
        heapq.heappush(self._timers, (call.time, next(self._order), call))
        return call

    # -- other threads, signals --------------------------------------------------------------

    def call_soon_threadsafe(self, function: Callable[..., object], *args: Any) -> None:
        """Call `function` on the loop's thread, soon (safe from any thread, and from a
        signal handler)."""
        self._soon.append((function, args))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def on_signal(self, signum: int, function: Callable[[], object]) -> None:
        """Call `function` on the loop when signal `signum` arrives."""
        # The wakeup descriptor closes the gap between the last look at the queue and the
        # wait: a signal that comes in between wakes the wait at once.
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        previous = signal.signal(
            signum, lambda _signum, _frame: self.call_soon_threadsafe(function)
        )
        self._handled.setdefault(signum, previous)

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 4096):
                pass

    # -- descriptors -------------------------------------------------------------------------

    def add_reader(self, fd: int, function: Callable[[], object]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, function)

    def remove_reader(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    # -- children ----------------------------------------------------------------------------

    def spawn(
        self,
        argv: list[str],
        env: Mapping[str, str],
        child_fds: Mapping[int, int | str],
        watcher: ChildWatcher,
    ) -> Child:
        """Start `argv` (its first word a path) with `env`.

        `child_fds` maps each descriptor of the child to one of this process (1: 1 keeps
        standard output), or to "r" for a pipe this loop reads for `watcher`. Its standard
        input is /dev/null, and it has no other descriptor. Raises OSError when it cannot be
        started."""
        if signal.SIGCHLD not in self._handled:
            self.on_signal(signal.SIGCHLD, self._reap)
        pipe_read = None
        # Every source is first duplicated above every target, so that no dup2 overwrites a
        # source another one still needs.
        floor = max([*child_fds, 2]) + 1
        sources: list[int] = []
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        try:
            for target, given in sorted(child_fds.items()):
                if given == "r":
                    pipe_read, pipe_write = os.pipe2(os.O_CLOEXEC)
                    sources.append(pipe_write)
                    given = pipe_write  # noqa: PLW2901 (the pipe's end stands for "r")
                if given == target and target <= 2:
                    continue  # inherited as it is
                if not isinstance(given, int):
                    raise ValueError(f"child descriptor {target}: {given!r}")
                high = fcntl.fcntl(given, fcntl.F_DUPFD_CLOEXEC, floor)
                sources.append(high)
                actions.append((os.POSIX_SPAWN_DUP2, high, target))
            _keep_descriptors_from_children()
            pid = os.posix_spawn(
                argv[0],
                argv,
                dict(env),
                file_actions=actions,
                setsigdef=(signal.SIGPIPE, signal.SIGHUP, signal.SIGTERM, signal.SIGINT),
            )
        except BaseException:
            if pipe_read is not None:
                os.close(pipe_read)
            raise
        finally:
            for fd in sources:
                os.close(fd)
        if pipe_read is not None:
            os.set_blocking(pipe_read, False)
        child = Child(self, pid, pipe_read, watcher)
        self._children[pid] = child
        if pipe_read is not None:
            self.add_reader(pipe_read, child._readable)
        return child

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child._reap():
                del self._children[pid]

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Run until `stop` is called."""
        self._running = True
        while self._running:
            self._turn()

    def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        """Let go of its descriptors and signals (a loop that is done with)."""
        if self._wake_read < 0:
            return
        if self._handled:
            signal.set_wakeup_fd(-1)
        for signum, handler in self._handled.items():
            signal.signal(signum, handler)
        self._handled.clear()
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._wake_read = self._wake_write = -1

    def _turn(self) -> None:
        timeout: float | None
        if self._soon:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - self.seconds())
        else:
            timeout = None
        for key, _ in self._selector.select(timeout):
            self._safely(key.data, ())
        for _ in range(len(self._soon)):
            function, args = self._soon.popleft()
            self._safely(function, args)
        now = self.seconds()
        while self._timers and self._timers[0][0] <= now:
            _, _, call = heapq.heappop(self._timers)
            if call.active():
                call.called = True
                self._safely(call.function, call.args)

    def _safely(self, function: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            function(*args)
        except Exception as e:
            self.uncaught(e)


def _print_exception(error: BaseException) -> None:
    import traceback

    traceback.print_exception(error)


class Repeating:
    """Calls `call` at once and then every `interval` seconds of `loop` until `stop`.

    A call that returns an Outcome delays the next until it has come (a call late by more
    than an interval skips the times it missed); one that raises is reported to
    `loop.uncaught` and not made again."""

    def __init__(self, loop: Any, interval: float, call: Callable[[], object]) -> None:
        self.loop = loop
        self.interval = interval
        self.call = call
        self.running = False
        self._next: Any = None
        self._busy: Outcome | None = None
        self._stopped: Outcome | None = None

    def start(self) -> None:
        self.running = True
        self._run()

    def _run(self) -> None:
        self._next = None
        began = self.loop.seconds()
        try:
            got = self.call()
        except Exception as e:
            self.running = False
            self.loop.uncaught(e)
            return
        if isinstance(got, Outcome) and not got.done:
            self._busy = got
            got.then(lambda _: self._after(began), lambda _: self._after(began))
        else:
            self._after(began)

    def _after(self, began: float) -> None:
        self._busy = None
        if not self.running:
            if self._stopped is not None:
                self._stopped.succeed(None)
            return
        late = self.loop.seconds() - began
        delay = self.interval - late % self.interval if late > self.interval else (
            self.interval - late
        )
        self._next = self.loop.call_later(delay, self._run)

    def stop(self) -> Outcome:
        """Make no more calls; the Outcome comes once a call still running has finished."""
        self.running = False
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._busy is None:
            return Outcome.of(None)
        self._stopped = self._stopped or Outcome()
        return self._stopped


def _keep_descriptors_from_children() -> None:
    """Make every descriptor above 2 close on exec (what Python opens already does; sockets
    systemd passed do not)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
