"""Log lines, without Twisted: what `hmacfs.process.logs` writes for Twisted's events, and
what the supervisor (which runs without Twisted) logs through `PlainLog`.

Under systemd (stderr is the journal stream named by JOURNAL_STREAM) each line starts with
its syslog priority, `<3>` for errors ... `<7>` for debug (sd-daemon(3)), and carries no
timestamp of its own, since the journal adds one. Elsewhere each line starts with a
timestamp and the level. Every line is made printable (`printable_line`).
"""

from __future__ import annotations

import sys
import time

from hmacfs.core.printable import printable_line
from hmacfs.process.systemd import stream_is_journal

TYPE_CHECKING = False  # (the supervisor imports no typing: `hmacfs.process.supervisor`)
if TYPE_CHECKING:
    from typing import Any, TextIO

#: The levels, lowest first, with their sd-daemon(3) priorities.
PRIORITIES = {"debug": 7, "info": 6, "warn": 4, "error": 3, "critical": 2}
RANKS = {name: rank for rank, name in enumerate(PRIORITIES)}
#: `[server] log_level`'s values, as level names.
CONFIGURED = {"debug": "debug", "info": "info", "warning": "warn", "error": "error"}


def render(level: str, namespace: str, text: str, *, journal: bool, when: float) -> str:
    """The lines of one message (`text` may have several: a traceback's are indented)."""
    lines = [printable_line(line) for line in text.rstrip("\n").split("\n")] or [""]
    if journal:
        prefix = f"<{PRIORITIES.get(level, 6)}>"
        return "".join(f"{prefix}{namespace}: {line}\n" for line in lines)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    head = f"{stamp} {level.upper():5} {namespace}: "
    return head + lines[0] + "\n" + "".join(f"    {line}\n" for line in lines[1:])


class LineWriter:
    """Writes messages at or above `level` to `stream`."""

    def __init__(self, stream: TextIO, *, journal: bool, level: str = "info") -> None:
        self.stream = stream
        self.journal = journal
        self.level = level

    def wants(self, level: str) -> bool:
        return RANKS.get(level, 1) >= RANKS[self.level]

    def write(self, level: str, namespace: str, text: str, when: float | None = None) -> None:
        if not self.wants(level):
            return
        out = render(
            level, namespace, text, journal=self.journal,
            when=time.time() if when is None else when,
        )
        write_out(self.stream, out)


def write_out(stream: TextIO, lines: str) -> None:
    """Write `lines` at once; a log that cannot be written (a closed stream, a full disk)
    loses them rather than stopping the process."""
    try:
        stream.write(lines)
        stream.flush()
    except (OSError, ValueError):
        pass


def line_writer(level: str, stream: TextIO | None = None) -> LineWriter:
    """A writer to `stream` (stderr by default) at `[server] log_level` `level`."""
    target = sys.stderr if stream is None else stream
    return LineWriter(target, journal=stream_is_journal(target), level=CONFIGURED[level])


def say_ready(log: Any, storage_dir: object) -> None:
    """The line a server (node or supervisor) logs once it is ready."""
    from hmacfs import __version__

    log.info("hmac-file-server {version} ready; storing in {storage}", version=__version__,
             storage=storage_dir)


def say_restart_needed(log: Any, name: str) -> None:
    """The warning for a setting a reload changed that only a restart applies ("[server]
    listen", ...)."""
    log.warn("{name} changed: restart the service to apply it", name=name)


class PlainLog:
    """A logger with the methods (and the format strings) of Twisted's `Logger`, writing
    through a `LineWriter`."""

    def __init__(self, namespace: str, writer: LineWriter | None = None) -> None:
        self.namespace = namespace
        self.writer = writer

    def emit(self, level: str, format: str, **values: Any) -> None:
        writer = self.writer
        if writer is None or not writer.wants(level):
            return
        try:
            text = format.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            text = f"{format!r} (could not be formatted: {e!r}) {values!r}"
        writer.write(level, self.namespace, text)

    def debug(self, format: str, **values: Any) -> None:
        self.emit("debug", format, **values)

    def info(self, format: str, **values: Any) -> None:
        self.emit("info", format, **values)

    def warn(self, format: str, **values: Any) -> None:
        self.emit("warn", format, **values)

    def error(self, format: str, **values: Any) -> None:
        self.emit("error", format, **values)

    def failure(self, format: str, error: BaseException, **values: Any) -> None:
        """An error with its traceback."""
        import traceback  # (loaded when first needed: most supervisors never write one)

        trace = "".join(traceback.format_exception(error)).rstrip("\n")
        self.emit("critical", format + "\n{traceback}", traceback=trace, **values)
