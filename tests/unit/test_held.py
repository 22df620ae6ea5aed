"""Small stored files held open after a whole read (`hmacfs.storage.held`, `read_small`).

A held file must never be answered once it is no longer the file at its path: removed,
replaced, rewritten, expired, or reached another way. Real files in the test's directory.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from hmacfs.core.refusals import Gone, NotFound
from hmacfs.storage.held import (
    HELD_FILES,
    HELD_IDLE,
    HELD_MAX_SIZE,
    HELD_SETTLED,
    HeldFiles,
    default_capacity,
    filesystem_of,
    holds_files_open,
)
from hmacfs.storage.local import LocalStorage
from tests.helpers.files import descriptors_on


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def storage(tmp_path: Path, ticks: Ticks) -> LocalStorage:
    opened = LocalStorage(tmp_path / "files", fsync=False)
    assert opened.held.capacity > 0, "the test directory is on a local filesystem"
    # Files written by the test count as settled: the kernel's wall clock, seen from later.
    opened.held = HeldFiles(opened.held.capacity, clock=ticks, wall=lambda: time.time() + 60)
    yield opened
    opened.close()


def store(storage: LocalStorage, rel: str, body: bytes, expires: float | None = None) -> None:
    upload = storage.begin(rel, len(body), "text/plain", expires=expires)
    upload.write(body)
    upload.commit()


def descriptors_of(path: Path) -> int:
    """How many descriptors of this process are open on `path`."""
    return descriptors_on(path)


def test_a_file_read_whole_is_held_and_read_again_from_its_descriptor(
    storage: LocalStorage,
) -> None:
    store(storage, "a/one.txt", b"first body")
    for _ in range(3):
        stored, data = storage.read_small("a/one.txt", HELD_MAX_SIZE)
        assert data == b"first body"
        assert stored.content_type == "text/plain"
    assert len(storage.held) == 1
    assert descriptors_of(storage.root / "a/one.txt") == 1


def test_a_file_over_the_limit_is_neither_read_nor_held(storage: LocalStorage) -> None:
    store(storage, "a/big.bin", b"x" * 100)
    stored, data = storage.read_small("a/big.bin", 99)
    assert (stored.size, data) == (100, None)
    assert len(storage.held) == 0
    assert descriptors_of(storage.root / "a/big.bin") == 0


def test_a_file_removed_by_another_process_is_not_found_and_let_go(
    storage: LocalStorage,
) -> None:
    store(storage, "a/gone.txt", b"soon gone")
    storage.read_small("a/gone.txt", HELD_MAX_SIZE)
    os.unlink(storage.root / "a/gone.txt")  # (as the sweeper, an admin or another node does)
    with pytest.raises(NotFound):
        storage.read_small("a/gone.txt", HELD_MAX_SIZE)
    assert len(storage.held) == 0


def test_release_idle_lets_go_of_removed_files_and_unread_ones(
    storage: LocalStorage, ticks: Ticks
) -> None:
    for name in ("kept", "removed", "idle"):
        store(storage, f"d/{name}", name.encode())
        storage.read_small(f"d/{name}", HELD_MAX_SIZE)
    os.unlink(storage.root / "d/removed")
    assert descriptors_of(storage.root / "d/removed") == 1  # its blocks are still held
    storage.held.release_idle()
    assert descriptors_of(storage.root / "d/removed") == 0
    assert len(storage.held) == 2

    ticks.now += HELD_IDLE - 1
    storage.read_small("d/kept", HELD_MAX_SIZE)
    ticks.now += 2
    assert storage.held.release_idle() == 1  # "idle" was last read HELD_IDLE + 1 s ago
    assert descriptors_of(storage.root / "d/idle") == 0
    assert descriptors_of(storage.root / "d/kept") == 1


def test_a_replaced_file_is_read_anew(storage: LocalStorage) -> None:
    store(storage, "r/f.txt", b"old")
    storage.read_small("r/f.txt", HELD_MAX_SIZE)
    path = storage.root / "r/f.txt"
    other = path.with_name("new")
    other.write_bytes(b"new")
    os.replace(other, path)
    stored, data = storage.read_small("r/f.txt", HELD_MAX_SIZE)
    assert data == b"new"
    assert stored.size == 3
    assert descriptors_of(path) == 1


@pytest.mark.parametrize("body", [b"OLD", b"longer body"], ids=["same size", "grown"])
def test_a_file_rewritten_in_place_is_read_anew(storage: LocalStorage, body: bytes) -> None:
    store(storage, "w/f.txt", b"old")
    storage.read_small("w/f.txt", HELD_MAX_SIZE)
    path = storage.root / "w/f.txt"
    with open(path, "r+b") as f:
        f.write(body)
    st = path.stat()
    # (the kernel's clock ticks: make sure this change shows in the times, as a later one would)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _, data = storage.read_small("w/f.txt", HELD_MAX_SIZE)
    assert data == body


def test_a_file_changed_lately_is_not_held(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", fsync=False)
    try:
        store(storage, "n/f.txt", b"just stored")
        assert storage.read_small("n/f.txt", HELD_MAX_SIZE)[1] == b"just stored"
        assert len(storage.held) == 0  # its ctime is within HELD_SETTLED of now
        storage.held.wall = lambda: time.time() + HELD_SETTLED + 1
        assert storage.read_small("n/f.txt", HELD_MAX_SIZE)[1] == b"just stored"
        assert len(storage.held) == 1
    finally:
        storage.close()
    assert len(storage.held) == 0


def test_an_expired_file_is_gone_even_when_held(tmp_path: Path, ticks: Ticks) -> None:
    now = [1_700_000_000.0]
    storage = LocalStorage(tmp_path / "files", fsync=False, clock=lambda: now[0])
    storage.held = HeldFiles(8, clock=ticks, wall=lambda: time.time() + 60)
    try:
        store(storage, "e/f.txt", b"short-lived", expires=now[0] + 10)
        assert storage.read_small("e/f.txt", HELD_MAX_SIZE)[1] == b"short-lived"
        assert len(storage.held) == 1
        now[0] += 11
        with pytest.raises(Gone):
            storage.read_small("e/f.txt", HELD_MAX_SIZE)
        assert len(storage.held) == 0
    finally:
        storage.close()


def test_deleting_or_sweeping_lets_go_at_once(tmp_path: Path, ticks: Ticks) -> None:
    now = [1_700_000_000.0]
    storage = LocalStorage(tmp_path / "files", fsync=False, clock=lambda: now[0])
    storage.held = HeldFiles(8, clock=ticks, wall=lambda: time.time() + 60)
    try:
        store(storage, "x/deleted", b"1")
        store(storage, "x/swept", b"2", expires=now[0] + 10)
        for rel in ("x/deleted", "x/swept"):
            storage.read_small(rel, HELD_MAX_SIZE)
        assert len(storage.held) == 2
        assert storage.delete("x/deleted")
        assert descriptors_of(storage.root / "x/deleted") == 0
        now[0] += 11
        assert storage.sweep().expired == 1
        assert descriptors_of(storage.root / "x/swept") == 0
        assert len(storage.held) == 0
    finally:
        storage.close()


def test_a_file_reached_through_a_link_is_not_held(storage: LocalStorage) -> None:
    store(storage, "real/f.txt", b"linked")
    os.symlink("real", storage.root / "alias")
    _, data = storage.read_small("alias/f.txt", HELD_MAX_SIZE)
    assert data == b"linked"
    assert len(storage.held) == 0
    assert descriptors_of(storage.root / "real/f.txt") == 0


def test_the_least_lately_read_is_let_go_first(tmp_path: Path, ticks: Ticks) -> None:
    storage = LocalStorage(tmp_path / "files", fsync=False)
    storage.held = HeldFiles(2, clock=ticks, wall=lambda: time.time() + 60)
    try:
        for name in "abc":
            store(storage, f"l/{name}", name.encode())
        for name in "aba":
            storage.read_small(f"l/{name}", HELD_MAX_SIZE)
        storage.read_small("l/c", HELD_MAX_SIZE)  # "b" was read least lately
        assert len(storage.held) == 2
        held = {n: descriptors_of(storage.root / f"l/{n}") for n in "abc"}
        assert held == {"a": 1, "b": 0, "c": 1}
    finally:
        storage.close()
    assert all(descriptors_of(storage.root / f"l/{n}") == 0 for n in "abc")


def test_nothing_is_held_with_no_room(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", fsync=False)
    storage.held = HeldFiles(0, wall=lambda: time.time() + 60)
    try:
        store(storage, "z/f", b"zero")
        assert storage.read_small("z/f", HELD_MAX_SIZE)[1] == b"zero"
        assert descriptors_of(storage.root / "z/f") == 0
    finally:
        storage.close()


def test_the_capacity_follows_the_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert default_capacity() == 64
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
        assert default_capacity() == min(HELD_FILES, min(hard, 1 << 20) // 16)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


MOUNTS = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /srv rw,relatime shared:2 - xfs /dev/vdb rw
31 30 0:40 / /srv/files rw,relatime shared:3 - nfs4 server:/export rw,vers=4.2
32 30 0:41 / /srv/files\\040two rw,relatime shared:4 - tmpfs tmpfs rw
33 31 0:42 / /srv/files rw,relatime shared:5 - ext4 /dev/vdc rw
"""


def test_the_filesystem_is_read_from_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTS)
    assert filesystem_of("/srv/filesystem", table) == "xfs"  # (not below /srv/files)
    assert filesystem_of("/srv/files two/x", table) == "tmpfs"
    assert filesystem_of("/home", table) == "ext4"
    assert filesystem_of("/srv/files/up", table) == "ext4"  # the last mounted there
    table.write_text(MOUNTS.rsplit("33 31", 1)[0])
    assert filesystem_of("/srv/files/up", table) == "nfs4"
    assert filesystem_of("/x", tmp_path / "no-such-table") is None


def test_storage_on_this_machine_holds_files_where_its_filesystem_allows(
    tmp_path: Path,
) -> None:
    real = os.path.realpath(tmp_path)
    kind = filesystem_of(real)
    assert kind is not None
    storage = LocalStorage(tmp_path / "files", fsync=False)
    try:
        assert (storage.held.capacity > 0) == holds_files_open(real)
    finally:
        storage.close()
