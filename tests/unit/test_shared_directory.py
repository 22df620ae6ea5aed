"""One storage directory shared by several nodes: `LocalStorage` instances in separate
processes (spawned, so that each opens the directory as a node would, sharing nothing but
the filesystem) sweeping, committing and deleting at the same moment.

The processes of a test are started once (a `Crew`) and given one task per round; a barrier
lines them up so that the racing calls start together. Every clock is a fixed time handed to
each process, so what has expired, what is idle and what is fresh is decided by the test, not
by how fast the machine is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import queue
import random
import secrets
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hmacfs.core.refusals import Conflict
from hmacfs.storage.backend import CompareOnThread, StoredFile
from hmacfs.storage.local import _META_GRACE, META_XATTR, PARTIAL_MAX_IDLE, LocalStorage
from hmacfs.storage.usage import Counts
from tests.helpers.files import visible_files

_SPAWN = multiprocessing.get_context("spawn")
#: How long anything may wait for the others (a barrier, a round's results): far more than a
#: round takes, so that a hung process fails the test instead of hanging it.
_PATIENCE = 60.0
RESUMABLE_TTL = 600.0
UPLOADERS = ("romeo@montague.example", "juliet@capulet.example", None)


class FixedClock:
    """A clock that stands still (picklable, for the processes)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the processes ---------------------------------------------------------------------------

#: In a crew's process: the barrier of its crew, and a counter shared by the crew.
_barrier: Any = None
_counter: Any = None


def _serve(index: int, barrier: Any, counter: Any, tasks: Any, results: Any) -> None:
    """A crew member: run the tasks it is given (by name, from this module) until told to
    stop, answering each with its result or the traceback of what it raised."""
    global _barrier, _counter
    _barrier, _counter = barrier, counter
    while (task := tasks.get()) is not None:
        name, args = task
        try:
            results.put((index, True, globals()[name](index, *args)))
        except BaseException:
            results.put((index, False, traceback.format_exc()))
            # The others fail at the barrier, and stop waiting for us, instead of hanging.
            barrier.abort()
            with counter.get_lock():
                counter.value += 1000


class Crew:
    """`size` processes, each a node opening the storage directory for every task."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = _SPAWN.Barrier(size, timeout=_PATIENCE)
        self.counter = _SPAWN.Value("i", 0)
        self.results = _SPAWN.Queue()
        self.tasks = [_SPAWN.SimpleQueue() for _ in range(size)]
        self.processes = [
            _SPAWN.Process(
                target=_serve,
                args=(i, self.barrier, self.counter, self.tasks[i], self.results),
                daemon=True,
            )
            for i in range(size)
        ]
        for process in self.processes:
            process.start()

    def run(self, tasks: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Give each process its task (one each, in order); their results, in the same order.
        Fails the test with the tracebacks of the tasks that raised."""
        assert len(tasks) == self.size
        self.barrier.reset()
        with self.counter.get_lock():
            self.counter.value = 0
        for inbox, task in zip(self.tasks, tasks, strict=True):
            inbox.put(task)
        answers: dict[int, Any] = {}
        failures: list[str] = []
        deadline = time.monotonic() + _PATIENCE
        while len(answers) + len(failures) < self.size:
            try:
                index, ok, value = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("a process of the crew did not answer in time")
            if ok:
                answers[index] = value
            else:
                failures.append(f"process {index} ({tasks[index][0]}):\n{value}")
        if failures:
            pytest.fail("\n".join(failures))
        return [answers[i] for i in range(self.size)]

    def close(self) -> None:
        for inbox in self.tasks:
            inbox.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()


@pytest.fixture(scope="module")
def crew4() -> Iterator[Crew]:
    crew = Crew(4)
    yield crew
    crew.close()


@pytest.fixture(scope="module")
def crew6() -> Iterator[Crew]:
    crew = Crew(6)
    yield crew
    crew.close()


def _node(root: str, now: float, metadata: str, partials: str, **kw: Any) -> LocalStorage:
    """The storage directory as a node opens it."""
    return LocalStorage(
        Path(root),
        fsync=False,
        clock=FixedClock(now),
        metadata=metadata,
        partials=partials,
        resumable_ttl=RESUMABLE_TTL,
        **kw,
    )


