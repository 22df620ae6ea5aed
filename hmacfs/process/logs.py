"""Log output of Twisted's events: readable lines on stderr, or journal lines with their
priority under systemd, as `hmacfs.process.lines` renders them."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

from hmacfs.process.lines import CONFIGURED, render, write_out
from hmacfs.process.systemd import stream_is_journal

#: `[server] log_level`'s values, as Twisted's levels.
LEVELS = {key: LogLevel.levelWithName(name) for key, name in CONFIGURED.items()}
_KNOWN = frozenset(LogLevel.iterconstants())


def _level_of(event: Mapping[str, Any]) -> LogLevel:
    level = event.get("log_level")
    if level in _KNOWN:  # LogLevel's constants are not instances of LogLevel
        return level  # type: ignore[no-any-return,return-value]
    fallback: LogLevel = LogLevel.error if event.get("isError") else LogLevel.info
    return fallback


@implementer(ILogObserver)
class LineObserver:
    """Writes events at or above `level` to `stream`, one line each (tracebacks indented)."""

    def __init__(self, stream: TextIO, *, journal: bool, level: LogLevel = LogLevel.info) -> None:
        self.stream = stream
        self.journal = journal
        self.level = level

    def __call__(self, event: Mapping[str, Any]) -> None:
        level = _level_of(event)
        if level < self.level:
            return
        text = formatEvent(dict(event)) or ""
        failure = event.get("log_failure")
        if failure is not None:
            try:
                text += "\n" + failure.getTraceback()
            except Exception:
                text += "\n(traceback unavailable)"
        namespace = str(event.get("log_namespace") or "-")
        # Values from clients are escaped where they are logged; `render` catches the rest
        # (Twisted's own messages, exceptions quoting a request), line by line.
        out = render(
            level.name, namespace, text, journal=self.journal,
            when=event.get("log_time", time.time()),
        )
        write_out(self.stream, out)


def start_logging(level: str, stream: TextIO | None = None) -> LineObserver:
    """Send every log event (Twisted's own included) through one LineObserver."""
    target = sys.stderr if stream is None else stream
    observer = LineObserver(target, journal=stream_is_journal(target), level=LEVELS[level])
    observers: list[Any] = [observer]  # zope interfaces are invisible to mypy
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    return observer
