"""Stand-ins for what a process talks to: the reactor, systemd, child processes, clients.

- `FakeReactor`: a MemoryReactorClock whose adopted ports are Twisted's real ones (on real
  listening sockets, never read from unless a test calls `doRead`);
- `FakeLoop`: the supervisor's loop on a fake clock, which records the processes it is
  asked to start (`spawned`) instead of starting them, except for the reader of the
  configuration a reload starts, which it runs in this process (`readings`);
- `FakeProcess`: such a process; a test plays the child (`say`, `exit`);
- `RecordingWriter`: the supervisor's log lines;
- `RecordingNotifier`: the sd_notify messages, as dicts;
- `Connection`: a client connection to a site, as a StringTransport that ends the way a
  reactor's transport does (connectionLost on the next turn of the clock);
- `LogCapture`: the log events of a test, formatted;
- `result`: what a Deferred that has fired holds.
"""

from __future__ import annotations

import heapq
import io
import itertools
import json
import signal as signals
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, tcp, unix
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from hmacfs.process import planner
from hmacfs.process.lines import LineWriter
from hmacfs.process.loop import Call, Exit, ProcessGone
from hmacfs.process.systemd import Notifier


class FakeProcess:
    """A child process that was never started: the test says what it does."""

    def __init__(self, watcher: Any, pid: int, argv: list[str], env: dict[str, str],
                 child_fds: dict[int, Any]) -> None:
        self.watcher = watcher
        self.pid: int | None = pid
        self.argv = argv
        self.env = env
        self.child_fds = child_fds
        #: Signals sent to it, by name ("TERM", "KILL").
        self.signals: list[str] = []
        self.status_fd = next(fd for fd, kind in child_fds.items() if kind == "r")

    def signal(self, name: str) -> None:
        if self.pid is None:
            raise ProcessGone()
        self.signals.append(name)

    def say(self, *lines: str) -> None:
        """Write `lines` to the status pipe, as the worker does."""
        self.watcher.child_data(b"".join(line.encode() + b"\n" for line in lines))

    def exit(self, code: int = 0, signal: str | None = None) -> None:
        """End the process (with `code`, or killed by `signal`, e.g. "KILL")."""
        self.pid = None  # (what the loop's child does when it is reaped)
        if signal is not None:
            self.watcher.child_ended(Exit(signal=getattr(signals, f"SIG{signal}")))
        else:
            self.watcher.child_ended(Exit(code=code))

    @property
    def ended(self) -> bool:
        return self.pid is None


