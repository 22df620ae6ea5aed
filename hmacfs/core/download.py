"""The download plan: what a GET or HEAD of a stored file answers, worked out from the
request's headers and the file's facts alone (no I/O, no Twisted).

Every way of answering (the quick answer from the request head, the full request path, with
or without sendfile) writes what `plan` returns: the status, the headers that depend on the
file, and the body as a list of pieces, each a literal (multipart framing) or a range of the
file. Ranges are parsed here and nowhere else.
"""

from __future__ import annotations

import functools
import itertools
import mimetypes
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from hmacfs.core.headers import (
    content_disposition,
    http_date_of,
    is_inline,
    parse_http_date,
    safe_media_type,
)
from hmacfs.core.paths import file_name

#: The request headers a plan reads (a request without any of them is planned as a plain GET).
PLAN_HEADERS = (
    b"range",
    b"if-range",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
)
#: How long a browser may keep a file that does not expire sooner.
MAX_AGE = 7 * 86400
#: One entity tag of an If-Match / If-None-Match list (the separators before it are skipped
#: first); matched at a given position only, so that a list is read in one pass whatever it
#: holds.
_ETAG_ITEM = re.compile(r'(W/)?("[^"]*")[ \t]*')
#: More ranges than this (after merging those that overlap or touch) and the Range header is
#: ignored: the whole file is sent once, never a response many times its size.
MAX_RANGES = 100
#: Digits of a byte position that can mean anything to a file (int() of much longer text is
#: slow, and refused past 4300 digits).
_MAX_DIGITS = 18


