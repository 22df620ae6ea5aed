"""Faults injected into a running server: a wall clock that steps, a worker or the supervisor
killed with SIGKILL in the middle of an upload, the storage turned read-only under it.

After each: nothing partial is visible, no stored file changed (digests), the service answers
again, and a retry of the cut upload is stored whole.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import hmac
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_service_e2e import NotifySocket
from tests.helpers import resumable as rufh
from tests.helpers.files import visible_files
from tests.helpers.server import (
    Server,
    children,
    start_server,
    stop_server,
    wait_for,
    workers_of,
)
from tests.helpers.signing import SECRET, mac_v1

pytestmark = [pytest.mark.faults, pytest.mark.workers]

KIB = 1024
MIB = 1024 * KIB


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


# -- processes killed ------------------------------------------------------------------------


def test_a_worker_killed_mid_upload_loses_only_that_upload(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="workers = 2")
    pids = workers_of(server, 2)
    stored = Stored(server)
    victim = pids[0]
    plain = slot(server, 4 * MIB)
    connection = rufh.connect_to_worker(server.base, pids, victim)
    transfer = rufh.start_request(
        "PUT", plain.url, [("Content-Length", str(len(plain.body)))], plain.body,
        connection=connection,
    )
    transfer.send(1 * MIB)
    assert transfer.settle()
    resumable = slot(server, 4 * MIB, "resumable.bin")
    creation = rufh.start_create(
        resumable.url, resumable.body, 8, connection=rufh.connect_to_worker(
            server.base, pids, victim
        ),
    )
    assert creation.wait_informational() is not None  # 104: the upload has its resource
    creation.send(1 * MIB)
    assert creation.settle()

    os.kill(victim, signal.SIGKILL)
    for cut in (transfer, creation):
        cut.send()
        assert cut.final is None
        assert cut.connection.wait_closed(10) is not None
    replaced = wait_for(
        lambda: (p := children(server.process.pid)) and len(p) == 2 and victim not in p and p,
        20,
        "a new worker",
    )
    assert pids[1] in replaced  # type: ignore[operator]
    assert rufh.get(f"{server.base}/upload/{plain.rel}").status == 404
    assert set(visible_files(server.storage)) == {t.rel for t in stored.slots}

    # The plain upload is sent again; the resumable one goes on from where the server was.
    assert put(plain) == 201
    location = creation.location
    assert location is not None
    offset = int(rufh.request("HEAD", location, [("Upload-Draft-Interop-Version", "8")])
                 .headers["upload-offset"])
    assert offset == 1 * MIB
    patch = rufh.request(
        "PATCH",
        location,
        [
            ("Upload-Draft-Interop-Version", "8"),
            ("Upload-Complete", "?1"),
            ("Upload-Offset", str(offset)),
            ("Content-Type", "application/partial-upload"),
        ],
        body=resumable.body[offset:],
    )
    assert patch.status == 201, patch
    for target in (plain, resumable):
        assert fetched(server, target) == target.body
    stored.unchanged()
    assert set(visible_files(server.storage)) == {
        *(t.rel for t in stored.slots), plain.rel, resumable.rel
    }
    assert stop_server(server) == 0


def test_a_killed_supervisor_takes_its_workers_with_it_and_a_new_one_starts(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, server_toml="workers = 2", new_session=True)
    pids = workers_of(server, 2)
    stored = Stored(server)
    cut = slot(server, 4 * MIB)
    transfer = start_upload(server, cut, 1 * MIB)

    server.process.kill()
    server.process.wait()
    # Each worker sees its supervisor gone at its next report and stops as on SIGTERM: it
    # takes no new connection, lets the upload under way finish, and exits.
    response = transfer.finish(timeout=20)
    assert response.status == 201, response
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), 20,
             "the workers to exit")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    again = start_server(
        tmp_path, listen=(f"127.0.0.1:{server.port}",), server_toml="workers = 2",
        storage=server.storage,
    )
    assert again.port == server.port
    stored.server = again
    stored.unchanged()
    assert fetched(again, cut) == cut.body
    assert set(visible_files(again.storage)) == {*(t.rel for t in stored.slots), cut.rel}
    assert put(slot(again, 1000)) == 201
    assert stop_server(again) == 0


# -- storage turned read-only ----------------------------------------------------------------


@dataclass
class Ext4:
    """An ext4 filesystem on a loop device that turns read-only at the first error, as a disk
    mounted errors=remount-ro does; `fail()` makes the kernel take such an error now."""

    image: Path
    mount: Path
    device: str

    def fail(self) -> None:
        name = os.path.basename(self.device)
        Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text("1\n")

    def read_only(self) -> bool:
        """Whether a write is refused (an emergency read-only state shows in no mount flag)."""
        try:
            os.rmdir(self.mount / "probe")
        except FileNotFoundError:
            pass
        except OSError as e:
            return e.errno == errno.EROFS
        try:
            os.mkdir(self.mount / "probe")
        except OSError as e:
            return e.errno == errno.EROFS
        os.rmdir(self.mount / "probe")
        return False

    def repaired(self) -> None:
        """What an admin does once nothing has files open on it: unmount it, check it,
        mount it again."""
        subprocess.run(["umount", str(self.mount)], check=True)
        self.device = _mount(_checked(self.image), self.mount)

    def replaced(self) -> None:
        """Another filesystem mounted over the storage directory while the server still has
        files open on this one (a checked copy of it, as on a replacement disk)."""
        copy = self.image.with_name("replacement.img")
        shutil.copyfile(self.image, copy)
        subprocess.run(["umount", "-l", str(self.mount)], check=True)
        self.image = copy
        self.device = _mount(_checked(copy), self.mount)


def _checked(image: Path) -> Path:
    result = subprocess.run(
        ["e2fsck", "-f", "-y", str(image)], capture_output=True, check=False
    )
    assert result.returncode in (0, 1), result  # 1: errors corrected
    return image


def _mount(image: Path, mount: Path) -> str:
    subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)], check=True
    )
    return subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(mount)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4]:
    assert os.geteuid() == 0, "the read-only storage test mounts a filesystem: run it as root"
    image = tmp_path / "ext4.img"
    mount = tmp_path / "mnt"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(64 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    filesystem = Ext4(image, mount, _mount(image, mount))
    try:
        yield filesystem
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def health(server: Server) -> int:
    return rufh.get(f"{server.base}/health").status


def refused_on_every_worker(server: Server, pids: list[int]) -> None:
    for pid in pids:
        target = slot(server, 1000)
        with rufh.connect_to_worker(server.base, pids, pid) as connection:
            refused = rufh.request("PUT", target.url, body=target.body, connection=connection)
        assert refused.status == 507, refused
        assert refused.body == b"cannot store: Read-only file system\n"


def stored_on_every_worker(server: Server, pids: list[int]) -> list[Slot]:
    stored = []
    for pid in pids:
        target = slot(server, 1000)
        with rufh.connect_to_worker(server.base, pids, pid) as connection:
            response = rufh.request("PUT", target.url, body=target.body, connection=connection)
        assert response.status == 201, (response.body, server.log_tail())
        assert fetched(server, target) == target.body
        stored.append(target)
    return stored


def test_storage_turned_read_only_mid_upload(tmp_path: Path, ext4: Ext4) -> None:
    server = start_server(tmp_path, server_toml="workers = 2", storage=ext4.mount / "files")
    pids = workers_of(server, 2)
    stored = Stored(server)
    cut = slot(server, 4 * MIB)
    transfer = start_upload(server, cut, 1 * MIB)

    ext4.fail()
    assert ext4.read_only()
    answer = transfer.finish(timeout=20)
    assert answer.status == 507, answer
    assert answer.body == b"cannot store: Read-only file system\n"
    refused_on_every_worker(server, pids)
    # The admin has to act: a warning, not one more request line.
    refusals = [line for line in server.log if "-> 507 refused: cannot store" in line]
    assert refusals and all(" WARN " in line for line in refusals), refusals
    stored.unchanged()  # downloads go on
    wait_for(lambda: health(server) == 503, 10, "/health to fail")
    assert set(visible_files(server.storage)) == {t.rel for t in stored.slots}
    assert stop_server(server) == 0  # a clean stop, which leaves nothing open on it

    ext4.repaired()
    again = start_server(tmp_path, server_toml="workers = 2", storage=server.storage)
    stored.server = again
    cut = Slot(cut.rel, cut.body, cut.url.replace(server.base, again.base))
    assert put(cut) == 201
    assert fetched(again, cut) == cut.body
    more = stored_on_every_worker(again, workers_of(again, 2))
    stored.unchanged()
    assert set(visible_files(again.storage)) == {
        *(t.rel for t in stored.slots), cut.rel, *(t.rel for t in more)
    }
    assert stop_server(again) == 0


def test_storage_replaced_under_a_running_server(tmp_path: Path, ext4: Ext4) -> None:
    server = start_server(tmp_path, server_toml="workers = 2", storage=ext4.mount / "files")
    pids = workers_of(server, 2)
    stored = Stored(server)
    ext4.fail()
    wait_for(lambda: health(server) == 503, 10, "/health to fail")

    # Every worker stores again, without a restart: the partial files they had made ahead
    # of time are on the old filesystem, and are dropped for new ones.
    ext4.replaced()
    more = stored_on_every_worker(server, pids)
    wait_for(lambda: health(server) == 200, 10, "/health to pass")
    stored.unchanged()
    assert set(visible_files(server.storage)) == {
        *(t.rel for t in stored.slots), *(t.rel for t in more)
    }
    assert stop_server(server) == 0
