"""The local storage: partial files, linking into place without replacing, metadata, sweeping.

Every test that takes the `storage` fixture runs four times: with the metadata in an extended
attribute of each file or in the inode-keyed JSON files, and with unnamed (O_TMPFILE) or named
partial files (all of which work on the test filesystem).
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmacfs.core.refusals import Conflict, Gone, NotFound, TooLarge
from hmacfs.storage.local import META_XATTR, PARTIAL_MAX_IDLE, LocalStorage, encode_meta
from tests.helpers.files import partial_files, visible_files


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["xattr", "file"])
def metadata(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["tmpfile", "named"])
def partials(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(tmp_path: Path, clock: FakeClock, metadata: str, partials: str) -> LocalStorage:
    return LocalStorage(
        tmp_path / "files", fsync=True, clock=clock, metadata=metadata, partials=partials
    )


@pytest.fixture(params=[True, False], ids=["durable", "fast"])
def walking(
    tmp_path: Path, clock: FakeClock, metadata: str, partials: str, request: Any
) -> LocalStorage:
    """A storage of either mode: a durable commit walks down from the root's descriptor (which
    it syncs), a fast one opens the root's first directory by its path."""
    return LocalStorage(
        tmp_path / "files", fsync=request.param, clock=clock, metadata=metadata,
        partials=partials,
    )


def store(storage: LocalStorage, rel: str, body: bytes, **kw: object) -> None:
    upload = storage.begin(rel, len(body), "text/plain", **kw)  # type: ignore[arg-type]
    upload.write(body)
    upload.commit()


def test_nothing_is_visible_until_commit(storage: LocalStorage) -> None:
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
    assert (found.size, found.content_type, found.uploaded) == (4, "text/plain", stored.uploaded)
    assert Path(found.location).read_bytes() == b"abcd"


def test_writing_past_the_declared_size_is_refused(storage: LocalStorage) -> None:
    upload = storage.begin("a/b.txt", 3, "text/plain")
    with pytest.raises(TooLarge):
        upload.write(b"abcd")
    upload.abort()
    assert partial_files(storage) == []


def test_concurrent_uploads_of_one_path_never_overwrite(storage: LocalStorage) -> None:
    first = storage.begin("s/x.bin", 3, "image/png")
    second = storage.begin("s/x.bin", 3, "text/html")
    first.write(b"one")
    second.write(b"two")
    first.commit()
    with pytest.raises(Conflict):
        second.commit()
    found = storage.lookup("s/x.bin")
    assert Path(found.location).read_bytes() == b"one"
    # The loser's metadata did not replace the winner's.
    assert found.content_type == "image/png"
    assert partial_files(storage) == []


@pytest.mark.parametrize("inline", [False, True], ids=["on a thread", "inline"])
@pytest.mark.parametrize("what", ["a directory", "a link out", "a file of another size"])
def test_what_took_the_path_before_the_commit_is_refused_by_name(
    walking: LocalStorage, tmp_path: Path, what: str, inline: bool
) -> None:
    # As an admission that found it there refuses it (LocalStorage.existing).
    upload = walking.begin("t/x.bin", 3, "text/plain")
    upload.write(b"one")
    taken = walking.path_of("t/x.bin")
    taken.parent.mkdir()
    if what == "a directory":
        taken.mkdir()
    elif what == "a link out":
        taken.symlink_to(tmp_path)
    else:
        taken.write_bytes(b"four")
    reason = "file already exists" if what == "a file of another size" else "path is in use"
    with pytest.raises(Conflict, match=reason):
        upload.commit(inline=inline)
    assert partial_files(walking) == []


