"""Faults injected into a running server: a wall clock that steps, a worker or the supervisor
killed with SIGKILL in the middle of an upload, the storage turned read-only under it.

After each: nothing partial is visible, no stored file changed (digests), the service answers
again, and a retry of the cut upload is stored whole.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_service_e2e import NotifySocket
from tests.helpers import resumable as rufh
from tests.helpers.files import visible_files
from tests.helpers.server import Server, children, start_server, stop_server
from tests.helpers.signing import SECRET, mac_v1

pytestmark = [pytest.mark.faults, pytest.mark.workers]

KIB = 1024
MIB = 1024 * KIB


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def workers_of(server: Server, count: int) -> list[int]:
    return wait_for(  # type: ignore[return-value]
        lambda: (pids := children(server.process.pid)) and len(pids) == count and pids,
        20,
        f"{count} workers",
    )


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass
class Slot:
    rel: str
    body: bytes
    url: str


def slot(server: Server, size: int, name: str = "file.bin") -> Slot:
    rel = f"{uuid.uuid4()}/{name}"
    return Slot(rel, os.urandom(size), f"{server.base}/upload/{rel}?v={mac_v1(rel, size)}")


def put(target: Slot) -> int:
    return rufh.request("PUT", target.url, body=target.body).status


def fetched(server: Server, target: Slot) -> bytes:
    response = rufh.get(f"{server.base}/upload/{target.rel}")
    assert response.status == 200, response
    return response.body


def start_upload(server: Server, target: Slot, sent: int) -> rufh.Transfer:
    """A PUT of `target` with `sent` bytes of its body sent and read by the server."""
    transfer = rufh.start_request(
        "PUT", target.url, [("Content-Length", str(len(target.body)))], target.body
    )
    transfer.send(sent)
    transfer.settle()
    assert transfer.final is None, transfer.final
    return transfer


class Stored:
    """Files stored before a fault, and their digests, to check that none changed."""

    def __init__(self, server: Server, count: int = 3) -> None:
        self.server = server
        self.slots = [slot(server, 64 * KIB + n) for n in range(count)]
        for target in self.slots:
            assert put(target) == 201
        self.digests = self._digests()

    def _digests(self) -> dict[str, str]:
        return {t.rel: digest(self.server.storage / t.rel) for t in self.slots}

    def unchanged(self) -> None:
        assert self._digests() == self.digests
        for target in self.slots:
            assert fetched(self.server, target) == target.body


# -- a wall clock that steps -----------------------------------------------------------------


def faketime_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime is missing (Debian package faketime; the test command installs it)"
    return found[0]


class WallClock:
    """The server's wall clock, moved by libfaketime (its monotonic clock left alone, as a
    real step of the wall clock leaves it): `step("+1h")` puts it an hour ahead of real time."""

    def __init__(self, tmp: Path) -> None:
        self.file = tmp / "faketime"
        self.step("+0")

    def step(self, offset: str) -> None:
        self.file.write_text(offset + "\n")

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": faketime_library(),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def v3_url(server: Server, rel: str, expires: int) -> str:
    mac = hmac.new(SECRET, f"PUT\n{expires}\n/{rel}".encode(), "sha256").hexdigest()
    return f"{server.base}/upload/{rel}?v3={mac}&expires={expires}"


def steady(server: Server, pids: list[int], seconds: float) -> None:
    """Watch for `seconds` that the workers stay the same processes (what must not happen
    cannot be waited for: a supervisor that took them for hung kills them within a second)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert children(server.process.pid) == pids, server.log_tail()
        time.sleep(0.1)


@pytest.mark.slow
def test_a_wall_clock_step_moves_no_timer(tmp_path: Path) -> None:
    clock = WallClock(tmp_path)
    notify = NotifySocket(tmp_path / "notify.sock")
    server = start_server(
        tmp_path,
        server_toml='workers = 2\nhead_timeout = "2s"\nidle_timeout = "30s"',
        env={**clock.env(), "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"},
    )
    notify.collect("READY=1")
    pids = workers_of(server, 2)
    stored = Stored(server)
    idle = rufh.Connection.to(server.base)
    assert rufh.get(f"{server.base}/upload/{stored.slots[0].rel}", connection=idle).status == 200
    cut = slot(server, 4 * MIB)
    transfer = start_upload(server, cut, 1 * MIB)

    # An hour ahead: timers scheduled on the wall clock would all be due at once (the idle
    # connection cut, the upload too slow over its window, every worker silent for an hour).
    clock.step("+1h")
    steady(server, pids, 3.0)
    assert transfer.finish().status == 201
    assert fetched(server, cut) == cut.body
    assert rufh.get(f"{server.base}/upload/{stored.slots[1].rel}", connection=idle).status == 200
    # Dates still come from the wall clock: a signature that expired by it is refused.
    rel = f"{uuid.uuid4()}/late.bin"
    soon = int(time.time()) + 1800
    assert rufh.request("PUT", v3_url(server, rel, soon), body=b"x").status == 403
    assert rufh.request("PUT", v3_url(server, rel, soon + 3600), body=b"x").status == 201

    # An hour behind real time: timers on the wall clock would wait two hours, so no
    # heartbeat would reach systemd's watchdog and a request head begun before the step
    # would never meet its deadline.
    with rufh.Connection.to(server.base) as trickle:
        trickle.send(b"PUT /upload/never/ending HTTP/1.1\r\n")
        started = time.monotonic()
        clock.step("-1h")
        notify.gather(0.5)
        notify.collect("WATCHDOG=1", timeout=3)
        answer = trickle.read_response("PUT", timeout=15)
        assert answer.status == 408
        assert time.monotonic() - started < 10
    steady(server, pids, 1.0)
    again = slot(server, 256 * KIB)
    assert put(again) == 201
    assert fetched(server, again) == again.body
    assert children(server.process.pid) == pids
    stored.unchanged()
    assert set(visible_files(server.storage)) == {
        *(t.rel for t in stored.slots), cut.rel, again.rel, rel
    }
    idle.close()
    assert stop_server(server) == 0
    notify.close()
