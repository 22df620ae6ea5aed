"""The storage backend interface: what the upload and download paths need from wherever the
files are kept. No HTTP here: a backend raises `hmacfs.core.refusals.Refusal`s, and the HTTP
layer alone turns them into answers.

The local filesystem (`hmacfs.storage.local.LocalStorage`) is the first implementation; an
object store is meant to be a second one without touching the HTTP layer. Calls marked
blocking are made off the reactor thread by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from hmacfs.core.records import quick_init
from hmacfs.core.refusals import Conflict, StorageFailure
from hmacfs.storage.usage import Usage


class CompareOnThread(Exception):
    """An inline commit found that a concurrent upload stored the path first: the bodies
    must be compared, which reads the storage. Commit again, on a thread, with `compare`."""


@quick_init
@dataclass(frozen=True)
class StoredFile:
    """A file that GET can serve, with what is known about it."""

    rel: str
    #: Where the backend keeps it (for the local backend, its real path).
    location: str
    size: int
    #: When it was last written (for the one a commit returns: when it was committed).
    mtime: float
    content_type: str | None
    uploaded: float | None
    expires: float | None
    #: Who uploaded it, where the slot said (a JWT's `sub`, ejabberd's hashed JID), else None.
    uploader: str | None = None


@dataclass
class SweepReport:
    """What one sweep removed, and what is stored after it."""

    expired: int = 0
    partials: int = 0
    orphans: int = 0
    files: int = 0
    bytes: int = 0
    #: Reopenable partials kept for a resumption, and the bytes they hold.
    kept: int = 0
    kept_bytes: int = 0
    #: Whether another node of a shared store swept in this one's stead (the figures are
    #: that node's last sweep's).
    elsewhere: bool = False


@dataclass(frozen=True)
class PartialState:
    """What is known of a reopenable partial upload, read without holding it."""

    id: str
    rel: str
    size: int
    received: int
    #: Whether the upload was completed (committed); its record is kept a while after.
    complete: bool
    #: When it was last written to: it is kept `Backend.resumable_ttl` past that.
    touched: float
    #: Whether it was completed by reaching its size, no request having said it was complete.
    by_size: bool = False


def make_claim(appending: bool, nonce: str) -> str:
    """A claim as backends store it: what kind of request made it, and a nonce."""
    return f"{'append' if appending else 'other'}:{nonce}"


def appending_claim(claim: str) -> bool:
    """Whether an append made `claim` (an append under way does not give way to another)."""
    return claim.startswith("append:")


class Busy(Conflict):
    """A reopenable partial is held by another request (in this process or another one)."""

    def __init__(self, *, appending: bool) -> None:
        super().__init__("upload is in use by another request")
        #: Whether the holder is an append (rather than the request that created it).
        self.appending = appending


class Reader(Protocol):
    """An open stored file, read by ranges."""

    def read(self, offset: int, count: int) -> bytes:
        """Up to `count` bytes from `offset` (fewer only at the end of the file)."""
        ...

    def fileno(self) -> int | None:
        """A descriptor the kernel can send from (sendfile), or None for remote stores."""
        ...

    def close(self) -> None: ...


class Partial(Protocol):
    """The body of one upload being received: appended to, then committed or aborted."""

    @property
    def id(self) -> str:
        """The upload's identity in the store (at least 128 random bits)."""
        ...

    #: The name the sweeper knows its partial by (live partials are left alone).
    name: str
    rel: str
    size: int
    content_type: str
    #: When the stored file is to expire, and the signing scheme that granted it.
    expires: float | None
    scheme: str
    #: Who uploads it, where the slot says (see `StoredFile.uploader`).
    uploader: str | None
    received: int
    #: Whether `abort` has been called or the commit has ended.
    done: bool
    #: Whether the partial survives its process (`Backend.reopen` finds it by `id`).
    reopenable: bool
    #: The claim (`Backend.claim`) of the request that holds a reopened partial, if it made one.
    claim: str | None
    #: Set before a commit of a resumable upload that no request said was complete: it has
    #: all of its size (`PartialState.by_size`).
    by_size: bool
    #: Where the body of the request now writing ends, when the request says (set by the
    #: HTTP layer before the first byte; an object store cuts its pieces there).
    body_end: int | None

    def write(self, data: bytes) -> None:
        """Append body bytes. Raises TooLarge past the size, StorageFailure."""
        ...

    def fileno(self) -> int:
        """A descriptor body bytes may be appended to directly (then reported with `wrote`).
        Raises StorageFailure once closed."""
        ...

    def wrote(self, count: int) -> None:
        """Count bytes appended to `fileno()` directly. Raises TooLarge past the size."""
        ...

    def failed(self, error: OSError) -> StorageFailure:
        """The refusal for an append to `fileno()` that failed with `error` (the backend
        learns that its storage may have gone bad)."""
        ...

    def can_commit_inline(self, compare: bool = False) -> bool:
        """Whether `commit(compare, inline=True)` waits for no disk (may run on the reactor)."""
        ...

    def commit(self, compare: bool = False, *, inline: bool = False) -> StoredFile:
        """Make the complete body visible at its path, never replacing another file.
        Blocking unless `can_commit_inline`. Raises Conflict, StorageFailure, BadRequest,
        CompareOnThread (inline only: the commit must be made again on a thread)."""
        ...

    def abort(self) -> None:
        """Forget the body (idempotent)."""
        ...

    def close(self) -> object:
        """Let go of the partial but keep it for `Backend.reopen` if it is reopenable (an
        upload cut off that may be resumed); abort it otherwise. A remote store's partial
        lets go on the reactor, and returns a Deferred that fires once it has (None
        otherwise)."""
        ...