class FileFacts(Protocol):
    """What the plan needs to know about a stored file."""

    @property
    def rel(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime(self) -> float: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def expires(self) -> float | None: ...


@dataclass(frozen=True)
class Described:
    """What every answer about one file says: its media type, ETag and fixed headers."""

    media_type: str
    etag: str
    #: Content-Disposition and ETag.
    headers: tuple[tuple[bytes, bytes], ...]


@functools.lru_cache(maxsize=1024)
def describe(rel: str, content_type: str | None, size: int, mtime: float) -> Described:
    """Media type, ETag, Content-Disposition of a stored file (worked out once for the files
    asked for most)."""
    name = file_name(rel)
    media_type = (
        safe_media_type(content_type)
        or mimetypes.guess_type(name, strict=False)[0]
        or "application/octet-stream"
    )
    kind = "inline" if is_inline(media_type) else "attachment"
    etag = f'"{size:x}-{int(mtime * 1_000_000):x}"'
    headers = (
        (b"Content-Disposition", content_disposition(kind, name).encode()),
        (b"ETag", etag.encode()),
    )
    return Described(media_type, etag, headers)


#: A piece of a body: literal bytes, or (offset, count) of the file.
Piece = bytes | tuple[int, int]


@dataclass(frozen=True)
class Plan:
    """The answer to a GET or HEAD of a stored file."""

    status: int
    #: Every header that depends on the file and the request (not Date, Server, CORS).
    headers: tuple[tuple[bytes, bytes], ...]
    #: The body to send (empty for HEAD and for answers without a body).
    body: tuple[Piece, ...]
    #: The body's length (Content-Length; for HEAD, what a GET would send).
    length: int

    def file_bytes(self) -> int:
        """How many bytes of the file the body holds."""
        return sum(piece[1] for piece in self.body if isinstance(piece, tuple))


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges a Range header asks for, as (first, last) pairs clipped to `size`.

    None when the header is to be ignored (another unit, or malformed: the whole file is
    sent); an empty list when it is well-formed but no range can be satisfied (416).
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges = _ranges_in(spec, size)
    if ranges is not None and len(ranges) > 1:
        ranges = _coalesced(ranges)
        if len(ranges) > MAX_RANGES:
            return None
    return ranges


def _ranges_in(spec: str, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges of a byte-ranges-specifier, in the order asked; None if it is
    malformed."""
    ranges: list[tuple[int, int]] = []
    for item in spec.split(","):
        first_text, dash, last_text = item.strip().partition("-")
        if not dash:
            return None
        first_text, last_text = first_text.strip(), last_text.strip()
        for text in (first_text, last_text):
            if text and not (text.isascii() and text.isdigit()):
                return None
        if first_text == "":
            if last_text == "":
                return None
            suffix = _position(last_text)
            if suffix > 0 and size > 0:
                ranges.append((max(0, size - suffix), size - 1))
            continue
        first = _position(first_text)
        if last_text != "" and _position(last_text) < first:
            return None
        last = size - 1 if last_text == "" else min(_position(last_text), size - 1)
        if first < size:
            ranges.append((first, last))
    return ranges


def _position(digits: str) -> int:
    """A byte position's digits as a number; one past any file's size if they are too many."""
    stripped = digits.lstrip("0") or "0"
    return int(stripped) if len(stripped) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _coalesced(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`ranges` as asked when none overlap or touch another; else in order, merged, so that
    no byte is sent twice (RFC 9110 lets a server coalesce)."""
    ordered = sorted(ranges)
    if all(later[0] > earlier[1] + 1 for earlier, later in itertools.pairwise(ordered)):
        return ranges
    merged = [ordered[0]]
    for first, last in ordered[1:]:
        if first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an If-Match (`weak` False) or If-None-Match (`weak` True) list names `etag`."""
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    position, end = 0, len(header)
    while position < end:
        # Separators are skipped on their own: in the item's pattern, a failed match was tried
        # again from each comma of a long run of them (16 KB of commas took 5 s).
        while position < end and header[position] in " \t,":
            position += 1
        match = _ETAG_ITEM.match(header, position)
        if match is not None:
            position = match.end()
            if position == end or header[position] == ",":
                is_weak, tag = match.group(1), match.group(2)
                if tag == wanted and (weak or not is_weak):
                    return True
                continue
        # Not an entity tag (or one followed by something else): skip to the next comma.
        comma = header.find(",", position)
        if comma < 0:
            return False
        position = comma + 1
    return False


def cache_control(stored: FileFacts, now: float) -> tuple[bytes, bytes]:
    """Cache-Control for a file: a week, or until it expires if that is sooner."""
    max_age = MAX_AGE
    if stored.expires is not None:
        max_age = max(0, min(max_age, int(stored.expires - now)))
    # Stored files never change (no upload replaces one): caches need not revalidate.
    return (b"Cache-Control", b"public, max-age=%d, immutable" % max_age)


def plan(  # noqa: PLR0911 (one return per kind of answer)
    method: bytes,
    headers: Mapping[bytes, str],
    stored: FileFacts,
    now: float,
    boundary: str | None = None,
) -> Plan:
    """The answer to `method` (GET or HEAD) for `stored`, given the request's `headers`
    (lower-case names, first values). `boundary` is for multipart answers (random if None)."""
    described = describe(stored.rel, stored.content_type, stored.size, stored.mtime)
    fixed = (*described.headers, cache_control(stored, now))
    # The mtime's second, rounded down: rounded up, Last-Modified came after the Date beside
    # it, a date in the future (RFC 9110 8.8.2.1). If-Range and If-Modified-Since quote back
    # exactly this second.
    modified = int(stored.mtime)
    last_modified = (b"Last-Modified", http_date_of(modified))
    if_match = headers.get(b"if-match")
    if if_match is not None:
        if not etag_matches(if_match, described.etag, weak=False):
            return Plan(412, (*fixed, (b"Content-Length", b"0")), (), 0)
    elif (unmodified := headers.get(b"if-unmodified-since")) is not None:
        # RFC 9110 13.2.2: evaluated only without If-Match; a date that does not parse is
        # ignored.
        when = parse_http_date(unmodified.split(";", 1)[0])
        if when is not None and modified > when:
            return Plan(412, (*fixed, (b"Content-Length", b"0")), (), 0)
    if_none_match = headers.get(b"if-none-match")
    if if_none_match is not None:
        # RFC 9110: If-None-Match wins over If-Modified-Since.
        if etag_matches(if_none_match, described.etag, weak=True):
            return Plan(304, (*fixed, last_modified, (b"Content-Length", b"0")), (), 0)
    else:
        since = headers.get(b"if-modified-since")
        when = parse_http_date(since.split(";", 1)[0]) if since is not None else None
        if when is not None and when >= modified:
            return Plan(304, (*fixed, last_modified, (b"Content-Length", b"0")), (), 0)
    size = stored.size
    media_type = described.media_type.encode("ascii")
    common = (*fixed, (b"Accept-Ranges", b"bytes"))
    range_header = headers.get(b"range") if method == b"GET" else None
    if range_header is not None and not _if_range_holds(headers, described.etag, modified):
        range_header = None
    ranges = parse_ranges(range_header, size) if range_header is not None else None
    if ranges is None:
        body: tuple[Piece, ...] = ((0, size),) if method == b"GET" and size else ()
        return Plan(200, _with_type(common, media_type, size, last_modified), body, size)
    if not ranges:
        unsatisfiable = (*common, (b"Content-Range", b"bytes */%d" % size))
        return Plan(416, _with_type(unsatisfiable, media_type, 0, last_modified), (), 0)
    if len(ranges) == 1:
        first, last = ranges[0]
        partial = (*common, (b"Content-Range", b"bytes %d-%d/%d" % (first, last, size)))
        count = last - first + 1
        return Plan(206, _with_type(partial, media_type, count, last_modified),
                    ((first, count),), count)
    return _multipart(
        common,
        media_type=media_type,
        ranges=ranges,
        size=size,
        last_modified=last_modified,
        boundary=boundary,
    )


def _with_type(
    headers: tuple[tuple[bytes, bytes], ...],
    media_type: bytes,
    length: int,
    last_modified: tuple[bytes, bytes],
) -> tuple[tuple[bytes, bytes], ...]:
    return (
        *headers,
        (b"Content-Length", b"%d" % length),
        (b"Content-Type", media_type),
        last_modified,
    )


def _if_range_holds(headers: Mapping[bytes, str], etag: str, modified: int) -> bool:
    """Whether a Range still applies under the request's If-Range (true without one): the
    entity tag, or the Last-Modified date (`modified`) as it was sent."""
    if_range = headers.get(b"if-range")
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag
    return parse_http_date(value) == modified


def _multipart(
    common: tuple[tuple[bytes, bytes], ...],
    *,
    media_type: bytes,
    ranges: list[tuple[int, int]],
    size: int,
    last_modified: tuple[bytes, bytes],
    boundary: str | None,
) -> Plan:
    mark = (boundary or secrets.token_hex(16)).encode("ascii")
    body: list[Piece] = []
    length = 0
    for first, last in ranges:
        framing = b"\r\n--%s\r\nContent-type: %s\r\nContent-range: bytes %d-%d/%d\r\n\r\n" % (
            mark, media_type, first, last, size,
        )
        body += [framing, (first, last - first + 1)]
        length += len(framing) + last - first + 1
    closing = b"\r\n--%s--\r\n" % mark
    body.append(closing)
    length += len(closing)
    headers = (
        *common,
        (b"Content-Type", b'multipart/byteranges; boundary="%s"' % mark),
        (b"Content-Length", b"%d" % length),
        last_modified,
    )
    return Plan(206, headers, tuple(body), length)
