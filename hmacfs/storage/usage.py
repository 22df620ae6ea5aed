"""The bytes stored, in all and per uploader, kept in the storage directory for the quotas.

Every process (each worker, each node on a shared directory) reads and updates the same
small files under one lock, so a limit holds across all of them and across restarts:

- ``total``: the files and bytes stored in all;
- ``u/<key>``: one uploader's files and bytes, then its name (the key is a hash of the
  uploader, so any name is safe as a file name); the counts are a fixed-width first line,
  rewritten in place;
- ``u/<key>.log``: one line per file the uploader stored or lost (``+`` or ``-``, the time,
  the size, the path), for the bytes of the last 24 hours and for the oldest files to delete
  under a soft limit.

The counts are made again from the files at each start (`rebuild`), so files stored, copied
or deleted by other means are caught up with. Uploads and deletions while a rebuild walks the
files are noted in ``since.log`` and applied to its result: a file linked before the walk
began is counted by the walk, one linked after by its note (its link changed its ctime).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: The window of a daily limit.
DAY = 86400.0


@dataclass(frozen=True)
class Counts:
    files: int = 0
    bytes: int = 0

    def plus(self, size: int, sign: int) -> Counts:
        return Counts(max(0, self.files + sign), max(0, self.bytes + sign * size))


@dataclass(frozen=True)
class Entry:
    """A line of an uploader's log."""

    sign: int
    when: float
    size: int
    rel: str


