"""The reactor every server process runs on: Twisted's epoll reactor, less a log context per
event.

Twisted's epoll reactor hands each ready descriptor to its handler inside
``twisted.python.log.callWithLogger``, which asks the connection for its log prefix and copies a
context dictionary for the legacy log's ``system`` key: a few microseconds per event, which is
a tenth of what answering a small GET costs. Nothing here logs through the legacy log, and this
server's log lines do not show ``system``, so `Reactor` calls the handler directly; everything
else, the handling of errors included (``_doReadOrWrite``), is Twisted's.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor


class Reactor(EPollReactor):  # type: ignore[misc]
    """EPollReactor without the per-event log context."""

    def doPoll(self, timeout: float | None) -> None:  # (Twisted's name)
        try:
            # At most as many events as descriptors are watched, as Twisted's does.
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        handle = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable: Any = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)

    doIteration = doPoll


def install() -> None:
    """Make `Reactor` the global reactor (before anything imports twisted.internet.reactor).
    Raises twisted.internet.error.ReactorAlreadyInstalledError if one is already."""
    installReactor(Reactor())
