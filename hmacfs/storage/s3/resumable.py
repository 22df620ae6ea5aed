"""Resumable uploads kept in the object store: an upload cut on one node is continued on any
other (or on the same one after a restart), since nothing of it lives in a node's memory.

Under ``prefix + ".hmacfs/resumable/<id>/"`` each upload has:

- ``facts``: what the upload is (path, size, type, expiry, uploader) and how far it got: the
  multipart upload at the file's key, the parts stored in it (start, length, entity tag and
  MD5 of each), and the *tail*, the bytes after the last part when there are too few for a
  part (S3's parts are at least 5 MiB, but the last); written by the request that holds the
  upload each time a piece is stored, and kept `resumable_ttl` after the commit so that its
  upload resource still answers;
- ``tail-<start>``: the tail, an object of its own; the next request sends it again, in
  front of its own bytes, as the first piece it stores (at most `MIN_PART` bytes are read
  back, once per request, to do so);
- ``holder``: the request that holds the upload (one at a time, in all nodes), created with
  ``If-None-Match: *`` and renewed every `HOLD_BEAT` seconds with ``If-Match``; a holder whose
  record has not changed for `HOLD_STALE` seconds (its node died) is taken over, again with
  ``If-Match``, so that of two nodes taking it one does;
- ``claim``: the newest request for the upload (see `hmacfs.storage.backend.Backend.claim`):
  a node holding the upload for an older request lets go of it once it sees another claim.

An upload that is the whole of its size in one piece of at most the part size is one
create-only PUT of the file, as a plain upload is; anything larger completes its multipart
upload while holding the path's claim, as a plain upload does (`S3Partial._complete`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from hmacfs.core.paths import RESERVED_SEGMENT
from hmacfs.core.refusals import BadRequest, Conflict, NotFound, StorageFailure
from hmacfs.storage.backend import Busy, PartialState, StoredFile, make_claim
from hmacfs.storage.s3.backend import StreamedPartial, digest_agrees
from hmacfs.storage.s3.client import FileSlice, StoreError

if TYPE_CHECKING:
    from hmacfs.storage.s3.backend import S3Storage

#: S3's smallest part (but the last).
MIN_PART = 5 * 2**20
#: How often a request holding an upload renews its holder record.
HOLD_BEAT = 3.0
#: A holder record unchanged this long belongs to a node that died: it is taken over.
HOLD_STALE = 10.0


def _md5_of_parts(md5s: list[str]) -> str:
    joined = hashlib.md5(usedforsecurity=False)
    joined.update(b"".join(bytes.fromhex(md5) for md5 in md5s))
    return f"{joined.hexdigest()}-{len(md5s)}"


@dataclass
class Part:
    number: int
    start: int
    length: int
    etag: str
    md5: str

    @property
    def end(self) -> int:
        return self.start + self.length


@dataclass
class Facts:
    """What an upload is, and how far it got (the ``facts`` object)."""

    rel: str
    size: int
    content_type: str
    expires: float | None
    scheme: str
    uploader: str | None
    created: float
    touched: float
    upload_id: str | None = None
    parts: list[Part] = field(default_factory=list)
    #: The tail's start and length.
    tail: tuple[int, int] | None = None
    complete: bool = False
    by_size: bool = False

    @property
    def parts_end(self) -> int:
        return self.parts[-1].end if self.parts else 0

    @property
    def received(self) -> int:
        if self.complete:
            return self.size
        return self.tail[0] + self.tail[1] if self.tail is not None else self.parts_end

    def encode(self) -> bytes:
        data: dict[str, Any] = {
            "rel": self.rel,
            "size": self.size,
            "type": self.content_type,
            "expires": self.expires,
            "scheme": self.scheme,
            "uploader": self.uploader,
            "created": self.created,
            "touched": self.touched,
            "upload_id": self.upload_id,
            "parts": [[p.number, p.start, p.length, p.etag, p.md5] for p in self.parts],
            "tail": list(self.tail) if self.tail is not None else None,
            "complete": self.complete,
            "by_size": self.by_size,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> Facts:
        """Raises ValueError for anything else than facts."""
        try:
            data = json.loads(body)
            tail = data.get("tail")
            return cls(
                rel=str(data["rel"]),
                size=int(data["size"]),
                content_type=str(data["type"]),
                expires=None if data.get("expires") is None else float(data["expires"]),
                scheme=str(data.get("scheme") or ""),
                uploader=None if data.get("uploader") is None else str(data["uploader"]),
                created=float(data["created"]),
                touched=float(data["touched"]),
                upload_id=data.get("upload_id") or None,
                parts=[
                    Part(int(n), int(s), int(ln), str(e), str(m))
                    for n, s, ln, e, m in data.get("parts") or []
                ],
                tail=(int(tail[0]), int(tail[1])) if tail else None,
                complete=bool(data.get("complete")),
                by_size=bool(data.get("by_size")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not the facts of an upload: {e}") from None


class Resumables:
    """The resumable uploads of one `S3Storage` (its `describe`, `reopen`, `claim`...)."""

    def __init__(self, storage: S3Storage) -> None:
        self.storage = storage
        #: The holder records seen busy, by upload: their entity tag, and since when.
        self._seen: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    # -- names ----------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return f"{self.storage.prefix}{RESERVED_SEGMENT}/resumable/"

    def key(self, upload_id: str, name: str) -> str:
        return f"{self.root}{upload_id}/{name}"

    def tail_key(self, upload_id: str, start: int) -> str:
        return self.key(upload_id, f"tail-{start}")

    # -- reading ----------------------------------------------------------------------------

    def facts(self, upload_id: str) -> Facts | None:
        """The facts of `upload_id`, None when there are none (or not readable). Blocking."""
        return self.facts_and_tag(upload_id)[0]

    def facts_and_tag(self, upload_id: str) -> tuple[Facts | None, str]:
        """The facts of `upload_id` and their entity tag (what a conditional write of the
        next facts names). Blocking. Raises StorageFailure."""
        if len(upload_id) != 32 or not all(c in "0123456789abcdef" for c in upload_id):
            return None, ""
        try:
            answer = self.storage.client.request(
                "GET", self.key(upload_id, "facts"), what="reading an upload's facts"
            )
        except StoreError as e:
            raise StorageFailure("object store unavailable") from e
        if answer.status == 404:
            return None, ""
        if answer.status != 200:
            raise StorageFailure("object store unavailable")
        try:
            return Facts.decode(answer.body), answer.headers.get("etag", "")
        except ValueError:
            return None, ""

    def live(self, facts: Facts) -> bool:
        """Whether the upload's resource still answers (it is kept `resumable_ttl`)."""
        return facts.touched + self.storage.resumable_ttl > self.storage.clock()

    def describe(self, upload_id: str) -> PartialState:
        facts = self.facts(upload_id)
        if facts is None or not self.live(facts):
            raise NotFound("no such upload")
        return PartialState(
            id=upload_id,
            rel=facts.rel,
            size=facts.size,
            received=facts.received,
            complete=facts.complete,
            touched=facts.touched,
            by_size=facts.by_size,
        )

    # -- claims ---------------------------------------------------------------------------

    def claim(self, upload_id: str, *, appending: bool) -> str:
        claim = make_claim(appending, secrets.token_hex(8))
        try:
            self.storage.client.put(self.key(upload_id, "claim"), claim.encode())
        except StoreError as e:
            raise StorageFailure("object store unavailable") from e
        return claim

    def claim_of(self, upload_id: str) -> str | None:
        try:
            body = self.storage.client.get(self.key(upload_id, "claim"))
        except StoreError as e:
            raise StorageFailure("object store unavailable") from e
        return body.decode("ascii", "replace") if body is not None else None

    # -- holding ----------------------------------------------------------------------------

    def reopen(self, upload_id: str, *, appending: bool) -> S3ResumablePartial:
        """Hold `upload_id` (blocking): the facts are read once it is held (a request that
        held it before may have changed them until then). Raises NotFound, Busy,
        StorageFailure. (The caller has just asked `describe`: an upload that is not there
        leaves no holder record behind, since it is let go of at once.)"""
        try:
            holder = self._take_holder(upload_id, appending)
        except StoreError as e:
            raise StorageFailure("object store unavailable") from e
        try:
            facts, tag = self.facts_and_tag(upload_id)
            if facts is None or facts.complete or not self.live(facts):
                raise NotFound("no such upload")
            tail = b""
            if appending and facts.tail is not None:
                tail = self._read_tail(upload_id, facts.tail)
        except BaseException:
            self.let_go(upload_id)
            raise
        return S3ResumablePartial(
            self, upload_id, facts, holder=holder, appending=appending, tail=tail, new=False,
            facts_tag=tag,
        )

    def let_go(self, upload_id: str) -> None:
        """Remove the holder record (blocking; one left behind goes stale)."""
        with contextlib.suppress(StoreError):
            self.storage.client.delete(self.key(upload_id, "holder"))

    def _read_tail(self, upload_id: str, tail: tuple[int, int]) -> bytes:
        start, length = tail
        if length == 0:
            return b""
        try:
            answer = self.storage.client.request(
                "GET",
                self.tail_key(upload_id, start),
                headers={"range": f"bytes=0-{length - 1}"},
                what="reading an upload's tail",
            )
        except StoreError as e:
            raise StorageFailure("object store unavailable") from e
        if answer.status == 404 or (answer.status in (200, 206) and len(answer.body) < length):
            raise StorageFailure("object store lost part of the upload")
        if answer.status not in (200, 206):
            raise StorageFailure("object store unavailable")
        return answer.body[:length]

    def holder_body(self, appending: bool, beat: int = 0) -> bytes:
        return json.dumps(
            {"appending": appending, "beat": beat, "nonce": secrets.token_hex(8)}
        ).encode()

    def _take_holder(self, upload_id: str, appending: bool) -> str:
        """The entity tag of our new holder record. Raises Busy."""
        client = self.storage.client
        key = self.key(upload_id, "holder")
        body = self.holder_body(appending)
        for _ in range(2):
            answer = client.request(
                "PUT", key, headers={"if-none-match": "*"}, body=body, what="holding an upload"
            )
            if answer.status // 100 == 2:
                with self._lock:
                    self._seen.pop(upload_id, None)
                return answer.headers.get("etag", "")
            if answer.status != 412:
                raise StoreError(f"holding an upload: {answer.status}", answer.status)
            held = client.request("GET", key, what="reading an upload's holder")
            if held.status == 404:
                continue  # (let go of meanwhile)
            if held.status != 200:
                raise StoreError(f"reading an upload's holder: {held.status}", held.status)
            etag = held.headers.get("etag", "")
            try:
                busy_appending = bool(json.loads(held.body).get("appending"))
            except (ValueError, AttributeError):
                busy_appending = False
            now = time.monotonic()
            with self._lock:
                if len(self._seen) > 1000:  # (forget what no request waits for any more)
                    for old in [k for k, (_, t) in self._seen.items() if now - t > 6 * HOLD_STALE]:
                        del self._seen[old]
                seen = self._seen.get(upload_id)
                if seen is None or seen[0] != etag:
                    self._seen[upload_id] = (etag, now)
                    raise Busy(appending=busy_appending)
                if now - seen[1] < HOLD_STALE:
                    raise Busy(appending=busy_appending)
            # Its node stopped renewing it: take it over (if nobody else just did).
            taken = self.storage.replace_if(key, etag, body)
            if taken is None:
                raise Busy(appending=busy_appending)
            with self._lock:
                self._seen.pop(upload_id, None)
            return taken
        raise Busy(appending=False)

    # -- creating -------------------------------------------------------------------------

    def begin(
        self,
        rel: str,
        size: int,
        content_type: str,
        *,
        expires: float | None,
        scheme: str,
        uploader: str | None,
    ) -> S3ResumablePartial:
        """A new resumable upload (on the reactor): its facts and holder are written as
        its first bytes stream."""
        now = self.storage.clock()
        self.storage.key_of(rel)  # (raises for a path too long)
        facts = Facts(rel, size, content_type, expires, scheme, uploader, now, now)
        upload_id = secrets.token_hex(16)
        return S3ResumablePartial(
            self, upload_id, facts, holder=None, appending=False, tail=b"", new=True
        )

    # -- removing -------------------------------------------------------------------------

    def remove(self, upload_id: str, facts: Facts | None) -> None:
        """Delete everything of `upload_id` (blocking; what cannot be deleted is left to the
        sweeper)."""
        client = self.storage.client
        with contextlib.suppress(StoreError):
            if facts is not None and facts.upload_id and not facts.complete:
                client.abort_multipart(self.storage.key_of(facts.rel), facts.upload_id)
            for listed in list(client.list_objects(f"{self.root}{upload_id}/")):
                client.delete(listed.key)

    def _ids(self) -> dict[str, float]:
        """Every upload with something in the store, and when it was last written to."""
        ids: dict[str, float] = {}
        for listed in self.storage.client.list_objects(self.root):
            upload_id = listed.key[len(self.root) :].split("/", 1)[0]
            ids[upload_id] = max(ids.get(upload_id, 0.0), listed.modified)
        return ids

    def listed(self) -> Iterator[tuple[str, Facts | None]]:
        """Every upload with something in the store, and its facts (None: none). Blocking."""
        for upload_id in self._ids():
            yield upload_id, self.facts(upload_id)

    def sweep(self, active: frozenset[str]) -> tuple[int, int, int, set[str]]:
        """Remove uploads whose time is up: (partials removed, kept, bytes kept, multipart
        uploads still in use). Blocking."""
        removed = kept = kept_bytes = 0
        in_use: set[str] = set()
        now = self.storage.clock()
        for upload_id, modified in self._ids().items():
            facts = self.facts(upload_id)
            if upload_id in active:
                if facts is not None and facts.upload_id:
                    in_use.add(facts.upload_id)
                continue
            if facts is None:
                # What a node that died at the creation left (or a removal cut short).
                if modified + self.storage.resumable_ttl < now:
                    self.remove(upload_id, None)
                    removed += 1
                continue
            if self.live(facts):
                if facts.upload_id:
                    in_use.add(facts.upload_id)
                if not facts.complete:
                    kept += 1
                    kept_bytes += facts.received
                continue
            self.remove(upload_id, facts)
            removed += 0 if facts.complete else 1
        return removed, kept, kept_bytes, in_use


