"""The local backend through the storage interface: reopenable partials, readers, delete and
the list of stored files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hmacfs.core.refusals import Conflict, NotFound, TooLarge
from hmacfs.storage.backend import Backend, Busy
from hmacfs.storage.local import PARTIAL_MAX_IDLE, LocalStorage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files", fsync=False)


def test_the_local_backend_is_a_backend(storage: LocalStorage) -> None:
    backend: Backend = storage  # checked by mypy as well
    assert backend.existing("a/b") is None


def test_a_reopenable_partial_is_found_again_by_another_storage(
    storage: LocalStorage, tmp_path: Path
) -> None:
    partial = storage.begin("r1/file.bin", 10, "image/png", scheme="v2", reopenable=True)
    assert partial.reopenable and len(partial.id) == 32
    partial.write(b"01234")
    partial.close()  # the connection was cut: the partial stays
    assert not (storage.root / "r1").exists()  # never visible
    # Another process (a restarted server, another worker) opens the same directory.
    other = LocalStorage(tmp_path / "files", fsync=False)
    again = other.reopen(partial.id)
    assert (again.rel, again.size, again.content_type, again.scheme) == (
        "r1/file.bin", 10, "image/png", "v2",
    )
    assert again.received == 5
    again.write(b"56789")
    with pytest.raises(TooLarge):
        again.write(b"x")
    stored = again.commit()
    assert Path(stored.location).read_bytes() == b"0123456789"
    assert other.lookup("r1/file.bin").content_type == "image/png"
    with pytest.raises(NotFound):
        other.reopen(partial.id)  # committed: no more appends
    state = other.describe(partial.id)  # but its upload resource still answers
    assert (state.complete, state.received, state.size, state.rel) == (True, 10, 10, "r1/file.bin")
    assert os.listdir(storage.partial_dir) == [partial.id + ".json"]


@pytest.mark.parametrize("upload_id", ["", "../../etc/passwd", "0" * 31, "g" * 32, "0" * 33])
def test_reopen_finds_nothing_for_a_bad_or_unknown_id(
    storage: LocalStorage, upload_id: str
) -> None:
    with pytest.raises(NotFound):
        storage.reopen(upload_id)
    with pytest.raises(NotFound):
        storage.reopen("0" * 32)


def test_an_aborted_reopenable_partial_leaves_nothing(storage: LocalStorage) -> None:
    partial = storage.begin("r2/x", 4, "text/plain", reopenable=True)
    partial.write(b"ab")
    partial.abort()
    assert os.listdir(storage.partial_dir) == []
    with pytest.raises(NotFound):
        storage.reopen(partial.id)


def test_a_partial_that_is_not_reopenable_is_dropped_on_close(storage: LocalStorage) -> None:
    partial = storage.begin("r3/x", 4, "text/plain")
    assert not partial.reopenable
    partial.write(b"ab")
    partial.close()
    with pytest.raises(NotFound):
        storage.reopen(partial.id)


def test_the_sweeper_keeps_a_live_reopenable_partial_and_removes_an_abandoned_one(
    storage: LocalStorage,
) -> None:
    live = storage.begin("r4/live", 4, "text/plain", reopenable=True)
    gone = storage.begin("r4/gone", 4, "text/plain", reopenable=True)
    gone.close()
    live.close()
    long_ago = time.time() - PARTIAL_MAX_IDLE - 60
    for name in os.listdir(storage.partial_dir):
        os.utime(storage.partial_dir / name, (long_ago, long_ago))
    report = storage.sweep(frozenset({live.name}))
    assert report.partials == 1  # the abandoned partial, with its facts file
    assert (report.kept, report.kept_bytes) == (1, 0)
    assert sorted(os.listdir(storage.partial_dir)) == sorted([live.name, live.name + ".json"])
    assert storage.reopen(live.id).rel == "r4/live"


def test_one_request_at_a_time_holds_a_resumable_partial_in_any_process(
    storage: LocalStorage, tmp_path: Path
) -> None:
    created = storage.begin("h/f", 6, "text/plain", reopenable=True)
    created.write(b"abc")
    other = LocalStorage(tmp_path / "files", fsync=False)  # another worker process
    with pytest.raises(Busy) as busy:
        other.reopen(created.id)
    assert not busy.value.appending  # the request that created it holds it
    assert storage.claimed() == frozenset()
    claim = other.claim(created.id)  # a newer request wants it
    assert storage.claimed() == {created.id} and storage.claim_of(created.id) == claim
    created.close()
    appending = other.reopen(created.id, appending=True)
    assert appending.received == 3
    assert other.claim(created.id) != claim  # and another, newer one
    with pytest.raises(Busy) as busy:
        storage.reopen(created.id)
    assert busy.value.appending
    appending.close()
    again = storage.reopen(created.id)
    assert again.received == 3
    again.close()
    assert sorted(os.listdir(storage.partial_dir)) == [created.id, created.id + ".json"]


def test_a_plain_upload_of_the_slot_drops_its_abandoned_resumable_partial(
    storage: LocalStorage,
) -> None:
    cut = storage.begin("s/f", 3, "text/plain", reopenable=True)
    cut.write(b"ab")
    cut.close()
    plain = storage.begin("s/f", 3, "text/plain")
    plain.write(b"xyz")
    plain.commit()
    with pytest.raises(NotFound):
        storage.describe(cut.id)
    assert os.listdir(storage.partial_dir) == []
    assert storage.sweep().partials == 0  # (nothing was left for the sweeper)
    assert os.listdir(storage.slot_dir) == []


def test_a_held_resumable_partial_is_never_dropped(storage: LocalStorage, tmp_path: Path) -> None:
    held = storage.begin("k/f", 3, "text/plain", reopenable=True)
    held.write(b"a")
    # A plain upload of the same slot while the resumable one is still being written ...
    plain = storage.begin("k/f", 3, "text/plain")
    plain.write(b"xyz")
    plain.commit()
    # ... and a sweep long after, in another process: the held partial stays.
    long_ago = time.time() - storage.resumable_ttl - 60
    for name in os.listdir(storage.partial_dir):
        os.utime(storage.partial_dir / name, (long_ago, long_ago))
    report = LocalStorage(tmp_path / "files", fsync=False).sweep()
    assert (report.partials, report.kept, report.kept_bytes) == (0, 1, 1)
    assert storage.describe(held.id).received == 1
    held.close()
    assert LocalStorage(tmp_path / "files", fsync=False).sweep().partials == 1
    assert os.listdir(storage.partial_dir) == []


def test_a_completed_record_and_a_kept_partial_are_swept_after_the_resumable_ttl(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    storage = LocalStorage(tmp_path / "files", fsync=False, clock=lambda: now[0], resumable_ttl=60)
    done = storage.begin("t/done", 1, "text/plain", reopenable=True)
    done.write(b"x")
    done.commit()
    kept = storage.begin("t/kept", 4, "text/plain", reopenable=True)
    kept.write(b"ab")
    kept.close()
    for name in os.listdir(storage.partial_dir):
        os.utime(storage.partial_dir / name, (now[0], now[0]))
    assert storage.usage() == (1, 1 + 2)  # the kept partial counts in the usage
    report = storage.sweep()
    assert (report.partials, report.kept, report.kept_bytes) == (0, 1, 2)
    now[0] += 61
    report = storage.sweep()
    assert (report.partials, report.kept) == (2, 0)
    assert os.listdir(storage.partial_dir) == []
    assert storage.lookup("t/done").size == 1  # the stored file itself stays


def test_a_reader_reads_ranges_and_offers_a_descriptor(storage: LocalStorage) -> None:
    partial = storage.begin("d/f.bin", 10, "application/octet-stream")
    partial.write(b"0123456789")
    stored = partial.commit()
    reader = storage.open_reader(stored)
    try:
        assert reader.read(3, 4) == b"3456"
        assert reader.read(8, 100) == b"89"
        assert reader.fileno() is not None
    finally:
        reader.close()
    reader.close()  # idempotent


def test_delete_and_the_list_of_files(storage: LocalStorage) -> None:
    for rel, body in (("d1/a.txt", b"a"), ("d1/d2/b.txt", b"bb")):
        partial = storage.begin(rel, len(body), "text/plain", expires=2e9)
        partial.write(body)
        partial.commit()
    listed = {stored.rel: (stored.size, stored.content_type) for stored in storage.files()}
    assert storage.usage() == (2, 3)
    assert listed == {"d1/a.txt": (1, "text/plain"), "d1/d2/b.txt": (2, "text/plain")}
    assert storage.delete("d1/d2/b.txt")
    assert not storage.delete("d1/d2/b.txt")
    assert not (storage.root / "d1" / "d2").exists()  # emptied directories pruned
    assert not storage.delete("../outside")
    assert [stored.rel for stored in storage.files()] == ["d1/a.txt"]


def test_the_http_layer_knows_only_the_backend_interface() -> None:
    """The layers import downwards only: another backend can be added without touching the
    HTTP layer (nothing under hmacfs/http imports a backend implementation), core and storage
    know no Twisted and no HTTP."""
    import ast

    root = Path(__file__).resolve().parents[2] / "hmacfs"
    layers = (
        ("http", ("hmacfs.storage.local", "hmacfs.process")),
        ("core", ("hmacfs.storage", "hmacfs.http", "hmacfs.process", "twisted")),
        ("storage", ("hmacfs.http", "hmacfs.process", "twisted")),
    )
    for folder, banned in layers:
        for path in (root / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module is not None:
                    names = [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                for name in names:
                    # (the one exception: check-config builds the TLS context to validate it)
                    if path.name == "config.py" and name.startswith("hmacfs.process.tls"):
                        continue
                    assert not name.startswith(banned), f"{path} imports {name}"


def test_a_kept_partial_whose_slot_was_stored_meanwhile_is_swept(
    storage: LocalStorage, tmp_path: Path
) -> None:
    # The resumable upload was still held (a lingering connection) when a plain retry of its
    # slot was stored, so the retry could not drop it; once let go, the sweep does.
    held = storage.begin("m/f", 3, "text/plain", reopenable=True)
    held.write(b"a")
    plain = storage.begin("m/f", 3, "text/plain")
    plain.write(b"xyz")
    plain.commit()
    held.close()
    report = LocalStorage(tmp_path / "files", fsync=False).sweep()
    assert (report.partials, report.kept) == (1, 0)
    with pytest.raises(NotFound):
        storage.describe(held.id)
    assert storage.lookup("m/f").size == 3


def test_a_path_below_a_stored_file_is_in_use_before_any_body(storage: LocalStorage) -> None:
    stored = storage.begin("u/b", 1, "text/plain")
    stored.write(b"x")
    stored.commit()
    with pytest.raises(Conflict):
        storage.existing("u/b/c")  # (the admission refuses it: no 100 Continue, no body)
    with pytest.raises(Conflict):
        storage.existing("u/b/c/d")
    assert storage.existing("u/other") is None
