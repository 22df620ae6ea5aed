"""[quota] on a running server: the counts are shared by the workers and survive a restart;
min_free_space on a small tmpfs refuses before the body."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import resumable as rufh
from tests.helpers.server import (
    Server,
    children,
    start_server,
    stop_server,
    wait_for,
    wait_logged,
)
from tests.helpers.signing import mac_v1

pytestmark = pytest.mark.workers

KIB = 1024
#: ejabberd's upload directory of a user: sha1 of the bare JID.
ROMEO = hashlib.sha1(b"romeo@montague.example").hexdigest()


def put(server: Server, rel: str, body: bytes, connection: rufh.Connection | None = None
        ) -> rufh.Response:
    url = f"{server.base}/upload/{rel}?v={mac_v1(rel, len(body))}"
    return rufh.request("PUT", url, [("Expect", "100-continue")], body=body,
                        connection=connection)


def on_worker(server: Server, pid: int) -> rufh.Connection:
    return rufh.connect_to_worker(server.base, children(server.process.pid), pid)


def test_the_counts_are_shared_by_the_workers_and_kept_over_a_restart(tmp_path: Path) -> None:
    quota = '[quota]\nuploader_limit = "100K"\n'
    server = start_server(tmp_path, quota, server_toml="workers = 2", max_upload_size="64K")
    first, second = sorted(children(server.process.pid))
    with on_worker(server, first) as connection:
        assert put(server, f"{ROMEO}/a/1.bin", b"1" * 60 * KIB, connection).status == 201
    # The other worker knows what the first one stored.
    with on_worker(server, second) as connection:
        refused = put(server, f"{ROMEO}/b/2.bin", b"2" * 60 * KIB, connection)
    assert refused.status == 413, refused
    assert b"upload quota exceeded" in refused.body
    with on_worker(server, second) as connection:
        assert put(server, f"{ROMEO}/b/2.bin", b"2" * 30 * KIB, connection).status == 201
    assert stop_server(server) == 0

    again = start_server(tmp_path, quota, server_toml="workers = 2", max_upload_size="64K",
                         storage=server.storage)
    assert put(again, f"{ROMEO}/c/3.bin", b"3" * 20 * KIB).status == 413  # 90K of 100K
    assert put(again, f"{uuid.uuid4().hex}/c/3.bin", b"3" * 20 * KIB).status == 201
    assert stop_server(again) == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "the free-space test mounts a tmpfs: run it as root"
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_min_free_space_on_a_small_filesystem(tmp_path: Path, small_tmpfs: Path) -> None:
    server = start_server(
        tmp_path, '[quota]\nmin_free_space = "5M"\n', workers=1, storage=small_tmpfs / "files",
        server_toml="fsync = false",
    )
    assert put(server, "a/1.bin", b"1" * 2 * 1024 * KIB).status == 201
    # About 6M free: 2M more would leave less than 5M.
    refused = rufh.start_request(
        "PUT", f"{server.base}/upload/b/2.bin?v={mac_v1('b/2.bin', 2 * 1024 * KIB)}",
        [("Content-Length", str(2 * 1024 * KIB)), ("Expect", "100-continue")], b"",
    )
    answer = refused.connection.read_final("PUT", 10)[1]
    assert answer.status == 507 and b"not enough free space" in answer.body
    assert all(" WARN " in line for line in wait_logged(server, "-> 507 refused"))
    assert put(server, "c/3.bin", b"3" * 512 * KIB).status == 201
    assert stop_server(server) == 0


def test_a_reload_sets_and_changes_the_limits(tmp_path: Path) -> None:
    # First without any quota (nothing counted), then a reload sets one: the files already
    # stored are counted for it; a second reload raises it.
    server = start_server(tmp_path, server_toml="workers = 2", max_upload_size="64K")
    assert put(server, f"{ROMEO}/a/1.bin", b"1" * 60 * KIB).status == 201
    text = server.config_path.read_text()

    def reload(quota: str, times: int) -> None:
        server.config_path.write_text(text + quota)
        server.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: sum("configuration reloaded" in line for line in server.log) >= times,
            20,
            f"reload {times}",
        )

    reload('[quota]\nuploader_limit = "100K"\n', 1)
    wait_logged(server, "counted 1 stored files", 20)
    assert put(server, f"{ROMEO}/b/2.bin", b"2" * 60 * KIB).status == 413
    reload('[quota]\nuploader_limit = "200K"\n', 2)
    assert put(server, f"{ROMEO}/b/2.bin", b"2" * 60 * KIB).status == 201
    assert stop_server(server) == 0
