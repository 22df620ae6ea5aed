"""The subprocess server of tests.helpers.server itself: one process unless more are asked for,
readiness (and the port) from READY=1 when the log is quiet, and a server that cannot start
says why."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.client import curl
from tests.helpers.server import (
    Server,
    ServerDidNotStart,
    children,
    config_text,
    start_server,
    stop_server,
)


def server_section(text: str) -> dict[str, Any]:
    section: dict[str, Any] = tomllib.loads(text)["server"]
    return section


def answers_404(server: Server) -> bool:
    return curl("-o", "/dev/null", "-w", "%{http_code}", server.url("x/none")).stdout == b"404"


def test_the_config_pins_one_worker_unless_told_otherwise() -> None:
    files = Path("/srv/files")
    assert server_section(config_text(files))["workers"] == 1
    assert server_section(config_text(files, workers=2))["workers"] == 2
    assert "workers" not in server_section(config_text(files, workers=None))
    # A caller's own line is taken, and makes no duplicate key.
    assert server_section(config_text(files, server_toml="workers = 3"))["workers"] == 3


def test_one_process_by_default(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    assert children(server.process.pid) == []
    assert answers_404(server)
    assert stop_server(server) == 0


@pytest.mark.workers
@pytest.mark.parametrize("notify", [False, True], ids=["log", "notify"])
def test_workers_when_asked_for_and_ready_once_they_all_are(tmp_path: Path, notify: bool) -> None:
    server = start_server(tmp_path, workers=2, notify=notify)
    assert len(children(server.process.pid)) == 2
    assert server.addresses == [f"127.0.0.1:{server.port}"]
    if not notify:
        # Logged before the line start_server waits for, in the same stream. A READY=1 comes
        # another way and may arrive before the log lines do.
        assert any("2 worker processes ready" in line for line in server.log)
    assert answers_404(server)
    assert stop_server(server) == 0


def test_ready_and_port_from_notify_when_the_log_says_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path, log_level="warning", notify=True)
    assert not any("listening on" in line or "ready" in line for line in server.log)
    assert server.port != 0 and server.addresses == [f"127.0.0.1:{server.port}"]
    assert answers_404(server)
    assert stop_server(server) == 0


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        with pytest.raises(ServerDidNotStart, match=r"(?s)exit status 1.*cannot listen"):
            start_server(tmp_path, listen=(f"127.0.0.1:{port}",), notify=True)


def test_notify_with_a_notify_socket_of_the_callers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        start_server(tmp_path, env={"NOTIFY_SOCKET": "@elsewhere"}, notify=True)
