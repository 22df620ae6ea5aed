"""The usage counts kept in the storage directory for the quotas."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from hmacfs.storage.usage import Counts, Usage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_changes_move_the_counts_and_the_log(tmp_path: Path) -> None:
    clock = Clock()
    usage = Usage(tmp_path / "usage", clock)
    assert usage.total() is None  # never counted
    usage.rebuild(list)
    usage.added("a/1", 100, "romeo@x")
    clock.now += 60
    usage.added("a/2", 50, "romeo@x")
    usage.added("b/1", 7, None)
    assert usage.total() == Counts(3, 157)
    assert usage.of("romeo@x") == Counts(2, 150)
    assert usage.of("nobody@x") == Counts()
    usage.removed("a/1", 100, "romeo@x")
    assert usage.of("romeo@x") == Counts(1, 50)
    assert [e.rel for e in usage.oldest("romeo@x")] == ["a/2"]
    # Deleted bytes still count for the day they were uploaded in.
    assert usage.uploaded_since("romeo@x", clock.now - 86400) == 150
    assert usage.uploaded_since("romeo@x", clock.now - 30) == 50
    # Another process sees the same counts (nothing is kept in memory).
    assert Usage(tmp_path / "usage", clock).of("romeo@x") == Counts(1, 50)


def test_an_uploader_name_is_never_a_path(tmp_path: Path) -> None:
    usage = Usage(tmp_path / "usage", Clock())
    usage.added("a/1", 1, "../../etc/passwd")
    usage.added("a/2", 2, "x/y\n\x00z")
    assert sorted(os.listdir(tmp_path)) == ["usage"]
    assert usage.of("../../etc/passwd") == Counts(1, 1)
    assert [e.rel for e in usage.oldest("x/y\n\x00z")] == ["a/2"]


def test_a_rebuild_counts_the_files_and_what_changed_during_its_walk(tmp_path: Path) -> None:
    usage = Usage(tmp_path / "usage", Clock())
    usage.added("stale/1", 999, "gone@x")  # counts from before, to be replaced
    old = time.time() - 3600

    def files() -> Iterator[tuple[str, int, str | None, float]]:
        yield "a/1", 10, "romeo@x", old
        # While the walk goes on: one upload stored (it is walked too, its ctime new), one
        # file deleted that the walk already counted.
        usage.added("a/new", 5, "romeo@x")
        yield "a/new", 5, "romeo@x", time.time() + 1
        usage.removed("a/1", 10, "romeo@x")
        yield "b/1", 20, None, old

    total = usage.rebuild(files)
    assert total == Counts(2, 25)  # b/1 and a/new; a/1 counted, then deleted
    assert usage.total() == Counts(2, 25)
    assert usage.of("romeo@x") == Counts(1, 5)
    assert usage.of("gone@x") == Counts()
    assert [e.rel for e in usage.oldest("romeo@x")] == ["a/new"]
    assert not (tmp_path / "usage" / "rebuilding").exists()


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    usage = Usage(tmp_path / "usage", Clock())
    usage.added("a/1", 10, "romeo@x")
    [log] = (tmp_path / "usage" / "u").glob("*.log")
    with log.open("a") as f:
        f.write('+ 1000000.000 12 "a/')
    assert [e.rel for e in usage.oldest("romeo@x")] == ["a/1"]


def test_a_file_found_gone_is_uncounted_once(tmp_path: Path) -> None:
    """Another node removed a file (and uncounted it): finding it gone uncounts nothing
    more; one nobody uncounted is uncounted once."""
    usage = Usage(tmp_path / "usage", Clock())
    usage.rebuild(list)
    usage.added("a/1", 100, "romeo@x")
    usage.added("a/2", 40, "romeo@x")
    usage.removed("a/1", 100, "romeo@x")  # (by the node that removed it)
    assert usage.forget("a/1", 100, "romeo@x") is False
    assert usage.of("romeo@x") == Counts(1, 40)
    assert usage.forget("a/2", 40, "romeo@x") is True
    assert usage.forget("a/2", 40, "romeo@x") is False
    assert usage.of("romeo@x") == Counts(0, 0) and usage.total() == Counts(0, 0)
    # Uploaded again later: counted again, and uncounted again once.
    usage.added("a/1", 100, "romeo@x")
    assert usage.forget("a/1", 100, "romeo@x") is True
    assert usage.of("romeo@x") == Counts(0, 0)
