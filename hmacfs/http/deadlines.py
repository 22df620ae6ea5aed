"""Deadlines no client can stretch: a request head must be in within `head_timeout` of its
first byte, an upload's body must average `min_body_rate` over each RATE_WINDOW, and an answer
the client reads nothing of for `send_timeout` is cut off.

Twisted's idle timeout alone lets a client that sends a byte now and then hold a connection
for ever, and it is off while an answer is being written. The head deadline is a timer per
request head (`UploadChannel`); the other two are checked by one `Deadlines` per site, every
TICK seconds while connections are open, over the uploads and answers under way only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.logger import Logger

from hmacfs.core.printable import printable
from hmacfs.core.refusals import RequestTimeout

if TYPE_CHECKING:
    from hmacfs.http.site import UploadSite

#: How often uploads and answers under way are looked at.
TICK = 1.0
#: An upload's body must bring `min_body_rate` bytes a second on average over each stretch of
#: this many seconds (long enough for a phone's link to stall for a while and recover).
RATE_WINDOW = 60.0

_log = Logger(namespace="hmacfs.http")


class Deadlines:
    """The body-rate and send deadlines of one site's uploads and answers."""

    def __init__(self, site: UploadSite) -> None:
        self.site = site
        self._loop: task.LoopingCall | None = None
        #: Per upload: when its current window began and what it had received then.
        self._windows: dict[Any, tuple[float, int]] = {}
        #: Per answer being written: when it last made progress, and how far it was.
        self._sending: dict[Any, tuple[float, int]] = {}

    def connection_opened(self) -> None:
        if self._loop is None or not self._loop.running:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.site.clock
            self._loop.start(TICK, now=False)

    def check(self) -> None:
        """Cut off the uploads that are too slow and the answers nobody reads."""
        site = self.site
        if not site.channels:
            if self._loop is not None and self._loop.running:
                self._loop.stop()
            self._windows.clear()
            self._sending.clear()
            return
        now = site.now()
        self._check_bodies(now)
        self._check_answers(now)

    def _check_bodies(self, now: float) -> None:
        rate = self.site.config.server.min_body_rate
        windows: dict[Any, tuple[float, int]] = {}
        for upload, request in list(self.site.in_flight.items()):
            if not upload.interruptible:
                continue
            started, received = self._windows.get(upload, (upload.started, upload.offset))
            if now - started < RATE_WINDOW:
                windows[upload] = (started, received)
                continue
            if rate and upload.received - received < rate * (now - started):
                _log.info(
                    "{path}: the body came at {rate:.0f} bytes/s; cut off",
                    path=printable(upload.rel),
                    rate=(upload.received - received) / (now - started),
                )
                request.body_failed(RequestTimeout("the body is coming too slowly"))
                continue
            windows[upload] = (now, upload.received)
        self._windows = windows

    def _check_answers(self, now: float) -> None:
        limit = self.site.config.server.send_timeout
        sending: dict[Any, tuple[float, int]] = {}
        for request in list(self.site.active):
            if request.upload is not None or request.finished:
                continue  # (an upload's answer is a few bytes after its body)
            sent = request.sentLength
            since, before = self._sending.get(request, (request.started, sent))
            if sent != before:
                since = now
            if now - since >= limit:
                channel: Any = request.channel
                if channel is not None and channel.transport is not None:
                    _log.info("an answer nobody read for {limit:.0f}s; cut off", limit=limit)
                    channel.transport.abortConnection()
                continue
            sending[request] = (since, sent)
        self._sending = sending

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
