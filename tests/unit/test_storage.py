"""Storage: partial files, linking into place without replacing, metadata, sweeping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hmacfs.errors import Conflict, Gone, NotFound, TooLarge
from hmacfs.storage import PARTIAL_MAX_IDLE, Storage
from tests.conftest import partial_files, visible_files


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def storage(tmp_path: Path, clock: FakeClock) -> Storage:
    return Storage(tmp_path / "files", fsync=True, clock=clock)


def store(storage: Storage, rel: str, body: bytes, **kw: object) -> None:
    upload = storage.begin(rel, len(body), "text/plain", **kw)  # type: ignore[arg-type]
    upload.write(body)
    upload.commit()


def test_nothing_is_visible_until_commit(storage: Storage) -> None:
    upload = storage.begin("a/b.txt", 4, "text/plain")
    upload.write(b"ab")
    assert visible_files(storage.root) == []
    with pytest.raises(NotFound):
        storage.lookup("a/b.txt")
    upload.write(b"cd")
    stored = upload.commit()
    assert visible_files(storage.root) == ["a/b.txt"]
    assert partial_files(storage) == []
    found = storage.lookup("a/b.txt")
    assert (found.size, found.content_type, found.sha256) == (4, "text/plain", stored.sha256)


def test_writing_past_the_declared_size_is_refused(storage: Storage) -> None:
    upload = storage.begin("a/b.txt", 3, "text/plain")
    with pytest.raises(TooLarge):
        upload.write(b"abcd")
    upload.abort()
    assert partial_files(storage) == []


def test_concurrent_uploads_of_one_path_never_overwrite(storage: Storage) -> None:
    first = storage.begin("s/x.bin", 3, "image/png")
    second = storage.begin("s/x.bin", 3, "text/html")
    first.write(b"one")
    second.write(b"two")
    first.commit()
    with pytest.raises(Conflict):
        second.commit()
    found = storage.lookup("s/x.bin")
    assert found.fs_path.read_bytes() == b"one"
    # The loser's metadata did not replace the winner's.
    assert found.content_type == "image/png"
    assert partial_files(storage) == []


def test_concurrent_identical_retries_both_succeed(storage: Storage) -> None:
    first = storage.begin("s/x.bin", 3, "image/png")
    second = storage.begin("s/x.bin", 3, "image/png")
    first.write(b"one")
    second.write(b"one")
    first.commit()
    assert second.commit().sha256 == storage.lookup("s/x.bin").sha256


def test_a_file_where_a_directory_is_needed_is_a_conflict(storage: Storage) -> None:
    store(storage, "a/b", b"file")
    with pytest.raises(Conflict):
        store(storage, "a/b/c", b"x")


def test_foreign_files_are_served_without_metadata(storage: Storage) -> None:
    (storage.root / "old").mkdir()
    (storage.root / "old" / "photo.jpg").write_bytes(b"jpeg")
    found = storage.lookup("old/photo.jpg")
    assert found.size == 4
    assert found.content_type is None and found.sha256 is None


def test_metadata_of_another_file_is_not_trusted(storage: Storage) -> None:
    store(storage, "a/one.txt", b"1")
    one = storage.lookup("a/one.txt")
    # Replace the file behind our back: its inode changes, the metadata no longer applies.
    os.unlink(one.fs_path)
    (storage.root / "a" / "one.txt").write_bytes(b"22")
    assert storage.lookup("a/one.txt").sha256 is None


def test_expiry_gone_then_swept(storage: Storage, clock: FakeClock) -> None:
    store(storage, "d/e/short.txt", b"bye", expires=clock.now + 60)
    assert storage.lookup("d/e/short.txt").expires == clock.now + 60
    clock.now += 61
    with pytest.raises(Gone):
        storage.lookup("d/e/short.txt")
    report = storage.sweep()
    assert report.expired == 1
    assert visible_files(storage.root) == []
    assert not (storage.root / "d").exists()  # emptied directories are removed too


def test_file_ttl(tmp_path: Path, clock: FakeClock) -> None:
    storage = Storage(tmp_path / "files", fsync=False, file_ttl=3600, clock=clock)
    store(storage, "a/b.txt", b"x", expires=clock.now + 7200)
    assert storage.lookup("a/b.txt").expires == clock.now + 3600


def test_sweep_removes_abandoned_partials_but_not_live_ones(
    storage: Storage, clock: FakeClock
) -> None:
    live = storage.begin("a/live", 10, "text/plain")
    dead = storage.begin("a/dead", 10, "text/plain")
    long_ago = clock.now - PARTIAL_MAX_IDLE - 60
    for upload in (live, dead):
        os.utime(upload.partial, (long_ago, long_ago))
    report = storage.sweep(active=frozenset({live.name}))
    assert report.partials == 1
    assert partial_files(storage) == [live.name]
    dead.abort()
    live.abort()


def test_storage_dir_state_is_hidden(storage: Storage) -> None:
    with pytest.raises(NotFound):
        storage.lookup(".hmacfs/partial")


def test_symlink_leaving_the_root_is_not_served(storage: Storage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("secret")
    (storage.root / "s").mkdir()
    (storage.root / "s" / "link").symlink_to(outside)
    with pytest.raises(NotFound):
        storage.lookup("s/link")


def test_upload_through_a_symlinked_directory_is_refused(
    storage: Storage, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (storage.root / "s").symlink_to(outside)
    with pytest.raises(Exception, match="leaves the storage"):
        store(storage, "s/x.txt", b"x")
    assert list(outside.iterdir()) == []


def test_partial_files_made_ahead(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    from hmacfs import storage as storage_module

    storage.fill_pool()
    ready = storage.pooled_names()
    assert len(ready) == storage_module.POOL_SIZE
    upload = storage.begin("p/q.txt", 2, "text/plain")
    assert upload.name in ready  # no file was created for it
    assert upload.name not in storage.pooled_names()
    upload.write(b"ok")
    upload.commit()
    assert storage.lookup("p/q.txt").size == 2
    # A file that waited too long is not handed out (a sweep elsewhere may remove it).
    monkeypatch.setattr(storage_module, "POOL_MAX_AGE", -1.0)
    fresh = storage.begin("p/r.txt", 1, "text/plain")
    assert fresh.name not in ready
    assert storage.pooled_names() == frozenset()
    fresh.abort()
    storage.fill_pool()
    storage.drain_pool()
    assert os.listdir(storage.partial_dir) == []
