"""The reactor's timers on the monotonic clock (a step of the wall clock moves none of them)."""

from __future__ import annotations

import time

import pytest
from twisted.internet.selectreactor import SelectReactor

from hmacfs.process.clock import use_monotonic_clock


def test_timers_scheduled_before_and_after_run_on_the_monotonic_clock() -> None:
    reactor = SelectReactor()
    try:
        early = reactor.callLater(10, lambda: None)
        use_monotonic_clock(reactor)
        late = reactor.callLater(5, lambda: None)
        now = time.monotonic()
        assert reactor.seconds() == pytest.approx(now, abs=1)
        assert early.getTime() == pytest.approx(now + 10, abs=1)
        assert late.getTime() == pytest.approx(now + 5, abs=1)
        early.reset(20)  # a call moved later keeps counting on the same clock
        assert early.getTime() == pytest.approx(time.monotonic() + 20, abs=1)
        use_monotonic_clock(reactor)  # twice changes nothing
        assert late.getTime() == pytest.approx(now + 5, abs=1)
        assert reactor.timeout() == pytest.approx(5, abs=1)
    finally:
        for call in reactor.getDelayedCalls():
            call.cancel()
        reactor.removeAll()
