"""What the admin commands say about the storage: which stored files a filter picks, sizes and
ages for people, JSON records for programs, tallies, the entries that are not regular files,
and the paths an admin names on the command line. Nothing here writes to the storage.
"""

from __future__ import annotations

import math
import mimetypes
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from hmacfs.core.paths import RESERVED_SEGMENT, decode_path, file_name
from hmacfs.core.printable import printable
from hmacfs.core.refusals import NotFound, Refusal
from hmacfs.core.units import parse_duration, parse_size
from hmacfs.storage.backend import StoredFile


class BadArgument(ValueError):
    """A command-line argument the command cannot act on; the message names the argument."""


# -- options --------------------------------------------------------------------------------


def duration_option(option: str, text: str | None) -> float | None:
    """Seconds of the duration `text` given to `option` (None when not given), in the syntax
    of the configuration file. Raises BadArgument."""
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise BadArgument(f"{option}: {e}") from None
    assert seconds is not None  # (only allow_never gives None)
    return seconds


def size_option(option: str, text: str | None) -> int | None:
    """Bytes of the size `text` given to `option` (None when not given), in the syntax of the
    configuration file. Raises BadArgument."""
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as e:
        raise BadArgument(f"{option}: {e}") from None


def text_option(option: str, text: str | None) -> str | None:
    """`text` as given to `option`; an empty one would match nothing. Raises BadArgument."""
    if text is not None and not text:
        raise BadArgument(f"{option}: must not be empty")
    return text


# -- what is known of a stored file ---------------------------------------------------------


def uploaded_at(stored: StoredFile) -> float:
    """When `stored` was uploaded: as its metadata says, else its modification time."""
    return stored.uploaded if stored.uploaded is not None else stored.mtime


def is_expired(stored: StoredFile, now: float) -> bool:
    return stored.expires is not None and stored.expires <= now


def guessed_type(rel: str) -> str:
    """The media type a download of `rel` without metadata is served with (its name's)."""
    return mimetypes.guess_type(file_name(rel), strict=False)[0] or "application/octet-stream"


@dataclass(frozen=True)
class Filters:
    """Which stored files a command acts on: those that match every filter given."""

    uploader: str | None = None
    older_than: float | None = None
    larger_than: int | None = None
    #: The start of the content type (case-insensitive): "image/", "video/mp4".
    type_prefix: str | None = None
    expired: bool = False

    def matches(self, stored: StoredFile, now: float) -> bool:
        if self.uploader is not None and stored.uploader != self.uploader:
            return False
        if self.older_than is not None and now - uploaded_at(stored) <= self.older_than:
            return False
        if self.larger_than is not None and stored.size <= self.larger_than:
            return False
        if self.type_prefix is not None:
            recorded = (stored.content_type or "").lower()
            if not recorded.startswith(self.type_prefix.lower()):
                return False
        return not self.expired or is_expired(stored, now)


def record(stored: StoredFile) -> dict[str, object]:
    """A stored file for programs (`--json`): times as whole unix seconds."""
    return {
        "path": stored.rel,
        "size": stored.size,
        "content_type": stored.content_type,
        "uploader": stored.uploader,
        "uploaded": math.floor(uploaded_at(stored)),
        "expires": None if stored.expires is None else math.floor(stored.expires),
    }


# -- for people -----------------------------------------------------------------------------

