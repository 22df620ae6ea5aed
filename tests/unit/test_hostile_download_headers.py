"""Download headers made to hurt: entity-tag lists that made the parser quadratic, range
lists that asked for the file thousands of times, and numbers too long for int()."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmacfs.core import download
from hmacfs.core.download import MAX_RANGES, etag_matches, parse_ranges


@dataclass(frozen=True)
class Stored:
    rel: str = "a/f.bin"
    size: int = 1000
    mtime: float = 1_700_000_000.0
    content_type: str | None = "application/octet-stream"
    expires: float | None = None


class Counting:
    """Stands in for the entity-tag pattern and counts the matches tried."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.calls = 0

    def match(self, text: str, position: int = 0) -> Any:
        self.calls += 1
        return self.pattern.match(text, position)


@pytest.mark.parametrize(
    "header",
    [
        "x" + " " * 16_000 + "x",  # took seconds: every position rescanned the spaces
        "x" + "\t" * 16_000 + '"',
        '"a"' + " " * 16_000 + "x",
    ],
)
def test_an_entity_tag_list_is_read_in_one_pass(
    header: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting(download._ETAG_ITEM)
    monkeypatch.setattr(download, "_ETAG_ITEM", counting)
    assert not etag_matches(header, '"10-5f3a"', weak=True)
    assert counting.calls <= header.count(",") + 2


@pytest.mark.parametrize(
    ("header", "weak", "expected"),
    [
        ('"a", "b"', False, True),
        ('  "x",,, "b" ', False, True),
        ('W/"b"', True, True),
        ('W/"b"', False, False),  # If-Match compares strongly
        ('"x,b", "y"', False, False),  # a comma inside a tag is part of it
        ('"x,b"', False, False),
        ('"b" trailing, "c"', False, False),  # not a tag, then another
        ('garbage, "b"', False, True),
        ("*", False, True),
        ("", True, False),
    ],
)
def test_entity_tag_lists(header: str, weak: bool, expected: bool) -> None:
    assert etag_matches(header, '"b"', weak=weak) is expected


@given(st.text(alphabet=' \t,"W/ab', max_size=60))
def test_any_list_is_answered(header: str) -> None:
    result = etag_matches(header, '"a"', weak=True)
    if result:
        assert '"a"' in header or header.strip() == "*"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=" + "1" * 5000 + "-", []),  # past the end: 416, not a 500
        ("bytes=0-" + "9" * 5000, [(0, 999)]),
        ("bytes=-" + "9" * 5000, [(0, 999)]),
        ("bytes=" + "0" * 5000 + "5-9", [(5, 9)]),  # leading zeros are only zeros
    ],
)
def test_numbers_too_long_for_int_are_positions_past_any_file(
    header: str, expected: list[tuple[int, int]]
) -> None:
    assert parse_ranges(header, 1000) == expected


def test_repeated_and_overlapping_ranges_are_merged() -> None:
    assert parse_ranges("bytes=" + ",".join(["0-"] * 5000), 1000) == [(0, 999)]
    assert parse_ranges("bytes=" + ",".join(["-1000"] * 1000), 1000) == [(0, 999)]
    assert parse_ranges("bytes=0-10,5-20,21-30,500-600", 1000) == [(0, 30), (500, 600)]


def test_ranges_that_neither_overlap_nor_touch_keep_their_order() -> None:
    assert parse_ranges("bytes=500-600,0-10", 1000) == [(500, 600), (0, 10)]


def test_too_many_ranges_are_ignored_for_the_whole_file() -> None:
    many = ",".join(f"{n * 3}-{n * 3}" for n in range(MAX_RANGES + 1))
    assert parse_ranges("bytes=" + many, 1000) is None
    few = ",".join(f"{n * 3}-{n * 3}" for n in range(MAX_RANGES))
    assert parse_ranges("bytes=" + few, 1000) is not None


@given(st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 1200)), min_size=1, max_size=300))
def test_no_answer_carries_more_than_the_file_once(pairs: list[tuple[int, int]]) -> None:
    spec = ",".join(f"{min(a, b)}-{max(a, b)}" for a, b in pairs)
    plan = download.plan(b"GET", {b"range": "bytes=" + spec}, Stored(), 0.0, boundary="b")
    assert plan.file_bytes() <= Stored.size