def test_a_commit_locks_only_a_directory_it_did_not_just_make(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A removal looks and unlinks under the directory's lock taken alone; a commit links under
    # it taken shared, but for the first entry of a directory it made itself.
    store(storage, "old/a.txt", b"a")
    locked: list[str] = []
    real_flock = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_SH and stat.S_ISDIR(os.fstat(fd).st_mode):
            locked.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    for rel in ("old/b.txt", "new/a.txt", "old/new/a.txt", "new/a2.txt", "top.txt"):
        store(storage, rel, b"b")
    assert locked == ["old", "new", "files"]  # (old/, new/ once it had a file, the root)
    for rel in ("old/b.txt", "new/a.txt", "old/new/a.txt", "new/a2.txt", "top.txt"):
        assert storage.path_of(rel).read_bytes() == b"b"


def test_concurrent_identical_retries_both_succeed(storage: LocalStorage) -> None:
    first = storage.begin("s/x.bin", 3, "image/png")
    second = storage.begin("s/x.bin", 3, "image/png")
    first.write(b"one")
    second.write(b"one")
    first.commit()
    kept = os.stat(storage.path_of("s/x.bin"))
    assert second.commit().size == 3
    assert os.stat(storage.path_of("s/x.bin")).st_ino == kept.st_ino
    assert partial_files(storage) == []


def test_a_file_where_a_directory_is_needed_is_a_conflict(storage: LocalStorage) -> None:
    store(storage, "a/b", b"file")
    with pytest.raises(Conflict):
        store(storage, "a/b/c", b"x")


def test_foreign_files_are_served_without_metadata(storage: LocalStorage) -> None:
    (storage.root / "old").mkdir()
    (storage.root / "old" / "photo.jpg").write_bytes(b"jpeg")
    found = storage.lookup("old/photo.jpg")
    assert found.size == 4
    assert found.content_type is None and found.uploaded is None


def test_metadata_of_another_file_is_not_trusted(storage: LocalStorage) -> None:
    store(storage, "a/one.txt", b"1")
    one = storage.lookup("a/one.txt")
    # Replace the file behind our back: its inode changes, the metadata no longer applies.
    os.unlink(one.location)
    (storage.root / "a" / "one.txt").write_bytes(b"22")
    assert storage.lookup("a/one.txt").content_type is None


def test_expiry_gone_then_swept(storage: LocalStorage, clock: FakeClock) -> None:
    store(storage, "d/e/short.txt", b"bye", expires=clock.now + 60)
    store(storage, "d/long.txt", b"stays", expires=clock.now + 600)
    store(storage, "forever.txt", b"!")
    assert storage.lookup("d/e/short.txt").expires == clock.now + 60
    report = storage.sweep()
    assert (report.expired, report.files, report.bytes) == (0, 3, 9)
    clock.now += 61
    with pytest.raises(Gone):
        storage.lookup("d/e/short.txt")
    report = storage.sweep()
    assert (report.expired, report.files, report.bytes) == (1, 2, 6)
    assert visible_files(storage.root) == ["d/long.txt", "forever.txt"]
    assert not (storage.root / "d" / "e").exists()  # emptied directories are removed too
    clock.now += 600
    assert storage.sweep().expired == 1
    assert visible_files(storage.root) == ["forever.txt"]
    assert not (storage.root / "d").exists()


def test_file_ttl(tmp_path: Path, clock: FakeClock, metadata: str) -> None:
    storage = LocalStorage(
        tmp_path / "files", fsync=False, file_ttl=3600, clock=clock, metadata=metadata
    )
    store(storage, "a/b.txt", b"x", expires=clock.now + 7200)
    assert storage.lookup("a/b.txt").expires == clock.now + 3600


def test_sweep_removes_abandoned_partials_but_not_live_ones(
    tmp_path: Path, clock: FakeClock
) -> None:
    storage = LocalStorage(tmp_path / "files", clock=clock, partials="named")
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


def test_storage_dir_state_is_hidden(storage: LocalStorage) -> None:
    with pytest.raises(NotFound):
        storage.lookup(".hmacfs/partial")


def test_symlink_leaving_the_root_is_not_served(storage: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("secret")
    (storage.root / "s").mkdir()
    (storage.root / "s" / "link").symlink_to(outside)
    with pytest.raises(NotFound):
        storage.lookup("s/link")


def test_links_that_stay_inside_the_root_are_followed(storage: LocalStorage) -> None:
    store(storage, "d1/a.txt", b"alpha")
    (storage.root / "d2").symlink_to(storage.root / "d1")
    (storage.root / "d1" / "b.txt").symlink_to("a.txt")
    for rel in ("d2/a.txt", "d1/b.txt", "d2/b.txt"):
        found = storage.lookup(rel)
        assert found.location == str((storage.root / "d1" / "a.txt").resolve())
        assert found.size == 5


def test_links_into_the_bookkeeping_directory_are_not_followed(storage: LocalStorage) -> None:
    store(storage, "d1/a.txt", b"alpha")
    (storage.root / "state").symlink_to(storage.root / ".hmacfs")
    (storage.root / "d1" / "meta").symlink_to("../.hmacfs/meta")
    for rel in ("state/partial", "d1/meta", ".hmacfs/meta"):
        with pytest.raises(NotFound):
            storage.lookup(rel)


@pytest.mark.parametrize(
    "rel", ["d1/../d1/a.txt", "d1/./a.txt", "d1//a.txt", "/d1/a.txt", "d1/a.txt/", "d1/a.txt/x",
            "d1", "nothing/a.txt", "d1/a\x00.txt"]
)
def test_lookup_finds_only_the_exact_regular_file(storage: LocalStorage, rel: str) -> None:
    store(storage, "d1/a.txt", b"alpha")
    assert storage.lookup("d1/a.txt").size == 5
    with pytest.raises(NotFound):
        storage.lookup(rel)


def test_upload_through_a_symlinked_directory_is_refused(
    walking: LocalStorage, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (walking.root / "s").symlink_to(outside)
    with pytest.raises(Exception, match="leaves the storage"):
        store(walking, "s/x.txt", b"x")
    with pytest.raises(Exception, match="leaves the storage"):
        store(walking, "s/new/dirs/x.txt", b"x")  # nor are directories made out there
    assert list(outside.iterdir()) == []


def test_upload_through_a_link_inside_the_root_is_stored_where_it_leads(
    walking: LocalStorage,
) -> None:
    (walking.root / "real").mkdir()
    (walking.root / "alias").symlink_to("real")
    store(walking, "alias/x.txt", b"x")
    assert (walking.root / "real" / "x.txt").read_bytes() == b"x"
    assert walking.lookup("alias/x.txt").size == 1


def test_upload_through_a_link_into_the_bookkeeping_directory_is_refused(
    walking: LocalStorage,
) -> None:
    (walking.root / "state").symlink_to(".hmacfs/meta")
    with pytest.raises(Exception, match="leaves the storage"):
        store(walking, "state/x.json", b"{}")
    assert not (walking.root / ".hmacfs" / "meta" / "x.json").exists()


@pytest.mark.parametrize("taken", ["file", "dangling link", "link to a file"])
def test_anything_but_a_directory_on_the_way_is_a_conflict(
    walking: LocalStorage, taken: str
) -> None:
    where = walking.root / "a"
    if taken == "file":
        where.write_bytes(b"")
    elif taken == "dangling link":
        where.symlink_to("nowhere")
    else:
        (walking.root / "f").write_bytes(b"")
        where.symlink_to("f")
    with pytest.raises(Conflict):
        store(walking, "a/b/c.txt", b"x")
    assert partial_files(walking) == []


def test_durable_commit_syncs_every_directory_given_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "files", fsync=True)
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store(storage, "a/b/c.txt", b"x")
    inode = {rel: os.stat(storage.root / rel).st_ino for rel in ("", "a", "a/b", "a/b/c.txt")}
    # The file's data, and each directory that got a new entry: a new directory or the file.
    assert sorted(synced) == sorted(inode.values())
    synced.clear()
    store(storage, "a/b/d.txt", b"y")
    assert sorted(synced) == sorted([inode["a/b"], os.stat(storage.root / "a/b/d.txt").st_ino])


def test_metadata_is_read_once_per_file_state(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hmacfs.storage import local as storage_module

    reads: list[str] = []
    read = storage._read_meta_from_disk

    def counting(path: str, st: os.stat_result, rel: str) -> object:
        reads.append(rel)
        return read(path, st, rel)

    monkeypatch.setattr(storage, "_read_meta_from_disk", counting)
    monkeypatch.setattr(storage_module, "META_CACHE_SIZE", 3)
    for i in range(5):
        store(storage, f"c/{i}.txt", b"%d" % i)
    for _ in range(3):
        assert storage.lookup("c/0.txt").content_type == "text/plain"
    assert reads == ["c/0.txt"]
    # A new link to the file changes its ctime: read again (and trusted only at its own path).
    # File times move in clock ticks (up to 10 ms): let one pass so the ctime does change.
    time.sleep(0.05)
    os.link(storage.path_of("c/0.txt"), storage.path_of("c/copy.txt"))
    assert storage.lookup("c/0.txt").content_type == "text/plain"
    assert storage.lookup("c/copy.txt").content_type is None
    assert reads == ["c/0.txt", "c/0.txt", "c/copy.txt"]
    for i in range(1, 5):
        storage.lookup(f"c/{i}.txt")
    assert len(storage._meta_cache) == 3  # the oldest entries made room


def test_concurrent_uploads_into_one_new_directory_all_land(walking: LocalStorage) -> None:
    # Durable commits run on a thread pool, and workers are processes: several may make the
    # same directories at once.
    from concurrent.futures import ThreadPoolExecutor

    uploads = []
    for i in range(16):
        upload = walking.begin(f"shared/deep/dir/f{i}.txt", 2, "text/plain")
        upload.write(b"%02d" % i)
        uploads.append(upload)
    with ThreadPoolExecutor(max_workers=8) as pool:
        stored = list(pool.map(lambda u: u.commit(), uploads))
    assert [s.rel for s in stored] == [f"shared/deep/dir/f{i}.txt" for i in range(16)]
    for i in range(16):
        assert walking.path_of(f"shared/deep/dir/f{i}.txt").read_bytes() == b"%02d" % i
    assert partial_files(walking) == []


def test_a_directory_pruned_while_linking_is_made_again(
    walking: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweeper removes directories left empty by expired files; one may go between our
    # making it and linking the file into it.
    walks = []
    open_parents = walking._open_parents

    def pruned_once(parents: list[str]) -> object:
        opened = open_parents(parents)
        walks.append(parents)
        if len(walks) == 1:
            os.rmdir(walking.root / "/".join(parents))
        return opened

    monkeypatch.setattr(walking, "_open_parents", pruned_once)
    store(walking, "fresh/x.txt", b"x")
    assert len(walks) == 2
    assert walking.lookup("fresh/x.txt").size == 1
    assert partial_files(walking) == []


def test_partial_files_made_ahead(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    from hmacfs.storage import local as storage_module

    storage.refill()
    ready = storage.live_names()
    assert len(ready) == storage_module.POOL_SIZE
    upload = storage.begin("p/q.txt", 2, "text/plain")
    assert upload.name in ready  # no file was created for it
    assert upload.name not in storage.live_names()
    upload.write(b"ok")
    upload.commit()
    assert storage.lookup("p/q.txt").size == 2
    # A file that waited too long is not handed out (a sweep elsewhere may remove it).
    monkeypatch.setattr(storage_module, "POOL_MAX_AGE", -1.0)
    fresh = storage.begin("p/r.txt", 1, "text/plain")
    assert storage.live_names() == frozenset()  # all taken out: `fresh` was made for it
    if fresh.partial is not None:
        assert fresh.name not in ready  # (an unnamed one may get a freed inode's number)
    fresh.abort()
    storage.refill()
    storage.close()
    assert os.listdir(storage.partial_dir) == []


# -- a retry of an upload: the same bytes again ------------------------------------------------


def retry(storage: LocalStorage, rel: str, body: bytes) -> None:
    """Upload `body` to `rel` as the server does when a file of that size is already there."""
    upload = storage.begin(rel, len(body), "text/plain")
    upload.write(body)
    upload.commit(compare=True)


def test_identical_retry_succeeds_and_leaves_the_stored_file(
    storage: LocalStorage, clock: FakeClock
) -> None:
    store(storage, "r/same.txt", b"payload")
    before = os.stat(storage.path_of("r/same.txt"))
    clock.now += 10
    retry(storage, "r/same.txt", b"payload")
    after = os.stat(storage.path_of("r/same.txt"))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert storage.lookup("r/same.txt").uploaded == clock.now - 10
    assert partial_files(storage) == []


@pytest.mark.parametrize("where", [0, 3, 4, 9, 10])
def test_a_different_body_of_the_same_size_is_a_conflict(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch, where: int
) -> None:
    from hmacfs.storage import local as storage_module

    # Small chunks: a difference in the first, a middle or the last (short) chunk is found.
    monkeypatch.setattr(storage_module, "COMPARE_CHUNK", 4)
    body = b"0123456789a"
    store(storage, "r/diff.bin", body)
    changed = bytearray(body)
    changed[where] ^= 0x20
    with pytest.raises(Conflict):
        retry(storage, "r/diff.bin", bytes(changed))
    assert storage.path_of("r/diff.bin").read_bytes() == body
    assert partial_files(storage) == []
    retry(storage, "r/diff.bin", body)


def test_comparison_reads_in_bounded_chunks(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hmacfs.storage import local as storage_module

    monkeypatch.setattr(storage_module, "COMPARE_CHUNK", 1000)
    body = os.urandom(10_500)
    store(storage, "r/big.bin", body)
    sizes: list[int] = []
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        sizes.append(sum(len(b) for b in buffers))
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    retry(storage, "r/big.bin", body)
    assert len(sizes) == 2 * 11  # both files, 10 full chunks and the rest
    assert max(sizes) == 1000


def test_a_file_stored_by_another_server_is_compared_too(storage: LocalStorage) -> None:
    (storage.root / "old").mkdir()
    (storage.root / "old" / "photo.jpg").write_bytes(b"jpeg")
    retry(storage, "old/photo.jpg", b"jpeg")
    with pytest.raises(Conflict):
        retry(storage, "old/photo.jpg", b"JPEG")
    assert (storage.root / "old" / "photo.jpg").read_bytes() == b"jpeg"
    assert storage.lookup("old/photo.jpg").content_type is None


def test_an_expired_file_is_not_taken_for_a_retry(storage: LocalStorage, clock: FakeClock) -> None:
    store(storage, "r/old.txt", b"bye", expires=clock.now + 60)
    assert storage.existing("r/old.txt") is not None
    clock.now += 61
    with pytest.raises(Conflict):
        storage.existing("r/old.txt")
    with pytest.raises(Conflict):
        retry(storage, "r/old.txt", b"bye")
    assert partial_files(storage) == []


def test_a_stored_file_gone_before_the_commit_is_replaced_by_the_upload(
    storage: LocalStorage,
) -> None:
    store(storage, "r/gone.txt", b"abc")
    upload = storage.begin("r/gone.txt", 3, "image/png")
    upload.write(b"xyz")
    os.unlink(storage.path_of("r/gone.txt"))
    upload.commit(compare=True)
    assert storage.path_of("r/gone.txt").read_bytes() == b"xyz"
    assert storage.lookup("r/gone.txt").content_type == "image/png"


def test_old_metadata_with_a_digest_is_still_read(storage: LocalStorage) -> None:
    (storage.root / "o").mkdir()
    target = storage.root / "o" / "f.txt"
    target.write_bytes(b"data")
    ino = os.stat(target).st_ino
    meta = {"v": 1, "path": "o/f.txt", "size": 4, "content_type": "text/x-old",
            "sha256": "ab" * 32, "uploaded": 5.0, "expires": None, "scheme": "v1"}
    meta_path = storage.root / ".hmacfs" / "meta" / f"{ino % 256:02x}" / f"{ino}.json"
    meta_path.write_text(json.dumps(meta))
    found = storage.lookup("o/f.txt")
    assert (found.content_type, found.uploaded) == ("text/x-old", 5.0)
    assert not hasattr(found, "sha256")


# -- where the metadata is kept ----------------------------------------------------------------


def json_metas(storage: LocalStorage) -> list[Path]:
    return sorted((storage.root / ".hmacfs" / "meta").glob("*/*.json"))


def test_metadata_is_in_one_place(storage: LocalStorage, metadata: str) -> None:
    store(storage, "m/one.txt", b"one", expires=storage.clock() + 60)
    final = str(storage.path_of("m/one.txt"))
    if metadata == "xattr":
        meta = json.loads(os.getxattr(final, META_XATTR))
        assert json_metas(storage) == []
    else:
        with pytest.raises(OSError):
            os.getxattr(final, META_XATTR)
        [meta_path] = json_metas(storage)
        assert meta_path.name == f"{os.stat(final).st_ino}.json"
        meta = json.loads(meta_path.read_bytes())
    assert (meta["path"], meta["size"], meta["content_type"]) == ("m/one.txt", 3, "text/plain")
    assert meta["expires"] == storage.clock() + 60
    assert "sha256" not in meta


def test_metadata_of_a_file_linked_or_grown_elsewhere_is_not_trusted(storage: LocalStorage) -> None:
    store(storage, "m/orig.txt", b"orig")
    os.link(storage.path_of("m/orig.txt"), storage.root / "m" / "copy.txt")
    assert storage.lookup("m/orig.txt").content_type == "text/plain"
    assert storage.lookup("m/copy.txt").content_type is None  # its path is not ours
    with open(storage.path_of("m/orig.txt"), "ab") as grown:
        grown.write(b"+")
    assert storage.lookup("m/orig.txt").content_type is None  # nor is its size


def test_auto_keeps_metadata_in_an_attribute_on_this_filesystem(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    assert storage.xattrs
    assert os.listdir(storage.partial_dir) == []  # the scratch file of the probe is gone


def tmpfs_dir() -> Path:
    """/dev/shm, which Debian (and every systemd machine) mounts as a writable tmpfs."""
    with open("/proc/mounts") as mounts:
        types = {line.split()[1]: line.split()[2] for line in mounts}
    assert types.get("/dev/shm") == "tmpfs", "no tmpfs at /dev/shm to test on"
    assert os.access("/dev/shm", os.W_OK), "/dev/shm is not writable"
    return Path("/dev/shm")


def test_auto_keeps_metadata_in_an_attribute_on_tmpfs(clock: FakeClock) -> None:
    import shutil
    import tempfile

    parent = tmpfs_dir()
    directory = Path(tempfile.mkdtemp(dir=parent))
    try:
        storage = LocalStorage(directory / "files", fsync=False, clock=clock)
        assert storage.xattrs and storage.tmpfiles
        store(storage, "t/x.txt", b"x", expires=clock.now + 1)
        assert json_metas(storage) == []
        assert storage.lookup("t/x.txt").content_type == "text/plain"
        clock.now += 2
        assert storage.sweep().expired == 1
    finally:
        shutil.rmtree(directory)


def test_without_attributes_auto_uses_files(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def unsupported(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "setxattr", unsupported)
    with pytest.raises(OSError):
        LocalStorage(tmp_path / "strict", metadata="xattr")
    storage = LocalStorage(tmp_path / "files", clock=clock)
    assert not storage.xattrs
    assert os.listdir(storage.partial_dir) == []
    store(storage, "f/a.txt", b"a", expires=clock.now + 5)
    assert len(json_metas(storage)) == 1
    assert storage.lookup("f/a.txt").content_type == "text/plain"
    clock.now += 6
    assert storage.sweep().expired == 1


def test_other_metadata_stores_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path / "files", metadata="sqlite")
    with pytest.raises(ValueError):
        LocalStorage(tmp_path / "files", partials="memory")


def test_metadata_too_large_for_an_attribute_goes_to_a_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", metadata="xattr")
    huge = "text/plain; x=" + "y" * 70_000  # over any filesystem's limit for one attribute
    upload = storage.begin("h/big.txt", 1, huge)
    upload.write(b"b")
    upload.commit()
    assert len(json_metas(storage)) == 1
    assert storage.lookup("h/big.txt").content_type == huge


@pytest.mark.parametrize(("before", "after"), [("file", "xattr"), ("xattr", "file")])
def test_metadata_written_by_either_store_is_read_by_the_other(
    tmp_path: Path, clock: FakeClock, before: str, after: str
) -> None:
    first = LocalStorage(tmp_path / "files", clock=clock, metadata=before)
    store(first, "x/y.txt", b"yy", expires=clock.now + 60)
    second = LocalStorage(tmp_path / "files", clock=clock, metadata=after)
    found = second.lookup("x/y.txt")
    assert (found.content_type, found.expires) == ("text/plain", clock.now + 60)
    clock.now += 61
    assert second.sweep().expired == 1
    assert visible_files(second.root) == []
    assert json_metas(second) == []


def test_stale_metadata_files_are_swept(storage: LocalStorage, clock: FakeClock) -> None:
    from hmacfs.storage.local import _META_GRACE

    store(storage, "s/kept.txt", b"k")
    shard = storage.root / ".hmacfs" / "meta" / "07"
    stale = shard / "263.json"  # 263 % 256 == 7: an inode no stored file has
    stale.write_text(json.dumps({"v": 1, "path": "s/gone.txt", "size": 1}))
    fresh = shard / "519.json"
    fresh.write_text(json.dumps({"v": 1, "path": "s/new.txt", "size": 1}))
    long_ago = clock.now - _META_GRACE - 60
    os.utime(stale, (long_ago, long_ago))
    os.utime(fresh, (clock.now, clock.now))
    report = storage.sweep()
    assert report.orphans == 1
    assert not stale.exists() and fresh.exists()  # the fresh one may be being linked
    assert storage.lookup("s/kept.txt").content_type == "text/plain"


# -- commits on the caller's thread (fast mode) ------------------------------------------------


def test_only_fast_mode_without_a_comparison_commits_inline(tmp_path: Path) -> None:
    fast = LocalStorage(tmp_path / "fast", fsync=False).begin("a", 1, "text/plain")
    durable = LocalStorage(tmp_path / "durable", fsync=True).begin("a", 1, "text/plain")
    assert fast.can_commit_inline()
    assert not fast.can_commit_inline(compare=True)
    assert not durable.can_commit_inline()
    fast.abort()
    durable.abort()


def test_an_inline_commit_hands_a_same_size_race_over(
    tmp_path: Path, metadata: str, partials: str
) -> None:
    from hmacfs.storage.backend import CompareOnThread

    storage = LocalStorage(tmp_path / "files", fsync=False, metadata=metadata, partials=partials)
    first = storage.begin("s/z.bin", 3, "text/plain")
    second = storage.begin("s/z.bin", 3, "text/plain")
    other_size = storage.begin("s/z.bin", 2, "text/plain")
    first.write(b"one")
    second.write(b"one")
    other_size.write(b"on")
    first.commit(inline=True)
    with pytest.raises(CompareOnThread):
        second.commit(inline=True)
    assert second.name in partial_files(storage)  # kept for the comparison
    assert second.commit(compare=True).size == 3
    # Of another size it cannot be the same body: a conflict at once.
    with pytest.raises(Conflict):
        other_size.commit(inline=True)
    assert partial_files(storage) == []
    assert len(json_metas(storage)) == (1 if metadata == "file" else 0)  # the winner's
    assert storage.path_of("s/z.bin").read_bytes() == b"one"


# -- unnamed partial files (O_TMPFILE) ---------------------------------------------------------


def test_auto_makes_partial_files_without_a_name_here(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", fsync=False)
    assert storage.tmpfiles
    upload = storage.begin("u/n.txt", 4, "text/plain")
    upload.write(b"body")
    assert upload.partial is None
    assert os.listdir(storage.partial_dir) == []  # nothing to see, nothing to sweep
    assert partial_files(storage) == [upload.name]  # but open, as "#<inode>"
    upload.commit(inline=True)
    final = storage.path_of("u/n.txt")
    assert final.read_bytes() == b"body"
    assert upload.name == f"#{os.stat(final).st_ino}"  # the very file, linked
    assert os.stat(final).st_nlink == 1
    assert partial_files(storage) == []


CRASH = """
import os, sys
from pathlib import Path
from typing import Any
from hmacfs.storage.local import LocalStorage
storage = LocalStorage(Path(sys.argv[1]), partials=sys.argv[2])
upload = storage.begin("c/crash.bin", 10, "text/plain")
upload.write(b"12345")
os._exit(0)  # no abort, no cleanup: as if killed
"""


@pytest.mark.parametrize(("partials", "left"), [("tmpfile", 0), ("named", 1)])
def test_a_server_that_dies_mid_upload_leaves_no_partial_file(
    tmp_path: Path, partials: str, left: int
) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run(
        [sys.executable, "-c", CRASH, str(tmp_path / "files"), partials], check=True, env=env
    )
    assert len(os.listdir(tmp_path / "files" / ".hmacfs" / "partial")) == left
    assert visible_files(tmp_path / "files") == []


def test_without_o_tmpfile_or_proc_auto_names_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hmacfs.storage import local as storage_module

    def no_proc(fd: int, dir_fd: int, name: str) -> None:
        raise FileNotFoundError(2, "No such file or directory", f"/proc/self/fd/{fd}")

    with monkeypatch.context() as patch:
        patch.setattr(storage_module, "_link_unnamed", no_proc)
        with pytest.raises(OSError):
            LocalStorage(tmp_path / "strict", partials="tmpfile")
        assert not LocalStorage(tmp_path / "no-proc").tmpfiles
    monkeypatch.delattr(os, "O_TMPFILE")
    storage = LocalStorage(tmp_path / "files")
    assert not storage.tmpfiles
    assert os.listdir(storage.partial_dir) == []  # the probes left nothing
    store(storage, "n/x.txt", b"x")
    assert storage.path_of("n/x.txt").read_bytes() == b"x"
    assert partial_files(storage) == []


def test_named_partials_of_an_earlier_run_are_still_swept(
    tmp_path: Path, clock: FakeClock
) -> None:
    earlier = LocalStorage(tmp_path / "files", clock=clock, partials="named")
    abandoned = earlier.begin("a/old", 10, "text/plain")
    abandoned.write(b"12")
    assert abandoned.partial is not None
    long_ago = clock.now - PARTIAL_MAX_IDLE - 60
    os.utime(abandoned.partial, (long_ago, long_ago))
    storage = LocalStorage(tmp_path / "files", clock=clock)
    assert storage.tmpfiles
    live = storage.begin("a/live", 10, "text/plain")
    live.write(b"34")
    storage.refill()
    report = storage.sweep(active=frozenset({live.name}) | storage.live_names())
    assert report.partials == 1
    assert os.listdir(storage.partial_dir) == []
    live.write(b"56789012")
    live.commit()
    assert storage.path_of("a/live").read_bytes() == b"3456789012"
    abandoned.abort()
    storage.close()
    assert partial_files(storage) == []


def test_durable_bodies_are_sent_to_the_disk_as_they_arrive(tmp_path: Path) -> None:
    from hmacfs.storage import local as storage_module

    calls: list[tuple[int, int]] = []
    results: list[bool] = []

    def background(f: Any, fd: int, offset: int, count: int) -> None:
        calls.append((offset, count))
        results.append(f(fd, offset, count))  # the real sync_file_range, on a real file

    durable = LocalStorage(tmp_path / "durable", fsync=True)
    durable.background = background
    step = storage_module.WRITEBACK_STEP
    upload = durable.begin("w/big.bin", 2 * step + 100, "application/octet-stream")
    piece = b"w" * (step // 4)
    for _ in range(8):
        upload.write(piece)
    upload.wrote(0)
    upload.write(b"x" * 100)
    upload.commit()
    assert calls == [(0, step), (step, step)]
    assert results == [True, True]

    fast = LocalStorage(tmp_path / "fast", fsync=False)
    fast.background = background
    upload = fast.begin("w/big.bin", step + 1, "application/octet-stream")
    upload.write(b"f" * (step + 1))
    upload.commit()
    assert len(calls) == 2  # nothing to hurry without fsync


def test_the_uploader_is_kept_with_the_file(storage: LocalStorage) -> None:
    store(storage, "slot1/mine.txt", b"mine", uploader="romeo@montague.example")
    store(storage, "slot2/nobodys.txt", b"anon")
    reopenable = storage.begin(
        "slot3/resumed.txt", 3, "text/plain", uploader="juliet@capulet.example", reopenable=True
    )
    reopenable.close()  # cut off: kept for a resumption, the uploader with it
    resumed = storage.reopen(reopenable.id)
    resumed.write(b"abc")
    resumed.commit()
    assert storage.lookup("slot1/mine.txt").uploader == "romeo@montague.example"
    assert storage.lookup("slot2/nobodys.txt").uploader is None
    assert storage.lookup("slot3/resumed.txt").uploader == "juliet@capulet.example"
    assert {f.rel: f.uploader for f in storage.files()} == {
        "slot1/mine.txt": "romeo@montague.example",
        "slot2/nobodys.txt": None,
        "slot3/resumed.txt": "juliet@capulet.example",
    }


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**12), 10**12)
)


@given(
    st.fixed_dictionaries(
        {
            "rel": _TEXT,
            "size": st.integers(0, 2**63),
            "content_type": _TEXT,
            "uploaded": _NUMBER,
            "expires": st.one_of(
                st.none(), _NUMBER, st.sampled_from([float("inf"), float("nan")])
            ),
            "scheme": _TEXT,
            "uploader": st.one_of(st.none(), _TEXT),
        }
    )
)
def test_metadata_record_is_what_the_json_encoder_writes(fields: dict[str, Any]) -> None:
    order = ("size", "content_type", "uploaded", "expires", "scheme", "uploader")
    record = {"v": 1, "path": fields["rel"], **{key: fields[key] for key in order}}
    expected = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    assert encode_meta(**fields) == expected


def test_files_in_the_root_and_below_it_are_stored_in_either_mode(
    walking: LocalStorage,
) -> None:
    for rel in ("top.txt", "a/x.txt", "a/b/y.txt", "a/z.txt", "c/d/e/f.txt"):
        store(walking, rel, rel.encode())
    for rel in ("top.txt", "a/x.txt", "a/b/y.txt", "a/z.txt", "c/d/e/f.txt"):
        assert (walking.root / rel).read_bytes() == rel.encode()
        assert walking.lookup(rel).size == len(rel)
    assert partial_files(walking) == []


def _abandoned(storage: LocalStorage, rel: str) -> str:
    """A resumable upload of `rel` cut off after one byte of three; its id."""
    upload = storage.begin(rel, 3, "text/plain", reopenable=True)
    upload.write(b"o")
    upload.close()
    return upload.id


def test_a_plain_upload_drops_the_abandoned_resumable_upload_of_its_slot(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path / "files", fsync=False)
    store(storage, "first/x.txt", b"one")  # (the slots are found empty, and that is kept)
    upload_id = _abandoned(storage, "slot/x.txt")
    store(storage, "slot/x.txt", b"one")
    with pytest.raises(NotFound):
        storage.describe(upload_id)
    assert partial_files(storage) == []


def test_another_process_s_slot_is_looked_up_once_its_empty_listing_is_a_second_old(
    tmp_path: Path,
) -> None:
    # A plain upload's commit does not look for a slot while the slot directory was empty a
    # moment ago; one another process makes meanwhile is left to the sweeper, which removes a
    # resumable upload whose path is stored.
    now = [0.0]
    storage = LocalStorage(tmp_path / "files", fsync=False)
    storage.monotonic = lambda: now[0]
    other = LocalStorage(tmp_path / "files", fsync=False)
    store(storage, "first/x.txt", b"one")
    early = _abandoned(other, "early/x.txt")
    now[0] = 0.9
    store(storage, "early/x.txt", b"one")
    assert storage.describe(early).received == 1  # not looked up yet
    late = _abandoned(other, "late/x.txt")
    now[0] = 1.0
    store(storage, "late/x.txt", b"one")
    with pytest.raises(NotFound):
        storage.describe(late)  # listed again: dropped at once
    store(storage, "plain/x.txt", b"one")  # (the directory holds a slot: looked up each time)
    storage.sweep()
    with pytest.raises(NotFound):
        storage.describe(early)
    assert partial_files(storage) == []
