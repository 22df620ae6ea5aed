"""Files on disk: partial uploads, linking into place without replacing, metadata, expiry.

Layout under the storage directory:

- ``<signed path>``: the stored files themselves, as plain files, so that a storage directory
  written by another upload server (prosody-filer, the Go HMAC File Server) is served as it is.
- ``.hmacfs/partial/<random>``: bodies being received. Same filesystem as the final files, so
  ``link(2)`` puts a finished file in place atomically, and fails instead of replacing.
- ``.hmacfs/meta/<xx>/<inode>.json``: what GET needs (content type, digest, upload time,
  expiry), keyed by the stored file's inode. It is written before the data is linked into
  place, under a name no other upload can use, so a file never appears without its metadata
  and a losing concurrent upload of the same path cannot disturb the winner's.

Nothing here touches Twisted; the slow calls (fsync, link, sweeping) are made by the caller
on a thread.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hmacfs.errors import (
    BadRequest,
    Conflict,
    Gone,
    HttpError,
    NotFound,
    StorageFailure,
    TooLarge,
)
from hmacfs.paths import RESERVED_SEGMENT

_META_VERSION = 1
#: Partial uploads untouched for this long belong to no live connection and are removed.
PARTIAL_MAX_IDLE = 24 * 3600.0
#: Empty partial files kept ready for new uploads, and how long one may wait (well under
#: PARTIAL_MAX_IDLE, so that no sweep takes a waiting one for abandoned).
POOL_SIZE = 8
POOL_MAX_AGE = 3600.0
#: Metadata younger than this may belong to an upload being linked right now.
_META_GRACE = 3600.0


@dataclass(frozen=True)
class StoredFile:
    """A file that GET can serve, with what is known about it."""

    rel: str
    fs_path: Path
    size: int
    mtime: float
    content_type: str | None
    sha256: str | None
    uploaded: float | None
    expires: float | None


@dataclass
class SweepReport:
    """What one sweep removed."""

    expired: int = 0
    partials: int = 0
    orphans: int = 0
    #: What is stored after the sweep.
    files: int = 0
    bytes: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Storage:
    """The storage directory: begin uploads, look files up, sweep what has expired."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        file_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.file_ttl = file_ttl
        self.clock = clock
        self._state = root / RESERVED_SEGMENT
        self.partial_dir = self._state / "partial"
        self.meta_dir = self._state / "meta"
        for directory in (root, self.partial_dir, self.meta_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for shard in range(256):
            (self.meta_dir / f"{shard:02x}").mkdir(exist_ok=True)
        self._real_root = os.path.realpath(root)
        self._pool: collections.deque[tuple[Path, int, float]] = collections.deque()
        self._pool_lock = threading.Lock()
        self._real_state = os.path.realpath(self._state)

    # -- paths -------------------------------------------------------------------------------

    def path_of(self, rel: str) -> Path:
        """The filesystem path for a signed path (already validated by hmacfs.paths)."""
        return self.root.joinpath(*rel.split("/"))

    def _meta_path(self, ino: int) -> Path:
        return self.meta_dir / f"{ino % 256:02x}" / f"{ino}.json"

    def _read_meta(self, st: os.stat_result, rel: str) -> dict[str, object] | None:
        try:
            raw = self._meta_path(st.st_ino).read_bytes()
            meta = json.loads(raw)
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("path") != rel or meta.get("size") != st.st_size:
            return None
        return meta

    # -- download ----------------------------------------------------------------------------

    def lookup(self, rel: str) -> StoredFile:
        """Find the stored file for `rel`.

        Raises NotFound (absent, not a regular file, or reached through a link that leaves the
        storage directory) and Gone (its expiry has passed; the sweeper removes it later).
        """
        fs_path = self.path_of(rel)
        real = os.path.realpath(fs_path)
        if not _is_within(real, self._real_root) or _is_within(real, self._real_state):
            raise NotFound("not found")
        try:
            st = os.stat(real)
        except OSError:
            raise NotFound("not found") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound("not found")
        meta = self._read_meta(st, rel) or {}
        expires = _number(meta.get("expires"))
        if expires is not None and expires <= self.clock():
            raise Gone("file has expired")
        content_type = meta.get("content_type")
        digest = meta.get("sha256")
        return StoredFile(
            rel=rel,
            fs_path=Path(real),
            size=st.st_size,
            mtime=st.st_mtime,
            content_type=content_type if isinstance(content_type, str) else None,
            sha256=digest if isinstance(digest, str) else None,
            uploaded=_number(meta.get("uploaded")),
            expires=expires,
        )

    # -- upload ------------------------------------------------------------------------------

    def existing(self, rel: str) -> StoredFile | None:
        """The file already stored at `rel`, if any (expired files count: never overwritten)."""
        try:
            return self.lookup(rel)
        except Gone:
            fs_path = self.path_of(rel)
            st = os.stat(fs_path)
            return StoredFile(rel, fs_path, st.st_size, st.st_mtime, None, None, None, None)
        except NotFound:
            if os.path.lexists(self.path_of(rel)):
                raise Conflict("path is in use") from None
            return None

    def begin(
        self,
        rel: str,
        size: int,
        content_type: str,
        *,
        expires: float | None = None,
        scheme: str = "",
    ) -> PartialUpload:
        """Open a partial file for an upload of `size` bytes to `rel`.

        Takes a partial file made ahead of time (`fill_pool`) when there is one, so that the
        caller (the reactor) does not wait for the filesystem to create a file. Raises
        StorageFailure when the partial file cannot be created.
        """
        partial, fd = self._take_pooled()
        if fd < 0:
            try:
                partial, fd = self._create_partial()
            except OSError as e:
                raise StorageFailure(f"cannot store: {os.strerror(e.errno or 0)}") from e
        now = self.clock()
        if self.file_ttl is not None:
            ttl_expiry = now + self.file_ttl
            expires = ttl_expiry if expires is None else min(expires, ttl_expiry)
        return PartialUpload(self, rel, size, content_type, partial, fd, expires, scheme, now)

    # -- partial files made ahead of time -----------------------------------------------------

    def _create_partial(self) -> tuple[Path, int]:
        partial = self.partial_dir / secrets.token_hex(16)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return partial, fd

    def _take_pooled(self) -> tuple[Path, int]:
        """A pooled (path, fd), or (partial_dir, -1) when none is fresh enough."""
        while True:
            with self._pool_lock:
                if not self._pool:
                    return self.partial_dir, -1
                partial, fd, made = self._pool.popleft()
            if time.monotonic() - made < POOL_MAX_AGE:
                return partial, fd
            # Old enough that a sweep (of another process) could take it for abandoned.
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(partial)

    def pool_low(self) -> bool:
        """Whether `fill_pool` should run (cheap; reactor thread)."""
        return len(self._pool) < POOL_SIZE // 2

    def fill_pool(self) -> None:
        """Make empty partial files ahead of time, up to POOL_SIZE. Blocking: on a thread.

        Raises OSError (disk full, permissions): `begin` then reports it for the upload."""
        while len(self._pool) < POOL_SIZE:
            partial, fd = self._create_partial()
            with self._pool_lock:
                self._pool.append((partial, fd, time.monotonic()))

    def pooled_names(self) -> frozenset[str]:
        """Partial files waiting in the pool (live: the sweeper must leave them alone)."""
        with self._pool_lock:
            return frozenset(partial.name for partial, _, _ in self._pool)

    def drain_pool(self) -> None:
        """Remove the pool's files (at shutdown)."""
        while True:
            with self._pool_lock:
                if not self._pool:
                    return
                partial, fd, _ = self._pool.popleft()
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(partial)

    def _link_into_place(self, upload: PartialUpload) -> None:
        final = self.path_of(upload.rel)
        parent = final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict("path is in use") from None
        if not _is_within(os.path.realpath(parent), self._real_root):
            raise BadRequest("path leaves the storage directory")
        try:
            os.link(upload.partial, final)
        except FileExistsError:
            raise Conflict("file already exists") from None
        except NotADirectoryError:
            raise Conflict("path is in use") from None
        if self.fsync:
            _fsync_dir(parent)

    # -- sweeping ----------------------------------------------------------------------------

    def _metas(self) -> Iterator[Path]:
        for shard in self.meta_dir.iterdir():
            if shard.is_dir():
                yield from shard.glob("*.json")

    def sweep(self, active: frozenset[str] = frozenset()) -> SweepReport:
        """Remove expired files, abandoned partial uploads and stale metadata.

        `active` names partial files that live uploads are still writing. Blocking: call it on
        a thread.
        """
        report = SweepReport()
        now = self.clock()
        for entry in self.partial_dir.iterdir():
            if entry.name in active:
                continue
            try:
                if entry.stat().st_mtime < now - PARTIAL_MAX_IDLE:
                    entry.unlink()
                    report.partials += 1
            except FileNotFoundError:
                continue
        for meta_path in self._metas():
            try:
                st_meta = meta_path.stat()
                meta = json.loads(meta_path.read_bytes())
                ino = int(meta_path.stem)
            except (OSError, ValueError):
                continue
            rel = meta.get("path") if isinstance(meta, dict) else None
            target = self.path_of(rel) if isinstance(rel, str) else None
            try:
                st = os.lstat(target) if target is not None else None
            except OSError:
                st = None
            if st is None or st.st_ino != ino:
                # Not (or no longer) the file it describes; keep it a while in case its
                # upload is being linked into place right now.
                if st_meta.st_mtime < now - _META_GRACE:
                    meta_path.unlink(missing_ok=True)
                    report.orphans += 1
                continue
            expires = _number(meta.get("expires"))
            if expires is not None and expires <= now and target is not None:
                target.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                self._prune_dirs(target.parent)
                report.expired += 1
        report.files, report.bytes = self._usage()
        return report

    def _usage(self) -> tuple[int, int]:
        files = size = 0
        for directory, subdirs, names in os.walk(self.root):
            if directory == str(self.root) and RESERVED_SEGMENT in subdirs:
                subdirs.remove(RESERVED_SEGMENT)
            for name in names:
                try:
                    st = os.lstat(os.path.join(directory, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    files += 1
                    size += st.st_size
        return files, size

    def _prune_dirs(self, directory: Path) -> None:
        """Remove now-empty directories between a removed file and the storage root."""
        root = self.root
        while directory != root and root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


class PartialUpload:
    """One body being received: written as it arrives, then committed or aborted."""

    def __init__(
        self,
        storage: Storage,
        rel: str,
        size: int,
        content_type: str,
        partial: Path,
        fd: int,
        expires: float | None,
        scheme: str,
        started: float,
    ) -> None:
        self.storage = storage
        self.rel = rel
        self.size = size
        self.content_type = content_type
        self.partial = partial
        self.expires = expires
        self.scheme = scheme
        self.started = started
        self.received = 0
        self._fd: int | None = fd
        #: None once bytes were written past `write` (`wrote`): the digest is then unknown.
        self._hash: hashlib._Hash | None = hashlib.sha256()
        self.done = False

    @property
    def name(self) -> str:
        """The partial file's name (for the sweeper's list of live uploads)."""
        return self.partial.name

    def write(self, data: bytes) -> None:
        """Append a chunk of the body. Raises TooLarge past the declared size, StorageFailure."""
        if self._fd is None:
            raise StorageFailure("upload already closed")
        if self.received + len(data) > self.size:
            raise TooLarge("body longer than Content-Length")
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            raise StorageFailure(f"cannot store: {os.strerror(e.errno or 0)}") from e
        if self._hash is not None:
            self._hash.update(data)
        self.received += len(data)

    def fileno(self) -> int:
        """The partial file's descriptor, for a caller that appends body bytes to it itself
        (splice(2)) and reports them with `wrote`. Raises StorageFailure once it is closed."""
        if self._fd is None:
            raise StorageFailure("upload already closed")
        return self._fd

    def wrote(self, count: int) -> None:
        """Count `count` body bytes the caller appended to `fileno()`. They are not hashed: the
        stored file then has no digest. Raises TooLarge past the declared size."""
        if count < 0 or self.received + count > self.size:
            raise TooLarge("body longer than Content-Length")
        self.received += count
        self._hash = None

    def commit(self, existing_digest: str | None = None) -> StoredFile:
        """Make the complete body visible at its path, with its metadata. Blocking.

        With `existing_digest` (a file is already stored there), an identical body is taken
        as a successful retry and the stored file is left as it is; a different one is a
        conflict. Raises Conflict, StorageFailure, BadRequest (incomplete body).
        """
        if self.received != self.size:
            self.abort()
            raise BadRequest("body shorter than Content-Length")
        storage = self.storage
        digest = self._hash.hexdigest() if self._hash is not None else None
        try:
            fd = self._fd
            assert fd is not None
            if existing_digest is not None:
                self.abort()
                if existing_digest == digest:
                    return storage.lookup(self.rel)
                raise Conflict("file already exists")
            if storage.fsync:
                os.fsync(fd)
            os.close(fd)
            self._fd = None
            st = os.stat(self.partial)
            meta_path = storage._meta_path(st.st_ino)
            uploaded = storage.clock()
            meta = {
                "v": _META_VERSION,
                "path": self.rel,
                "size": self.size,
                "content_type": self.content_type,
                "sha256": digest,
                "uploaded": uploaded,
                "expires": self.expires,
                "scheme": self.scheme,
            }
            # Written in place: it is keyed by the partial file's inode, which no other existing
            # file can have, so what may stand there already is stale, and nothing reads it
            # before the data is linked into place below.
            meta_fd = os.open(
                meta_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
            try:
                os.write(meta_fd, json.dumps(meta, ensure_ascii=False).encode("utf-8"))
                if storage.fsync:
                    os.fsync(meta_fd)
            finally:
                os.close(meta_fd)
            if storage.fsync:
                _fsync_dir(meta_path.parent)
            try:
                storage._link_into_place(self)
            except BaseException as failure:
                meta_path.unlink(missing_ok=True)
                if isinstance(failure, Conflict):
                    # A concurrent retry of the same upload may have won the race with the
                    # same bytes: that is a success, not a conflict.
                    try:
                        winner = storage.lookup(self.rel)
                    except HttpError:
                        raise failure from None
                    if digest is not None and winner.sha256 == digest:
                        return winner
                raise
            return StoredFile(
                rel=self.rel,
                fs_path=storage.path_of(self.rel),
                size=self.size,
                mtime=st.st_mtime,
                content_type=self.content_type,
                sha256=digest,
                uploaded=uploaded,
                expires=self.expires,
            )
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise BadRequest("file name too long") from e
            raise StorageFailure(f"cannot store: {os.strerror(e.errno or 0)}") from e
        finally:
            self.abort()

    def abort(self) -> None:
        """Forget the body: close and remove the partial file. Safe to call more than once."""
        self.done = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