class S3ResumablePartial(StreamedPartial):
    """One request's hold on a resumable upload in the object store (see the module)."""

    reopenable = True

    def __init__(
        self,
        uploads: Resumables,
        upload_id: str,
        facts: Facts,
        *,
        holder: str | None,
        appending: bool,
        tail: bytes,
        new: bool,
        facts_tag: str = "",
    ) -> None:
        storage = uploads.storage
        if storage.streams is None:
            raise StorageFailure("object store not attached")
        self.uploads = uploads
        self.storage = storage
        self.streams = storage.streams
        self._id = upload_id
        self.name = upload_id
        self.facts = facts
        self.rel = facts.rel
        self.size = facts.size
        self.content_type = facts.content_type
        self.expires = facts.expires
        self.scheme = facts.scheme
        self.uploader = facts.uploader
        self.received = facts.received
        self.done = False
        self.claim: str | None = None
        self.by_size = False
        #: Where the body of the request that holds the upload ends (when it says).
        self.body_end: int | None = None
        self.appending = appending
        self.key = storage.key_of(facts.rel)
        self.flow = self.streams.flow()
        self._holder = holder
        self._tail = tail
        self._stream: Any = None
        self._stop_beat: Any = None
        self._beats = 0
        self._lost = False
        self._bad = False
        self._pieces: dict[int, Any] = {}
        self._single: Any = None
        self._saving: Any = None
        #: A copy of the piece on its way (a file without a name), so that what a cut
        #: connection sent of it is stored as the connection ends (`_salvage`).
        self._spool: BinaryIO | None = None
        self._spool_start: int | None = None
        self._no_spool = False
        self._aborted = False
        #: The entity tag of the facts as this request last wrote (or read) them: each write
        #: names it (If-Match), so that a request that lost the upload to another one, and
        #: does not know it yet, changes nothing ("" for new facts: If-None-Match).
        self._facts_tag = facts_tag
        #: What the facts say arrived, as last stored (a kept part is answered with it).
        self.stored = facts.received
        self._save_failed = False
        #: When the holder record was last renewed (monotonic); a request that could not
        #: renew it for most of `HOLD_STALE` stops, as another node may take it over then.
        self._renewed = time.monotonic()
        if new:
            self._save()
            holder_key = uploads.key(upload_id, "holder")
            d = self.streams.small("PUT", holder_key, body=uploads.holder_body(False))
            d.addCallbacks(self._held, lambda _: None)
            self._start_beat()
        else:
            self.streams.call_on_reactor(self._start_beat)  # (made on a thread)

    # -- the bytes ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._admit(data)
        if self._lost or time.monotonic() - self._renewed > HOLD_STALE * 0.7:
            self._lost = True
            raise StorageFailure("another request took this upload over")
        if self._stream is None:
            self._start()
        self.received += len(data)
        try:
            self._stream.write(data)
        except StoreError as e:
            raise StorageFailure("object store refused the upload") from e

    def _start(self) -> None:
        facts = self.facts
        end = self.size if self.body_end is None else min(self.body_end, self.size)
        self._stream = self.streams.pieces(
            key=self.key,
            tail_key=lambda start: self.uploads.tail_key(self._id, start),
            headers=self._object_headers(),
            size=self.size,
            part_size=self.storage.part_size,
            min_part=MIN_PART,
            start=facts.parts_end,
            prefix=self._tail,
            end=end,
            upload_id=facts.upload_id,
            next_number=len(facts.parts) + 1,
            flow=self.flow,
            in_flight=self.storage.parts_in_flight,
            stored=self._stored_piece,
            created=self._created,
            tee=self._tee,
        )
        self._tail = b""

    def _object_headers(self) -> dict[str, str]:
        return self.storage.object_headers(
            self.content_type, self.scheme, self.expires, self.uploader
        )

    # -- what the store took (on the reactor) ----------------------------------------------

    def _created(self, upload_id: str) -> None:
        if self._aborted or self._lost:
            return  # (the sweeper aborts it)
        self.facts.upload_id = upload_id
        self._save()

    def _stored_piece(self, piece: Any) -> None:
        if self._lost or self._aborted:
            return
        if piece.kind == "single":
            self._single = piece
            if piece.status == 200 and not digest_agrees(piece.etag, piece.md5):
                self._bad = True
            return
        if not digest_agrees(piece.etag, piece.md5):
            self._bad = True
            return
        self._pieces[piece.start] = piece
        facts = self.facts
        old_tail = facts.tail
        changed = False
        while True:
            found = self._pieces.get(facts.parts_end)
            if found is None:
                break
            if found.kind == "tail":
                if facts.tail is not None and facts.tail[1] >= found.length:
                    break  # (never shorter than it was)
                facts.tail = (found.start, found.length)
                changed = True
                break
            del self._pieces[found.start]
            facts.parts.append(Part(found.number, found.start, found.length, found.etag, found.md5))
            if facts.tail is not None and facts.tail[0] < facts.parts_end:
                facts.tail = None
            changed = True
        if not changed:
            return
        if old_tail is not None and (facts.tail is None or facts.tail[0] != old_tail[0]):
            # (deleted once the facts that no longer name it are stored)
            key = self.uploads.tail_key(self._id, old_tail[0])
            self._save(lambda: self.streams.small("DELETE", key))
        else:
            self._save()

    def _save(self, then: Any = None) -> None:
        """Write the facts as they stand, if they are still the ones this request wrote or
        read (in order: each write waits for the one before); `then` is called once they are
        stored."""
        self.facts.touched = self.storage.clock()
        body = self.facts.encode()
        received = self.facts.received
        key = self.uploads.key(self._id, "facts")

        def write(_: object) -> Any:
            if self._lost:
                return None
            return self._put_if(key, body, self._facts_tag).addCallback(written)

        def written(tag: str | None) -> Any:
            if tag is None:
                self._save_failed = True
                return None
            self._facts_tag = tag
            self.stored = received
            return then() if then is not None else None

        if self._saving is None:
            self._saving = write(None)
        else:
            self._saving = self._saving.addBoth(write)
        self._saving.addErrback(self._save_error)

    def _save_error(self, _: object) -> None:
        self._save_failed = True

    def _put_if(self, key: str, body: bytes, tag: str) -> Any:
        """(on the reactor) PUT `body` at `key` if the object there has entity tag `tag`
        (none, for ""): fires with the new tag, or None when refused (then, for a tag that
        no longer matches, this request has lost the upload) or failed."""
        headers = {"content-type": "application/json"}
        forms = self.storage.if_match_forms(tag) if tag else [""]

        def attempt(index: int) -> Any:
            condition = {"if-match": forms[index]} if forms[index] else {"if-none-match": "*"}
            d = self.streams.small("PUT", key, headers={**headers, **condition}, body=body)

            def answered(answer: tuple[int, str, bytes]) -> Any:
                status, etag, _ = answer
                if status // 100 == 2:
                    if forms[index]:
                        self.storage.if_match_worked('"' not in forms[index])
                    return etag
                if status == 412 and index + 1 < len(forms):
                    return attempt(index + 1)
                if status in (404, 412):
                    self._lost = True  # another request changed it
                return None

            return d.addCallback(answered)

        return attempt(0).addErrback(lambda _: None)

    # -- the holder record ---------------------------------------------------------------------

    def _held(self, answer: tuple[int, str, bytes]) -> None:
        status, etag, _ = answer
        if status // 100 == 2:
            self._holder = etag
            self._renewed = time.monotonic()

    def _start_beat(self) -> None:
        if self.done or self._stop_beat is not None:
            return
        self._stop_beat = self.streams.every(HOLD_BEAT, self._beat)

    def _stop_beating(self) -> None:
        if self._stop_beat is not None:
            self._stop_beat()

    def _beat(self) -> Any:
        if self._holder is None or self.done or self._lost:
            return None
        self._beats += 1
        body = self.uploads.holder_body(self.appending, self._beats)
        key = self.uploads.key(self._id, "holder")

        def renewed(tag: str | None) -> None:
            if tag is not None:
                self._holder = tag
                self._renewed = time.monotonic()

        return self._put_if(key, body, self._holder).addCallback(renewed)

    # -- the end ---------------------------------------------------------------------------

    def _quiet(self) -> Any:
        """(on the reactor) Fires once no piece and no facts write is on its way."""
        d = self._stream.settled() if self._stream is not None else self.streams.succeed()
        return d.addCallback(lambda _: self._saved())

    def _saved(self) -> Any:
        """(on the reactor) Fires once the facts writes asked for so far are over."""
        d = self.streams.deferred()
        if self._saving is None:
            d.callback(None)
        else:

            def passed(result: object) -> object:
                d.callback(None)
                return result

            self._saving.addBoth(passed)
        return d

    def _tee(self, piece: Any, data: bytes) -> None:
        """(on the reactor) Keep a copy of the piece on its way. A copy that cannot be made
        (a full temporary directory) is given up: a cut then loses the piece on its way, as
        when the node dies."""
        if self._no_spool:
            return
        try:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile(  # noqa: SIM115
                    buffering=0, prefix="hmacfs-piece-"
                )
            if piece.start != self._spool_start:
                self._spool.seek(0)
                self._spool.truncate()
                self._spool_start = piece.start
            self._spool.write(data)
        except OSError:
            self._no_spool = True
            self._drop_spool()

    def _drop_spool(self) -> None:
        if self._spool is not None:
            with contextlib.suppress(OSError):
                self._spool.close()
            self._spool = None

    def _salvage_cut(self) -> Any:
        """(on the reactor, once nothing is on its way) Store what arrived of the piece a cut
        dropped, from its copy, on a thread; None when there is nothing to store."""
        cut = self._stream.cut_piece if self._stream is not None else None
        facts = self.facts
        if cut is None or self._lost or self._bad or self._spool is None:
            self._drop_spool()
            return None
        piece, count = cut
        if piece.start != facts.parts_end or piece.start + count <= facts.received:
            self._drop_spool()  # (an earlier piece is missing, or nothing new came)
            return None

        def dropped(result: object) -> object:
            self._drop_spool()
            return result

        return self.streams.in_thread(self._salvage, piece.start, count).addBoth(dropped)

    def _salvage(self, start: int, count: int) -> None:
        """Store the first `count` bytes of the copy of the piece at `start`: a part when
        they are enough for one, else the tail; then the facts. Blocking."""
        assert self._spool is not None
        client = self.storage.client
        facts = self.facts
        old_tail = facts.tail
        try:
            body = FileSlice(self._spool, count)
            if count >= MIN_PART:
                if facts.upload_id is None:
                    facts.upload_id = client.create_multipart(self.key, self._object_headers())
                number = len(facts.parts) + 1
                query = (("partNumber", str(number)), ("uploadId", facts.upload_id))
                answer = client.request("PUT", self.key, query, body=body, what="storing a part")
                etag = answer.headers.get("etag", "")
                if answer.status != 200 or not digest_agrees(etag, body.md5):
                    return
                facts.parts.append(Part(number, start, count, etag, body.md5))
                facts.tail = None
            else:
                key = self.uploads.tail_key(self._id, start)
                answer = client.request("PUT", key, body=body, what="storing a tail")
                if answer.status != 200:
                    return
                facts.tail = (start, count)
            facts.touched = self.storage.clock()
            if not self._write_facts_now():
                return
            if old_tail is not None and facts.tail is None:  # (now in the part)
                client.delete(self.uploads.tail_key(self._id, old_tail[0]))
        except (StoreError, OSError):
            return  # (what the facts said before stands)

    def _write_facts_now(self) -> bool:
        """Write the facts if they are still this request's (blocking); whether they were."""
        key = self.uploads.key(self._id, "facts")
        body = self.facts.encode()
        if self._facts_tag:
            tag = self.storage.replace_if(key, self._facts_tag, body)
        else:
            created = self.storage.client.request(
                "PUT", key, headers={"if-none-match": "*"}, body=body, what="storing facts"
            )
            tag = created.headers.get("etag", "") if created.status // 100 == 2 else None
        if tag is None:
            self._lost = True
            return False
        self._facts_tag = tag
        self.stored = self.facts.received
        return True

    def close(self) -> Any:
        """Let go of the upload, what arrived kept (on the reactor): fires once the facts
        say so and the holder record is gone."""
        if not self.streams.on_reactor():
            # (a request that took the upload on a thread, then found it claimed by a newer
            # one, lets go of it at once)
            self.streams.call_on_reactor(self.close)
            return None
        if self.done:
            return self.streams.succeed()
        self.done = True
        self._stop_beating()
        self.flow.source = None
        d = self._stream.cut() if self._stream is not None else self.streams.succeed()
        d.addCallback(lambda _: self._saved())
        d.addCallback(lambda _: self._salvage_cut())

        def release(_: object) -> Any:
            if self._lost:
                return None
            key = self.uploads.key(self._id, "holder")
            return self.streams.small("DELETE", key).addErrback(lambda _: None)

        def outcome(_: object) -> StorageFailure | None:
            # What was kept is what the stored facts say: a part that arrived and was not
            # stored is not answered as kept.
            if self.stored < self.received:
                self.received = self.stored
                return StorageFailure("object store did not keep all of this part")
            return None

        return d.addBoth(release).addBoth(outcome)

    def abort(self) -> None:
        """Cancel the upload (on the reactor): everything of it is removed, from a thread."""
        if self.done:
            return
        self.done = True
        self._aborted = True
        self._stop_beating()
        self._drop_spool()
        self.flow.source = None
        d = self._stream.abort() if self._stream is not None else self.streams.succeed()
        d.addCallback(lambda _: self._saved())
        facts = self.facts
        d.addBoth(lambda _: self.streams.in_thread(self.uploads.remove, self._id, facts))
        d.addErrback(lambda _: None)

    def commit(self, compare: bool = False, *, inline: bool = False) -> StoredFile:
        """Blocking (on a thread): wait for the last pieces, then make the file visible at
        its path (or compare it with the one there)."""
        if self.received != self.size:
            raise BadRequest("body shorter than Content-Length")
        try:
            stored = self._commit()
        except Conflict:
            self.uploads.remove(self._id, self.facts)
            raise
        except BaseException:
            self._release_now()
            raise
        finally:
            self.done = True
            self.streams.call_on_reactor(self._stop_beating)
            self.streams.call_on_reactor(self._drop_spool)
        self._completed()
        return stored

    def _commit(self) -> StoredFile:
        storage = self.storage
        try:
            self.streams.wait(self._quiet)
        except StoreError as e:
            raise StorageFailure("object store refused the upload") from e
        if self._lost:  # (known only once the last facts write was answered)
            raise StorageFailure("another request took this upload over")
        stream = self._stream
        if self._bad:
            raise StorageFailure("object store stored other bytes than were sent")
        single = self._single
        if single is not None:
            return self._compare(single.md5) if single.status == 412 else self._stored()
        if stream is not None and stream.error is not None:
            raise StorageFailure("object store refused the upload")
        if self.size == 0:
            return self._create_empty()
        facts = self.facts
        if facts.parts_end != self.size or facts.upload_id is None:
            raise StorageFailure("object store lost part of the upload")
        digest = _md5_of_parts([p.md5 for p in facts.parts])
        storage.take_claim(self.rel)
        try:
            there = storage._object(self.rel)
            if there is not None:
                with contextlib.suppress(StoreError):
                    storage.client.abort_multipart(self.key, facts.upload_id)
                if there.size == self.size and there.etag == digest:
                    return there
                raise Conflict("file already exists")
            try:
                storage.client.complete_multipart(
                    self.key, facts.upload_id, [p.etag for p in facts.parts]
                )
            except StoreError as e:
                if e.status == 412:
                    return self._compare(digest)
                raise StorageFailure("object store refused the upload") from e
        finally:
            storage.drop_claim(self.rel)
        return self._stored()

    def _create_empty(self) -> StoredFile:
        empty = hashlib.md5(b"", usedforsecurity=False).hexdigest()
        try:
            created = self.storage.client.put(
                self.key, b"", self._object_headers(), create_only=True
            )
        except StoreError as e:
            raise StorageFailure("object store refused the upload") from e
        return self._stored() if created else self._compare(empty)

    def _compare(self, digest: str) -> StoredFile:
        return self.storage.compare_with(self.rel, self.size, digest)

    def _stored(self) -> StoredFile:
        """The file this upload made (a new one: counted in the usage ledger)."""
        return self.storage.made(
            self.rel, self.size, self.content_type, self.expires, self.uploader
        )

    def _completed(self) -> None:
        """Keep the facts as the record of a completed upload; drop the rest (blocking)."""
        client = self.storage.client
        facts = self.facts
        facts.complete = True
        facts.by_size = self.by_size
        facts.touched = self.storage.clock()
        with contextlib.suppress(StoreError):
            if not self._write_facts_now():
                return
            for listed in list(client.list_objects(f"{self.uploads.root}{self._id}/")):
                if not listed.key.endswith("/facts"):
                    client.delete(listed.key)

    def _release_now(self) -> None:
        if self._lost:
            return
        with contextlib.suppress(StoreError):
            self.storage.client.delete(self.uploads.key(self._id, "holder"))
