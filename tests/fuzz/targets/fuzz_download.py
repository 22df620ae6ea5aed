"""Fuzz target: Range and conditional headers of downloads (`hmacfs.core.download`,
`hmacfs.core.headers.parse_http_date`).

Contract: `parse_ranges` returns None or ranges within 0..size-1 (first <= last), at most
MAX_RANGES of them, none overlapping or touching another; `etag_matches` returns a bool
(and finds the tag itself); `parse_http_date` returns None or an int, and reads back the
dates the server writes; `plan` answers 200, 206, 304, 412 or 416 with a Content-Length equal
to the body's length, a body within the file that never holds a byte twice, and header values
without CR or LF. None of them raises. A single input taking more than -timeout seconds (a
regex gone quadratic) fails the run too.

The input is one request's header block ("Name: value" lines, as in the seed corpus); the
file's size and modification time (in milliseconds) come from the first line when it is
"size mtime". A NUL byte is a repeat mark: "c\\x00n" stands for the byte c repeated 64 * n
times (no header holds a NUL), so that the fuzzer reaches the long runs that slow a parser
down (8 KB of spaces in an If-Match once took 2 s) without writing them out; a value is cut
at 16 KB, the longest request head the server reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import sys

import atheris

# Coverage guidance needs the code under test instrumented as it is imported; the corpus
# replay in pytest imports this module without that.
with atheris.instrument_imports(include=["hmacfs"]) if __name__ == "__main__" else (
    contextlib.nullcontext()
):
    from hmacfs.core.download import MAX_RANGES, etag_matches, parse_ranges, plan
    from hmacfs.core.headers import http_date_of, parse_http_date

NOW = 1_700_000_000.0
#: The request headers the web layer hands the plan.
HEADERS = (
    b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since",
    b"if-unmodified-since",
)
STATUSES = frozenset({200, 206, 304, 412, 416})
_REPEAT = re.compile(rb"(.)\x00(.)", re.DOTALL)
MAX_VALUE = 16 * 1024


@dataclasses.dataclass(frozen=True)
class Stored:
    rel: str
    size: int
    mtime: float
    content_type: str | None
    expires: float | None


def check_ranges(header: str, size: int) -> None:
    ranges = parse_ranges(header, size)
    if ranges is None:
        return
    assert len(ranges) <= MAX_RANGES, (header, size, len(ranges))
    assert all(0 <= first <= last < size for first, last in ranges), (header, size, ranges)
    ordered = sorted(ranges)
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(ordered)), (header, ranges)


def check_etags(header: str, etag: str) -> None:
    for weak in (False, True):
        assert isinstance(etag_matches(header, etag, weak=weak), bool), header
    assert etag_matches(etag, etag, weak=False) and etag_matches(f"W/{etag}", etag, weak=True)
    assert not etag_matches(f"W/{etag}", etag, weak=False)


def check_date(value: str) -> None:
    when = parse_http_date(value)
    assert when is None or type(when) is int, (value, when)


def check_plan(method: bytes, headers: dict[bytes, str], stored: Stored) -> None:
    answer = plan(method, headers, stored, NOW, boundary="3d6b6a416f9b5")
    assert answer.status in STATUSES, (headers, answer)
    fields = dict(answer.headers)
    assert all(b"\r" not in v and b"\n" not in v for v in fields.values()), answer.headers
    assert fields[b"Content-Length"] == b"%d" % answer.length, answer
    literal = sum(len(p) for p in answer.body if isinstance(p, bytes))
    pieces = sorted(p for p in answer.body if isinstance(p, tuple))
    assert all(off >= 0 and count > 0 and off + count <= stored.size for off, count in pieces)
    assert all(b[0] >= a[0] + a[1] for a, b in itertools.pairwise(pieces)), pieces
    if method == b"HEAD":
        assert answer.body == (), answer
    else:
        assert answer.length == literal + answer.file_bytes(), answer
    if answer.status == 206 and len(pieces) == 1:
        (off, count), = pieces
        wanted = b"bytes %d-%d/%d" % (off, off + count - 1, stored.size)
        assert fields[b"Content-Range"] == wanted, answer


#: The last millisecond an HTTP date can name (year 9999); the storage sets a file's mtime
#: when it is uploaded, so no later one is a file's.
LAST_MTIME_MS = 253_402_300_799_000


def _facts(line: bytes) -> Stored | None:
    words = line.split()
    if len(words) != 2 or not all(w.isdigit() and len(w) < 16 for w in words):
        return None
    size, mtime_ms = int(words[0]), min(int(words[1]), LAST_MTIME_MS)
    return Stored("ab12/photo.jpg", size, mtime_ms / 1000, "image/jpeg", None)


def _expanded(value: bytes) -> bytes:
    return _REPEAT.sub(lambda m: m[1] * (64 * m[2][0]), value)[:MAX_VALUE]


def TestOneInput(data: bytes) -> None:
    first, _, rest = data.partition(b"\n")
    stored = _facts(first)
    if stored is None:
        stored, rest = Stored("ab12/photo.jpg", 10_000, 1_699_990_000.5, None, NOW + 60), data
    headers: dict[bytes, str] = {}
    for line in rest.split(b"\n"):
        name, _, value = line.removesuffix(b"\r").partition(b":")
        # The web layer hands the plan latin-1 text, the first value of each header.
        text = _expanded(value).strip().decode("latin-1")
        headers.setdefault(name.strip().lower(), text)
    for value in headers.values():
        check_ranges(value, stored.size)
        check_ranges(value, 0)
        check_etags(value, '"2710-60a3c5d3b1f20"')
        check_date(value)
    wanted = {name: value for name, value in headers.items() if name in HEADERS}
    check_plan(b"GET", wanted, stored)
    check_plan(b"HEAD", wanted, stored)
    # The dates the server writes read back as themselves.
    second = int(stored.mtime)
    assert parse_http_date(http_date_of(second).decode()) == second, second


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
