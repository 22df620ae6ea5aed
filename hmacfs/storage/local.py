"""Files on disk: partial uploads, linking into place without replacing, metadata, expiry.

Layout under the storage directory:

- ``<signed path>``: the stored files themselves, as plain files, so that a storage directory
  written by another upload server (prosody-filer, the Go HMAC File Server) is served as it is.
- ``.hmacfs/partial/``: bodies being received, in files without a name (``O_TMPFILE``) where
  the filesystem and /proc allow, else named ``<random>``. Same filesystem as the final files,
  so ``link(2)`` puts a finished file in place atomically, and fails instead of replacing; an
  unnamed one leaves nothing behind if the server dies.
- ``.hmacfs/partial/<id>`` and ``<id>.json``: a resumable upload's partial file and its facts
  (path, size, type, expiry), found again by id from any process (`LocalStorage.reopen`). The
  request writing to one holds an exclusive ``flock(2)`` on it, so that one request at a time
  appends, in any process; ``<id>.appending`` says the holder is an append, and
  ``.hmacfs/claims/<id>`` names the newest request for the upload: whoever holds it and is
  not that request lets go, and an older request that gets the lock later gives up (one
  directory, so that a process holding many uploads looks at them all with one listing).
  A completed upload's facts stay
  (``completed``) for `LocalStorage.resumable_ttl`, so that its upload resource still answers.
  ``.hmacfs/slots/<hash of the path>`` links to the resumable upload of a path, so that a plain
  retry of the slot drops it.
- what GET needs (content type, upload time, expiry), as JSON: in the stored file's own
  extended attribute ``user.hmacfs`` where the filesystem keeps user attributes, else in
  ``.hmacfs/meta/<xx>/<inode>.json``, keyed by the stored file's inode (older uploads, other
  filesystems). Either way it is written before the data is linked into place and belongs to
  that upload's inode alone, so a file never appears without its metadata and a losing
  concurrent upload of the same path cannot disturb the winner's.

Nothing here touches Twisted; the slow calls (fsync, comparing bodies, sweeping) are made by
the caller on a thread. Without fsync, a commit that has no body to compare only creates names
and sets attributes, which does not wait for the disk: the caller may make it on its own thread
(`LocalPartial.can_commit_inline`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from hmacfs.core.paths import RESERVED_SEGMENT
from hmacfs.core.records import quick_init
from hmacfs.core.refusals import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    StorageFailure,
    TooLarge,
)
from hmacfs.storage.backend import (
    Busy,
    CompareOnThread,
    OrphanedMetadata,
    PartialFile,
    PartialState,
    StoredFile,
    SweepReport,
    make_claim,
)
from hmacfs.storage.held import (
    HELD_MAX_SIZE,
    HeldFiles,
    default_capacity,
    holds_files_open,
    identity,
)
from hmacfs.storage.usage import Counts, Usage

_META_VERSION = 1
#: Partial uploads untouched for this long belong to no live connection and are removed.
PARTIAL_MAX_IDLE = 24 * 3600.0
#: How long a resumable upload's partial is kept after its last byte (by default).
RESUMABLE_TTL = 24 * 3600.0
#: Empty partial files kept ready for new uploads, and how long one may wait (well under
#: PARTIAL_MAX_IDLE, so that no sweep takes a waiting one for abandoned).
POOL_SIZE = 8
POOL_MAX_AGE = 3600.0
#: Metadata younger than this may belong to an upload being linked right now.
_META_GRACE = 3600.0
#: How long a listing of the slot directory that found it empty is taken for true.
SLOTS_LISTED_FOR = 1.0
#: How much of each file a comparison of two bodies reads at a time.
COMPARE_CHUNK = 1 << 20
#: The extended attribute that holds a stored file's metadata.
META_XATTR = "user.hmacfs"
#: Where metadata goes: "auto" (an extended attribute where the filesystem keeps them, else a
#: file), "xattr" (an extended attribute; a filesystem without them is an error) or "file".
METADATA_STORES = ("auto", "xattr", "file")
#: What setxattr answers on a filesystem without user extended attributes.
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM)
#: What partial files are: "auto" (unnamed where the system allows, else named), "tmpfile"
#: (unnamed, O_TMPFILE; a system without them is an error) or "named".
PARTIAL_KINDS = ("auto", "tmpfile", "named")


@quick_init
@dataclass(frozen=True)
class _Partial:
    """An open partial file: its descriptor, its path (None when it has no name) and the name
    the sweeper knows it by: for an unnamed one "#<inode>", as /proc shows it, or "" until
    that is asked for (no sweep can come across an unnamed file: see LocalPartial.name)."""

    fd: int
    path: Path | None
    name: str


#: `check_storage` fails when less than this much space is free ...
MIN_FREE_BYTES = 16 * 1024 * 1024
#: ... or less than this share of the filesystem, whichever is more.
MIN_FREE_FRACTION = 0.01
#: In durable mode, each stretch of this many body bytes is sent to the disk as it arrives.
WRITEBACK_STEP = 32 * 1024 * 1024
#: Files whose metadata a process remembers (see `LocalStorage._read_meta`): about 0.5 KiB each.
META_CACHE_SIZE = 2048
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[..., int] | None:
    # (looked up when durable mode first needs it: ctypes is no import for a process that
    # only sweeps or lists, such as an admin command)
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


def _token(nbytes: int) -> str:
    """`nbytes` random bytes in hex, as secrets.token_hex (whose import brings hmac and
    base64 along)."""
    return os.urandom(nbytes).hex()


def start_writeback(fd: int, offset: int, count: int) -> bool:
    """Start writing `count` bytes of `fd` from `offset` to the disk, without waiting for
    them (sync_file_range(2) with SYNC_FILE_RANGE_WRITE; it may wait for room in the disk's
    queue: call it on a thread). A hint: False where it is not available or fails."""
    call = _sync_file_range()
    if call is None:
        return False
    return call(fd, offset, count, _SYNC_FILE_RANGE_WRITE) == 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Absent(NotFound):
    """Nothing is at the path: one of its components does not exist (no link on the way)."""


class _UnderFile(NotFound):
    """A component on the way to the path is a file, not a directory."""


#: How metadata is written (one encoder: `json.dumps` with options makes one per call).
_META_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: A string as `_META_ENCODER` writes it.
_quoted = json.encoder.encode_basestring


def encode_meta(
    rel: str,
    size: int,
    *,
    content_type: str,
    uploaded: float,
    expires: float | None,
    scheme: str,
    uploader: str | None,
) -> bytes:
    """A stored file's metadata record: what `_META_ENCODER` makes of the dictionary of
    these keys in this order, written out directly (a quarter of the encoder's time, which
    every small upload pays)."""
    if not (math.isfinite(uploaded) and (expires is None or math.isfinite(expires))):
        meta = {
            "v": _META_VERSION, "path": rel, "size": size, "content_type": content_type,
            "uploaded": uploaded, "expires": expires, "scheme": scheme, "uploader": uploader,
        }
        return _META_ENCODER.encode(meta).encode()
    return (
        f'{{"v":{_META_VERSION},"path":{_quoted(rel)},"size":{int(size)},'
        f'"content_type":{_quoted(content_type)},"uploaded":{_json_number(uploaded)},'
        f'"expires":{"null" if expires is None else _json_number(expires)},'
        f'"scheme":{_quoted(scheme)},'
        f'"uploader":{"null" if uploader is None else _quoted(uploader)}}}'
    ).encode()


def _json_number(value: float) -> str:
    """A finite number as json writes it (an int as an int, a float by its repr)."""
    return str(int(value)) if isinstance(value, int) else repr(float(value))


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class LocalStorage:
    """The storage directory: begin uploads, look files up, sweep what has expired."""

    #: Files are local: looked up on the reactor, sent with sendfile (see `Backend.remote`).
    remote = False

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        file_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        metadata: str = "auto",
        partials: str = "auto",
        resumable_ttl: float = RESUMABLE_TTL,
    ) -> None:
        """Open (creating what is missing) the storage directory `root`.

        Raises OSError when it cannot be created, when `metadata` is "xattr" and its
        filesystem does not keep user extended attributes, or when `partials` is "tmpfile"
        and unnamed files cannot be made and linked there; ValueError for another `metadata`
        than those of METADATA_STORES, or `partials` than those of PARTIAL_KINDS.
        """
        if metadata not in METADATA_STORES:
            raise ValueError(f"metadata must be one of {', '.join(METADATA_STORES)}")
        if partials not in PARTIAL_KINDS:
            raise ValueError(f"partials must be one of {', '.join(PARTIAL_KINDS)}")
        self.root = root
        self.fsync = fsync
        #: Runs a blocking call off the caller's thread, ignoring its outcome (set by the
        #: server; None: no early writeback).
        self.background: Callable[..., object] | None = None
        self.file_ttl = file_ttl
        self.resumable_ttl = resumable_ttl
        self.clock = clock
        self._state = root / RESERVED_SEGMENT
        self.partial_dir = self._state / "partial"
        self.meta_dir = self._state / "meta"
        self.slot_dir = self._state / "slots"
        self.claim_dir = self._state / "claims"
        #: The bytes stored, per uploader and in all, for the quotas (`count_usage`).
        self.accounting: Usage | None = None
        for directory in (root, self.partial_dir, self.meta_dir, self.slot_dir, self.claim_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for shard in range(256):
            (self.meta_dir / f"{shard:02x}").mkdir(exist_ok=True)
        self._real_root = os.path.realpath(root)
        self._slot_dir_text = str(self.slot_dir)
        #: The clock `_slots_maybe` reads (a test's may be set instead).
        self.monotonic: Callable[[], float] = time.monotonic
        #: When the slot directory was last listed, and whether it held anything then (or
        #: when this process last made a slot link there).
        self._slots_listed: tuple[float, bool] = (-math.inf, True)
        #: Each with when it was made and the filesystem (st_dev) it is on.
        self._pool: collections.deque[tuple[_Partial, float, int]] = collections.deque()
        self._pool_lock = threading.Lock()
        self._meta_cache: dict[tuple[object, ...], dict[str, object] | None] = {}
        self._meta_cache_lock = threading.Lock()
        #: Small files read whole lately, held open (`read_small`), on a local filesystem.
        self.held = HeldFiles(default_capacity() if holds_files_open(self._real_root) else 0)
        self._real_state = os.path.realpath(self._state)
        #: Whether new metadata goes into an extended attribute (else into a file).
        self.xattrs = metadata != "file" and self._xattrs_kept(required=metadata == "xattr")
        #: Whether stored files may carry metadata in an extended attribute worth reading.
        self._read_xattrs = self.xattrs or metadata == "file"
        #: Whether partial files are unnamed (O_TMPFILE), linked by their /proc/self/fd link.
        self.tmpfiles = partials != "named" and self._tmpfiles_work(required=partials == "tmpfile")

    def _tmpfiles_work(self, *, required: bool) -> bool:
        """Whether an unnamed file made in the partial directory can be linked by name there."""
        try:
            fd = os.open(self.partial_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (AttributeError, OSError):  # no O_TMPFILE here, or not on this filesystem
            if required:
                raise
            return False
        try:
            scratch = f"probe-{_token(8)}"
            dir_fd = os.open(self.partial_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _link_unnamed(fd, dir_fd, scratch)
                os.unlink(scratch, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:  # no /proc
            if required:
                raise
            return False
        finally:
            os.close(fd)
        return True

    def _xattrs_kept(self, *, required: bool) -> bool:
        """Whether the filesystem keeps user extended attributes: tried on a scratch file."""
        if not hasattr(os, "setxattr"):
            if required:
                raise OSError(errno.ENOTSUP, "no extended attributes on this system")
            return False
        scratch = self.partial_dir / f"probe-{_token(8)}"
        fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.setxattr(fd, META_XATTR, b"{}")
        except OSError as e:
            if e.errno not in _NO_XATTRS or required:
                raise
            return False
        finally:
            os.close(fd)
            scratch.unlink()
        return True

    # -- paths -------------------------------------------------------------------------------

    def path_of(self, rel: str) -> Path:
        """The filesystem path for a signed path (already validated by hmacfs.core.paths)."""
        return self.root.joinpath(*rel.split("/"))

    def _location(self, rel: str) -> str:
        """`path_of(rel)` as text (the same string, without making a Path)."""
        return f"{self.root}/{rel}" if str(self.root) != "/" else f"/{rel}"

    def _meta_path(self, ino: int) -> Path:
        return self.meta_dir / f"{ino % 256:02x}" / f"{ino}.json"

    def _read_meta(self, path: str, st: os.stat_result, rel: str) -> dict[str, object] | None:
        """The metadata of the file `path` (`st`) stored at `rel`: its own extended attribute,
        else the file keyed by its inode; None when neither describes it.

        Remembered for the last META_CACHE_SIZE files looked up, keyed by the path and the
        file's inode, size, mtime and ctime: setting an attribute, adding a link or writing
        changes the ctime, so a changed file is read again. The result is shared: read only.
        """
        key = (rel, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cache = self._meta_cache
        try:
            return cache[key]
        except KeyError:
            pass
        meta = self._read_meta_from_disk(path, st, rel)
        with self._meta_cache_lock:
            if len(cache) >= META_CACHE_SIZE:
                del cache[next(iter(cache))]  # the oldest entry
            cache[key] = meta
        return meta

    def _read_meta_from_disk(
        self, path: str, st: os.stat_result, rel: str
    ) -> dict[str, object] | None:
        if self._read_xattrs:
            meta = _valid_meta(_xattr_of(path), st, rel)
            if meta is not None:
                return meta
        try:
            raw = self._meta_path(st.st_ino).read_bytes()
        except OSError:
            return None
        return _valid_meta(raw, st, rel)

    # -- download ----------------------------------------------------------------------------

    def _resolve(self, rel: str) -> tuple[str, os.stat_result]:
        """The real path of `rel` and its status, or NotFound if it is absent or leaves the
        storage directory (or enters its bookkeeping directory) through a symbolic link.

        Every component is looked at from the resolved root down; when none is a link, the
        path is real already, which costs a fraction of os.path.realpath.
        """
        path = self._real_root
        for segment in rel.split("/"):
            if segment in ("", ".", ".."):
                raise NotFound("not found")
            path = f"{path}/{segment}"
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise _Absent("not found") from None
            except NotADirectoryError:
                raise _UnderFile("not found") from None
            except (OSError, ValueError):
                raise NotFound("not found") from None
            if stat.S_ISLNK(st.st_mode):
                break
        else:
            if rel.split("/", 1)[0] == RESERVED_SEGMENT:
                raise NotFound("not found")
            return path, st
        real = os.path.realpath(self.path_of(rel))
        if not _is_within(real, self._real_root) or _is_within(real, self._real_state):
            raise NotFound("not found")
        try:
            return real, os.stat(real)
        except OSError:
            raise NotFound("not found") from None

    def lookup(self, rel: str) -> StoredFile:
        """Find the stored file for `rel`.

        Raises NotFound (absent, not a regular file, or reached through a link that leaves the
        storage directory) and Gone (its expiry has passed; the sweeper removes it later).
        """
        return self._lookup(rel)[0]

    def _lookup(self, rel: str) -> tuple[StoredFile, os.stat_result]:
        real, st = self._resolve(rel)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound("not found")
        stored = self._stored(rel, real, st)
        if stored.expires is not None and stored.expires <= self.clock():
            raise Gone("file has expired")
        return stored, st

    def read_small(self, rel: str, limit: int) -> tuple[StoredFile, bytes | None]:
        """The stored file for `rel` and, when it holds at most `limit` bytes (and
        HELD_MAX_SIZE), all of them; None instead of its bytes for a larger one, or one that
        changed as it was read. Raises as `lookup` does.

        A file so read is held open (`hmacfs.storage.held`) when it was reached without a
        link on the way: read again, it costs one lstat(2) and one pread(2).
        """
        found = self.held.read(rel)
        if found is not None:
            stored, data = found
            if stored.expires is not None and stored.expires <= self.clock():
                self.held.let_go(rel)
                raise Gone("file has expired")
            return stored, data
        stored, st = self._lookup(rel)
        if stored.size > min(limit, HELD_MAX_SIZE):
            return stored, None
        try:
            fd = os.open(stored.location, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            raise NotFound("not found") from None
        try:
            ident = identity(os.fstat(fd))
            data = os.pread(fd, stored.size + 1, 0)
        except OSError:
            os.close(fd)
            raise NotFound("not found") from None
        if ident != identity(st) or len(data) != stored.size:
            os.close(fd)  # (it changed as it was looked up: left to the caller's own way)
            return stored, None
        if stored.location == f"{self._real_root}/{rel}":
            self.held.hold(rel, fd, ident, stored)
        else:
            os.close(fd)
        return stored, data

    def release_idle(self) -> None:
        """Let go of the files held open that nobody read lately, or that were removed."""
        self.held.release_idle()

    # -- upload ------------------------------------------------------------------------------

    def existing(self, rel: str) -> StoredFile | None:
        """The file already stored at `rel`, if any.

        Raises Conflict when something else is there (a directory, a link leaving the storage
        directory) or the file there has expired: expired files are never overwritten, nor is
        an upload taken for a retry of one.
        """
        try:
            return self.lookup(rel)
        except Gone:
            raise Conflict("file already exists") from None
        except _Absent:
            return None  # a directory on the way, or the file, is missing: nothing is there
        except _UnderFile:
            raise Conflict("path is in use") from None  # (a file where a directory must go)
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
        uploader: str | None = None,
        reopenable: bool = False,
        existing: StoredFile | None = None,
    ) -> LocalPartial:
        """Open a partial file for an upload of `size` bytes to `rel`.

        Takes a partial file made ahead of time (`refill`) when there is one, so that the
        caller (the reactor) does not wait for the filesystem to create a file. A
        `reopenable` partial is a named file with its upload's facts beside it
        (``<id>.json``), which `reopen` finds again, from any process. Raises StorageFailure
        when the partial file cannot be created.
        """
        now = self.clock()
        if self.file_ttl is not None:
            ttl_expiry = now + self.file_ttl
            expires = ttl_expiry if expires is None else min(expires, ttl_expiry)
        # (positional, here and below: keywords would cost a dictionary per upload)
        facts = _PartialFacts(rel, size, content_type, expires, scheme, now, False, False, uploader)
        try:
            if reopenable:
                partial = self._create_partial(named=True)
                fcntl.flock(partial.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (a new file: free)
                _write_file(self._facts_path(partial.name), facts.encode(), fsync=False)
                self._link_slot(rel, partial.name)
            else:
                partial = self._take_pooled() or self._create_partial()
        except OSError as e:
            raise StorageFailure(f"cannot store: {os.strerror(e.errno or 0)}") from e
        return LocalPartial(self, facts, partial, reopenable)

    def reopen(self, upload_id: str, *, appending: bool = False) -> LocalPartial:
        """Hold the reopenable partial `upload_id` (see `begin`), positioned after what it
        holds. Raises NotFound when there is none (never was, completed, aborted or swept),
        Busy while another request holds it."""
        if not _PARTIAL_ID.fullmatch(upload_id):
            raise NotFound("no such upload")
        path = self.partial_dir / upload_id
        try:
            facts = _PartialFacts.decode(self._facts_path(upload_id).read_bytes())
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (OSError, ValueError):
            raise NotFound("no such upload") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(appending=self._marker(upload_id, _APPENDING).exists()) from None
        except OSError:
            os.close(fd)
            raise NotFound("no such upload") from None
        try:
            if facts.completed or os.fstat(fd).st_nlink == 0:
                raise NotFound("no such upload")  # (completed, or removed as we opened it)
            marker = self._marker(upload_id, _APPENDING)
            if appending:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)  # (left by a process that died holding it)
            received = os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        partial = LocalPartial(self, facts, _Partial(fd, path, upload_id), reopenable=True)
        partial.received = received
        partial.appending = appending
        return partial

    def describe(self, upload_id: str) -> PartialState:
        """What is known of the reopenable partial `upload_id`, completed or not, read without
        holding it. Raises NotFound."""
        if not _PARTIAL_ID.fullmatch(upload_id):
            raise NotFound("no such upload")
        try:
            facts_path = self._facts_path(upload_id)
            facts = _PartialFacts.decode(facts_path.read_bytes())
            if facts.completed:
                touched = facts_path.stat().st_mtime
                received = facts.size
            else:
                st = os.stat(self.partial_dir / upload_id)
                touched, received = st.st_mtime, st.st_size
        except (OSError, ValueError):
            raise NotFound("no such upload") from None
        return PartialState(
            upload_id, facts.rel, facts.size, received, facts.completed, touched, facts.by_size
        )

    def claim(self, upload_id: str, *, appending: bool = False) -> str:
        """Make a new request the newest for `upload_id`; its claim."""
        nonce = _token(8)
        claim = make_claim(appending, nonce)
        if _PARTIAL_ID.fullmatch(upload_id):
            scratch = self.claim_dir / f".{upload_id}.{nonce}"
            try:
                scratch.write_text(claim)
                os.replace(scratch, self.claim_dir / upload_id)
            except OSError as e:
                scratch.unlink(missing_ok=True)
                raise StorageFailure(f"cannot store: {os.strerror(e.errno or 0)}") from e
        return claim

    def claim_of(self, upload_id: str) -> str | None:
        """The claim of the newest request for `upload_id`, if any made one."""
        if not _PARTIAL_ID.fullmatch(upload_id):
            return None
        try:
            return (self.claim_dir / upload_id).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def claimed(self) -> frozenset[str]:
        """The uploads some request has claimed (one listing)."""
        try:
            return frozenset(n for n in os.listdir(self.claim_dir) if _PARTIAL_ID.fullmatch(n))
        except OSError:
            return frozenset()

    def _facts_path(self, name: str) -> Path:
        return self.partial_dir / f"{name}{_FACTS_SUFFIX}"

    def _marker(self, name: str, suffix: str) -> Path:
        return self.partial_dir / f"{name}{suffix}"

    def _slot_link(self, rel: str) -> Path:
        return Path(self._slot_link_text(rel))

    def _slot_link_text(self, rel: str) -> str:
        import hashlib  # (not loaded by a process that only sweeps or lists)

        digest = hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{self._slot_dir_text}/{digest}"

    def _link_slot(self, rel: str, upload_id: str) -> None:
        """Make `upload_id` the resumable upload of `rel`, dropping an earlier one that no
        request holds (the client started over)."""
        link = self._slot_link(rel)
        self.drop_abandoned(rel, keep=upload_id)
        scratch = self.slot_dir / f".{upload_id}"
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
        os.symlink(upload_id, scratch)
        os.replace(scratch, link)
        self._slots_listed = (self.monotonic(), True)

    def _slots_maybe(self) -> bool:
        """Whether some resumable upload may have a slot link: False when the slot directory
        was empty at its listing less than SLOTS_LISTED_FOR ago and this process has made no
        link there since. (A plain PUT's commit then has no slot to look up; a resumable
        upload another process has started in that time, or this one while a listing on
        another thread was under way, is left to the sweeper, which removes one whose path
        is stored.)"""
        now = self.monotonic()
        listed_at, anything = self._slots_listed
        if now - listed_at >= SLOTS_LISTED_FOR:
            try:
                with os.scandir(self._slot_dir_text) as entries:
                    anything = next(entries, None) is not None
            except OSError:
                anything = True
            self._slots_listed = (now, anything)
        return anything

    def drop_abandoned(self, rel: str, keep: str | None = None) -> bool:
        """Remove the resumable upload of `rel` (other than `keep`) if no request holds it:
        its slot was uploaded another way, or started over. Whether one was removed."""
        link = self._slot_link_text(rel)
        try:
            upload_id = os.readlink(link)
        except OSError:
            return False
        if upload_id == keep or not _PARTIAL_ID.fullmatch(upload_id):
            return False
        removed = self._remove_unheld(upload_id)
        if removed:
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(link) == upload_id:
                    os.unlink(link)
        return removed

    def _remove_unheld(self, upload_id: str) -> bool:
        """Remove the resumable partial `upload_id` and its files unless a request holds it.
        Whether it was removed."""
        path = self.partial_dir / upload_id
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            fd = None
        except OSError:
            return False
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return False  # held: a live upload
                path.unlink(missing_ok=True)
            for suffix in _SUFFIXES:
                self._marker(upload_id, suffix).unlink(missing_ok=True)
            (self.claim_dir / upload_id).unlink(missing_ok=True)
            return True
        finally:
            if fd is not None:
                os.close(fd)

    def open_reader(self, stored: StoredFile) -> LocalReader:
        """Open `stored` for reading. Raises NotFound when it is gone."""
        try:
            return LocalReader(os.open(stored.location, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            raise NotFound("not found") from None

    def delete(self, rel: str) -> bool:
        """Remove the file at `rel` (and a metadata file of its) and prune emptied
        directories; whether one was there. Blocking."""
        for _ in range(3):  # (again if the file changed as it was looked at)
            try:
                real, st = self._resolve(rel)
            except NotFound:
                return False
            if not stat.S_ISREG(st.st_mode):
                return False
            meta = self._read_meta(real, st, rel)
            if self._remove_stored(rel, real, st, meta):
                self._prune_dirs(Path(real).parent)
                return True
        return False

    def _remove_stored(
        self, rel: str, path: str | Path, st: os.stat_result, meta: Mapping[str, object] | None
    ) -> bool:
        """Remove the stored file `path` (at `rel`, with metadata `meta`) if it is still the
        file `st` was taken of, with its metadata file, out of the usage counts; whether it
        was removed.

        Another node may have removed that file since, and an upload stored a new one at its
        path, perhaps with the same inode number (freed inodes are soon given out again): the
        new one must stay, and keep its metadata. So the file is held open while it is
        compared and removed, which keeps its inode from being given to another file: the
        inode-keyed metadata file removed after it is surely its own. The last look and the
        removal by name are made under an exclusive lock on its directory, which commits
        take shared to link a file there (`_link_at`), so that no file is linked in between.
        (Where directories take no flock(2), as on NFS, that window of a system call stays.)
        """
        self.held.let_go(rel)  # (its blocks go with its name, not at the next release_idle)
        fd = _open_to_hold(path)
        if fd is None:
            return False
        try:
            if self.accounting is not None:
                # Wait for a commit that has just linked it to count it (see `commit`).
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_SH)
            held = os.fstat(fd)
            if not stat.S_ISREG(held.st_mode) or identity(held) != identity(st):
                return False
            directory, name = os.path.split(path)
            try:
                dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    with contextlib.suppress(OSError):
                        fcntl.flock(dir_fd, fcntl.LOCK_EX)
                    if not os.path.samestat(os.lstat(name, dir_fd=dir_fd), held):
                        return False
                    os.unlink(name, dir_fd=dir_fd)
                finally:
                    os.close(dir_fd)
            except FileNotFoundError:
                return False
            self._uncounted(rel, held.st_size, meta)
            self._meta_path(held.st_ino).unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def free_bytes(self) -> int | None:
        """Bytes an unprivileged process may still write on the storage's filesystem (None
        when the system does not say). One statfs(2)."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def count_usage(self) -> Usage:
        """Keep the bytes stored, per uploader and in all, up to date from now on (for the
        quotas; `rebuild_usage` counts what is there)."""
        if self.accounting is None:
            self.accounting = Usage(self._state / "usage", self.clock)
        return self.accounting

    def rebuild_usage(self) -> Counts:
        """Count the stored files again into the usage counts. Blocking: a walk."""
        accounting = self.count_usage()

        def walked() -> Iterator[tuple[str, int, str | None, float]]:
            for rel, path, st in self._walk():
                uploader = (self._read_meta(path, st, rel) or {}).get("uploader")
                yield rel, st.st_size, uploader if isinstance(uploader, str) else None, (
                    st.st_ctime
                )

        return accounting.rebuild(walked)

    def _walk(self) -> Iterator[tuple[str, str, os.stat_result]]:
        """Every regular file stored: its signed path, real path and status."""
        root = str(self.root)
        for directory, subdirs, names in os.walk(root):
            if directory == root and RESERVED_SEGMENT in subdirs:
                subdirs.remove(RESERVED_SEGMENT)
            rel_dir = os.path.relpath(directory, root)
            prefix = "" if rel_dir == "." else rel_dir + "/"
            for name in sorted(names):
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield prefix + name, path, st

    def _uncounted(self, rel: str, size: int, meta: Mapping[str, object] | None) -> None:
        """A stored file (with its metadata `meta`) is gone: out of the usage counts, when
        they are kept."""
        if self.accounting is None:
            return
        uploader = (meta or {}).get("uploader")
        with contextlib.suppress(OSError):
            self.accounting.removed(rel, size, uploader if isinstance(uploader, str) else None)

    def files(self) -> Iterator[StoredFile]:
        """Every stored file with its metadata, expired ones included. Blocking."""
        for rel, path, st in self._walk():
            yield self._stored(rel, path, st)

    def check(self) -> str:
        """Whether uploads can be stored here: "ok", or a short reason (see
        `check_storage`). Blocking."""
        return check_storage(self.root, self.partial_dir)

    def usage(self) -> tuple[int, int]:
        """How many files are stored, and how many bytes they hold, the partials of resumable
        uploads kept for a resumption included. Blocking."""
        count = total = 0
        for stored in self.files():
            count += 1
            total += stored.size
        for entry in self.partial_dir.iterdir():
            if _PARTIAL_ID.fullmatch(entry.name) and self._facts_path(entry.name).exists():
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
        return count, total

    # -- inspection and repair, for the admin commands (safe while the service runs) ---------

    #: Metadata this young may belong to an upload being linked into place right now.
    metadata_grace = _META_GRACE

    def recorded_metadata(self, stored: StoredFile) -> dict[str, object] | None:
        """The metadata recorded for `stored` (as `files` found it), whether or not it agrees
        with the file: its extended attribute, else the file kept for its inode if that
        names its path; one that agrees is preferred. None when there is none. Blocking."""
        try:
            st = os.lstat(stored.location)
        except OSError:
            return None
        candidates: list[tuple[bytes, bool]] = []  # (what is recorded, kept by inode)
        if self._read_xattrs and (attribute := _xattr_of(stored.location)) is not None:
            candidates.append((attribute, False))
        with contextlib.suppress(OSError):
            candidates.append((self._meta_path(st.st_ino).read_bytes(), True))
        disagreeing: dict[str, object] | None = None
        for raw, by_inode in candidates:
            meta = _valid_meta(raw, st, stored.rel)
            if meta is not None:
                return meta
            try:
                decoded = json.loads(raw)
            except ValueError:
                continue
            # A metadata file naming another path belongs to another (removed) file whose
            # inode this one got: an orphan, not this file's.
            if isinstance(decoded, dict) and not (by_inode and decoded.get("path") != stored.rel):
                disagreeing = disagreeing or decoded
        return disagreeing

    def write_metadata(self, stored: StoredFile, content_type: str) -> bool:
        """Record metadata for `stored`, a file that has none (see `recorded_metadata`), the
        way a commit records it: `content_type`, uploaded at its mtime, no expiry and no
        uploader. False, writing nothing, when the file at its path is no longer the one
        described or has metadata by now. Blocking; raises OSError."""
        fd = os.open(stored.location, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (
                not stat.S_ISREG(st.st_mode)
                or (st.st_size, st.st_mtime) != (stored.size, stored.mtime)
                or self.recorded_metadata(stored) is not None
            ):
                return False
            encoded = encode_meta(
                stored.rel, st.st_size, content_type=content_type, uploaded=st.st_mtime,
                expires=None, scheme="", uploader=None,
            )
            if self.xattrs:
                try:
                    os.setxattr(fd, META_XATTR, encoded)
                    return True
                except OSError as e:
                    if e.errno not in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
                        raise
            _write_file(self._meta_path(st.st_ino), encoded, fsync=self.fsync)
            return True
        finally:
            os.close(fd)

    def orphaned_metadata(self) -> Iterator[OrphanedMetadata]:
        """The metadata files that describe no stored file (its file was removed or replaced
        behind the server's back), judged as `sweep` judges them, young ones included (those
        may belong to an upload being linked into place right now). Blocking."""
        for meta_path in self._metas():
            orphan = self._orphaned(meta_path)
            if orphan is not None:
                yield orphan

    def remove_orphaned_metadata(
        self, orphan: OrphanedMetadata, *, min_age: float = metadata_grace
    ) -> bool:
        """Remove the metadata file of `orphan` if it still describes no stored file and was
        last written more than `min_age` seconds ago: an upload writes its metadata before
        it links its file, so a young orphan may be one being linked now. Whether it was
        removed. Blocking."""
        path = Path(orphan.location)
        if path.parent.parent != self.meta_dir:
            return False
        again = self._orphaned(path)
        if again is None or again.written != orphan.written:
            return False  # (it describes a file again, or was written since)
        if self.clock() - again.written <= min_age:
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _orphaned(self, meta_path: Path) -> OrphanedMetadata | None:
        try:
            written = meta_path.stat().st_mtime
            raw = meta_path.read_bytes()
            ino = int(meta_path.stem)
        except (OSError, ValueError):
            return None
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None  # unreadable: it describes nothing
        rel = meta.get("path") if isinstance(meta, dict) else None
        if isinstance(rel, str):
            try:
                if os.lstat(self.path_of(rel)).st_ino == ino:
                    return None
            except (OSError, ValueError):
                pass
        return OrphanedMetadata(str(meta_path), rel if isinstance(rel, str) else None, written)

    def partial_files(self) -> list[PartialFile]:
        """Every partial upload of the partial directory, with why a sweep would remove it
        now, judged as `sweep` judges them given no partial known to be live,
        without removing or locking anything. A resumable upload past `resumable_ttl` that a
        request of some process still holds shows as abandoned, although the sweep (which
        tries its lock) keeps it. Unnamed partials (O_TMPFILE) have no name to find.
        Blocking."""
        now = self.clock()
        found: list[PartialFile] = []
        plain, resumable = self._partial_entries()
        for entry, st in plain:
            idle = st.st_mtime < now - PARTIAL_MAX_IDLE
            reason = "untouched for more than a day" if idle else None
            found.append(PartialFile(entry.name, "plain", st.st_size, st.st_mtime, reason))
        for upload_id in sorted(resumable):
            found.append(self._resumable_file(upload_id, now))
        return found

    def _resumable_file(self, upload_id: str, now: float) -> PartialFile:
        """`partial_files`' judgement of a resumable upload (as `_sweep_resumable` judges)."""
        try:
            state = self.describe(upload_id)
        except NotFound:
            state = None
        reason: str | None = None
        if state is None:
            newest, size = 0.0, 0
            for suffix in ("", *_SUFFIXES):
                with contextlib.suppress(OSError):
                    st = self._marker(upload_id, suffix).stat()
                    newest = max(newest, st.st_mtime)
                    size += st.st_size if suffix == "" else 0
            if newest < now - _META_GRACE:
                reason = "left without its facts"
            return PartialFile(upload_id, "stray", size, newest, reason)
        kind = "completed" if state.complete else "resumable"
        if not state.complete and self._stored_at(state.rel):
            reason = "its path was stored by another upload"
        elif state.touched < now - self.resumable_ttl:
            reason = "past resumable_ttl"
        size = 0 if state.complete else state.received
        return PartialFile(upload_id, kind, size, state.touched, reason)

    def sweep_partials(self) -> SweepReport:
        """Remove the abandoned partial uploads, and nothing else, exactly as `sweep` does
        (a resumable upload that a request of any process holds stays). Blocking."""
        report = SweepReport()
        self._sweep_partials(self.clock(), self.live_names(), report)
        return report

    def _stored(self, rel: str, real: str, st: os.stat_result) -> StoredFile:
        meta = self._read_meta(real, st, rel) or {}
        content_type = meta.get("content_type")
        return StoredFile(
            rel=rel,
            location=real,
            size=st.st_size,
            mtime=st.st_mtime,
            content_type=content_type if isinstance(content_type, str) else None,
            uploaded=_number(meta.get("uploaded")),
            expires=_number(meta.get("expires")),
            uploader=uploader if isinstance(uploader := meta.get("uploader"), str) else None,
        )

    # -- partial files made ahead of time -----------------------------------------------------

    def _create_partial(self, *, named: bool = False) -> _Partial:
        # Read as well as written: a retry's body is compared with the stored file.
        if self.tmpfiles and not named:
            fd = os.open(self.partial_dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644)
            return _Partial(fd, None, "")  # (named by its inode when asked: see LocalPartial)
        path = self.partial_dir / _token(16)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        return _Partial(fd, path, path.name)

    def _take_pooled(self) -> _Partial | None:
        """A pooled partial file, or None when none is fresh enough or the pool is on
        another filesystem than the storage directory now (mounted anew under it)."""
        if not self._pool:
            return None
        try:
            device = os.stat(self.partial_dir).st_dev
        except OSError:
            device = -1
        while True:
            with self._pool_lock:
                if not self._pool:
                    return None
                partial, made, on = self._pool.popleft()
            if on == device and self.clock() - made < POOL_MAX_AGE:
                return partial
            # On a filesystem that was replaced, or old enough that a sweep (of another
            # process) could take it for abandoned.
            _discard(partial)

    def wants_refill(self) -> bool:
        """Whether `refill` should run (cheap; reactor thread). Only in durable mode: there a
        file's creation may wait behind the journal's flushes, and the commits run on threads
        anyway; in fast mode creating one costs the reactor less than a thread's hand-off."""
        return self.fsync and len(self._pool) < POOL_SIZE // 2

    def refill(self) -> None:
        """Make empty partial files ahead of time, up to POOL_SIZE. Blocking: on a thread.

        Raises OSError (disk full, permissions): `begin` then reports it for the upload."""
        while len(self._pool) < POOL_SIZE:
            partial = self._create_partial()
            st = os.fstat(partial.fd)
            if not partial.name:
                partial = dataclasses.replace(partial, name=f"#{st.st_ino}")
            device = st.st_dev
            with self._pool_lock:
                self._pool.append((partial, self.clock(), device))

    def live_names(self) -> frozenset[str]:
        """Partial files waiting in the pool (live: the sweeper must leave them alone)."""
        with self._pool_lock:
            return frozenset(partial.name for partial, _, _ in self._pool)

    def failed(self, error: OSError) -> StorageFailure:
        """What a write or commit that failed with `error` is answered. The pool's files are
        dropped too: they may be on a filesystem that went read-only or was replaced under
        the storage directory (unmounted, checked and mounted again), where every upload
        would keep failing; the next ones are made wherever the directory is now."""
        self.close()
        return StorageFailure(f"cannot store: {os.strerror(error.errno or 0)}")

    def close(self) -> None:
        """Remove the pool's files and let go of the files held open (at shutdown)."""
        self.held.let_go()
        while True:
            with self._pool_lock:
                if not self._pool:
                    return
                partial, _, _ = self._pool.popleft()
            _discard(partial)

    def _link_into_place(self, upload: LocalPartial) -> None:
        """Give the complete partial file its name at the upload's path, creating the missing
        directories on the way. Never replaces. Raises Conflict (the path, or a directory on
        it, is taken), BadRequest (a link on the way leaves the storage directory), OSError.

        The directories that were there are walked one at a time, each opened relative to its
        parent without following links, so that none is resolved twice and nothing can be
        swapped in between; a link on the way takes the slower route that checks where it
        leads. (Directories this commit makes are its own: see `_open_parents`.) In durable
        mode every directory that got a new entry is synced: the file's and each one created.
        """
        *parents, name = upload.rel.split("/")
        for _ in range(3):
            try:
                walked = self._open_parents(parents)
            except FileNotFoundError:
                continue  # a sweep pruned a directory as we made the one below it
            if walked is None:
                self._link_through_links(upload)
                return
            opened, fresh, (dir_fd, below) = walked
            try:
                try:
                    self._link_at(upload, dir_fd, below + name, fresh=fresh)
                except FileNotFoundError:
                    continue  # a sweep pruned the (empty) directory we had just opened
                if self.fsync:
                    for fd, got_entry in opened:
                        if got_entry:
                            os.fsync(fd)
                return
            finally:
                for fd, _ in opened:
                    os.close(fd)
        raise StorageFailure("cannot store: directories keep disappearing")

    def _open_parents(
        self, parents: list[str]
    ) -> tuple[list[tuple[int, bool]], bool, tuple[int | None, str]] | None:
        """Open (making what is missing) the directories `parents` below the storage root.
        Return each descriptor, deepest last, with whether an entry is made in it (a new
        directory below it, or the file in the last); whether the deepest was made just now;
        and where the file is linked: a descriptor (None: the working directory's) and the
        path below it of the file's directory ("" for the descriptor's own, else ending in
        "/"). None when one of the directories is a link.

        The root itself is among them when it is the file's directory, or in durable mode (it
        is synced when it gets a new directory); else its first directory is made and opened
        by its path below the root's, which the kernel resolves as it would the root's. In
        fast mode (nothing to sync) a deepest directory this commit has just made is not
        opened: the file is linked by its path below its parent, a new directory no other
        process has a reason to replace (a sweep that prunes it meanwhile fails the link, which
        is then tried again)."""
        fd: int | None = None
        opened: list[tuple[int, bool]] = []
        if self.fsync or not parents:
            fd = os.open(self._real_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.append((fd, not parents))
        made = False
        last = len(parents) - 1
        try:
            for depth, segment in enumerate(parents):
                where = segment if fd is not None else f"{self._real_root}/{segment}"
                try:
                    os.mkdir(where, dir_fd=fd)
                    made = True
                    if opened:
                        opened[-1] = (opened[-1][0], True)
                except FileExistsError:
                    made = False
                except NotADirectoryError:
                    raise Conflict("path is in use") from None
                if made and depth == last and not self.fsync:
                    return opened, True, (fd, where + "/")
                try:
                    below = os.open(
                        where,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=fd,
                    )
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    if stat.S_ISLNK(os.lstat(where, dir_fd=fd).st_mode):
                        for held, _ in opened:
                            os.close(held)
                        return None
                    raise Conflict("path is in use") from None
                fd = below
                opened.append((fd, False))
            opened[-1] = (opened[-1][0], True)
        except BaseException:
            for held, _ in opened:
                os.close(held)
            raise
        return opened, made, (fd, "")

    def _link_at(
        self, upload: LocalPartial, dir_fd: int | None, name: str, *, fresh: bool = False
    ) -> None:
        # Under a lock on the directory shared with other commits, which a removal of a file
        # from it takes alone (`_remove_stored`): a file linked here cannot be the one it
        # removes by name just after it looked. Not in a `fresh` directory, which this commit
        # made just now: empty when made, it holds no file but those other commits link there
        # since, and a removal can only have looked at one of those, whose name this link
        # then finds taken (a file of another name is not this one).
        # (`dir_fd` is None only for a fresh directory, linked into by its path.)
        locked = dir_fd if not fresh else None
        if locked is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(locked, fcntl.LOCK_SH)
        try:
            if upload.partial is None:
                _link_unnamed(upload.fileno(), dir_fd, name)
            else:
                os.link(upload.partial, name, dst_dir_fd=dir_fd)
        except FileExistsError:
            raise Conflict("file already exists") from None
        except NotADirectoryError:
            raise Conflict("path is in use") from None
        finally:
            if locked is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(locked, fcntl.LOCK_UN)

    def _link_through_links(self, upload: LocalPartial) -> None:
        """`_link_into_place` for a path through a symbolic link, which must lead to a
        directory inside the storage directory (and outside its bookkeeping directory)."""
        final = self.path_of(upload.rel)
        # Where the links lead is checked before any directory is made (realpath resolves
        # the part that exists), so none is made outside; and again once they all exist.
        self._inside_or_refuse(final.parent)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict("path is in use") from None
        real = self._inside_or_refuse(final.parent)
        dir_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._link_at(upload, dir_fd, final.name)
            if self.fsync:
                os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _inside_or_refuse(self, path: Path) -> str:
        """The real path of `path`; BadRequest if it is outside the storage directory or in
        its bookkeeping directory."""
        real = os.path.realpath(path)
        if not _is_within(real, self._real_root) or _is_within(real, self._real_state):
            raise BadRequest("path leaves the storage directory")
        return real

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
        self._sweep_partials(now, active, report)
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
                if self._remove_stored(str(rel), target, st, meta):
                    report.expired += 1
                self._prune_dirs(target.parent)
        self._sweep_stored(now, report)
        return report

    def _partial_entries(self) -> tuple[list[tuple[Path, os.stat_result]], set[str]]:
        """What the partial directory holds, judged once for the sweep and for the admin's
        inspection alike: the plain partial files (with their status), and the resumable
        uploads by id (from their facts and markers, or a named partial whose facts were lost
        but whose append marker names it)."""
        plain: list[tuple[Path, os.stat_result]] = []
        resumable: set[str] = set()
        for entry in self.partial_dir.iterdir():
            name = entry.name
            if (upload_id := _resumable_id(name)) is not None:
                resumable.add(upload_id)
            elif self._facts_path(name).exists():
                continue  # a resumable partial: its facts name it
            elif _PARTIAL_ID.fullmatch(name) and self._marker(name, _APPENDING).exists():
                resumable.add(name)
            else:
                try:
                    plain.append((entry, entry.stat()))
                except FileNotFoundError:
                    continue
        return plain, resumable

    def _sweep_partials(self, now: float, active: frozenset[str], report: SweepReport) -> None:
        """Remove partial files no upload will finish: plain ones idle for PARTIAL_MAX_IDLE,
        resumable ones past `resumable_ttl`."""
        plain, resumable = self._partial_entries()
        for entry, st in plain:
            if entry.name not in active and st.st_mtime < now - PARTIAL_MAX_IDLE:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    report.partials += 1
        for upload_id in resumable:
            self._sweep_resumable(upload_id, now, active, report)
        self._sweep_slots()

    def _sweep_resumable(
        self, upload_id: str, now: float, active: frozenset[str], report: SweepReport
    ) -> None:
        """Keep a resumable upload while a request holds it or for `resumable_ttl` after its
        last byte (a completed one's record: after its commit); remove it after that."""
        try:
            state = self.describe(upload_id)
        except NotFound:
            state = None
        if state is None:
            if upload_id in active:
                return
            # Markers or a partial without facts: left by a crash, or made as we looked.
            newest = 0.0
            for suffix in ("", *_SUFFIXES):
                with contextlib.suppress(OSError):
                    newest = max(newest, self._marker(upload_id, suffix).stat().st_mtime)
            if newest >= now - _META_GRACE:
                return
        else:
            live = upload_id in active
            # A slot uploaded another way meanwhile (while this was still held): this could
            # only ever end as a retry of that file, and goes.
            superseded = not state.complete and not live and self._stored_at(state.rel)
            if (live or state.touched >= now - self.resumable_ttl) and not superseded:
                if not state.complete:
                    report.kept += 1
                    report.kept_bytes += state.received
                return
        if self._remove_unheld(upload_id):
            report.partials += 1
        elif state is not None and not state.complete:
            report.kept += 1  # held by a request of another process
            report.kept_bytes += state.received

    def _stored_at(self, rel: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path_of(rel)).st_mode)
        except (OSError, ValueError):
            return False

    def _sweep_slots(self) -> None:
        """Remove the slot links and claims whose resumable upload is gone."""
        for name in self.claimed():
            if not (self.partial_dir / f"{name}{_FACTS_SUFFIX}").exists():
                (self.claim_dir / name).unlink(missing_ok=True)
        for link in self.slot_dir.iterdir():
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if not (self.partial_dir / f"{target}{_FACTS_SUFFIX}").exists():
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()

    def _sweep_stored(self, now: float, report: SweepReport) -> None:
        """Walk the stored files: remove those whose extended attribute says they have
        expired, and count the others into `report`."""
        expired: list[tuple[str, str, os.stat_result, dict[str, object] | None]] = []
        for rel, path, st in self._walk():
            if self._read_xattrs:
                meta = _valid_meta(_xattr_of(path), st, rel)
                expires = _number(meta.get("expires")) if meta is not None else None
                if expires is not None and expires <= now:
                    expired.append((rel, path, st, meta))
                    continue
            report.files += 1
            report.bytes += st.st_size
        # Removed after the walk, which would otherwise step into directories pruned under it
        # (each only if it is still the file walked: see `_remove_stored`).
        for rel, path, st, meta in expired:
            if self._remove_stored(rel, path, st, meta):
                report.expired += 1
            self._prune_dirs(Path(path).parent)

    def _prune_dirs(self, directory: Path) -> None:
        """Remove now-empty directories between a removed file and the storage root."""
        root = self.root
        while directory != root and root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


_PARTIAL_ID = re.compile(r"[0-9a-f]{32}")
_FACTS_SUFFIX = ".json"
#: Beside a resumable partial: its holder is an append (not the request that created it).
_APPENDING = ".appending"
_SUFFIXES = (_FACTS_SUFFIX, _APPENDING)


@quick_init
@dataclass(frozen=True)
class _PartialFacts:
    """What a partial upload is for (kept beside a reopenable partial as JSON)."""

    rel: str
    size: int
    content_type: str
    expires: float | None
    scheme: str
    started: float
    #: The upload was committed: only these facts are left, for its upload resource.
    completed: bool = False
    #: ... by reaching its size, no request having said it was complete.
    by_size: bool = False
    uploader: str | None = None

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, raw: bytes) -> _PartialFacts:
        """Raises ValueError when `raw` is not what `encode` wrote."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            facts = cls(**data)
        except TypeError as e:
            raise ValueError(str(e)) from None
        if not isinstance(facts.rel, str) or type(facts.size) is not int:
            raise ValueError("wrong types")
        return facts


class LocalReader:
    """A stored file opened for reading ranges (`pread`, or `sendfile` from `fileno`)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def read(self, offset: int, count: int) -> bytes:
        assert self._fd is not None
        return os.pread(self._fd, count, offset)

    def fileno(self) -> int | None:
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LocalPartial:
    """One body being received into a file of the storage directory's partial directory:
    written as it arrives, then committed (linked into place) or aborted."""

    #: (a file takes bytes wherever its request ends)
    body_end: int | None = None

    def __init__(
        self, storage: LocalStorage, facts: _PartialFacts, partial: _Partial, reopenable: bool
    ) -> None:
        self.storage = storage
        self.rel = facts.rel
        self.size = facts.size
        self.content_type = facts.content_type
        #: The partial file's path; None when it has no name (O_TMPFILE).
        self.partial = partial.path
        self._name = partial.name
        #: A reopenable partial is known by its name; any other gets an identity of its own.
        self.reopenable = reopenable
        self._id = partial.name if reopenable else None
        self.expires = facts.expires
        self.scheme = facts.scheme
        self.uploader = facts.uploader
        self.started = facts.started
        self.received = 0
        self._fd: int | None = partial.fd
        #: Bytes of the body handed to `start_writeback` so far.
        self._written_back = 0
        self.done = False
        #: Whether the holder of this reopened partial is an append (see `LocalStorage.reopen`).
        self.appending = False
        #: The claim of the request that holds it (see `LocalStorage.claim`), if it made one.
        self.claim: str | None = None
        #: Committed because it reached its size (see `PartialState.by_size`).
        self.by_size = False
        #: Whether the commit made it visible (a reopenable one then leaves its facts).
        self._completed = False

    @property
    def name(self) -> str:
        """The partial file's name (for the sweeper's list of live uploads); an unnamed one's
        is "#<inode>", as /proc shows it, found out when first asked for."""
        if not self._name and self._fd is not None:
            with contextlib.suppress(OSError):
                self._name = f"#{os.fstat(self._fd).st_ino}"
        return self._name

    @property
    def id(self) -> str:
        """The upload's identity (made when first asked for: most uploads never are)."""
        if self._id is None:
            self._id = _token(16)
        return self._id

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
            raise self.storage.failed(e) from e
        self.received += len(data)
        self._maybe_write_back()

    def fileno(self) -> int:
        """The partial file's descriptor, for a caller that appends body bytes to it itself
        (splice(2)) and reports them with `wrote`. Raises StorageFailure once it is closed."""
        if self._fd is None:
            raise StorageFailure("upload already closed")
        return self._fd

    def wrote(self, count: int) -> None:
        """Count `count` body bytes the caller appended to `fileno()`. Raises TooLarge past
        the declared size."""
        if count < 0 or self.received + count > self.size:
            raise TooLarge("body longer than Content-Length")
        self.received += count
        self._maybe_write_back()

    def failed(self, error: OSError) -> StorageFailure:
        return self.storage.failed(error)

    def _maybe_write_back(self) -> None:
        """In durable mode, have the disk start writing each WRITEBACK_STEP of the body as it
        arrives, so that the fsync at the end waits only for the last stretch."""
        storage = self.storage
        behind = self.received - self._written_back
        if storage.fsync and behind >= WRITEBACK_STEP and storage.background is not None:
            assert self._fd is not None
            storage.background(start_writeback, self._fd, self._written_back, behind)
            self._written_back = self.received

    def can_commit_inline(self, compare: bool = False) -> bool:
        """Whether `commit(compare, inline=True)` may be made on the reactor's thread.

        True in fast mode (no fsync) with no body to compare: the commit then only opens,
        creates and links names and sets an attribute, none of which waits for the disk.
        """
        return not self.storage.fsync and not compare and self.storage.accounting is None

    def commit(  # noqa: PLR0912, PLR0915 (one commit: compare, metadata, fsync, link, with one cleanup)
        self, compare: bool = False, *, inline: bool = False
    ) -> StoredFile:
        """Make the complete body visible at its path, with its metadata. Blocking.

        With `compare` (a file of the same size was stored at the path when the upload was
        admitted) the body is first compared with that file, byte for byte: an identical body
        is a client retrying after it lost our 201, a success that leaves the stored file as
        it is; a different one is a conflict. A concurrent upload that links the path first is
        judged the same way, except that an `inline` commit raises CompareOnThread for it and
        keeps the partial file for the commit that compares. Raises Conflict, StorageFailure,
        BadRequest (incomplete body).
        """
        if self.received != self.size:
            self.abort()
            raise BadRequest("body shorter than Content-Length")
        storage = self.storage
        handed_over = False
        try:
            fd = self._fd
            assert fd is not None
            if compare:
                same = self._identical_stored()
                if same is not None:
                    self._committed()
                    return same
            uploaded = storage.clock()
            encoded = encode_meta(
                self.rel, self.size, content_type=self.content_type, uploaded=uploaded,
                expires=self.expires, scheme=self.scheme, uploader=self.uploader,
            )
            meta_path: Path | None = None
            if storage.xattrs:
                try:
                    # On the partial file itself: the fsync of its data below covers it too.
                    os.setxattr(fd, META_XATTR, encoded)
                except OSError as e:
                    # Too large for this filesystem's attributes (a long path): a file then.
                    if e.errno not in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
                        raise
                    meta_path = storage._meta_path(os.fstat(fd).st_ino)
            else:
                meta_path = storage._meta_path(os.fstat(fd).st_ino)
            if storage.fsync:
                os.fsync(fd)
            if meta_path is not None:
                _write_file(meta_path, encoded, fsync=storage.fsync)
            if storage.accounting is not None:
                # Held until it is counted (the partial is closed after that): a node that
                # removes the file meanwhile waits for it, so that it is never uncounted
                # before it was counted (counts do not go below zero: that would be lost).
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (not linked yet: free)
            try:
                storage._link_into_place(self)
            except Conflict:
                if meta_path is not None:
                    meta_path.unlink(missing_ok=True)
                # A concurrent retry of the same upload may have won the race with the
                # same bytes: that is a success, not a conflict.
                if inline:
                    if not _same_size_file(storage.path_of(self.rel), self.size):
                        storage.existing(self.rel)  # (the refusal for what is there)
                        raise
                    handed_over = True
                    raise CompareOnThread() from None
                winner = self._identical_stored()
                if winner is None:
                    # Not a stored file: a directory or a link out of the storage ("path is
                    # in use", as an admission that found it there says), or gone again.
                    storage.existing(self.rel)
                    raise
                self._committed()
                return winner
            except BaseException:
                if meta_path is not None:
                    meta_path.unlink(missing_ok=True)
                raise
            self._committed()
            if storage.accounting is not None:
                with contextlib.suppress(OSError):
                    storage.accounting.added(self.rel, self.size, self.uploader)
            return StoredFile(  # (positional: keywords would cost a dictionary per upload)
                self.rel,
                storage._location(self.rel),
                self.size,
                uploaded,  # mtime (as an object store's: its last write was a moment before)
                self.content_type,
                uploaded,
                self.expires,
                self.uploader,
            )
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise BadRequest("file name too long") from e
            raise storage.failed(e) from e
        finally:
            if not handed_over:
                self.abort()

    def _committed(self) -> None:
        """The body is visible at its path: a resumable upload leaves its facts, marked
        completed, for its upload resource; any other resumable upload of the same slot was
        abandoned, and goes."""
        storage = self.storage
        if self.reopenable:
            self._completed = True
            facts = _PartialFacts(
                self.rel,
                self.size,
                self.content_type,
                self.expires,
                self.scheme,
                self.started,
                completed=True,
                by_size=self.by_size,
                uploader=self.uploader,
            )
            with contextlib.suppress(OSError):
                _write_file(storage._facts_path(self.name), facts.encode(), fsync=False)
        if self.reopenable:
            (storage.claim_dir / self.name).unlink(missing_ok=True)
        if self.reopenable or storage._slots_maybe():
            with contextlib.suppress(OSError):
                storage.drop_abandoned(self.rel, keep=self.name if self.reopenable else None)

    def _identical_stored(self) -> StoredFile | None:
        """The file stored at our path if it holds exactly our body; None if none is there.

        Raises Conflict when the file there differs (or has expired). Reads both files through,
        a chunk at a time: blocking.
        """
        try:
            stored = self.storage.lookup(self.rel)
        except NotFound:
            return None
        except Gone:
            raise Conflict("file already exists") from None
        assert self._fd is not None
        if stored.size != self.size or not _same_bytes(self._fd, stored.location, self.size):
            raise Conflict("file already exists")
        return stored

    def abort(self) -> None:
        """Forget the body: close and remove the partial file (a resumable upload's files
        too, but for the facts of a completed one). Safe to call more than once."""
        self.done = True
        if self.partial is not None:
            # Removed while still held, so that no other request reopens it in between.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial)
            if self.reopenable:
                storage = self.storage
                for suffix in _SUFFIXES:
                    if suffix != _FACTS_SUFFIX or not self._completed:
                        storage._marker(self.name, suffix).unlink(missing_ok=True)
                (storage.claim_dir / self.name).unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Let go of the partial but keep a reopenable one for `LocalStorage.reopen` (an
        upload cut off that may be resumed, or one whose part has arrived); anything else is
        aborted."""
        if not self.reopenable:
            self.abort()
            return
        self.done = True
        if self._fd is not None:
            if self.appending:
                self.storage._marker(self.name, _APPENDING).unlink(missing_ok=True)
                self.appending = False
            os.close(self._fd)  # (which lets go of its lock)
            self._fd = None


def _link_unnamed(fd: int, dir_fd: int | None, name: str) -> None:
    """Give the open file `fd` the name `name` in the directory `dir_fd`, or, with None, the
    absolute path `name` (an unnamed file's first name). Never replaces."""
    # linkat(2) of its /proc/self/fd link, following that link (AT_SYMLINK_FOLLOW). Given no
    # directory descriptor, CPython calls link(2) instead, which links the /proc link itself
    # (and fails: another filesystem); an absolute path makes linkat(2) ignore the descriptor
    # it is given, so the file's own descriptor stands in for one.
    if dir_fd is None:
        assert name.startswith("/")
        dir_fd = fd
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def _discard(partial: _Partial) -> None:
    os.close(partial.fd)
    if partial.path is not None:
        with contextlib.suppress(OSError):
            os.unlink(partial.path)


def _write_file(meta_path: Path, encoded: bytes, *, fsync: bool) -> None:
    """Write a small bookkeeping file (the metadata of a partial file, before it is linked
    into place; the facts of a reopenable partial)."""
    # Written in place: it is keyed by the partial file's inode, which no other existing file
    # can have, so what may stand there already is stale, and nothing reads it before the data
    # is linked into place.
    meta_fd = os.open(meta_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(meta_fd, encoded)
        if fsync:
            os.fsync(meta_fd)
    finally:
        os.close(meta_fd)
    if fsync:
        _fsync_dir(meta_path.parent)


def _same_size_file(path: Path, size: int) -> bool:
    """Whether a regular file of `size` bytes is at `path` (a stat: does not read the disk)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _open_to_hold(path: str | Path) -> int | None:
    """A descriptor of the file `path` (not following a link), to hold its inode; None when
    it cannot be opened."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:  # (a file another server stored, unreadable: never counted)
        pass
    except OSError:
        return None
    try:
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None


def _xattr_of(path: str) -> bytes | None:
    """The metadata attribute of the file `path`, if it has one."""
    try:
        return os.getxattr(path, META_XATTR, follow_symlinks=False)
    except OSError:  # none, or no extended attributes on this filesystem
        return None


def _resumable_id(name: str) -> str | None:
    """The resumable upload whose facts or marker file `name` is, if it is one."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and _PARTIAL_ID.fullmatch(name[: -len(suffix)]):
            return name[: -len(suffix)]
    return None


def _valid_meta(raw: bytes | None, st: os.stat_result, rel: str) -> dict[str, object] | None:
    """Metadata `raw` (JSON) if it describes the file `st` stored at `rel`, else None."""
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("path") != rel or meta.get("size") != st.st_size:
        return None
    return meta


def _same_bytes(fd: int, path: str | Path, size: int) -> bool:
    """Whether the file at `path` holds exactly the `size` bytes that `fd` holds.

    Reads COMPARE_CHUNK bytes of each at a time into the same two buffers, so memory stays flat
    whatever the size.
    """
    try:
        other = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(other)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        ours, theirs = bytearray(min(COMPARE_CHUNK, size)), bytearray(min(COMPARE_CHUNK, size))
        offset = 0
        while offset < size:
            if size - offset < len(ours):
                ours, theirs = bytearray(size - offset), bytearray(size - offset)
            if _pread_full(fd, ours, offset) != len(ours):
                return False
            if _pread_full(other, theirs, offset) != len(theirs) or ours != theirs:
                return False
            offset += len(ours)
        return True
    finally:
        os.close(other)


def _pread_full(fd: int, buffer: bytearray, offset: int) -> int:
    """Fill `buffer` from `fd` at `offset`; how many bytes were read (fewer only at the end)."""
    view = memoryview(buffer)
    got = 0
    while got < len(buffer):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _strerror(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)


def check_storage(  # noqa: PLR0911 (one return per failed check)
    storage_dir: Path,
    partial_dir: Path,
    *,
    min_free_bytes: int = MIN_FREE_BYTES,
    min_free_fraction: float = MIN_FREE_FRACTION,
) -> str:
    """Whether uploads can be stored: "ok", or a short reason why not.

    Checks that `storage_dir` is a directory, that its filesystem has free inodes and more
    free space (for an unprivileged user) than `min_free_bytes` and than `min_free_fraction`
    of its size, and that a small file can be created, written and removed in `partial_dir`.

    Blocking, but quick on a local filesystem: a stat, a statvfs and a create/write/unlink
    (no fsync). A hung network filesystem would stall the calling thread, so run it on a
    thread where that matters. Filesystem errors are the answer, not exceptions; nothing is
    raised. The reasons name no paths (the health report may be read by a load balancer).
    """
    try:
        st = os.stat(storage_dir)
    except FileNotFoundError:
        return "storage directory does not exist"
    except OSError as e:
        return f"storage directory: {_strerror(e)}"
    if not stat.S_ISDIR(st.st_mode):
        return "storage directory is not a directory"
    try:
        fs = os.statvfs(storage_dir)
    except OSError as e:
        return f"storage filesystem: {_strerror(e)}"
    free = fs.f_bavail * fs.f_frsize
    total = fs.f_blocks * fs.f_frsize
    if free < max(min_free_bytes, total * min_free_fraction):
        return f"low disk space: {free // (1024 * 1024)} MiB free"
    if fs.f_files > 0 and fs.f_favail == 0:  # some filesystems report no inode counts at all
        return "no free inodes"
    try:
        # (a random name, as the partials have; 8 random bytes do not collide: no retry)
        name = os.path.join(partial_dir, f".health-{_token(8)}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600)
    except OSError as e:
        return f"partial directory is not writable: {_strerror(e)}"
    result = "ok"
    try:
        try:
            os.write(fd, b"ok\n")
        finally:
            os.close(fd)
    except OSError as e:
        result = f"partial directory is not writable: {_strerror(e)}"
    try:
        os.unlink(name)
    except OSError as e:
        if result == "ok":
            result = f"cannot remove a file from the partial directory: {_strerror(e)}"
    return result
