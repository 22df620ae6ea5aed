"""Timers that a change of the wall clock does not move.

Twisted's reactors schedule on `time.time()`. When the wall clock steps (NTP's first sync
after a boot, an admin's `date -s`, a virtual machine resumed), every timer moves with it: a
step forward fires each at once (idle connections cut, every worker taken for hung and killed
by its supervisor, the sweeper off early), a step back holds each for as long as the step (no
heartbeat, so systemd's watchdog kills the service; no deadline, no sweep). The server's
timers measure intervals, so they run on the monotonic clock; what is compared with dates
(signature expiry, file ages, Cache-Control) asks the wall clock itself.
"""

from __future__ import annotations

import time
from typing import Any


def use_monotonic_clock(reactor: Any) -> None:
    """Make `reactor` schedule on `time.monotonic`, its calls already scheduled included.

    Call it before the reactor runs; its `seconds()` means an instant on the monotonic clock
    from then on, never a date."""
    if reactor.seconds is time.monotonic:
        return
    before = reactor.seconds()
    reactor.seconds = time.monotonic
    shift = time.monotonic() - before
    for call in reactor.getDelayedCalls():
        call.time += shift
        call.seconds = time.monotonic