def _upload(
    storage: LocalStorage,
    rel: str,
    body: bytes,
    content_type: str = "application/octet-stream",
    *,
    expires: float | None = None,
    uploader: str | None = None,
    reopenable: bool = False,
    before_commit: Callable[[], object] | None = None,
) -> StoredFile:
    """An upload as the server makes it: look the path up, refuse another size there, take
    the body, commit it (comparing with what is there, inline first where it may)."""
    existing = storage.existing(rel)
    if existing is not None and existing.size != len(body):
        raise Conflict("file already exists")
    partial = storage.begin(
        rel,
        len(body),
        content_type,
        expires=expires,
        uploader=uploader,
        reopenable=reopenable,
        existing=existing,
    )
    try:
        partial.write(body)
    except BaseException:
        partial.abort()
        raise
    if before_commit is not None:
        try:
            before_commit()
        except BaseException:
            partial.abort()
            raise
    compare = existing is not None
    if partial.can_commit_inline(compare):
        try:
            return partial.commit(compare, inline=True)
        except CompareOnThread:
            return partial.commit(True)
    return partial.commit(compare)


# -- the tasks (run in the crew's processes) --------------------------------------------------


def _task_sweep(
    index: int, root: str, now: float, metadata: str, partials: str, active: frozenset[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Sweep with the others at once, then (once every first sweep is over) again."""
    storage = _node(root, now, metadata, partials)
    _barrier.wait()
    first = storage.sweep(active)
    _barrier.wait()
    second = storage.sweep(active)
    return dataclasses.asdict(first), dataclasses.asdict(second)


def _task_race(
    index: int,
    root: str,
    now: float,
    metadata: str,
    partials: str,
    rel: str,
    body: bytes,
    content_type: str,
    late: bool,
    reopenable: bool,
) -> tuple[str, str | None]:
    """Commit `body` at `rel` with the others at once: having taken the whole body before the
    barrier, or (`late`) arriving at it and only then looking the path up."""
    storage = _node(root, now, metadata, partials)
    if late:
        _barrier.wait()
        before: Callable[[], object] | None = None
    else:
        before = _barrier.wait
    ids: list[str] = []
    original_begin = storage.begin

    def begin(*args: Any, **kw: Any) -> Any:
        partial = original_begin(*args, **kw)
        ids.append(partial.name)
        return partial

    storage.begin = begin  # type: ignore[method-assign]
    try:
        _upload(storage, rel, body, content_type, reopenable=reopenable, before_commit=before)
    except Conflict:
        if late or ids:
            return "conflict", ids[0] if ids else None
        raise  # (refused before the barrier: the others would wait for us in vain)
    return "stored", ids[0]


def _task_commit_many(
    index: int,
    root: str,
    now: float,
    metadata: str,
    partials: str,
    seed: int,
    operations: int,
    dirs: list[str],
    recycle: list[str],
) -> dict[str, bytes]:
    """Commit files while others sweep: new unexpired ones, expired ones (for the sweeps to
    remove, next to the others), and unexpired ones at the path of an expired file, retried
    until a sweep has removed that one. What was stored to stay: its path and body."""
    storage = _node(root, now, metadata, partials)
    rng = random.Random(seed)
    kept: dict[str, bytes] = {}
    expired = list(recycle)
    _barrier.wait()
    for n in range(operations):
        kind = rng.choices(("new", "expired", "recycle"), weights=(4, 3, 3))[0]
        body = rng.randbytes(rng.randrange(1, 3000))
        if kind == "recycle" and expired:
            rel = expired.pop(rng.randrange(len(expired)))
            deadline = time.monotonic() + _PATIENCE / 2
            while True:
                try:
                    _upload(storage, rel, body, reopenable=rng.random() < 0.2)
                    break
                except Conflict:  # the expired file is still there: a sweep removes it
                    assert time.monotonic() < deadline, f"{rel}: the expired file stays"
                    time.sleep(0.0005)
            kept[rel] = body
            continue
        rel = f"{rng.choice(dirs)}/{index}-{n}.bin"
        if kind == "expired":
            _upload(storage, rel, body, expires=now - 1)
            expired.append(rel)
        else:
            _upload(storage, rel, body, expires=rng.choice((None, now + 3600)),
                    reopenable=rng.random() < 0.2)
            kept[rel] = body
    with _counter.get_lock():
        _counter.value += 1
    return kept


def _task_sweep_until(
    index: int, root: str, now: float, metadata: str, partials: str, committers: int
) -> int:
    """Sweep again and again until the committers are done; how many sweeps were made."""
    storage = _node(root, now, metadata, partials)
    _barrier.wait()
    sweeps = 0
    while _counter.value < committers:
        storage.sweep()
        sweeps += 1
    storage.sweep()
    return sweeps + 1


def _task_churn(
    index: int, root: str, now: float, metadata: str, seed: int, operations: int,
    paths: list[str],
) -> None:
    """With the usage counted: commit (some already expired, for various uploaders), delete
    and sweep, over a few paths that the other processes use too."""
    storage = _node(root, now, metadata, "auto")
    storage.count_usage()
    rng = random.Random(seed)
    _barrier.wait()
    for _ in range(operations):
        rel = rng.choice(paths)
        action = rng.random()
        if action < 0.55:
            body = rng.randbytes(rng.randrange(1, 4000))
            with contextlib.suppress(Conflict):
                _upload(
                    storage,
                    rel,
                    body,
                    expires=now - 1 if rng.random() < 0.25 else None,
                    uploader=rng.choice(UPLOADERS),
                )
        elif action < 0.9:
            storage.delete(rel)
        else:
            storage.sweep()


# -- what a directory holds ------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under `root`: each directory, each link with its target, each file with its
    bytes and metadata attribute."""
    found: dict[str, tuple[Any, ...]] = {}
    for directory, subdirs, names in os.walk(root):
        for name in subdirs + names:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = ("dir",)
            else:
                try:
                    attribute: bytes | None = os.getxattr(path, META_XATTR)
                except OSError:
                    attribute = None
                found[rel] = ("file", Path(path).read_bytes(), attribute)
    return found


def _age(path: Path, seconds_before: float) -> None:
    os.utime(path, (seconds_before, seconds_before))


def _store(storage: LocalStorage, rel: str, body: bytes, **kw: Any) -> StoredFile:
    partial = storage.begin(rel, len(body), "text/plain", **kw)
    partial.write(body)
    return partial.commit()


# -- 1. sweeps at once -----------------------------------------------------------------------


@dataclasses.dataclass
class Filled:
    """A storage directory filled for a sweep: what it held, what the sweeps must remove."""

    before: dict[str, tuple[Any, ...]]
    gone: set[str]
    active: frozenset[str]
    counts: dict[str, int]
    kept_files: int
    kept_bytes: int
    #: Resumable uploads that a request of this process holds (until the sweeps are over).
    held: list[Any]


def _fill(storage: LocalStorage, rng: random.Random) -> Filled:
    now = storage.clock()
    root = storage.root
    gone: set[str] = set()
    active: set[str] = set()
    stored: list[tuple[str, int]] = []
    counts = dict.fromkeys(("expired", "partials", "orphans"), 0)
    resumable_gone: list[str] = []

    def rel_of(path: Path) -> str:
        return os.path.relpath(path, root)

    # Stored files: expired ones (with their metadata), among and beside unexpired ones.
    for i in range(80):
        body = rng.randbytes(rng.randrange(0, 5000))
        rel = rng.choice((f"d{i % 6}/x{i}.bin", f"only/{i % 5}/deep/x{i}.bin", f"x{i}.bin"))
        _store(storage, rel, body, expires=now - rng.choice((1, 3600, 10**6)))
        gone.add(rel)
        counts["expired"] += 1
        meta = storage.meta_dir / f"{os.stat(root / rel).st_ino % 256:02x}"
        gone.add(rel_of(meta / f"{os.stat(root / rel).st_ino}.json"))  # (if it is a file)
    for i in range(40):
        body = rng.randbytes(rng.randrange(0, 5000))
        rel = rng.choice((f"d{i % 6}/k{i}.bin", f"k{i}.bin", f"keep/{i % 3}/k{i}.bin"))
        _store(storage, rel, body, expires=rng.choice((None, now + 1, now + 10**6)))
        stored.append((rel, len(body)))
    foreign = root / "d0" / "foreign.jpg"  # another server's, without metadata
    foreign.write_bytes(b"jpeg")
    stored.append(("d0/foreign.jpg", 4))

    # Plain partials: abandoned (idle), fresh, and idle but live.
    for i in range(60):
        path = storage.partial_dir / secrets.token_hex(16)
        path.write_bytes(rng.randbytes(rng.randrange(0, 3000)))
        kind = ("abandoned", "fresh", "active")[i % 3] if i < 45 else "abandoned"
        if kind != "fresh":
            _age(path, now - PARTIAL_MAX_IDLE - rng.choice((1, 3600, 10**6)))
        if kind == "abandoned":
            gone.add(rel_of(path))
            counts["partials"] += 1
        elif kind == "active":
            active.add(path.name)

    # Resumable uploads: past the ttl (some claimed), fresh, past it but live, completed.
    held = []
    for i in range(36):
        kind = ("old", "fresh", "active", "old", "completed-old", "completed-fresh")[i % 6]
        rel = f"r/{i}.bin"
        body = rng.randbytes(rng.randrange(2, 4000))
        partial = storage.begin(rel, len(body), "text/plain", reopenable=True)
        if kind.startswith("completed"):
            partial.write(body)
            partial.commit()
            stored.append((rel, len(body)))
        else:
            partial.write(body[: len(body) // 2])
            if rng.random() < 0.5:
                storage.claim(partial.id)
            partial.close()
        names = [partial.name, f"{partial.name}.json"]
        if kind in {"fresh", "completed-fresh"}:
            continue
        for name in names:
            if (storage.partial_dir / name).exists():
                _age(storage.partial_dir / name, now - RESUMABLE_TTL - rng.choice((1, 10**5)))
        if kind == "active":
            active.add(partial.name)
            continue
        resumable_gone.append(partial.name)
        counts["partials"] += 1
        gone.update(rel_of(storage.partial_dir / name) for name in names)
        gone.add(rel_of(storage.claim_dir / partial.name))
    # One past the ttl that a request of this process (another node) holds: it stays.
    holder = storage.begin("r/held.bin", 10, "text/plain", reopenable=True)
    holder.write(b"01234")
    _age(storage.partial_dir / holder.name, now - RESUMABLE_TTL - 60)
    _age(storage.partial_dir / f"{holder.name}.json", now - RESUMABLE_TTL - 60)
    held.append(holder)

    # Orphaned metadata: of files gone (or of another inode at a path), old and young.
    for i in range(40):
        ino = 10**15 + i
        path = storage.meta_dir / f"{ino % 256:02x}" / f"{ino}.json"
        target = rng.choice((f"gone/{i}.bin", stored[i % len(stored)][0]))
        path.write_text(json.dumps({"v": 1, "path": target, "size": 3, "content_type": "x/y"}))
        if i % 4:
            _age(path, now - _META_GRACE - rng.choice((1, 10**5)))
            gone.add(rel_of(path))
            counts["orphans"] += 1

    before = _snapshot(root)
    # Their slot links and claims go with them.
    gone.update(rel for rel, what in before.items() if what[0] == "link" and what[1] in
                resumable_gone)
    gone &= before.keys()
    return Filled(
        before,
        gone,
        frozenset(active),
        counts,
        len(stored),
        sum(size for _, size in stored),
        held,
    )


def _expected_after(filled: Filled) -> dict[str, tuple[Any, ...]]:
    """What the directory holds once the sweeps are over: what was there but what goes, and
    the directories of stored files that still hold one (emptied ones are pruned)."""
    left = {rel: what for rel, what in filled.before.items() if rel not in filled.gone}
    needed = set()
    for rel, what in left.items():
        if what[0] != "dir":
            parent = os.path.dirname(rel)
            while parent:
                needed.add(parent)
                parent = os.path.dirname(parent)
    return {
        rel: what
        for rel, what in left.items()
        if what[0] != "dir" or rel in needed or rel.split("/")[0] == ".hmacfs"
    }


@pytest.mark.parametrize("metadata", ["xattr", "file"])
def test_nodes_sweeping_one_directory_at_once_remove_exactly_what_has_expired(
    crew4: Crew, tmp_path: Path, metadata: str
) -> None:
    for seed in range(3):
        rng = random.Random(f"{metadata}-{seed}")
        now = float(int(time.time()))
        root = tmp_path / f"round{seed}"
        storage = LocalStorage(root, fsync=False, clock=FixedClock(now), metadata=metadata,
                               resumable_ttl=RESUMABLE_TTL)
        filled = _fill(storage, rng)
        expected = _expected_after(filled)
        assert filled.gone and len(expected) > 300
        tasks = [
            (
                "_task_sweep",
                (str(root), now, rng.choice(("xattr", "file")), rng.choice(("tmpfile", "named")),
                 filled.active),
            )
            for _ in range(crew4.size)
        ]
        reports = crew4.run(tasks)

        after = _snapshot(root)
        assert sorted(set(filled.before) & set(after) - set(expected)) == []  # not removed
        assert sorted(set(expected) - set(after)) == []  # removed, and should not have been
        assert sorted(set(after) - set(filled.before)) == []  # new
        assert after == expected  # and what stays, byte for byte
        # Each removal is counted by the process that made it (some by more than one).
        for field, least in filled.counts.items():
            assert sum(first[field] for first, _ in reports) >= least, field
        for _, second in reports:  # nothing was left for a second sweep
            assert (second["expired"], second["partials"], second["orphans"]) == (0, 0, 0)
            assert (second["files"], second["bytes"]) == (filled.kept_files, filled.kept_bytes)
            assert second["kept"] == 6 + 6 + 1  # fresh, live and held resumable uploads
        # Once its request lets go, the held upload past its ttl goes too.
        for partial in filled.held:
            partial.close()
        assert storage.sweep(filled.active).partials == 1


# -- 2. commits of one path at once ------------------------------------------------------


@pytest.mark.parametrize("metadata", ["xattr", "file"])
def test_nodes_committing_one_path_at_once_store_one_body(
    crew6: Crew, tmp_path: Path, metadata: str
) -> None:
    root = tmp_path / "files"
    now = float(int(time.time()))
    storage = LocalStorage(root, fsync=False, clock=FixedClock(now), metadata=metadata)
    records: set[str] = set()  # (of every round so far)
    for seed in range(8):
        rng = random.Random(f"{metadata}-{seed}")
        rel = f"race/{seed}/the file.bin"
        size = rng.randrange(1, 300_000)
        same = rng.randbytes(size)
        bodies: list[tuple[bytes, str]] = []
        for i in range(crew6.size):
            if i < 3:
                bodies.append((same, "image/png"))
            else:  # different bodies, mostly of the same size (compared), one of another
                other = bytearray(same if i < 5 else rng.randbytes(size + 1))
                other[rng.randrange(len(other))] ^= 1 << (i - 3)
                bodies.append((bytes(other), f"text/x-{i}"))
        metas_before = {p.name for p in storage.meta_dir.glob("*/*.json")}
        order = rng.sample(range(crew6.size), crew6.size)
        tasks = [
            (
                "_task_race",
                (str(root), now, rng.choice(("xattr", "file")) if i % 2 else metadata,
                 rng.choice(("tmpfile", "named")), rel, *bodies[i], rng.random() < 0.3,
                 rng.random() < 0.2),
            )
            for i in order
        ]
        outcomes = dict(zip(order, crew6.run(tasks), strict=True))

        winners = {bodies[i][0] for i, (outcome, _) in outcomes.items() if outcome == "stored"}
        assert len(winners) == 1, outcomes
        (winner,) = winners
        for i, (outcome, _) in outcomes.items():
            assert outcome == ("stored" if bodies[i][0] == winner else "conflict"), (i, outcomes)
        found = storage.lookup(rel)
        assert Path(found.location).read_bytes() == winner
        assert found.content_type == next(ct for body, ct in bodies if body == winner)
        # The losers' metadata went with them: only the winner's inode may have a file.
        ino = os.stat(found.location).st_ino
        metas = {p.name for p in storage.meta_dir.glob("*/*.json")} - metas_before
        assert metas <= {f"{ino}.json"}
        # Nothing is left of the partials but records of completed resumable uploads (each
        # of which answers as complete; a later upload of the slot may have dropped one),
        # before a sweep and after it.
        records |= {
            f"{upload_id}.json"
            for i, (outcome, upload_id) in outcomes.items()
            if outcome == "stored" and tasks[order.index(i)][1][-1]
        }
        for _ in range(2):
            left = set(os.listdir(storage.partial_dir))
            assert left <= records
            storage.sweep()
        for record in left:
            assert storage.describe(record.removesuffix(".json")).complete
        assert {os.readlink(link) + ".json" for link in storage.slot_dir.iterdir()} <= left
        assert os.listdir(storage.claim_dir) == []
    assert visible_files(root) == sorted(f"race/{seed}/the file.bin" for seed in range(8))


# -- 3. sweeps racing with commits -------------------------------------------------------------


@pytest.mark.parametrize("metadata", ["xattr", "file"])
def test_a_sweep_never_removes_a_file_committed_meanwhile(
    crew4: Crew, tmp_path: Path, metadata: str
) -> None:
    root = tmp_path / "files"
    now = float(int(time.time()))
    storage = LocalStorage(root, fsync=False, clock=FixedClock(now), metadata=metadata)
    rng = random.Random(metadata)
    dirs = [f"s/d{k}" for k in range(4)] + [f"s/d{k}/n{k}" for k in range(3)] + ["top"]
    expired = []
    for i in range(120):
        rel = f"{rng.choice(dirs)}/old{i}.bin"
        _store(storage, rel, rng.randbytes(rng.randrange(1, 3000)), expires=now - 10)
        expired.append(rel)
    committers = 2
    tasks: list[tuple[str, tuple[Any, ...]]] = [
        (
            "_task_commit_many",
            (str(root), now, rng.choice(("xattr", "file")) if i else metadata,
             ("tmpfile", "named")[i], i, 300, dirs, expired[i::committers]),
        )
        for i in range(committers)
    ]
    tasks += [
        ("_task_sweep_until", (str(root), now, rng.choice(("xattr", "file")), "auto",
                               committers))
        for _ in range(crew4.size - committers)
    ]
    results = crew4.run(tasks)

    kept: dict[str, bytes] = {}
    for committed in results[:committers]:
        assert not kept.keys() & committed.keys()
        kept.update(committed)
    # Sweeps ran while the commits did: a commit at the path of an expired file waits until
    # a sweep has removed it. (Not each sweeper: one the scheduler keeps waiting until the
    # commits are done makes only its last sweep.)
    assert max(results[committers:]) >= 2
    missing = sorted(rel for rel, body in kept.items()
                     if not (root / rel).is_file() or (root / rel).read_bytes() != body)
    assert missing == []
    storage.sweep()  # every expired file is gone by now, and nothing else
    assert visible_files(root) == sorted(kept)
    for rel, body in kept.items():
        found = storage.lookup(rel)
        assert Path(found.location).read_bytes() == body


# -- 4. the usage counts -----------------------------------------------------------------


@pytest.mark.parametrize("metadata", ["xattr", "file"])
def test_usage_counted_by_nodes_at_once_equals_a_recount(
    crew4: Crew, tmp_path: Path, metadata: str
) -> None:
    root = tmp_path / "files"
    now = float(int(time.time()))
    storage = LocalStorage(root, fsync=False, clock=FixedClock(now), metadata=metadata)
    storage.rebuild_usage()  # (the first count of the directory)
    paths = [f"u/p{i}" for i in range(10)] + [f"u/q/{i}" for i in range(6)] + ["v"]
    tasks = [
        ("_task_churn", (str(root), now, rng_metadata, seed, 250, paths))
        for seed, rng_metadata in enumerate(("xattr", "file", metadata, metadata))
    ]
    crew4.run(tasks)

    usage = storage.count_usage()
    counted = (usage.total(), {who: usage.of(who) for who in UPLOADERS if who is not None})
    # What is there, counted by hand ...
    files = list(storage.files())
    by_hand = Counts(len(files), sum(f.size for f in files))
    assert by_hand.files > 0
    assert counted[0] == by_hand
    for who in UPLOADERS:
        if who is not None:
            mine = [f for f in files if f.uploader == who]
            assert counted[1][who] == Counts(len(mine), sum(f.size for f in mine)), who
    # ... and by a rebuild, which skips files changed since it began: let the filesystem's
    # clock pass the last change first.
    newest = max((os.stat(f.location).st_ctime for f in files), default=0.0)
    probe = root / ".hmacfs" / "probe"
    while True:
        probe.write_bytes(b"")
        if os.stat(probe).st_ctime > newest:
            break
    probe.unlink()
    fresh = LocalStorage(root, fsync=False, clock=FixedClock(now), metadata=metadata)
    assert fresh.rebuild_usage() == counted[0]
    assert {who: usage.of(who) for who in UPLOADERS if who is not None} == counted[1]
