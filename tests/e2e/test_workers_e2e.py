"""Worker processes: several share the sockets, a dead or hung one is replaced, a reload
replaces them one at a time, a single-process mode remains."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_service_e2e import put_url, upload
from tests.helpers.server import (
    children,
    config_text,
    start_server,
    stop_server,
    wait_for,
    workers_of,
    write_config,
)


@pytest.mark.workers
def test_workers_share_the_sockets(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="workers = 3")
    workers_of(server, 3)
    assert any("3 worker processes ready" in line for line in server.log)
    for n in range(30):
        assert upload(put_url(server.base, f"{uuid.uuid4()}/{n}.txt", 2), b"ok") == 201
    assert stop_server(server) == 0
    assert children(server.process.pid) == []  # every worker stopped with it


def _state(pid: int) -> str:
    """The state letter of process `pid` ("T" when stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.workers
def test_a_burst_of_connections_is_shared_by_the_workers(tmp_path: Path) -> None:
    """The worker that wakes first takes one connection per wake-up and leaves the rest of a
    burst to the others (Twisted alone would accept them all in one go).

    Made certain with SIGSTOP: the burst waits in the backlog, the first worker alone is let
    go until it has answered one connection, then the second is let go.
    """
    server = start_server(tmp_path, server_toml="workers = 2")
    first, second = workers_of(server, 2)
    # Fewer than the hundred Twisted accepts per call: without one at a time, the first
    # worker would take every one before answering any.
    burst = 90
    answers: dict[socket.socket, bytes] = {}
    selector = selectors.DefaultSelector()

    def answered(timeout: float) -> list[socket.socket]:
        """The connections with something to read within `timeout` (read, and no longer
        watched)."""
        ready = [key.fileobj for key, _ in selector.select(timeout=timeout)]
        for client in ready:
            assert isinstance(client, socket.socket)
            answers[client] += client.recv(65536)
            selector.unregister(client)
        return ready  # type: ignore[return-value]

    for pid in (first, second):
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(burst):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=20)
            client.sendall(b"GET /upload/none/such.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            selector.register(client, selectors.EVENT_READ)
            answers[client] = b""
        os.kill(first, signal.SIGCONT)
        assert selector.select(timeout=20), "the first worker answered nothing"
        os.kill(first, signal.SIGSTOP)
        wait_for(lambda: _state(first) == "T", 20, "the first worker to stop")
        by_first = answered(0)
        assert 0 < len(by_first) < burst
        os.kill(second, signal.SIGCONT)
        # (well within HANG_TIMEOUT, after which the supervisor kills a stopped worker)
        by_second = answered(5)
        assert by_second, "the first worker took the whole burst"
        assert all(answers[client].startswith(b"HTTP/1.1 404 ") for client in by_second)
        os.kill(first, signal.SIGCONT)
        for client, received in answers.items():
            answer = received
            while b"\r\n\r\n" not in answer:
                chunk = client.recv(65536)
                assert chunk, "a connection closed without an answer"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 404 ")
    finally:
        for pid in (first, second):
            os.kill(pid, signal.SIGCONT)
        selector.close()
        for client in answers:
            client.close()
    assert stop_server(server) == 0


def test_single_process_mode(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="workers = 1")
    assert children(server.process.pid) == []
    assert upload(put_url(server.base, f"{uuid.uuid4()}/one.txt", 1), b"1") == 201
    assert stop_server(server) == 0


@pytest.mark.workers
def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="workers = 2")
    first = workers_of(server, 2)
    os.kill(first[0], signal.SIGKILL)
    now = wait_for(
        lambda: (p := children(server.process.pid)) and len(p) == 2 and first[0] not in p and p,
        20,
        "a replacement worker",
    )
    assert first[1] in now  # type: ignore[operator]
    for n in range(10):
        assert upload(put_url(server.base, f"{uuid.uuid4()}/{n}.txt", 1), b"x") == 201
    assert any("ended unexpectedly" in line for line in server.log)
    assert stop_server(server) == 0


@pytest.mark.workers
@pytest.mark.slow
def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="workers = 2")
    first = workers_of(server, 2)
    os.kill(first[0], signal.SIGSTOP)
    wait_for(
        lambda: (p := children(server.process.pid)) and len(p) == 2 and first[0] not in p,
        40,
        "the hung worker to be replaced",
    )
    assert any("stopped answering" in line for line in server.log)
    assert stop_server(server) == 0


@pytest.mark.workers
def test_reload_replaces_workers_one_at_a_time(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="workers = 2")
    before = workers_of(server, 2)
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any("configuration reloaded" in line for line in server.log), 30, "reload")
    after = workers_of(server, 2)
    assert not set(before) & set(after)
    assert server.process.poll() is None
    assert upload(put_url(server.base, f"{uuid.uuid4()}/r.txt", 1), b"r") == 201
    assert stop_server(server) == 0


@pytest.mark.workers
def test_a_reload_keeps_the_storage_directory_until_a_restart(tmp_path: Path) -> None:
    """The workers a reload starts read the file again, but keep what only a restart
    applies as the supervisor runs it: a changed storage_dir is logged, not used."""
    server = start_server(tmp_path, server_toml="workers = 2", max_upload_size="1M")
    workers_of(server, 2)
    elsewhere = tmp_path / "elsewhere"
    write_config(
        server.config_path,
        config_text(elsewhere, workers=2, max_upload_size=4, log_level="debug"),
    )
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: any("configuration reloaded" in line for line in server.log), 30, "reload")
    assert any("[server] storage_dir changed: restart the service to apply it" in line
               for line in server.log), server.log_tail()
    assert upload(put_url(server.base, f"{uuid.uuid4()}/big.txt", 5), b"12345") == 413
    name = f"{uuid.uuid4()}/kept.txt"
    assert upload(put_url(server.base, name, 3), b"abc") == 201
    assert (server.storage / name).read_bytes() == b"abc"
    assert not elsewhere.exists()
    assert stop_server(server) == 0


@pytest.mark.workers
def test_reload_keeps_serving_while_workers_are_replaced(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="workers = 2")
    workers_of(server, 2)
    server.process.send_signal(signal.SIGHUP)
    failures = 0
    deadline = time.monotonic() + 30
    while not any("configuration reloaded" in line for line in server.log):
        assert time.monotonic() < deadline
        status = upload(put_url(server.base, f"{uuid.uuid4()}/c.txt", 1), b"c")
        failures += status != 201
    assert failures == 0
    assert stop_server(server) == 0


@pytest.mark.workers
def test_sigterm_to_every_process_at_once_is_a_clean_stop(tmp_path: Path) -> None:
    """As a terminal's Ctrl-C (SIGINT to the group) or a stop that signals every process."""
    server = start_server(tmp_path, server_toml="workers = 2")
    for pid in (server.process.pid, *workers_of(server, 2)):
        os.kill(pid, signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    time.sleep(0.2)
    assert not any("Traceback" in line or "Unhandled" in line for line in server.log)


def test_a_connection_made_just_before_a_stop_still_gets_its_answer(tmp_path: Path) -> None:
    import socket

    server = start_server(tmp_path, server_toml="workers = 1")
    rel = f"{uuid.uuid4()}/late.txt"
    assert upload(put_url(server.base, rel, 4), b"late") == 201
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        time.sleep(0.2)  # accepted by the server, no request yet
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        sock.sendall(f"GET /upload/{rel} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"late")
    assert server.process.wait(timeout=20) == 0