class FakeLoop:
    """The supervisor's loop on a fake clock; it starts no process."""

    def __init__(self) -> None:
        self.now = 0.0
        self._calls: list[tuple[float, int, Call]] = []
        self._order = itertools.count()
        #: Every process asked for, in order (but the readers of the configuration).
        self.spawned: list[FakeProcess] = []
        #: The command lines of the readers of the configuration, each run at once, here.
        self.readings: list[list[str]] = []
        #: What plays a reader (given its FakeProcess), if not `read_here`.
        self.reader: Any = None
        self._next_pid = 1000
        #: Exceptions that calls raised.
        self.raised: list[BaseException] = []
        self.uncaught = self.raised.append

    def seconds(self) -> float:
        return self.now

    def call_later(self, delay: float, function: Any, *args: Any) -> Call:
        call = Call(self.now + max(0.0, delay), function, args)
        heapq.heappush(self._calls, (call.time, next(self._order), call))
        return call

    def call_soon_threadsafe(self, function: Any, *args: Any) -> None:
        self.call_later(0, function, *args)

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass, making every call due meanwhile (or then; a call due within a
        nanosecond of it counts as due, since steps that add up to a delay may fall short of
        it by a rounding error)."""
        self.now += seconds
        while self._calls and self._calls[0][0] <= self.now + 1e-9:
            _, _, call = heapq.heappop(self._calls)
            if call.active():
                call.called = True
                call.function(*call.args)

    def spawn(
        self, argv: list[str], env: dict[str, str], child_fds: dict[int, Any], watcher: Any
    ) -> FakeProcess:
        self._next_pid += 1
        process = FakeProcess(watcher, self._next_pid, list(argv), dict(env), dict(child_fds))
        if argv[-2] == "hmacfs.process.planner":
            self.readings.append(list(argv))
            (self.reader or read_here)(process)
            return process
        self.spawned.append(process)
        return process


def read_here(process: FakeProcess) -> None:
    """What `python -m hmacfs.process.planner FILE` writes, and its end."""
    said = json.dumps(planner.answer(Path(process.argv[-1]))) + "\n"
    process.watcher.child_data(said.encode())
    process.exit(0)


class RecordingWriter(LineWriter):
    """A LineWriter that keeps each message's text (`lines`), and its level and namespace
    (`records`)."""

    def __init__(self, level: str = "debug") -> None:
        super().__init__(io.StringIO(), journal=False, level=level)
        self.lines: list[str] = []
        self.records: list[tuple[str, str]] = []

    def write(self, level: str, namespace: str, text: str, when: float | None = None) -> None:
        if self.wants(level):
            self.lines.append(text)
            self.records.append((level, namespace))

    def count(self, text: str) -> int:
        """How many messages contain `text`."""
        return sum(text in line for line in self.lines)


class FakeReactor(MemoryReactorClock):
    """A reactor on a fake clock that listens for real."""

    def __init__(self) -> None:
        super().__init__()
        #: Every port adopted, in order.
        self.ports: list[Any] = []

    def adoptStreamPort(self, fileno: int, family: int, factory: Any) -> Any:
        # What the real reactor does, on this one: the port dups the descriptor and reads
        # nothing until doRead is called.
        if family == socket.AF_UNIX:
            port = unix.Port._fromListeningDescriptor(self, fileno, factory)
        else:
            port = tcp.Port._fromListeningDescriptor(self, fileno, family, factory)
        port.startListening()
        self.ports.append(port)
        return port

    def close_ports(self) -> None:
        """Close what the ports still hold (the end of a test that did not stop them)."""
        for port in self.ports:
            if getattr(port, "socket", None) is not None:
                port.socket.close()


class RecordingNotifier(Notifier):
    """A Notifier that is enabled and keeps what it would have sent."""

    def __init__(self) -> None:
        super().__init__({"NOTIFY_SOCKET": "/run/fake"})
        self.sent: list[dict[str, str]] = []

    def send(self, *fields: str) -> None:
        self.sent.append(dict(f.split("=", 1) for f in fields))

    def with_field(self, name: str, value: str | None = None) -> list[dict[str, str]]:
        """The messages carrying `name` (set to `value`, if given)."""
        return [m for m in self.sent if name in m and (value is None or m[name] == value)]


@implementer(ITCPTransport)
class Connection(StringTransport):
    """A client's TCP connection to a site (it speaks through `protocol.dataReceived`)."""

    def __init__(self, reactor: Any, factory: Any, client_port: int = 40000) -> None:
        peer = IPv4Address("TCP", "127.0.0.1", client_port)
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 5050), peerAddress=peer)
        self.clock = reactor
        self.write_closed = False
        self.aborted = False
        self.closed = False
        self.protocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(self)

    def send(self, data: bytes) -> None:
        """The client sends `data` (ignored once the connection is closed)."""
        if not self.closed:
            self.protocol.dataReceived(data)

    def loseConnection(self) -> None:
        super().loseConnection()
        self._end(error.ConnectionDone())

    def abortConnection(self) -> None:
        self.aborted = True
        self._end(error.ConnectionAborted())

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def _end(self, reason: Exception) -> None:
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(reason))

    # (ITCPTransport's options, never asked for by the site)
    def getTcpNoDelay(self) -> bool:
        return False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


@dataclass
class LogCapture:
    """The log events published while it is installed (`capture_logs`)."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    @property
    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def count(self, text: str) -> int:
        """How many messages contain `text`."""
        return sum(text in line for line in self.lines)


def capture_logs() -> Iterator[LogCapture]:
    """Collect every log event until the generator is closed (use as a fixture body)."""
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)


def result(d: defer.Deferred[Any]) -> Any:
    """What `d` has already fired with (raising its failure)."""
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "the Deferred has not fired"
    if isinstance(got[0], Failure):
        got[0].raiseException()
    return got[0]
