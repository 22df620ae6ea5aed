"""The supervisor on a fake reactor: the test plays the worker processes (their status pipe
and their end), and time is the fake clock's."""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import pytest
from twisted.internet import defer

from hmacfs.process.supervisor import (
    CRASH_WINDOW,
    HANG_TIMEOUT,
    KILL_GRACE,
    READY_TIMEOUT,
    RESTART_DELAY,
    RESTART_DELAY_MAX,
    Supervisor,
)
from hmacfs.process.worker import BEAT_INTERVAL, WORKER_ENV
from tests.process.conftest import ConfigFile
from tests.process.fakes import FakeProcess, FakeReactor, LogCapture, RecordingNotifier, result


def has_fired(d: defer.Deferred[Any]) -> bool:
    """Whether `d` has its result (`called` is also true for one waiting on another)."""
    got: list[Any] = []
    d.addBoth(lambda value: got.append(value) or value)
    return bool(got)


def started(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, count: int = 2
) -> Supervisor:
    supervisor = Supervisor(
        config_file.load(),
        reactor,
        count=count,
        notifier=notifier,
        run_blocking=defer.maybeDeferred,
    )
    supervisor.startService()
    return supervisor


def ready(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, count: int = 2
) -> Supervisor:
    """A supervisor whose `count` workers have all said "ready"."""
    supervisor = started(config_file, reactor, notifier, count)
    for process in reactor.spawned:
        process.say("ready")
    assert supervisor.started.called
    return supervisor


def advance(reactor: FakeReactor, seconds: float, *beating: FakeProcess) -> None:
    """Let `seconds` pass, the `beating` workers reporting every BEAT_INTERVAL meanwhile."""
    while seconds > 1e-9:
        step = min(BEAT_INTERVAL, seconds)
        reactor.advance(step)
        seconds -= step
        for process in beating:
            if not process.ended:
                process.say("beat 0")


def plan_of(process: FakeProcess) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(process.env[WORKER_ENV])
    return plan