_SIZE_UNITS = ("K", "M", "G", "T", "P")
_DURATION_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def human_size(n: int) -> str:
    """`n` bytes in a binary unit, to two or three figures: "512B", "1.5K", "20M"."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in _SIZE_UNITS:
        value /= 1024
        if value < 1024 or unit == _SIZE_UNITS[-1]:
            break
    return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"


def human_duration(seconds: float) -> str:
    """`seconds` in its two largest adjacent units, rounded down, in the syntax of the
    configuration file: "3d4h", "5m12s", "2w", "0s"."""
    left = max(0, int(seconds))
    parts: list[str] = []
    for unit, length in _DURATION_UNITS:
        if left >= length or (unit == "s" and not parts):
            count, left = divmod(left, length)
            parts.append(f"{count}{unit}")
        elif parts:
            break  # (a gap: "1d" rather than "1d5s")
        if len(parts) == 2:
            break
    return "".join(parts)


def expiry_text(stored: StoredFile, now: float) -> str:
    if stored.expires is None:
        return "never"
    if stored.expires <= now:
        return "expired"
    return "in " + human_duration(stored.expires - now)


LIST_HEADER = f"{'SIZE':>6}  {'AGE':<6}  {'EXPIRES':<9}  {'TYPE':<24}  {'UPLOADER':<24}  PATH"


def list_line(stored: StoredFile, now: float) -> str:
    """One line of `list` (columns as in LIST_HEADER; what a client chose is escaped)."""
    kind = printable(stored.content_type) if stored.content_type else "-"
    uploader = printable(stored.uploader) if stored.uploader else "-"
    return (
        f"{human_size(stored.size):>6}  {human_duration(now - uploaded_at(stored)):<6}  "
        f"{expiry_text(stored, now):<9}  {kind:<24}  {uploader:<24}  {printable(stored.rel)}"
    )


# -- tallies (stats) ------------------------------------------------------------------------


@dataclass
class Count:
    files: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size

    def as_json(self) -> dict[str, int]:
        return {"files": self.files, "bytes": self.bytes}


@dataclass
class Tally:
    """What `stats` counts over the stored files."""

    total: Count = field(default_factory=Count)
    expired: Count = field(default_factory=Count)
    uploaders: dict[str | None, Count] = field(default_factory=dict)
    types: dict[str | None, Count] = field(default_factory=dict)
    oldest: StoredFile | None = None

    def add(self, stored: StoredFile, now: float) -> None:
        self.total.add(stored.size)
        if is_expired(stored, now):
            self.expired.add(stored.size)
        self.uploaders.setdefault(stored.uploader, Count()).add(stored.size)
        self.types.setdefault(stored.content_type, Count()).add(stored.size)
        if self.oldest is None or uploaded_at(stored) < uploaded_at(self.oldest):
            self.oldest = stored


def largest(counts: dict[str | None, Count], top: int) -> list[tuple[str | None, Count]]:
    """The entries holding the most bytes first (then the most files, then by name); the
    first `top` of them, or all for 0."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1].bytes, -item[1].files,
                                                      item[0] or ""))
    return ranked[:top] if top > 0 else ranked


# -- what is not a regular file -------------------------------------------------------------


@dataclass(frozen=True)
class Irregular:
    """An entry of the storage directory that no download can be served from."""

    rel: str
    #: What it is, for people: "a named pipe", "a symbolic link to ../x (out of the storage)".
    what: str


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def leaves_storage(root: Path, path: Path) -> bool:
    """Whether `path` (below `root`), once its symbolic links are followed, is outside `root`
    or inside its bookkeeping directory."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return not _inside(real, real_root) or _inside(real, os.path.join(real_root, RESERVED_SEGMENT))


def irregular_entries(root: Path) -> Iterator[Irregular]:
    """The entries below `root` (its bookkeeping directory left out) that are neither regular
    files nor directories: symbolic links, named pipes, sockets, devices. Not followed."""
    top = str(root)
    for directory, subdirs, names in os.walk(top):
        if directory == top and RESERVED_SEGMENT in subdirs:
            subdirs.remove(RESERVED_SEGMENT)
        rel_dir = os.path.relpath(directory, top)
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in sorted([*subdirs, *names]):
            path = os.path.join(directory, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                continue
            yield Irregular(prefix + name, _what(root, Path(path), mode))


def _what(root: Path, path: Path, mode: int) -> str:
    if stat.S_ISLNK(mode):
        try:
            target = printable(os.readlink(path))
        except OSError:
            target = "?"
        out = " (out of the storage directory)" if leaves_storage(root, path) else ""
        return f"a symbolic link to {target}{out}"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


# -- paths named on the command line --------------------------------------------------------

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def signed_path(argument: str, prefix: str) -> str:
    """The signed path that `argument` names: the path below the upload prefix as it is
    signed (percent-decoded: "3f2a/ça va.txt"), or a whole URL whose path is under `prefix`
    ("https://upload.example.org/upload/3f2a/%C3%A7a%20va.txt"). Judged by the rules of
    `hmacfs.core.paths.decode_path`, the server's own. Raises BadArgument."""
    shown = printable(argument)
    if _URL.match(argument):
        raw = urlsplit(argument).path
        decoded = unquote(raw)
        if not (decoded.startswith(prefix) or decoded + "/" == prefix):
            raise BadArgument(f"{shown}: not under the upload prefix {prefix}")
        encoded = raw.encode("utf-8", "surrogateescape")
        within = prefix
    elif argument.startswith("/"):
        raise BadArgument(
            f"{shown}: an absolute path; give the path below the upload prefix, or the URL"
        )
    else:
        encoded = (
            "/" + "/".join(quote(s, safe="", errors="surrogateescape") for s in argument.split("/"))
        ).encode("ascii")
        within = "/"
    try:
        rel = decode_path(encoded, within)
    except NotFound:
        where = f"inside the server's own {RESERVED_SEGMENT} directory"
        raise BadArgument(f"{shown}: {where}") from None
    except Refusal as e:
        raise BadArgument(f"{shown}: {e.text}") from None
    if not rel:
        raise BadArgument(f"{shown}: names no file")
    return rel
