"""The single-process node on a fake reactor: ready only once it listens, periodic messages
on the reactor's clock, reload (a changed, a broken, a restart-only change), and the stop
(uploads in flight, idle connections, a refused client still sending)."""

from __future__ import annotations

import io
import os
import socket
from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel

from hmacfs.http.site import IDLE_CLOSE_GRACE
from hmacfs.process.listeners import activated_listener
from hmacfs.process.logs import LineObserver
from hmacfs.process.node import CLOSE_TIMEOUT, Node
from hmacfs.process.systemd import STATUS_INTERVAL, ActivatedSockets
from hmacfs.process.worker import WorkerPlan
from tests.helpers.signing import mac_v1
from tests.process.conftest import ConfigFile
from tests.process.fakes import Connection, FakeReactor, LogCapture, RecordingNotifier, result


def started_node(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, **kwargs: Any
) -> Node:
    node = Node(
        config_file.load(), reactor, notifier=notifier, run_blocking=defer.maybeDeferred, **kwargs
    )
    node.startService()
    return node


def port_numbers(reactor: FakeReactor) -> list[int]:
    return [port.getHost().port for port in reactor.ports]


def put_head(rel: str, size: int, signature: str | None = None) -> bytes:
    query = signature if signature is not None else f"v={mac_v1(rel, size)}"
    return (
        f"PUT /upload/{rel}?{query} HTTP/1.1\r\nHost: up.example\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()


# -- start ----------------------------------------------------------------------------------


def test_ready_only_once_listening_and_naming_every_listener(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(
        listen=("127.0.0.1:0", "[::1]:0"), extra='[metrics]\nlisten = ["127.0.0.1:0"]'
    )
    node = started_node(config_file, reactor, notifier)
    plain, six, metrics = port_numbers(reactor)
    expected = [f"127.0.0.1:{plain}", f"[::1]:{six}", f"127.0.0.1:{metrics} (metrics)"]
    assert result(node.started) == expected
    # The metrics listener serves the metrics site, the others the upload site.
    assert [port.factory is node.site for port in reactor.ports] == [True, True, False]
    ready = notifier.with_field("READY", "1")
    assert ready == [notifier.sent[0]]  # the first message, and only once
    assert ready[0]["STATUS"] == (
        f"listening on 127.0.0.1:{plain}, [::1]:{six}; 0 uploads in flight; 0 files stored"
    )
    for address in expected:
        assert logs.count(f"listening on {address}") == 1
    # Really listening: the kernel completes a connection (accepted later by the reactor).
    socket.create_connection(("127.0.0.1", plain), timeout=5).close()


def test_status_and_watchdog_run_on_the_reactors_clock(
    config_file: ConfigFile,
    reactor: FakeReactor,
    notifier: RecordingNotifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # a ping every second
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config_file.write()
    node = started_node(config_file, reactor, notifier)
    pings, statuses = len(notifier.with_field("WATCHDOG")), len(notifier.with_field("STATUS"))
    reactor.pump([1.0] * int(STATUS_INTERVAL))
    assert len(notifier.with_field("WATCHDOG")) == pings + int(STATUS_INTERVAL)
    assert len(notifier.with_field("STATUS")) == statuses + 1
    node.stopService()
    sent = len(notifier.sent)
    reactor.pump([1.0] * int(2 * STATUS_INTERVAL))
    assert len(notifier.sent) == sent  # nothing periodic once stopping


def test_a_listen_failure_fails_start_and_leaves_nothing_listening(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        config_file.write(listen=("127.0.0.1:0", f"127.0.0.1:{busy}"))
        node = started_node(config_file, reactor, notifier)
        with pytest.raises(OSError, match=f"127.0.0.1:{busy}: Address already in use"):
            result(node.started)
    assert reactor.ports == []  # the first one was bound, then closed again
    assert notifier.with_field("READY") == []


def test_a_missing_activated_socket_is_named(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    config_file.write(listen=("systemd:http",))
    node = started_node(config_file, reactor, notifier)
    with pytest.raises(RuntimeError, match="systemd passed no socket named 'http'"):
        result(node.started)


def test_a_worker_reports_to_its_supervisor_and_leaves_sweeping_to_it(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    config_file.write()
    shared = socket.socket()
    shared.bind(("127.0.0.1", 0))
    shared.listen(8)
    fd = os.dup(shared.fileno())  # the worker's inherited descriptor (closed by the node)
    plan = WorkerPlan(
        index=0,
        status_fd=-1,
        activated=ActivatedSockets(fds=[fd], names={"L0": fd}),
        listeners=(activated_listener("L0", tls=False),),
        metrics_listeners=(),
    )

    class Pipe:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def send(self, line: str) -> None:
            self.lines.append(line)

    pipe = Pipe()
    node = started_node(config_file, reactor, notifier, worker=plan, reporter=pipe)
    assert result(node.started) == [f"127.0.0.1:{shared.getsockname()[1]}"]
    assert pipe.lines == ["ready", "beat 0"]
    reactor.pump([1.0] * 3)
    assert pipe.lines == ["ready"] + ["beat 0"] * 4
    assert notifier.sent == []  # the supervisor talks to systemd
    assert not node.sweeper.running
    with pytest.raises(OSError):
        os.fstat(fd)  # the port works on its own duplicate
    shared.close()


# -- reload ---------------------------------------------------------------------------------


def test_reload_applies_a_changed_file(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write()
    observer = LineObserver(io.StringIO(), journal=False, level=LogLevel.debug)
    node = started_node(config_file, reactor, notifier, observer=observer)
    config_file.write(server="max_upload_size = 5", log_level="error")
    notifier.sent.clear()
    assert result(node.reload()) is True
    assert [list(m) for m in notifier.sent] == [["RELOADING", "STATUS"], ["READY", "STATUS"]]
    assert node.site.config.server.max_upload_size == 5
    assert observer.level == LogLevel.error
    assert logs.count(f"configuration reloaded from {config_file.path}") == 1
    client = Connection(reactor, node.site)
    client.send(put_head("a1/big.bin", 10))
    assert client.value().startswith(b"HTTP/1.1 413 ")


def test_reload_keeps_what_only_a_restart_applies(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write()
    node = started_node(config_file, reactor, notifier)
    before = node.config.server
    config_file.write(
        listen=("127.0.0.1:1",), server='sweep_interval = "1m"\nmax_upload_size = 7'
    )
    assert result(node.reload()) is True
    assert node.config.server.listen == before.listen
    assert node.config.server.sweep_interval == before.sweep_interval
    assert node.config.server.max_upload_size == 7  # the rest applies
    for key in ("listen", "sweep_interval"):
        assert logs.count(f"[server] {key} changed: restart the service to apply it") == 1
    assert logs.count("[server] workers changed") == 0


def test_reload_of_a_broken_file_keeps_the_running_configuration(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(server="max_upload_size = 5")
    node = started_node(config_file, reactor, notifier)
    running = node.config
    config_file.write(raw="[server\n")
    notifier.sent.clear()
    assert result(node.reload()) is False
    assert node.config is running and node.site.config is running
    assert logs.count("reload failed, keeping the running configuration") == 1
    assert any(str(config_file.path) in line and "reload failed" in line for line in logs.lines)
    assert notifier.sent[0]["RELOADING"] == "1"
    assert notifier.sent[-1]["READY"] == "1"
    assert notifier.sent[-1]["STATUS"].startswith("reload failed: ")


def test_reload_logs_the_configuration_warnings_once(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write()
    node = started_node(config_file, reactor, notifier)
    config_file.write(mode=0o644)  # the secret readable by every user: a warning
    assert result(node.reload()) is True
    assert logs.count("readable by every user") == 1


def test_no_reload_once_stopping(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    config_file.write()
    node = started_node(config_file, reactor, notifier)
    node.stopService()
    sent = len(notifier.sent)
    assert result(node.reload()) is False
    assert len(notifier.sent) == sent


# -- stop -----------------------------------------------------------------------------------


def test_stop_cuts_off_an_upload_after_shutdown_timeout(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(server='shutdown_timeout = "2s"\nfsync = false')
    node = started_node(config_file, reactor, notifier)
    client = Connection(reactor, node.site)
    client.send(put_head("a1/late.bin", 10) + b"123")
    assert len(node.site.in_flight) == 1
    stopped = node.stopService()
    assert notifier.sent[-1] == {
        "STOPPING": "1",
        "STATUS": "stopping; waiting up to 2s for 1 upload(s) in flight",
    }
    reactor.advance(0)
    assert all(not port.connected for port in reactor.ports)  # no new connections
    reactor.advance(1.9)
    assert not client.aborted and not stopped.called
    client.send(b"45")  # still arriving, not yet complete
    reactor.advance(0.1)
    assert client.aborted  # as if the client had gone away
    reactor.advance(0)
    assert stopped.called
    result(stopped)
    assert logs.count("cut off 1 unfinished upload(s) at shutdown") == 1
    assert logs.count("stopped") >= 1
    assert not (config_file.storage / "a1" / "late.bin").exists()
    assert os.listdir(config_file.storage / ".hmacfs" / "partial") == []


def test_stop_lets_an_upload_finish_within_shutdown_timeout(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier, logs: LogCapture
) -> None:
    config_file.write(server='shutdown_timeout = "20s"\nfsync = false')
    node = started_node(config_file, reactor, notifier)
    client = Connection(reactor, node.site)
    client.send(put_head("a1/on-time.bin", 10) + b"12345")
    stopped = node.stopService()
    reactor.advance(10)
    client.send(b"67890")
    assert b"HTTP/1.1 201 " in client.value()
    reactor.pump([0.0, CLOSE_TIMEOUT])
    assert stopped.called
    assert (config_file.storage / "a1" / "on-time.bin").read_bytes() == b"1234567890"
    assert logs.count("cut off") == 0


def test_stop_closes_idle_connections_after_a_grace(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    config_file.write()
    node = started_node(config_file, reactor, notifier)
    idle = Connection(reactor, node.site)
    stopped = node.stopService()
    reactor.advance(0)
    reactor.advance(IDLE_CLOSE_GRACE * 0.9)
    assert not idle.disconnecting  # a request may be on its way
    reactor.advance(IDLE_CLOSE_GRACE * 0.1)
    assert idle.disconnecting and not idle.aborted
    reactor.advance(0)
    assert stopped.called


def test_stop_waits_out_the_linger_after_a_refusal(
    config_file: ConfigFile, reactor: FakeReactor, notifier: RecordingNotifier
) -> None:
    config_file.write()
    node = started_node(config_file, reactor, notifier)
    client = Connection(reactor, node.site)
    client.send(put_head("a1/x.bin", 1000, "v=" + "0" * 64) + b"x" * 100)
    assert client.value().startswith(b"HTTP/1.1 403 ")
    assert client.write_closed and not client.closed  # reading what it still sends
    reactor.advance(2)
    stopped = node.stopService()
    reactor.advance(0)
    client.send(b"y" * 100)
    reactor.advance(2.9)
    assert not client.closed and not stopped.called
    reactor.advance(0.1)  # the linger's end, 5 s after the refusal
    assert client.aborted
    reactor.advance(0)
    assert stopped.called
