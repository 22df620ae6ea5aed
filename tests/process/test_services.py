"""`hmacfs.process.services`: the services a process is made of, and its periodic calls."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from hmacfs.process.services import Service, Services, Timer
from tests.process.fakes import LogCapture


class Recorded(Service):
    """A service that notes when it starts and stops, and stops when `stopped` fires."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.stopped: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.name}")

    def stopService(self) -> Any:
        super().stopService()
        self.log.append(f"stop {self.name}")
        return self.stopped


def fired(d: defer.Deferred[Any]) -> bool:
    got: list[Any] = []
    d.addBoth(lambda r: got.append(r) or r)
    return bool(got)


def test_parts_start_in_order_and_stop_in_reverse_order() -> None:
    log: list[str] = []
    whole = Services()
    first, second = Recorded("first", log), Recorded("second", log)
    first.setServiceParent(whole)
    second.setServiceParent(whole)
    assert log == [] and not first.running
    whole.startService()
    assert log == ["start first", "start second"] and first.running and whole.running
    second.stopped = defer.Deferred()
    done = whole.stopService()
    assert log[2:] == ["stop second", "stop first"]
    assert not fired(done)  # (second has not stopped yet)
    second.stopped.callback(None)
    assert fired(done) and not whole.running


def test_a_part_added_to_a_running_whole_starts_and_one_taken_out_stops() -> None:
    log: list[str] = []
    whole = Services()
    whole.startService()
    part = Recorded("late", log)
    part.setServiceParent(whole)
    assert log == ["start late"] and part.parent is whole
    part.stopped = defer.Deferred()
    stopping = part.disownServiceParent()
    assert log == ["start late", "stop late"] and part.parent is None
    assert stopping is part.stopped and whole.services == []
    # Taken out of a whole that does not run, it only leaves.
    idle, other = Services(), Recorded("other", log)
    other.setServiceParent(idle)
    assert other.disownServiceParent() is None and log[-1] == "stop late"


def test_a_timer_calls_now_then_every_interval() -> None:
    clock, calls = Clock(), []
    timer = Timer(10.0, lambda: calls.append(clock.seconds()), clock)
    timer.startService()
    assert calls == [0.0]
    clock.advance(9.9)
    assert calls == [0.0]
    clock.advance(0.1)
    clock.advance(10.0)
    assert calls == [0.0, 10.0, 20.0]
    assert fired(timer.stopService()) and not timer.running
    clock.advance(100.0)
    assert calls == [0.0, 10.0, 20.0]


def test_a_timer_waits_for_a_call_that_is_still_running() -> None:
    clock, pending = Clock(), []

    def call() -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        pending.append(d)
        return d

    timer = Timer(5.0, call, clock)
    timer.startService()
    clock.advance(20.0)
    assert len(pending) == 1  # the next call waits for this one
    pending[0].callback(None)
    clock.advance(5.0)
    assert len(pending) == 2
    stopped = timer.stopService()
    assert not fired(stopped) and timer.running
    pending[1].callback(None)
    assert fired(stopped) and not timer.running


def test_a_call_that_fails_is_logged_and_not_made_again(logs: LogCapture) -> None:
    clock, calls = Clock(), []

    def call() -> None:
        calls.append(clock.seconds())
        if len(calls) == 2:
            raise OSError("the disk is gone")

    timer = Timer(1.0, call, clock)
    timer.startService()
    clock.advance(1.0)
    clock.advance(5.0)
    assert calls == [0.0, 1.0]
    assert logs.count("a periodic call failed") == 1
    assert any("the disk is gone" in str(e.get("log_failure")) for e in logs.events)
    assert fired(timer.stopService())


def test_a_timer_stopped_before_it_started_or_twice_is_stopped() -> None:
    timer = Timer(1.0, lambda: None, Clock())
    assert timer.stopService() is None and not timer.running
    timer.startService()
    assert fired(timer.stopService())
    assert timer.stopService() is None
