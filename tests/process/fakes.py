"""Stand-ins for what a process talks to: the reactor, systemd, child processes, clients.

- `FakeReactor`: a MemoryReactorClock whose adopted ports are Twisted's real ones (on real
  listening sockets, never read from unless a test calls `doRead`), and which records the
  processes it is asked to start (`spawned`) instead of starting them;
- `FakeProcess`: the transport of such a process; a test plays the child (`say`, `exit`);
- `RecordingNotifier`: the sd_notify messages, as dicts;
- `Connection`: a client connection to a site, as a StringTransport that ends the way a
  reactor's transport does (connectionLost on the next turn of the clock);
- `LogCapture`: the log events of a test, formatted;
- `result`: what a Deferred that has fired holds.
"""

from __future__ import annotations

import signal as signals
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error, tcp, unix
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from hmacfs.process.systemd import Notifier


class FakeProcess:
    """A child process that was never started: the test says what it does."""

    def __init__(self, protocol: Any, pid: int, argv: list[str], env: dict[str, str],
                 child_fds: dict[int, Any]) -> None:
        self.protocol = protocol
        self.pid: int | None = pid
        self.argv = argv
        self.env = env
        self.child_fds = child_fds
        #: Signals sent to it, by name ("TERM", "KILL").
        self.signals: list[str] = []
        self.status_fd = next(fd for fd, kind in child_fds.items() if kind == "r")

    def signalProcess(self, name: str) -> None:
        if self.pid is None:
            raise error.ProcessExitedAlready()
        self.signals.append(name)

    def say(self, *lines: str) -> None:
        """Write `lines` to the status pipe, as the worker does."""
        data = b"".join(line.encode() + b"\n" for line in lines)
        self.protocol.childDataReceived(self.status_fd, data)

    def exit(self, code: int = 0, signal: str | None = None) -> None:
        """End the process (with `code`, or killed by `signal`, e.g. "KILL")."""
        self.pid = None  # (what Twisted's process transport does when it reaps a child)
        if signal is not None:
            reason: Exception = error.ProcessTerminated(None, getattr(signals, f"SIG{signal}"))
        elif code:
            reason = error.ProcessTerminated(code)
        else:
            reason = error.ProcessDone(0)
        self.protocol.processEnded(Failure(reason))

    @property
    def ended(self) -> bool:
        return self.pid is None


class FakeReactor(MemoryReactorClock):
    """A reactor on a fake clock that listens for real and starts no process."""

    def __init__(self) -> None:
        super().__init__()
        #: Every port adopted, in order.
        self.ports: list[Any] = []
        #: Every process asked for, in order.
        self.spawned: list[FakeProcess] = []
        self._next_pid = 1000

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

    def spawnProcess(
        self,
        processProtocol: Any,  # noqa: N803
        executable: str,
        args: list[str],
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,  # noqa: N803
        childFDs: dict[int, Any] | None = None,  # noqa: N803
    ) -> FakeProcess:
        self._next_pid += 1
        process = FakeProcess(
            processProtocol, self._next_pid, list(args), dict(env or {}), dict(childFDs or {})
        )
        self.spawned.append(process)
        processProtocol.makeConnection(process)
        return process

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
