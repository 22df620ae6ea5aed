"""The local backend through the storage interface: reopenable partials, readers, delete and
the list of stored files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hmacfs.core.refusals import NotFound, TooLarge
from hmacfs.storage.backend import Backend
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
        other.reopen(partial.id)  # committed: gone from the partials
    assert os.listdir(storage.partial_dir) == []


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
    assert report.partials == 2  # the abandoned partial and its facts file
    assert sorted(os.listdir(storage.partial_dir)) == sorted([live.name, live.name + ".json"])
    assert storage.reopen(live.id).rel == "r4/live"


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
