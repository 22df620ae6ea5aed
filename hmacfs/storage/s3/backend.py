"""The object store backend: uploads and downloads kept in an S3 bucket (AWS S3, Ceph's
radosgw, or any S3 server with conditional writes), shared by every node.

Each upload is an object at `prefix + path`, created with its metadata (type, expiry, upload
time, uploader) in the same request that stores its body, so that neither is ever seen
without the other, and never over another object:

- a body up to `part_size` is one PUT with `If-None-Match: *`, which the store refuses (412)
  when an object is there already: then the body's MD5 is compared with that object's entity
  tag, and a retry of the same body gets its 201, another body 409;
- a larger one is a multipart upload, streamed a part at a time. Ceph's gateway ignores
  `If-None-Match` on its completion, so a completion is made only while holding a *claim*, a
  small object `prefix + ".hmacfs/claims/" + path` created with `If-None-Match: *` (which
  the gateway does honour): the holder looks whether the path is taken, then completes (or
  compares), then deletes the claim. A claim left by a node that died is taken over once it
  is `CLAIM_STALE` old, with `If-Match` on its entity tag, so that only one node takes it.

A multipart upload whose client went away is aborted at once; one a crashed node left is
aborted by the sweeper, once no part can still be on its way (see `stale_after`). Resumable
uploads are kept in the bucket too, by `hmacfs.storage.s3.resumable`.

The control requests (HEAD, DELETE, listings, completion) are blocking and are made from
threads; the bodies stream on the reactor (`hmacfs.http.objectstore`), which `attach` gives.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from hmacfs.core.paths import RESERVED_SEGMENT
from hmacfs.core.refusals import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    StorageFailure,
    TooLarge,
)
from hmacfs.storage.backend import PartialFile, PartialState, StoredFile, SweepReport
from hmacfs.storage.s3.client import (
    BlockingClient,
    StoreError,
    error_of,
    http_time,
    metadata_of,
)

#: A claim this old was left by a node that died while completing an upload.
CLAIM_STALE = 60.0
#: How long a completion waits for another node's claim on the same path.
CLAIM_WAIT = 30.0
#: The longest key S3 takes (in UTF-8 bytes).
MAX_KEY = 1024
#: The answer fields a presigned GET may set, by the query parameter that sets each.
_RESPONSE_OVERRIDES = {
    b"content-type": "response-content-type",
    b"content-disposition": "response-content-disposition",
    b"cache-control": "response-cache-control",
}
_MD5 = re.compile(r'^"?([0-9a-f]{32})(-\d+)?"?$')


@dataclass(frozen=True)
class StoredObject(StoredFile):
    """A stored file in the object store, with what comparing a retry with it needs."""

    etag: str = ""
    #: The part size it was uploaded with (0: one PUT).
    part_size: int = 0


def _plain_etag(etag: str) -> str:
    return etag.strip().strip('"')


class S3Storage:
    """Uploads and downloads in one bucket (see the module's docstring)."""

    remote = True
    background: Callable[..., object] | None = None
    #: The usage ledger in the bucket (`hmacfs.storage.s3.usage`), when set.
    accounting: Any = None

    def __init__(
        self,
        client: BlockingClient,
        *,
        prefix: str = "",
        part_size: int = 16 * 1024 * 1024,
        parts_in_flight: int = 4,
        file_ttl: float | None = None,
        resumable_ttl: float = 24 * 3600.0,
        stale_after: float = 6 * 3600.0,
        sweep_every: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self.file_ttl = file_ttl
        self.resumable_ttl = resumable_ttl
        #: An unfinished multipart upload untouched this long is abandoned.
        self.stale_after = stale_after
        #: How often the nodes sharing the bucket sweep it, one at a time (None: every
        #: sweep asked for is made).
        self.sweep_every = sweep_every
        self._node = secrets.token_hex(8)
        self.clock = clock
        self.fsync = True
        self.streams: Any = None
        #: Whether this store matches If-Match against the bare entity tag only (Ceph 16);
        #: None until a conditional write tells.
        self._bare_if_match: bool | None = None
        from hmacfs.storage.s3.resumable import Resumables

        self.resumables = Resumables(self)

    def attach(self, streams: Any) -> None:
        """Stream bodies with `streams` (`hmacfs.http.objectstore.Streams`, on the reactor of
        a process that serves uploads and downloads)."""
        self.streams = streams

    # -- names ------------------------------------------------------------------------------

    def key_of(self, rel: str) -> str:
        key = self.prefix + rel
        if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY:
            raise BadRequest("path too long for the object store")
        return key

    def _claim_key(self, rel: str) -> str:
        return f"{self.prefix}{RESERVED_SEGMENT}/claims/{rel}"

    @staticmethod
    def _reserved(rel: str) -> bool:
        return rel.split("/", 1)[0] == RESERVED_SEGMENT

    # -- what is stored ----------------------------------------------------------------------

    def _object(self, rel: str) -> StoredObject | None:
        if self._reserved(rel):
            return None
        try:
            answer = self.client.head(self.key_of(rel))
        except StoreError as e:
            raise StorageFailure("object store unavailable") from e
        if answer is None:
            return None
        headers = answer.headers
        meta = metadata_of(headers)
        return StoredObject(
            rel=rel,
            location=self.key_of(rel),
            size=int(headers.get("content-length", "0")),
            mtime=http_time(headers.get("last-modified", "")),
            content_type=meta.get("type") or headers.get("content-type"),
            uploaded=_number(meta.get("uploaded")),
            expires=_number(meta.get("expires")),
            uploader=unquote(meta["uploader"]) if meta.get("uploader") else None,
            etag=_plain_etag(headers.get("etag", "")),
            part_size=int(meta.get("part-size", "0") or 0),
        )

    def _expired(self, stored: StoredFile) -> bool:
        now = self.clock()
        if stored.expires is not None and stored.expires <= now:
            return True
        uploaded = stored.uploaded if stored.uploaded is not None else stored.mtime
        return self.file_ttl is not None and uploaded + self.file_ttl <= now

    def lookup(self, rel: str) -> StoredFile:
        """Blocking. Raises NotFound, Gone, StorageFailure."""
        stored = self._object(rel)
        if stored is None:
            raise NotFound("not found")
        if self._expired(stored):
            raise Gone("file has expired")
        return stored

    def existing(self, rel: str) -> StoredFile | None:
        """Blocking. Raises Conflict for an expired file (never overwritten), StorageFailure."""
        if self._reserved(rel):
            raise Conflict("path is in use")
        stored = self._object(rel)
        if stored is not None and self._expired(stored):
            raise Conflict("file already exists")
        return stored

    def free_bytes(self) -> int | None:
        return None

    def check(self) -> str:
        try:
            self.client.head_bucket()
        except StoreError:
            return "object store unavailable"
        return "ok"

    def files(self) -> Iterator[StoredFile]:
        """Every stored object (with its metadata: a HEAD each). Blocking."""
        for listed in self.client.list_objects(self.prefix):
            rel = listed.key[len(self.prefix) :]
            if self._reserved(rel):
                continue
            stored = self._object(rel)
            if stored is not None:
                yield stored

    def usage(self) -> tuple[int, int]:
        count = total = 0
        for listed in self.client.list_objects(self.prefix):
            if not self._reserved(listed.key[len(self.prefix) :]):
                count += 1
                total += listed.size
        return count, total

    def delete(self, rel: str) -> bool:
        if self._reserved(rel):
            return False
        stored = self._object(rel)
        if stored is None:
            return False
        self.client.delete(stored.location)
        self._uncount(stored)
        return True

    def _uploaded(self, rel: str) -> float | None:
        """When the file at `rel` was uploaded (None: there is none)."""
        there = self._object(rel)
        if there is None:
            return None
        return there.uploaded if there.uploaded is not None else there.mtime

    def unchanged(self, stored: StoredFile) -> bool:
        """Whether `stored` is still the object at its path (not a new upload that took the
        path once it was removed). Blocking."""
        there = self._object(stored.rel)
        return (
            there is not None
            and isinstance(stored, StoredObject)
            and there.etag == stored.etag
            and there.mtime == stored.mtime
        )

    def _uncount(self, stored: StoredFile) -> None:
        if self.accounting is not None:
            self.accounting.removed(stored.rel, stored.size, stored.uploader)

    def object_headers(
        self, content_type: str, scheme: str, expires: float | None, uploader: str | None
    ) -> dict[str, str]:
        """The header fields that create an object with its metadata."""
        headers = {
            "content-type": content_type,
            "x-amz-meta-type": content_type,
            "x-amz-meta-uploaded": repr(self.clock()),
            "x-amz-meta-scheme": scheme or "-",
        }
        if expires is not None:
            headers["x-amz-meta-expires"] = repr(float(expires))
        if uploader is not None:
            headers["x-amz-meta-uploader"] = quote(uploader, safe="")
        return headers

    def compare_with(self, rel: str, size: int, digest: str) -> StoredFile:
        """The file at `rel` if it is a body of `size` bytes with entity tag `digest` (a
        retry of the same upload); raises Conflict otherwise. Blocking."""
        there = self._object(rel)
        if there is not None and there.size == size and there.etag == digest:
            return there
        raise Conflict("file already exists")

    def made(
        self,
        rel: str,
        size: int,
        content_type: str,
        expires: float | None,
        uploader: str | None,
    ) -> StoredFile:
        """The file an upload just made at `rel`, counted in the usage ledger."""
        now = self.clock()
        stored = StoredFile(
            rel=rel,
            location=self.key_of(rel),
            size=size,
            mtime=now,
            content_type=content_type,
            uploaded=now,
            expires=expires,
            uploader=uploader,
        )
        self._count(stored)
        return stored

    def _count(self, stored: StoredFile) -> None:
        """Note a new file in the usage ledger; a store that refuses leaves it uncounted
        (the file is stored all the same)."""
        if self.accounting is not None:
            with contextlib.suppress(StoreError):
                self.accounting.added(stored.rel, stored.size, stored.uploader)

    def partial_files(self) -> Iterator[PartialFile]:
        """The unfinished uploads, as `LocalStorage.partial_files` gives partials (for
        `stats`): resumable ones ("resumable", or "completed" for the record a completed
        one keeps), and the other multipart uploads ("plain", abandoned once a sweep would
        abort them)."""
        now = self.clock()
        in_use = set()
        for upload_id, facts in self.resumables.listed():
            if facts is None:
                continue
            if facts.upload_id:
                in_use.add(facts.upload_id)
            yield PartialFile(
                name=upload_id,
                kind="completed" if facts.complete else "resumable",
                size=0 if facts.complete else facts.received,
                touched=facts.touched,
                abandoned=None if self.resumables.live(facts) else "older than resumable_ttl",
            )
        for unfinished in self.client.list_unfinished(self.prefix):
            if unfinished.upload_id in in_use:
                continue
            stale = unfinished.initiated + self.stale_after < now
            yield PartialFile(
                name=unfinished.upload_id,
                kind="plain",
                size=self.client.part_bytes(unfinished.key, unfinished.upload_id),
                touched=unfinished.initiated,
                abandoned="older than a live upload can be" if stale else None,
            )

    def sweep(self, active: frozenset[str] = frozenset()) -> SweepReport:
        """Delete expired objects, abort abandoned multipart uploads, remove stale claims:
        on one node of those sharing the bucket per `sweep_every` (see `_sweep_turn`)."""
        turn = self._sweep_turn()
        if isinstance(turn, SweepReport):
            return turn
        report = self._sweep(active)
        if turn is not None:
            figures = {k: v for k, v in vars(report).items() if k != "elsewhere"}
            body = json.dumps({"node": self._node, "report": figures}).encode()
            with contextlib.suppress(StoreError):
                self.client.put(turn, body)
        return report

    def _sweep_turn(self) -> str | SweepReport | None:
        """Whether this node sweeps now: the key of the turn object to write the report to
        when it does (None: no turns, `sweep_every` unset), else the report of the node
        whose turn it is. The turn (``.hmacfs/sweep``, written as a sweep begins and as it
        ends) is this node's when it swept last, when nobody has written it for one and a
        half intervals (the node that did is gone), or when there is none yet; taken with a
        conditional write, so that of nodes racing for it one sweeps."""
        if self.sweep_every is None:
            return None
        key = f"{self.prefix}{RESERVED_SEGMENT}/sweep"
        body = json.dumps({"node": self._node}).encode()
        held = self.client.request("GET", key, what="reading the sweep turn")
        if held.status not in (200, 404):
            raise error_of(held, "reading the sweep turn")
        if held.status == 404:
            return key if self.client.put(key, body, create_only=True) else SweepReport(
                elsewhere=True
            )
        try:
            last = json.loads(held.body)
            figures = last.get("report") or {}
            mine = last.get("node") == self._node
        except (ValueError, AttributeError):
            figures, mine = {}, False
        modified = http_time(held.headers.get("last-modified", ""))
        if mine:
            with contextlib.suppress(StoreError):
                self.client.put(key, held.body)  # (a sweep under way: the turn is taken)
            return key
        stale = modified + 1.5 * self.sweep_every < self.clock()
        if stale and self.replace_if(key, held.headers.get("etag", ""), body) is not None:
            return key
        report = SweepReport(elsewhere=True)
        for name, value in figures.items():
            if name in vars(report) and name != "elsewhere" and isinstance(value, int):
                setattr(report, name, value)
        return report

    def _sweep(self, active: frozenset[str]) -> SweepReport:
        report = SweepReport()
        now = self.clock()
        for listed in self.client.list_objects(self.prefix):
            rel = listed.key[len(self.prefix) :]
            if self._reserved(rel):
                if rel.startswith(f"{RESERVED_SEGMENT}/claims/") and (
                    listed.modified + CLAIM_STALE * 10 < now
                ):
                    self.client.delete(listed.key)
                    report.orphans += 1
                continue
            stored = self._object(rel)
            if stored is None:
                continue
            if self._expired(stored):
                self.client.delete(listed.key)
                self._uncount(stored)
                report.expired += 1
                continue
            report.files += 1
            report.bytes += stored.size
        if self.accounting is not None:
            self.accounting.sweep()
            report.orphans += self.accounting.reconcile(self._uploaded)
        removed, report.kept, report.kept_bytes = self.sweep_partials(active)
        report.partials += removed
        return report

    def sweep_partials(self, active: frozenset[str] = frozenset()) -> tuple[int, int, int]:
        """Remove the resumable uploads whose time is up and abort the multipart uploads
        nobody will complete (except those named in `active`): (how many, resumable uploads
        kept, the bytes they hold). Blocking."""
        removed, kept, kept_bytes, in_use = self.resumables.sweep(active)
        now = self.clock()
        for unfinished in self.client.list_unfinished(self.prefix):
            if unfinished.upload_id in active or unfinished.upload_id in in_use:
                continue  # (a resumable upload's parts are kept as long as it is)
            if unfinished.initiated + self.stale_after < now:
                self.client.abort_multipart(unfinished.key, unfinished.upload_id)
                removed += 1
        return removed, kept, kept_bytes

    # -- uploads ------------------------------------------------------------------------------

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
    ) -> S3Partial:
        """Start streaming a body into the store (on the reactor, after `attach`). With
        `existing` (the file stored at `rel` now, of the same size) nothing is sent: the body
        is only hashed, to be compared with it."""
        if self.streams is None:
            raise StorageFailure("object store not attached")
        if reopenable:
            return self.resumables.begin(  # type: ignore[return-value]
                rel, size, content_type, expires=expires, scheme=scheme, uploader=uploader
            )
        return S3Partial(
            self,
            rel,
            size,
            content_type,
            expires=expires,
            scheme=scheme,
            uploader=uploader,
            existing=existing if isinstance(existing, StoredObject) else None,
        )

    # -- resumable uploads (`hmacfs.storage.s3.resumable`; blocking, from threads) -----------

    def reopen(self, upload_id: str, *, appending: bool = False) -> Any:
        return self.resumables.reopen(upload_id, appending=appending)

    def describe(self, upload_id: str) -> PartialState:
        return self.resumables.describe(upload_id)

    def claim(self, upload_id: str, *, appending: bool) -> str:
        return self.resumables.claim(upload_id, appending=appending)

    def claim_of(self, upload_id: str) -> str | None:
        return self.resumables.claim_of(upload_id)

    def claimed(self) -> frozenset[str]:
        # (a node holding an upload asks `claim_of` for each, from a thread)
        return frozenset()

    def wants_refill(self) -> bool:
        return False

    def refill(self) -> None:
        pass

    def live_names(self) -> frozenset[str]:
        return frozenset()

    def release_idle(self) -> None:
        pass

    def presigned_download(
        self, stored: StoredFile, headers: Sequence[tuple[bytes, bytes]], lifetime: float
    ) -> str:
        """A presigned GET of `stored` valid for `lifetime` seconds, whose answer carries the
        `headers` given (Content-Type, Content-Disposition, Cache-Control: those a store
        lets a presigned URL set) in place of the object's own."""
        query = [
            (_RESPONSE_OVERRIDES[name.lower()], value.decode("latin-1"))
            for name, value in headers
            if name.lower() in _RESPONSE_OVERRIDES
        ]
        return self.client.presigned(stored.location, query, max(1, int(lifetime)))

    def open_reader(self, stored: StoredFile) -> ObjectReader:
        if self.streams is None:
            raise StorageFailure("object store not attached")
        return ObjectReader(self.streams, stored.location)

    def close(self) -> None:
        self.client.close()
        if self.streams is not None:
            self.streams.close()

    # -- claims (see the module's docstring) ---------------------------------------------------

    def take_claim(self, rel: str) -> str:
        """Hold the claim on completing uploads to `rel`; its nonce. Blocking. Raises
        StorageFailure when another node holds it for longer than `CLAIM_WAIT`."""
        key = self._claim_key(rel)
        nonce = secrets.token_hex(16)
        body = json.dumps({"nonce": nonce, "taken": self.clock()}).encode()
        deadline = time.monotonic() + CLAIM_WAIT
        delay = 0.05
        while True:
            if self.client.put(key, body, create_only=True):
                return nonce
            held = self.client.head(key)
            if held is not None:
                taken = http_time(held.headers.get("last-modified", ""))
                # Left by a node that died: take it over, only if nobody else just did.
                stale = taken + CLAIM_STALE < self.clock()
                if stale and self._replace_if(key, held.headers.get("etag", ""), body):
                    return nonce
            if time.monotonic() > deadline:
                raise StorageFailure("another upload of this path is being completed")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _replace_if(self, key: str, etag: str, body: bytes) -> bool:
        return self.replace_if(key, etag, body) is not None

    def replace_if(self, key: str, etag: str, body: bytes) -> str | None:
        """PUT `body` at `key` if the object there still has entity tag `etag`; the new
        entity tag if it did, else None. Blocking."""
        forms = self.if_match_forms(etag)
        for value in forms:
            answer = self.client.request(
                "PUT", key, headers={"if-match": value}, body=body, what="replacing an object"
            )
            if answer.status == 200:
                self.if_match_worked('"' not in value)
                return answer.headers.get("etag", "")
        return None

    def if_match_forms(self, etag: str) -> list[str]:
        """The If-Match values to try for `etag`, in turn. Ceph's gateway (16) matches
        If-Match against the bare tag only, and refuses the quoted form that HTTP (and AWS)
        use: the bare form is tried when the quoted one is refused (each is conditional, so
        of nodes racing on one tag one wins); once one form worked, it goes first."""
        quoted = etag.strip()
        forms = list(dict.fromkeys((quoted, _plain_etag(quoted))))
        return forms[::-1] if self._bare_if_match else forms

    def if_match_worked(self, bare: bool) -> None:
        self._bare_if_match = bare

    def drop_claim(self, rel: str) -> None:
        # (if it cannot be deleted, the next taker finds it stale; the sweeper removes it)
        with contextlib.suppress(StoreError):
            self.client.delete(self._claim_key(rel))


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class StreamedPartial:
    """What the object store's partials share: a body streamed on the reactor, never a
    local file."""

    _id: str
    flow: Any
    done: bool
    received: int
    size: int
    body_end: int | None = None

    @property
    def id(self) -> str:
        return self._id

    def attach(self, source: Any) -> None:
        """Pause `source` (the client's transport) while the store cannot take more."""
        self.flow.source = source

    def _admit(self, data: bytes) -> None:
        """Raise what a write of `data` cannot be."""
        if self.done:
            raise StorageFailure("upload already closed")
        if self.received + len(data) > self.size:
            raise TooLarge("body longer than Content-Length")

    def fileno(self) -> int:
        raise StorageFailure("not a local file")

    def wrote(self, count: int) -> None:
        raise StorageFailure("not a local file")

    def failed(self, error: OSError) -> StorageFailure:
        return StorageFailure("object store failure")

    def can_commit_inline(self, compare: bool = False) -> bool:
        return False


class S3Partial(StreamedPartial):
    """One body streaming into the store (see `S3Storage`)."""

    reopenable = False
    claim = None
    by_size = False

    def __init__(
        self,
        storage: S3Storage,
        rel: str,
        size: int,
        content_type: str,
        *,
        expires: float | None,
        scheme: str,
        uploader: str | None,
        existing: StoredObject | None,
    ) -> None:
        self.storage = storage
        self.rel = rel
        self.size = size
        self.content_type = content_type
        self.expires = expires
        self.scheme = scheme
        self.uploader = uploader
        self.received = 0
        self.done = False
        self._id = secrets.token_hex(16)
        self.name = self._id
        self.key = storage.key_of(rel)
        self.existing = existing
        self.flow = storage.streams.flow()
        headers = storage.object_headers(content_type, scheme, expires, uploader)
        part_size = storage.part_size
        if existing is not None:
            # Compared with the stored file, not sent: hashed the way it was uploaded.
            part_size = existing.part_size or max(size, 1)
        if size > part_size:
            headers["x-amz-meta-part-size"] = str(part_size)
        #: What the body's entity tag will be, worked out as it arrives (to check what the
        #: store says it stored, and to compare the body with a file stored at its path).
        self.digest = BodyDigest(size, part_size)
        self.upload: Any = None
        if existing is None:
            self.upload = storage.streams.upload(
                self.key,
                size,
                part_size,
                headers,
                flow=self.flow,
                in_flight=storage.parts_in_flight,
            )

    def write(self, data: bytes) -> None:
        self._admit(data)
        self.received += len(data)
        self.digest.update(data)
        if self.upload is None:  # (compared with the stored file, not sent)
            return
        try:
            self.upload.write(data)
        except StoreError as e:
            raise StorageFailure("object store refused the upload") from e


    def commit(self, compare: bool = False, *, inline: bool = False) -> StoredFile:
        """Blocking (on a thread, while the reactor runs): wait for the store's answers, then
        make the object visible or compare it with the one there."""
        if self.received != self.size:
            raise BadRequest("body shorter than Content-Length")
        try:
            return self._commit()
        finally:
            self.done = True

    def _commit(self) -> StoredFile:
        storage = self.storage
        if self.upload is None:
            assert self.existing is not None
            if self.digest.etag() == self.existing.etag:
                return self.existing
            raise Conflict("file already exists")
        upload = self.upload
        assert upload is not None
        try:
            sent: Any = storage.streams.wait(lambda: upload.sent)
        except StoreError as e:
            raise StorageFailure("object store refused the upload") from e
        if not upload.multipart:
            digest = self.digest.etag()
            if sent.status == 412:
                return self._compare(digest)
            if not digest_agrees(sent.etags[0], digest):
                storage.client.delete(self.key)
                raise StorageFailure("object store stored other bytes than were sent")
            return self._stored()
        return self._complete(sent, self.digest.etag())

    def _complete(self, sent: Any, digest: str) -> StoredFile:
        """Complete a multipart upload whose parts are all in, holding the path's claim."""
        storage = self.storage
        for etag, part_digest in zip(sent.etags, self.digest.parts(), strict=True):
            if not digest_agrees(etag, part_digest):
                self._abort_now(sent.upload_id)
                raise StorageFailure("object store stored other bytes than were sent")
        try:
            storage.take_claim(self.rel)
        except BaseException:
            self._abort_now(sent.upload_id)
            raise
        try:
            there = storage._object(self.rel)
            if there is not None:
                self._abort_now(sent.upload_id)
                if there.size == self.size and there.etag == digest:
                    return there
                raise Conflict("file already exists")
            assert sent.upload_id is not None
            try:
                storage.client.complete_multipart(self.key, sent.upload_id, sent.etags)
            except StoreError as e:
                if e.status == 412:  # (a store that honours If-None-Match on completion)
                    return self._compare(digest)
                raise StorageFailure("object store refused the upload") from e
        finally:
            storage.drop_claim(self.rel)
        return self._stored()

    def _compare(self, digest: str) -> StoredFile:
        return self.storage.compare_with(self.rel, self.size, digest)

    def _stored(self) -> StoredFile:
        """The file this upload made (a new one: counted in the usage ledger)."""
        return self.storage.made(
            self.rel, self.size, self.content_type, self.expires, self.uploader
        )

    def _abort_now(self, upload_id: str | None) -> None:
        if upload_id is not None:
            with contextlib.suppress(StoreError):  # (else the sweeper aborts it)
                self.storage.client.abort_multipart(self.key, upload_id)

    def abort(self) -> None:
        """Forget the body: stop sending, abort the multipart upload (on the reactor)."""
        if self.done:
            return
        self.done = True
        if self.upload is not None:
            self.upload.abort()
        self.flow.source = None

    def close(self) -> None:
        self.abort()


def digest_agrees(etag: str, digest: str) -> bool:
    """Whether the store's entity tag says it holds the bytes whose MD5 is `digest` (an
    entity tag that is no MD5, as some encrypting stores give, says nothing)."""
    match = _MD5.match(_plain_etag(etag))
    if match is None or match.group(2):
        return True
    return match.group(1) == digest


class BodyDigest:
    """The entity tag S3 gives a body uploaded with a part size: the MD5 of the body when it
    is one PUT (not larger than the part size), else the MD5 of its parts' MD5s and "-N"."""

    def __init__(self, size: int, part_size: int) -> None:
        import hashlib

        self._new = lambda: hashlib.md5(usedforsecurity=False)
        self.multipart = size > part_size
        self.part_size = part_size
        self._part = self._new()
        self._in_part = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = view[: self.part_size - self._in_part] if self.multipart else view
            self._part.update(take)
            self._in_part += len(take)
            view = view[len(take) :]
            if self.multipart and self._in_part == self.part_size:
                self._digests.append(self._part.digest())
                self._part, self._in_part = self._new(), 0

    def _digests_so_far(self) -> list[bytes]:
        return [*self._digests, self._part.digest()] if self._in_part else list(self._digests)

    def parts(self) -> list[str]:
        """The MD5 of each part (of the one PUT), as the store tags them."""
        if not self.multipart:
            return [self._part.hexdigest()]
        return [digest.hex() for digest in self._digests_so_far()]

    def etag(self) -> str:
        if not self.multipart:
            return self._part.hexdigest()
        digests = self._digests_so_far()
        joined = self._new()
        joined.update(b"".join(digests))
        return f"{joined.hexdigest()}-{len(digests)}"


class ObjectReader:
    """A stored object, read by ranges streamed from the store (`hmacfs.http.body`)."""

    def __init__(self, streams: Any, key: str) -> None:
        self.streams = streams
        self.key = key

    def fileno(self) -> int | None:
        return None

    def read(self, offset: int, count: int) -> bytes:
        raise StorageFailure("an object is streamed, not read")

    def close(self) -> None:
        pass
