"""Log lines about something that can happen thousands of times a second: the first at once,
then at most one per interval, each saying how many times it happened meanwhile."""

from __future__ import annotations

from collections.abc import Callable


class Throttle:
    """Counts events on `clock` (seconds); `due` says when one may be logged."""

    def __init__(self, clock: Callable[[], float], interval: float) -> None:
        self.clock = clock
        self.interval = interval
        self._count = 0
        self._logged_at: float | None = None

    def due(self) -> int | None:
        """Count one event: how many there were since the last line, when a line is due now,
        else None."""
        self._count += 1
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < self.interval:
            return None
        count, self._count, self._logged_at = self._count, 0, now
        return count
