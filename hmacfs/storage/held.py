"""Small stored files held open after they were read whole.

Most of what a small GET costs on a local filesystem is finding and opening the file: a
look at every component of its path, an open and a close. A file read whole is kept open
here (up to `capacity` of them, the least lately read let go first), and the next read of
it takes one lstat(2) of its path and one pread(2) of the descriptor.

Known again by that lstat alone: while a descriptor holds a file, no other file can get its
inode number, so the same device, inode, size, mtime and ctime mean the same file, unchanged
(a write, an attribute or a link moves the ctime). One that is gone, replaced or changed is
let go and looked up anew. The kernel stamps a change with a clock that moves a tick at a
time (a few milliseconds), so a file changed within the tick of its last change would keep
its ctime: only files left unchanged for `HELD_SETTLED` seconds are held. Only files reached
without a link on the way are held, so that the path looked at is the path that was
resolved.

A file held open keeps its blocks after another process removes it (the sweeper, an admin,
another node), until it is let go: `release_idle`, called every few seconds, lets go of
those and of the ones nobody asked for in `HELD_IDLE` seconds. On a network filesystem an
open file removed by another process of the same host is renamed (``.nfsXXXX``) instead, and
would show up among the stored files: only storage on a local filesystem holds files
(`holds_files_open`).

Nothing here touches Twisted; every call is cheap and may be made on the reactor thread.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hmacfs.storage.backend import StoredFile

#: At most this many files are held open (fewer where the descriptor limit is low: one
#: sixteenth of it, the rest being the connections' and the uploads').
HELD_FILES = 512
#: The largest file held open.
HELD_MAX_SIZE = 64 * 1024
#: A file not read for this long is let go (by `HeldFiles.release_idle`).
HELD_IDLE = 30.0
#: A file changed less than this long ago is not held (see above).
HELD_SETTLED = 1.0
#: How often the servers call `release_idle`.
RELEASE_INTERVAL = 10.0
#: Filesystems that keep a removed file's name away while it is open elsewhere (where a
#: held descriptor is invisible to every other process).
LOCAL_FILESYSTEMS = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "f2fs", "zfs", "bcachefs",
        "jfs", "nilfs2", "overlay",
    }
)
_MOUNTINFO = Path("/proc/self/mountinfo")


def identity(st: os.stat_result) -> tuple[int, ...]:
    """What tells one file from another that got its inode number later: any change to the
    file (a write, an attribute, a link) moves its ctime too (the last of them)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def filesystem_of(path: str, mountinfo: Path = _MOUNTINFO) -> str | None:
    """The type of the filesystem the directory `path` (a real path) is on, from the mount
    table: the last-mounted of the mounts nearest above it; None when that cannot be read."""
    try:
        lines = mountinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    found, depth = None, -1
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts, kinds = fields.split(), tail.split()
        if len(parts) < 5 or not kinds:
            continue
        point = _unescape(parts[4])
        within = point in ("/", path) or path.startswith(point + "/")
        if within and len(point) >= depth:
            found, depth = kinds[0], len(point)
    return found


def _unescape(field: str) -> str:
    r"""A mount table field with its octal escapes (``\040`` for a space) undone."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def holds_files_open(root: str) -> bool:
    """Whether files of a storage directory at `root` (a real path) may be held open."""
    return filesystem_of(root) in LOCAL_FILESYSTEMS


def default_capacity() -> int:
    """How many files to hold open: HELD_FILES, or fewer under a low descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return HELD_FILES
    return max(0, min(HELD_FILES, soft // 16))


class _Held:
    __slots__ = ("fd", "identity", "stored", "used")

    def __init__(self, fd: int, ident: tuple[int, ...], stored: StoredFile, used: float) -> None:
        self.fd = fd
        self.identity = ident
        self.stored = stored
        self.used = used


class HeldFiles:
    """Up to `capacity` small files held open, by their path in the storage directory."""

    def __init__(
        self,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.capacity = capacity
        #: For how long a file was not read (`release_idle`).
        self.clock = clock
        #: The clock the kernel stamps changes with (for HELD_SETTLED).
        self.wall = wall
        self._held: dict[str, _Held] = {}  # the least lately read first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def read(self, rel: str) -> tuple[StoredFile, bytes] | None:
        """The file held for `rel` and all its bytes, if one is held and still the file at
        its path, unchanged; else None (and it is let go)."""
        if rel not in self._held:
            return None
        with self._lock:
            held = self._held.get(rel)
            if held is None:
                return None
            stored = held.stored
            try:
                data = (
                    os.pread(held.fd, stored.size + 1, 0)  # (one more: a file grown since)
                    if identity(os.lstat(stored.location)) == held.identity
                    else None
                )
            except (OSError, ValueError):
                data = None
            if data is not None and len(data) == stored.size:
                held.used = self.clock()
                self._held[rel] = self._held.pop(rel)  # (the newest now: let go last)
                return stored, data
            del self._held[rel]
            os.close(held.fd)
            return None

    def hold(self, rel: str, fd: int, ident: tuple[int, ...], stored: StoredFile) -> None:
        """Keep `fd` (of `stored`, at `rel`, whose status gave `ident`) open for `read`;
        this takes the descriptor over (closing it at once when it is not held)."""
        if self.capacity <= 0 or self.wall() - ident[-1] / 1e9 < HELD_SETTLED:  # (its ctime)
            os.close(fd)
            return
        closing = []
        with self._lock:
            earlier = self._held.pop(rel, None)
            if earlier is not None:
                closing.append(earlier.fd)
            while len(self._held) >= self.capacity:
                closing.append(self._held.pop(next(iter(self._held))).fd)
            self._held[rel] = _Held(fd, ident, stored, self.clock())
        for each in closing:
            os.close(each)

    def let_go(self, rel: str | None = None) -> None:
        """Close the file held for `rel` (every one, for None)."""
        with self._lock:
            if rel is None:
                closing, self._held = list(self._held.values()), {}
            else:
                one = self._held.pop(rel, None)
                closing = [] if one is None else [one]
        for each in closing:
            os.close(each.fd)

    def release_idle(self) -> int:
        """Let go of the files nobody read in HELD_IDLE seconds and of those removed since
        (one fstat(2) each); how many were let go."""
        limit = self.clock() - HELD_IDLE
        closing = []
        with self._lock:
            for rel, each in list(self._held.items()):
                try:
                    stale = each.used < limit or os.fstat(each.fd).st_nlink == 0
                except OSError:
                    stale = True
                if stale:
                    del self._held[rel]
                    closing.append(each.fd)
        for fd in closing:
            os.close(fd)
        return len(closing)
