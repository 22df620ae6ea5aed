"""The supervisor on a fake loop: the test plays the worker processes (their status pipe
and their end), and time is the fake clock's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest

from hmacfs.process import planner
from hmacfs.process.supervisor import (
    CRASH_WINDOW,
    HANG_TIMEOUT,
    KILL_GRACE,
    READY_TIMEOUT,
    RESTART_DELAY,
    RESTART_DELAY_MAX,
    NotReady,
    Supervisor,
    python_command,
)
from hmacfs.process.worker import BEAT_INTERVAL, WORKER_ENV
from tests.helpers.signing import SECRET
from tests.process.conftest import ConfigFile
from tests.process.fakes import FakeLoop, FakeProcess, RecordingNotifier, RecordingWriter


def started(
    config_file: ConfigFile,
    loop: FakeLoop,
    notifier: RecordingNotifier,
    count: int = 2,
    writer: RecordingWriter | None = None,
) -> Supervisor:
    supervisor = Supervisor(
        config_file.plan(),
        loop,
        count=count,
        notifier=notifier,
        writer=writer or RecordingWriter(),
    )
    supervisor.start()
    return supervisor


def ready(
    config_file: ConfigFile,
    loop: FakeLoop,
    notifier: RecordingNotifier,
    count: int = 2,
    writer: RecordingWriter | None = None,
) -> Supervisor:
    """A supervisor whose `count` workers have all said "ready"."""
    supervisor = started(config_file, loop, notifier, count, writer)
    for process in loop.spawned:
        process.say("ready")
    assert supervisor.started.done
    return supervisor


def advance(loop: FakeLoop, seconds: float, *beating: FakeProcess) -> None:
    """Let `seconds` pass, the `beating` workers reporting every BEAT_INTERVAL meanwhile."""
    while seconds > 1e-9:
        step = min(BEAT_INTERVAL, seconds)
        loop.advance(step)
        seconds -= step
        for process in beating:
            if not process.ended:
                process.say("beat 0")


def plan_of(process: FakeProcess) -> dict[str, Any]:
    plan: dict[str, Any] = json.loads(process.env[WORKER_ENV])
    return plan


def test_workers_get_the_sockets_and_ready_waits_for_every_one(
    config_file: ConfigFile,
    loop: FakeLoop,
    notifier: RecordingNotifier,
    lines: RecordingWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # the supervisor's alone
    config_file.write(workers=2, extra='[metrics]\nlisten = ["127.0.0.1:0"]')
    supervisor = started(config_file, loop, notifier, writer=lines)
    upload, metrics = supervisor.bound[0].sock, supervisor.metrics_bound[0].sock
    assert len(loop.spawned) == 2
    for index, process in enumerate(loop.spawned):
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
            **({"sweeps": True} if index == 0 else {}),  # (worker 0 sweeps the storage)
            # (what only a restart applies, which a worker started by a reload keeps)
            "kept": {"storage_dir": str(config_file.storage), "sweep_interval": 600.0},
        }
        assert "NOTIFY_SOCKET" not in process.env
    first, second = loop.spawned
    first.say("ready")
    assert not supervisor.started.done and notifier.sent == []
    second.say("ready")
    expected = [
        f"127.0.0.1:{upload.getsockname()[1]}",
        f"127.0.0.1:{metrics.getsockname()[1]} (metrics)",
    ]
    assert supervisor.started.result() == expected
    assert notifier.sent[0] == {
        "READY": "1",
        "STATUS": f"listening on {', '.join(expected)}; 2 workers; 0 uploads in flight",
    }
    assert lines.count("2 worker processes ready") == 1
    # It counts the uploads its workers report, and the files worker 0's sweeps found.
    first.say("beat 2")
    second.say("beat 1")
    assert supervisor.status_text().endswith("; 3 uploads in flight")
    first.say("swept 12 3456")
    assert supervisor.status_text().endswith("; 3 uploads in flight; 12 files stored")


def test_a_worker_that_exits_before_it_is_ready_fails_the_start(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier
) -> None:
    config_file.write(workers=2)
    supervisor = started(config_file, loop, notifier)
    first, second = loop.spawned
    second.say("ready")
    first.exit(2)
    with pytest.raises(RuntimeError, match="worker exited before it was ready"):
        supervisor.started.result()
    assert second.signals == ["KILL"]
    assert supervisor.bound[0].sock.fileno() == -1  # closed
    assert notifier.with_field("READY") == []


def test_workers_not_ready_in_time_fail_the_start(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier
) -> None:
    config_file.write(workers=2)
    supervisor = started(config_file, loop, notifier)
    loop.advance(READY_TIMEOUT - 0.1)
    assert not supervisor.started.done
    loop.advance(0.1)
    with pytest.raises(NotReady):
        supervisor.started.result()
    assert [process.signals for process in loop.spawned] == [["KILL"], ["KILL"]]


def test_a_dead_worker_is_started_again_after_a_doubling_delay(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier, writer=lines)
    keeps_running = loop.spawned[1]
    # (the last delay is the cap, and every crash still within CRASH_WINDOW of the first)
    for crashes in range(1, 8):
        supervisor.workers[0].child.exit(signal="KILL")
        delay = min(RESTART_DELAY * 2 ** (crashes - 1), RESTART_DELAY_MAX)
        assert lines.lines[-1].endswith(f"; starting it again in {delay:g}s")
        spawned = len(loop.spawned)
        advance(loop, delay - 0.01, keeps_running)
        assert len(loop.spawned) == spawned
        advance(loop, 0.01, keeps_running)
        assert len(loop.spawned) == spawned + 1
        fresh = loop.spawned[-1]
        assert plan_of(fresh)["index"] == 0
        assert supervisor.workers[0].child is fresh
        fresh.say("ready")
    assert delay == RESTART_DELAY_MAX
    assert keeps_running.signals == []
    # A worker that has run well for a while is started again as quickly as the first time.
    last = loop.spawned[-1]
    advance(loop, CRASH_WINDOW, keeps_running, last)
    pid = last.pid
    last.exit(1)
    assert lines.lines[-1].startswith(f"worker 0 (pid {pid}) ended unexpectedly: ")
    assert lines.lines[-1].endswith(f"; starting it again in {RESTART_DELAY:g}s")


def test_worker_0_sweeps_and_counts_the_files_until_one_has_counted_them(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier)
    assert [plan_of(p).get("recount", False) for p in loop.spawned] == [False, False]
    # A reload that sets the first limit on stored bytes: the new worker 0 counts.
    config_file.write(workers=2, extra='[quota]\ntotal_limit = "1G"')
    reloaded = supervisor.reload()
    loop.spawned[2].say("ready")
    loop.spawned[3].say("ready")
    assert reloaded.result() is True
    assert [(plan_of(p).get("sweeps", False), plan_of(p).get("recount", False))
            for p in loop.spawned[2:]] == [(True, True), (False, False)]
    # It dies before it has counted: the one started in its place counts.
    loop.spawned[2].exit(signal="KILL")
    advance(loop, RESTART_DELAY, loop.spawned[3])
    again = loop.spawned[4]
    assert plan_of(again)["index"] == 0 and plan_of(again).get("recount") is True
    again.say("ready")
    loop.spawned[3].say("counted")  # (only a worker asked to count has counted)
    assert supervisor.recount_pending
    again.say("counted")
    assert not supervisor.recount_pending
    again.exit(signal="KILL")
    advance(loop, 2 * RESTART_DELAY, loop.spawned[3])
    last = plan_of(loop.spawned[5])
    assert last["index"] == 0 and last.get("sweeps") is True and "recount" not in last


def test_a_silent_worker_is_killed_after_hang_timeout(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    ready(config_file, loop, notifier, writer=lines)
    silent, beating = loop.spawned
    for _ in range(int(HANG_TIMEOUT / BEAT_INTERVAL)):
        loop.advance(BEAT_INTERVAL)
        beating.say("beat 0")
    assert silent.signals == []  # silent for HANG_TIMEOUT exactly: not yet
    loop.advance(BEAT_INTERVAL)
    beating.say("beat 0")
    assert silent.signals == ["KILL"] and beating.signals == []
    assert lines.count(f"worker 0 (pid {silent.pid}) stopped answering; killing it") == 1
    silent.exit(signal="KILL")
    loop.advance(RESTART_DELAY)
    assert len(loop.spawned) == 3 and plan_of(loop.spawned[2])["index"] == 0


def test_reload_replaces_the_workers_one_at_a_time_and_logs_the_warnings(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier, writer=lines)
    old = list(loop.spawned)
    config_file.write(workers=2, server="max_upload_size = 5", mode=0o644)
    notifier.sent.clear()
    reloaded = supervisor.reload()
    assert notifier.sent == [{"RELOADING": "1", "STATUS": "reloading configuration"}]
    for index in range(2):
        fresh = loop.spawned[2 + index]
        assert plan_of(fresh)["index"] == index
        assert len(loop.spawned) == 3 + index  # one new worker at a time
        assert [process.signals for process in old] == [["TERM"]] * index + [[]] * (2 - index)
        fresh.say("ready")
    assert [process.signals for process in old] == [["TERM"], ["TERM"]]
    assert reloaded.result() is True
    assert [worker.child for worker in supervisor.workers] == loop.spawned[2:]
    assert loop.readings == [python_command("-m", "hmacfs.process.planner",
                                            str(config_file.path))]
    assert lines.count("configuration reloaded; 2 workers replaced") == 1
    assert lines.count("readable by every user") == 1
    assert notifier.sent[-1]["READY"] == "1"
    # The old ones finish and exit: nothing is started for them.
    for process in old:
        process.exit(0)
    advance(loop, RESTART_DELAY_MAX, *loop.spawned[2:])
    assert len(loop.spawned) == 4


def test_a_reload_during_a_reload_waits_for_it(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier, writer=lines)
    first, second = supervisor.reload(), supervisor.reload()
    assert len(loop.spawned) == 3  # the first reload's first new worker, nothing more
    for index in (2, 3):  # (each new worker is started once the one before is ready)
        loop.spawned[index].say("ready")
    assert first.result() is True and not second.done
    assert len(loop.spawned) == 5  # the second reload starts only now
    for index in (4, 5):
        loop.spawned[index].say("ready")
    assert second.result() is True
    assert [worker.child for worker in supervisor.workers] == loop.spawned[4:6]
    assert [len(process.signals) for process in loop.spawned] == [1, 1, 1, 1, 0, 0]
    assert lines.count("configuration reloaded; 2 workers replaced") == 2


def test_a_reload_stops_when_a_new_worker_does_not_start(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier, writer=lines)
    old = list(supervisor.workers)
    reloaded = supervisor.reload()
    loop.spawned[2].exit(1)
    assert reloaded.result() is False
    assert lines.count("reload stopped: a new worker did not start") == 1
    assert supervisor.workers == old and all(p.signals == [] for p in loop.spawned[:2])
    assert notifier.sent[-1]["READY"] == "1"


def test_reload_of_a_broken_file_starts_no_worker(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier, writer=lines)
    config_file.write(raw="[hmac]\nsecret = 5\n")
    assert supervisor.reload().result() is False
    assert len(loop.spawned) == 2
    assert lines.count("reload failed, keeping the running configuration") == 1
    assert notifier.sent[-1]["STATUS"].startswith("reload failed: ")


def test_a_reload_keeps_what_only_a_restart_applies_and_says_so(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier, writer=lines)
    kept = plan_of(loop.spawned[0])["kept"]
    config_file.write(raw="\n".join([
        "[server]",
        'listen = ["127.0.0.1:0", "127.0.0.2:0"]',
        f'storage_dir = "{config_file.path.parent / "elsewhere"}"',
        "workers = 3",
        'sweep_interval = "1m"',
        "[hmac]",
        f'secret = "{SECRET.decode()}"',
    ]))
    reloaded = supervisor.reload()
    for index in (2, 3):
        loop.spawned[index].say("ready")
    assert reloaded.result() is True
    assert len(loop.spawned) == 4  # (still two workers, on the sockets bound at the start)
    for name in ("listen", "storage_dir", "workers", "sweep_interval"):
        assert lines.count(f"[server] {name} changed: restart the service to apply it") == 1
    assert lines.count("[metrics] listen changed") == 0
    # The new workers keep the running storage directory and sweep interval.
    assert [plan_of(p)["kept"] for p in loop.spawned[2:]] == [kept, kept]
    assert [len(plan_of(p)["listen"]) for p in loop.spawned[2:]] == [1, 1]


def test_a_reader_of_the_file_that_fails_or_hangs_fails_the_reload(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = ready(config_file, loop, notifier, writer=lines)
    readers: list[FakeProcess] = []
    loop.reader = readers.append
    # One that crashes.
    reloaded = supervisor.reload()
    readers[0].say("Traceback (most recent call last):")
    readers[0].exit(1)
    assert reloaded.result() is False
    assert lines.count("reload failed, keeping the running configuration: reading the "
                       "configuration failed: the reader exited with status 1") == 1
    assert notifier.sent[-1]["STATUS"].startswith("reload failed: reading the configuration")
    # One that says nothing a plan is made of.
    reloaded = supervisor.reload()
    readers[1].say("{}")
    readers[1].exit(0)
    assert reloaded.result() is False
    assert lines.count("reading the configuration failed: no plan came") == 1
    # One that writes on and on: what it says beyond a MiB is not kept, and is no plan.
    reloaded = supervisor.reload()
    readers[2].say('{"error": "' + "x" * (1 << 20), "x" * (1 << 20) + '"}')
    readers[2].exit(0)
    assert reloaded.result() is False
    assert lines.count("reading the configuration failed: no plan came") == 2
    readers.pop(2)
    # One that hangs: killed after READY_TIMEOUT.
    reloaded = supervisor.reload()
    advance(loop, READY_TIMEOUT - 1, *loop.spawned)
    assert not reloaded.done and readers[2].signals == []
    advance(loop, 1, *loop.spawned)
    assert readers[2].signals == ["KILL"]
    assert reloaded.result() is False
    assert lines.count(f"reading the configuration took longer than {READY_TIMEOUT:g}s") == 1
    readers[2].exit(signal="KILL")  # (what it says after that is not heard)
    assert len(loop.spawned) == 2 and supervisor.workers[0].child is loop.spawned[0]
    # The next reload reads the file as ever.
    loop.reader = None
    reloaded = supervisor.reload()
    for index in (2, 3):
        loop.spawned[index].say("ready")
    assert reloaded.result() is True


def test_the_reader_of_the_file_writes_the_plan_or_why_there_is_none(
    config_file: ConfigFile,
) -> None:
    """`python -m hmacfs.process.planner FILE`, as a reload runs it."""
    def read() -> dict[str, Any]:
        done = subprocess.run(
            python_command("-m", "hmacfs.process.planner", str(config_file.path)),
            capture_output=True, text=True, timeout=60, check=True,
        )
        said: dict[str, Any] = json.loads(done.stdout)
        return said

    config_file.write(workers=2, server='shutdown_timeout = "2s"')
    plan = read()["plan"]
    assert plan == json.loads(json.dumps(planner.supervisor_plan(config_file.load())))
    assert plan["shutdown_timeout"] == 2.0 and plan["source"] == str(config_file.path)
    config_file.write(raw="[hmac]\nsecret = 5\n")
    error = read()["error"]
    assert str(config_file.path) in error and "secret" in error


def test_stop_asks_every_worker_to_stop_and_kills_what_is_left(
    config_file: ConfigFile, loop: FakeLoop, notifier: RecordingNotifier, lines: RecordingWriter
) -> None:
    config_file.write(workers=2, server='shutdown_timeout = "2s"')
    supervisor = ready(config_file, loop, notifier, writer=lines)
    quick, slow = loop.spawned
    quick.say("beat 1")
    sock = supervisor.bound[0].sock
    address = sock.getsockname()
    stopped = supervisor.stop()
    assert notifier.sent[-1] == {
        "STOPPING": "1",
        "STATUS": "stopping; waiting up to 2s for 1 upload(s) in flight",
    }
    assert quick.signals == ["TERM"] and slow.signals == ["TERM"]
    assert sock.fileno() == -1  # the workers hold the sockets now
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()
    quick.exit(0)
    loop.advance(2 + KILL_GRACE - 0.01)
    assert slow.signals == ["TERM"] and not stopped.done
    loop.advance(0.01)
    assert slow.signals == ["TERM", "KILL"]
    slow.exit(signal="KILL")
    assert stopped.done
    stopped.result()
    assert lines.count("stopped") >= 1
    assert "ended unexpectedly" not in "\n".join(lines.lines)
    loop.advance(RESTART_DELAY_MAX)
    assert len(loop.spawned) == 2