def test_workers_get_the_sockets_and_ready_waits_for_every_one(
    config_file: ConfigFile,
    reactor: FakeReactor,
    notifier: RecordingNotifier,
    logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # the supervisor's alone
    config_file.write(workers=2, extra='[metrics]\nlisten = ["127.0.0.1:0"]')
    supervisor = started(config_file, reactor, notifier)
    upload, metrics = supervisor.bound[0].sock, supervisor.metrics_bound[0].sock
    assert len(reactor.spawned) == 2
    for index, process in enumerate(reactor.spawned):
        # (-P: nothing of the working directory is imported)
        assert process.argv == [
            sys.executable, "-P", "-OO", "-m", "hmacfs", "--config", str(config_file.path), "worker"
        ]
        assert process.child_fds == {1: 1, 2: 2, 3: upload.fileno(), 4: metrics.fileno(), 5: "r"}
        assert plan_of(process) == {
            "index": index,
            "status_fd": 5,
            "listen": [{"name": "L0", "fd": 3, "entry": "127.0.0.1:0", "tls": False}],
            "metrics": [{"name": "L1", "fd": 4, "entry": "127.0.0.1:0", "tls": False}],
        }
        assert "NOTIFY_SOCKET" not in process.env
    first, second = reactor.spawned
    first.say("ready")
    assert not supervisor.started.called and notifier.sent == []
    second.say("ready")
    expected = [
        f"127.0.0.1:{upload.getsockname()[1]}",
        f"127.0.0.1:{metrics.getsockname()[1]} (metrics)",
    ]
    assert result(supervisor.started) == expected
    assert notifier.sent[0] == {
        "READY": "1",
        "STATUS": f"listening on {', '.join(expected)}; 2 workers; 0 uploads in flight",
    }
    assert logs.count("2 worker processes ready") == 1
    # The supervisor sweeps (once at once), and counts the uploads its workers report.
    first.say("beat 2")
    second.say("beat 1")
    assert supervisor.status_text().endswith("; 3 uploads in flight; 0 files stored")


def test_a_worker_that_exits_before_it_is_ready_fails_the_start(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    config_file.write(workers=2)
    supervisor = started(config_file, reactor, notifier)
    first, second = reactor.spawned
    second.say("ready")
    first.exit(2)
    with pytest.raises(RuntimeError, match="worker exited before it was ready"):
        result(supervisor.started)
    assert second.signals == ["KILL"]
    assert supervisor.bound[0].sock.fileno() == -1  # closed
    assert notifier.with_field("READY") == []


def test_workers_not_ready_in_time_fail_the_start(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    config_file.write(workers=2)
    supervisor = started(config_file, reactor, notifier)
    reactor.advance(READY_TIMEOUT - 0.1)
    assert not supervisor.started.called
    reactor.advance(0.1)
    with pytest.raises(defer.CancelledError):
        result(supervisor.started)
    assert [process.signals for process in reactor.spawned] == [["KILL"], ["KILL"]]


def test_a_dead_worker_is_started_again_after_a_doubling_delay(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, reactor, notifier)
    keeps_running = reactor.spawned[1]
    # (the last delay is the cap, and every crash still within CRASH_WINDOW of the first)
    for crashes in range(1, 8):
        supervisor.workers[0].transport.exit(signal="KILL")
        delay = min(RESTART_DELAY * 2 ** (crashes - 1), RESTART_DELAY_MAX)
        assert logs.lines[-1].endswith(f"; starting it again in {delay:g}s")
        spawned = len(reactor.spawned)
        advance(reactor, delay - 0.01, keeps_running)
        assert len(reactor.spawned) == spawned
        advance(reactor, 0.01, keeps_running)
        assert len(reactor.spawned) == spawned + 1
        fresh = reactor.spawned[-1]
        assert plan_of(fresh)["index"] == 0
        assert supervisor.workers[0].transport is fresh
        fresh.say("ready")
    assert delay == RESTART_DELAY_MAX
    assert keeps_running.signals == []
    # A worker that has run well for a while is started again as quickly as the first time.
    last = reactor.spawned[-1]
    advance(reactor, CRASH_WINDOW, keeps_running, last)
    pid = last.pid
    last.exit(1)
    assert logs.lines[-1].startswith(f"worker 0 (pid {pid}) ended unexpectedly: ")
    assert logs.lines[-1].endswith(f"; starting it again in {RESTART_DELAY:g}s")


def test_a_silent_worker_is_killed_after_hang_timeout(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(workers=2)
    ready(config_file, reactor, notifier)
    silent, beating = reactor.spawned
    for _ in range(int(HANG_TIMEOUT / BEAT_INTERVAL)):
        reactor.advance(BEAT_INTERVAL)
        beating.say("beat 0")
    assert silent.signals == []  # silent for HANG_TIMEOUT exactly: not yet
    reactor.advance(BEAT_INTERVAL)
    beating.say("beat 0")
    assert silent.signals == ["KILL"] and beating.signals == []
    assert logs.count(f"worker 0 (pid {silent.pid}) stopped answering; killing it") == 1
    silent.exit(signal="KILL")
    reactor.advance(RESTART_DELAY)
    assert len(reactor.spawned) == 3 and plan_of(reactor.spawned[2])["index"] == 0


def test_reload_replaces_the_workers_one_at_a_time_and_logs_the_warnings(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, reactor, notifier)
    old = list(reactor.spawned)
    config_file.write(workers=2, server="max_upload_size = 5", mode=0o644)
    notifier.sent.clear()
    reloaded = supervisor.reload()
    assert notifier.sent == [{"RELOADING": "1", "STATUS": "reloading configuration"}]
    for index in range(2):
        fresh = reactor.spawned[2 + index]
        assert plan_of(fresh)["index"] == index
        assert len(reactor.spawned) == 3 + index  # one new worker at a time
        assert [process.signals for process in old] == [["TERM"]] * index + [[]] * (2 - index)
        fresh.say("ready")
    assert [process.signals for process in old] == [["TERM"], ["TERM"]]
    assert result(reloaded) is True
    assert [worker.transport for worker in supervisor.workers] == reactor.spawned[2:]
    assert supervisor.config.server.max_upload_size == 5
    assert logs.count("configuration reloaded; 2 workers replaced") == 1
    assert logs.count("readable by every user") == 1
    assert notifier.sent[-1]["READY"] == "1"
    # The old ones finish and exit: nothing is started for them.
    for process in old:
        process.exit(0)
    advance(reactor, RESTART_DELAY_MAX, *reactor.spawned[2:])
    assert len(reactor.spawned) == 4


def test_a_reload_during_a_reload_waits_for_it(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, reactor, notifier)
    first, second = supervisor.reload(), supervisor.reload()
    assert len(reactor.spawned) == 3  # the first reload's first new worker, nothing more
    for index in (2, 3):  # (each new worker is started once the one before is ready)
        reactor.spawned[index].say("ready")
    assert result(first) is True and not has_fired(second)
    assert len(reactor.spawned) == 5  # the second reload starts only now
    for index in (4, 5):
        reactor.spawned[index].say("ready")
    assert result(second) is True
    assert [worker.transport for worker in supervisor.workers] == reactor.spawned[4:6]
    assert [len(process.signals) for process in reactor.spawned] == [1, 1, 1, 1, 0, 0]
    assert logs.count("configuration reloaded; 2 workers replaced") == 2


def test_a_reload_stops_when_a_new_worker_does_not_start(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, reactor, notifier)
    old = list(supervisor.workers)
    reloaded = supervisor.reload()
    reactor.spawned[2].exit(1)
    assert result(reloaded) is False
    assert logs.count("reload stopped: a new worker did not start") == 1
    assert supervisor.workers == old and all(p.signals == [] for p in reactor.spawned[:2])
    assert notifier.sent[-1]["READY"] == "1"


def test_reload_of_a_broken_file_starts_no_worker(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, reactor, notifier)
    config_file.write(raw="[hmac]\nsecret = 5\n")
    assert result(supervisor.reload()) is False
    assert len(reactor.spawned) == 2
    assert logs.count("reload failed, keeping the running configuration") == 1
    assert notifier.sent[-1]["STATUS"].startswith("reload failed: ")


def test_stop_asks_every_worker_to_stop_and_kills_what_is_left(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(workers=2, server='shutdown_timeout = "2s"')
    supervisor = ready(config_file, reactor, notifier)
    quick, slow = reactor.spawned
    quick.say("beat 1")
    sock = supervisor.bound[0].sock
    address = sock.getsockname()
    stopped = supervisor.stopService()
    assert notifier.sent[-1] == {
        "STOPPING": "1",
        "STATUS": "stopping; waiting up to 2s for 1 upload(s) in flight",
    }
    assert quick.signals == ["TERM"] and slow.signals == ["TERM"]
    assert sock.fileno() == -1  # the workers hold the sockets now
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    quick.exit(0)
    reactor.advance(2 + KILL_GRACE - 0.01)
    assert slow.signals == ["TERM"] and not stopped.called
    reactor.advance(0.01)
    assert slow.signals == ["TERM", "KILL"]
    slow.exit(signal="KILL")
    assert stopped.called
    result(stopped)
    assert logs.count("stopped") >= 1
    assert "ended unexpectedly" not in "\n".join(logs.lines)
    reactor.advance(RESTART_DELAY_MAX)
    assert len(reactor.spawned) == 2