def uploader_key(uploader: str) -> str:
    import hashlib  # (when an uploader is first counted: a sweep alone does not load it)

    return hashlib.sha256(uploader.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Usage:
    """The counts of one storage directory (`directory` is its ``.hmacfs/usage``)."""

    def __init__(self, directory: Path, clock: Callable[[], float]) -> None:
        self.directory = directory
        self.clock = clock
        (directory / "u").mkdir(parents=True, exist_ok=True)
        self._lock_path = directory / "lock"
        self._rebuilding = str(directory / "rebuilding")
        #: Per uploader log read so far: its inode, how far, and the uploads of the last days.
        self._uploads: dict[str, tuple[int, int, list[tuple[float, int]]]] = {}

    # -- reading (any thread; a few small files) ------------------------------------------

    def total(self) -> Counts | None:
        """Everything stored, or None before the first count of this directory."""
        return _read_counts(self.directory / "total")

    def of(self, uploader: str) -> Counts:
        return _read_counts(self._uploader_path(uploader, "")) or Counts()

    def uploaded_since(self, uploader: str, since: float) -> int:
        """Bytes the uploader stored since `since` (deleted ones included: a daily limit
        counts what was uploaded). The log is read on from where this process left off."""
        path = self._uploader_path(uploader, ".log")
        try:
            st = os.stat(path)
        except OSError:
            return 0
        seen = self._uploads.get(path.name)
        if seen is None or seen[0] != st.st_ino or seen[1] > st.st_size:
            seen = (st.st_ino, 0, [])  # new, or written anew by a rebuild
        ino, offset, uploads = seen
        if st.st_size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                tail = f.read(st.st_size - offset)
            complete = tail.rfind(b"\n") + 1  # (a line being appended is read next time)
            offset += complete
            text = tail[:complete].decode("utf-8", "replace")
            uploads += [(e.when, e.size) for e in _parse_log(text) if e.sign > 0]
        recent = [(when, size) for when, size in uploads if when >= since - DAY]
        self._uploads[path.name] = (ino, offset, recent)
        return sum(size for when, size in recent if when >= since)

    def entries(self, uploader: str) -> list[Entry]:
        try:
            text = self._uploader_path(uploader, ".log").read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return []
        return list(_parse_log(text))

    def oldest(self, uploader: str) -> list[Entry]:
        """The uploader's files still counted, oldest first."""
        current: dict[str, Entry] = {}
        for entry in self.entries(uploader):
            if entry.sign > 0:
                current[entry.rel] = entry
            else:
                current.pop(entry.rel, None)
        return sorted(current.values(), key=lambda e: e.when)

    # -- changes (blocking: threads) --------------------------------------------------------

    def added(self, rel: str, size: int, uploader: str | None) -> None:
        self._change(rel, size, uploader, +1)

    def removed(self, rel: str, size: int, uploader: str | None) -> None:
        self._change(rel, size, uploader, -1)

    def forget(self, rel: str, size: int, uploader: str) -> bool:
        """Uncount `rel`, found gone, unless it is uncounted already (whoever removed it,
        another node perhaps, uncounts it too); whether it was still counted."""
        with self._locked():
            counted = False
            for entry in self.entries(uploader):
                if entry.rel == rel:
                    counted = entry.sign > 0
            if counted:
                self._apply(rel, size, uploader, -1)
            return counted

    def _change(self, rel: str, size: int, uploader: str | None, sign: int) -> None:
        with self._locked():
            self._apply(rel, size, uploader, sign)

    def _apply(self, rel: str, size: int, uploader: str | None, sign: int) -> None:
        """Count a change (holding the lock)."""
        now = self.clock()
        line = _log_line(sign, now, size, rel, uploader)
        _bump(self.directory / "total", size, sign, create=False)
        if uploader is not None:
            _bump(self._uploader_path(uploader, ""), size, sign, name=uploader)
            _append(self._uploader_path(uploader, ".log"), _log_line(sign, now, size, rel))
        if os.path.exists(self._rebuilding):
            _append(self.directory / "since.log", line)

    def rebuild(self, files: Callable[[], Iterable[tuple[str, int, str | None, float]]]) -> Counts:
        """Count again from `files()` (path, size, uploader, ctime of each stored file), and
        replace every count and log with the result. Blocking, and as long as a walk of the
        storage directory: run it on a thread. Returns the total."""
        marker = self.directory / "rebuilding"
        with self._locked():
            (self.directory / "since.log").unlink(missing_ok=True)
            marker.write_text("counting\n")
            # The filesystem's own clock, which stamped the files' ctimes (a file server's,
            # on a shared directory), not this machine's.
            started = marker.stat().st_ctime
        total = Counts()
        per: dict[str, list[Entry]] = {}
        for rel, size, uploader, ctime in files():
            if ctime >= started:
                continue  # linked during the walk: its note in since.log counts it
            total = total.plus(size, +1)
            if uploader is not None:
                per.setdefault(uploader, []).append(Entry(+1, ctime, size, rel))
        with self._locked():
            for line in _lines(self.directory / "since.log"):
                try:
                    sign, when, size, rel, uploader = _parse_since(line)
                except ValueError:
                    continue  # a line cut short by a crash
                total = total.plus(size, sign)
                if uploader is not None:
                    per.setdefault(uploader, []).append(Entry(sign, when, size, rel))
            kept = set()
            for uploader, entries in per.items():
                counts = Counts()
                for entry in entries:
                    counts = counts.plus(entry.size, entry.sign)
                _write_counts(self._uploader_path(uploader, ""), counts, name=uploader)
                _replace(
                    self._uploader_path(uploader, ".log"),
                    "".join(_log_line(e.sign, e.when, e.size, e.rel) for e in entries),
                )
                kept.add(uploader_key(uploader))
            for stale in (self.directory / "u").iterdir():
                if stale.name.split(".", 1)[0] not in kept:
                    stale.unlink(missing_ok=True)
            _write_counts(self.directory / "total", total)
            marker.unlink(missing_ok=True)
            (self.directory / "since.log").unlink(missing_ok=True)
        return total

    def _uploader_path(self, uploader: str, suffix: str) -> Path:
        return self.directory / "u" / f"{uploader_key(uploader)}{suffix}"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


#: The counts' line: files and bytes, each in 20 digits (what int64 holds), always as long.
_COUNTS_LENGTH = 42


def _counts_line(counts: Counts) -> bytes:
    return b"%020d %020d\n" % (counts.files, counts.bytes)


def _parse_counts(raw: bytes) -> Counts | None:
    try:
        files, size = raw[: _COUNTS_LENGTH - 1].split(b" ")
        return Counts(int(files), int(size))
    except ValueError:
        return None


def _read_counts(path: Path) -> Counts | None:
    try:
        with path.open("rb") as f:
            return _parse_counts(f.read(_COUNTS_LENGTH))
    except OSError:
        return None


def _write_counts(path: Path, counts: Counts, name: str | None = None) -> None:
    """Write `path` anew (whole or not at all): the counts, then the uploader's name."""
    tail = b"" if name is None else json.dumps(name).encode() + b"\n"
    _replace(path, (_counts_line(counts) + tail).decode())


def _bump(path: Path, size: int, sign: int, *, create: bool = True, name: str | None = None
          ) -> None:
    """Add a file of `size` bytes to the counts in `path` (`sign` -1: take one away), in
    place: the line keeps its length, so one pwrite(2) replaces it. Under the lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            _write_counts(path, Counts().plus(size, sign), name)
        return
    try:
        counts = _parse_counts(os.pread(fd, _COUNTS_LENGTH, 0)) or Counts()
        os.pwrite(fd, _counts_line(counts.plus(size, sign)), 0)
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a reader never sees half of it)."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(text, "utf-8")
    os.replace(scratch, path)


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode("utf-8", "surrogatepass"))
    finally:
        os.close(fd)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _log_line(sign: int, when: float, size: int, rel: str, *more: str | None) -> str:
    fields = ["+" if sign > 0 else "-", f"{when:.3f}", str(size), json.dumps(rel)]
    fields += [json.dumps(value) for value in more]
    return " ".join(fields) + "\n"


def _parse_log(text: str) -> Iterator[Entry]:
    for line in text.splitlines():
        try:
            sign, when, size, rel = line.split(" ", 3)
            yield Entry(1 if sign == "+" else -1, float(when), int(size), json.loads(rel))
        except ValueError:
            continue  # a line cut short by a crash


def _parse_since(line: str) -> tuple[int, float, int, str, str | None]:
    sign, when, size, rest = line.split(" ", 3)
    decoder = json.JSONDecoder()
    rel, end = decoder.raw_decode(rest)
    uploader, _ = decoder.raw_decode(rest, end + 1)
    return 1 if sign == "+" else -1, float(when), int(size), rel, uploader