class Backend(Protocol):
    """Where uploads go and downloads come from.

    A backend whose `remote` attribute is true (an object store) is asked `existing` and
    `lookup` from a thread rather than on the reactor, and streams bodies itself: its
    partials take the client's transport (`attach`) to pause it, and its readers stream
    (`hmacfs.http.body`)."""

    #: Whether the files are elsewhere (an object store): see the class's docstring.
    remote: bool
    #: Whether commits wait for the data to be durable.
    fsync: bool
    file_ttl: float | None
    #: How long a reopenable partial is kept after its last byte (and a completed one's
    #: record after its commit).
    resumable_ttl: float
    #: Runs a blocking call off the caller's thread, ignoring its outcome (set by the server;
    #: None: the backend does such work, e.g. early writeback, not at all).
    background: Callable[..., object] | None
    #: The bytes stored, per uploader and in all, when a quota needs them (else None).
    accounting: Usage | None

    def free_bytes(self) -> int | None:
        """Bytes that may still be stored, as the filesystem (or store) says; None when it
        does not say."""
        ...

    def check(self) -> str:
        """Whether uploads can be stored: "ok", or a short reason that names no path (for
        the health report). Blocking; never raises."""
        ...

    def existing(self, rel: str) -> StoredFile | None:
        """The file stored at `rel`, if any. Raises Conflict when something else is there."""
        ...

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
    ) -> Partial:
        """Start receiving a body of `size` bytes for `rel`. `existing`: what `existing(rel)`
        found there just before (of the same size: the body is to be compared with it; a
        backend may then keep nothing but what the comparison needs). Raises StorageFailure."""
        ...

    def reopen(self, upload_id: str, *, appending: bool = False) -> Partial:
        """Hold the reopenable partial `upload_id`, positioned after what it holds, to append
        more (`appending`) or to read its state. Only one request at a time holds one, in any
        process. Raises NotFound (none, or completed), Busy (another request holds it)."""
        ...

    def describe(self, upload_id: str) -> PartialState:
        """The state of the reopenable partial `upload_id`, also a completed one. Raises
        NotFound."""
        ...

    def claim(self, upload_id: str, *, appending: bool) -> str:
        """Make a new request the newest for the upload `upload_id` (in any process); return
        its claim (see `appending_claim`). Whoever holds the upload and is not that request
        is to let go of it (the HTTP layer looks at `claimed`), and an older request that
        takes it later is to give up (its claim is not `claim_of` any more). Raises
        StorageFailure."""
        ...

    def claim_of(self, upload_id: str) -> str | None:
        """The claim of the newest request for `upload_id`, if any made one."""
        ...

    def claimed(self) -> frozenset[str]:
        """The uploads some request has claimed: cheap enough to ask many times a second."""
        ...

    def lookup(self, rel: str) -> StoredFile:
        """The stored file for `rel`. Raises NotFound, Gone."""
        ...

    def open_reader(self, stored: StoredFile) -> Reader:
        """Open `stored` for reading ranges. Raises NotFound."""
        ...

    def delete(self, rel: str) -> bool:
        """Remove the file at `rel` and its metadata; whether there was one. Blocking."""
        ...

    def files(self) -> Iterator[StoredFile]:
        """Every stored file, expired ones included. Blocking."""
        ...

    def usage(self) -> tuple[int, int]:
        """How many files are stored, and how many bytes they hold. Blocking."""
        ...

    def sweep(self, active: frozenset[str] = frozenset()) -> SweepReport:
        """Remove expired files and abandoned partials (except those named in `active`).
        Blocking."""
        ...

    def wants_refill(self) -> bool:
        """Whether `refill` would help (cheap; any thread)."""
        ...

    def refill(self) -> None:
        """Prepare what makes the next `begin` cheap. Blocking."""
        ...

    def live_names(self) -> frozenset[str]:
        """Partials the backend itself keeps alive (prepared ahead): never swept."""
        ...

    def release_idle(self) -> None:
        """Let go of what is held open for reads and no longer wanted (cheap; called every
        `hmacfs.storage.held.RELEASE_INTERVAL` seconds on the reactor thread)."""
        ...

    def close(self) -> None:
        """Release what was prepared ahead (at shutdown)."""
        ...


@dataclass(frozen=True)
class PartialFile:
    """A partial upload as an inspection of the storage finds it (`LocalStorage.partial_files`)."""

    #: Its name in the partial directory (a resumable upload's id).
    name: str
    #: "plain" (the body of one request), "resumable" (kept for a resumption), "completed" (a
    #: completed resumable upload's record) or "stray" (a resumable upload's markers or partial
    #: without its facts, as a crash leaves them).
    kind: str
    #: The bytes it holds.
    size: int
    #: When it was last written to.
    touched: float
    #: Why a sweep would remove it now; None while it is kept.
    abandoned: str | None


@dataclass(frozen=True)
class OrphanedMetadata:
    """A metadata file that describes no stored file (`LocalStorage.orphaned_metadata`)."""

    #: The metadata file itself.
    location: str
    #: The signed path it names (None when it cannot be read).
    rel: str | None
    #: When it was last written.
    written: float
