"""The supervisor's loop, for real: child processes, their pipes and their ends, timers,
calls from threads and from signals."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hmacfs.process.loop import (
    Exit,
    Loop,
    Outcome,
    ProcessGone,
    Repeating,
    gather,
    settled,
)
from tests.process.fakes import FakeLoop

#: A child that reports what it was handed: which descriptors are open, whether 3 is a
#: listening socket, what its standard input holds; then exits with status 3.
CHILD = """
import os, socket, sys
fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
listening = socket.socket(fileno=os.dup(3)).getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
line = f"fds {fds} listening {listening} stdin {sys.stdin.read()!r}\\n"
os.write(4, line.encode())
sys.exit(3)
"""


class Watcher:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.data = b""
        self.how: Exit | None = None
        self.data_at_end = b""

    def child_data(self, data: bytes) -> None:
        self.data += data

    def child_ended(self, how: Exit) -> None:
        self.how = how
        self.data_at_end = self.data
        self.loop.stop()


@pytest.fixture
def loop() -> Iterator[Loop]:
    """A real loop, closed (its signal handlers put back) after the test."""
    real = Loop()
    yield real
    real.close()


def run_until_stopped(loop: Loop, seconds: float = 30.0) -> None:
    """Run `loop` until something stops it, failing the test after `seconds`."""
    guard = loop.call_later(seconds, loop.stop)
    loop.run()
    assert guard.active(), "the loop was stopped by the guard: nothing happened in time"
    guard.cancel()


def test_a_child_gets_exactly_the_descriptors_it_is_handed(loop: Loop) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    stray = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(stray, True)  # (as a descriptor systemd passed would be)
    watcher = Watcher(loop)
    try:
        child = loop.spawn(
            [sys.executable, "-c", CHILD], dict(os.environ),
            {1: 1, 2: 2, 3: listening.fileno(), 4: "r"}, watcher,
        )
        run_until_stopped(loop)
    finally:
        os.close(stray)
        listening.close()
    assert watcher.how == Exit(code=3)
    # (the listing's own descriptor is the one above 4)
    assert watcher.data_at_end.startswith(b"fds [0, 1, 2, 3, 4, 5] listening 1 stdin ''")
    assert str(watcher.how) == "exited with status 3"
    with pytest.raises(ProcessGone):
        child.signal("TERM")


def test_a_child_killed_by_a_signal_is_told_so(loop: Loop) -> None:
    watcher = Watcher(loop)
    child = loop.spawn(
        [sys.executable, "-c", "import os; os.write(3, b'up\\n'); import time; time.sleep(60)"],
        dict(os.environ), {1: 1, 2: 2, 3: "r"}, watcher,
    )

    def check() -> None:
        if watcher.data == b"up\n":
            child.signal("KILL")
        else:
            loop.call_later(0.01, check)

    check()
    run_until_stopped(loop)
    assert watcher.how == Exit(signal=signal.SIGKILL)
    assert str(watcher.how) == "killed by SIGKILL"


def test_a_child_that_cannot_be_started_raises_and_leaves_nothing_open(loop: Loop) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        loop.spawn(["/nonexistent/python"], {}, {1: 1, 2: 2, 3: "r"}, Watcher(loop))
    assert set(os.listdir("/proc/self/fd")) == before


def test_timers_run_in_order_and_cancelled_ones_do_not(loop: Loop) -> None:
    ran: list[str] = []
    loop.call_later(0.02, ran.append, "second")
    loop.call_later(0.01, ran.append, "first")
    loop.call_later(0.015, ran.append, "cancelled").cancel()
    loop.call_later(0.03, loop.stop)
    run_until_stopped(loop)
    assert ran == ["first", "second"]


def test_a_call_from_another_thread_wakes_the_loop(loop: Loop) -> None:
    ran: list[str] = []

    def from_thread() -> None:
        loop.call_soon_threadsafe(ran.append, threading.current_thread().name)
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=from_thread, name="other").start()
    run_until_stopped(loop)  # (nothing else is scheduled: only the thread's call wakes it)
    assert ran == ["other"]


def test_a_signal_is_handled_on_the_loop(loop: Loop) -> None:
    heard: list[str] = []

    def usr1() -> None:
        heard.append(threading.current_thread().name)
        loop.stop()

    previous = signal.getsignal(signal.SIGUSR1)
    loop.on_signal(signal.SIGUSR1, usr1)
    loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
    run_until_stopped(loop)
    assert heard == [threading.main_thread().name]
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_a_call_that_raises_is_reported_and_the_loop_goes_on(loop: Loop) -> None:
    reported: list[BaseException] = []
    loop.uncaught = reported.append
    loop.call_later(0, lambda: 1 / 0)
    loop.call_later(0.01, loop.stop)
    run_until_stopped(loop)
    assert [type(e) for e in reported] == [ZeroDivisionError]


def test_outcomes_gather_and_settle() -> None:
    first, second = Outcome(), Outcome()
    both = gather([first, second])
    every = settled([first, second])
    second.succeed(2)
    assert not both.done
    first.succeed(1)
    assert both.result() == [1, 2] and every.done
    late: list[Any] = []
    first.then(late.append)  # (after it came: at once)
    assert late == [1]
    broken, waiting = Outcome(), Outcome()
    gathered = gather([broken, waiting])
    broken.fail(ValueError("no"))
    broken.succeed(3)  # (the first word counts)
    with pytest.raises(ValueError, match="no"):
        gathered.result()
    assert broken.failed and not settled([broken, waiting]).done
    assert gather([]).result() == [] and settled([]).done


def test_a_repeating_call_waits_for_one_still_running_and_stop_waits_too() -> None:
    loop = FakeLoop()
    calls: list[float] = []
    busy: list[Outcome] = []

    def call() -> Outcome:
        calls.append(loop.seconds())
        busy.append(Outcome())
        return busy[-1]

    timer = Repeating(loop, 10, call)
    timer.start()
    assert calls == [0]
    loop.advance(25)
    assert calls == [0]  # the first is still running
    busy[0].succeed(None)  # 25 s late: the times it missed (10, 20) are skipped
    loop.advance(4.9)
    assert calls == [0]
    loop.advance(0.1)
    assert calls == [0, 30]
    stopped = timer.stop()
    assert not stopped.done
    busy[1].succeed(None)
    assert stopped.done
    loop.advance(100)
    assert calls == [0, 30]


def test_a_repeating_call_that_raises_is_reported_and_not_made_again() -> None:
    loop = FakeLoop()
    calls: list[float] = []

    def call() -> None:
        calls.append(loop.seconds())
        if len(calls) == 2:
            raise RuntimeError("broken")

    timer = Repeating(loop, 1, call)
    timer.start()
    loop.advance(1)
    loop.advance(5)
    assert calls == [0, 1] and not timer.running
    assert [str(e) for e in loop.raised] == ["broken"]
    loop.raised.clear()
    assert timer.stop().done


def test_the_loop_measures_time_on_the_monotonic_clock() -> None:
    before = time.monotonic()
    assert before <= Loop.seconds() <= time.monotonic()
