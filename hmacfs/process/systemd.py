"""What the process tells systemd, and what systemd hands it.

- `Notifier`: sd_notify(3) messages (READY, STATUS, RELOADING, STOPPING, WATCHDOG) through
  sdnotify; silent when NOTIFY_SOCKET is not set (not started by systemd).
- `watchdog_interval`: how often to ping, from WATCHDOG_USEC (half of it, as sd_watchdog_enabled(3)
  recommends), or None.
- `activated_sockets`: the listening sockets of socket activation (LISTEN_FDS/LISTEN_FDNAMES,
  sd_listen_fds(3)), by name and by position.
- `status_line`: the STATUS= line of the node and of the supervisor.
"""

from __future__ import annotations

import fcntl
import os
import socket

# (no typing, no dataclasses: the supervisor imports this module, and holds only what it
# needs; `hmacfs.process.supervisor`)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping
    from typing import Any, TextIO

SD_LISTEN_FDS_START = 3
#: How often STATUS= is refreshed for `systemctl status`.
STATUS_INTERVAL = 10.0


class Notifier:
    """Sends sd_notify messages to systemd (through sdnotify); does nothing outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._notifier: Any = None

    def send(self, *fields: str) -> None:
        """Send `fields` (e.g. "READY=1", "STATUS=...") as one message. Never raises."""
        if not self.enabled:
            return
        if self._notifier is None:
            import sdnotify

            # sdnotify connects to NOTIFY_SOCKET once and ignores every error, so systemd
            # going away never takes the service down with it.
            self._notifier = sdnotify.SystemdNotifier()
        # sdnotify encodes as Latin-1; handing it UTF-8 bytes as Latin-1 text sends them as is.
        self._notifier.notify("\n".join(fields).encode("utf-8").decode("latin-1"))

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading configuration")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None if none are wanted."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2_000_000


class ActivatedSockets:
    """Listening sockets passed by systemd: file descriptors by position and by name."""

    def __init__(self, fds: list[int] | None = None, names: dict[str, int] | None = None):
        self.fds: list[int] = [] if fds is None else fds
        self.names: dict[str, int] = {} if names is None else names

    def __repr__(self) -> str:
        return f"ActivatedSockets(fds={self.fds!r}, names={self.names!r})"

    def find(self, name: str) -> int:
        """The descriptor for "http" (FileDescriptorName) or "0" (position). Raises KeyError."""
        if name in self.names:
            return self.names[name]
        if name.isdigit() and int(name) < len(self.fds):
            return self.fds[int(name)]
        raise KeyError(name)


def activated_sockets(
    environ: MutableMapping[str, str] | None = None, pid: int | None = None
) -> ActivatedSockets:
    """Take over the sockets of socket activation (and remove the variables, as
    sd_listen_fds(1) does, so that child processes do not believe they are meant for them)."""
    env = os.environ if environ is None else environ
    found = ActivatedSockets()
    count = env.get("LISTEN_FDS", "")
    owner = env.get("LISTEN_PID", "")
    names = env.get("LISTEN_FDNAMES", "")
    for variable in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(variable, None)
    if not count.isdigit() or owner != str(os.getpid() if pid is None else pid):
        return found
    found.fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in found.fds:
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        # systemd passes blocking sockets (NonBlocking=no); a reactor needs them non-blocking.
        os.set_blocking(fd, False)
    for fd, name in zip(found.fds, names.split(":") if names else [], strict=False):
        found.names.setdefault(name, fd)
    return found


def socket_family(fd: int) -> int:
    """The address family of a listening socket descriptor (AF_INET, AF_INET6, AF_UNIX)."""
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return int(probe.family)
    finally:
        probe.close()


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is connected to the journal (JOURNAL_STREAM, systemd.exec(5))."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def status_line(
    listening: list[str], uploads: int, stored: int | None, workers: int | None = None
) -> str:
    """The STATUS= line: where it listens, (workers,) uploads in flight, files stored."""
    parts = [f"listening on {', '.join(listening) or 'nothing'}"]
    if workers is not None:
        parts.append(f"{workers} workers")
    parts.append(f"{uploads} upload{'s' if uploads != 1 else ''} in flight")
    if stored is not None:
        parts.append(f"{stored} files stored")
    return "; ".join(parts)
