"""Bodies to and from the object store (`hmacfs.storage.s3`), streamed on the reactor with
backpressure.

An upload's body goes to the store as it arrives: a single PUT (create-only) for a body up to
the part size, else the parts of a multipart upload, each part a PUT of known length written
as its bytes arrive. While the store reads slower than the client sends, or while too many
parts wait for their answers, the client's connection is paused (`Flow`): memory per upload
stays at a socket buffer or two, whatever the size.

A download's ranges are read with GETs whose answers are handed to the client's request as
they come; the store's connection is paused while the client's is full.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from hmacfs.core.credentials import Credentials
from hmacfs.storage.s3.client import Bucket, StoreError, parse_xml
from hmacfs.storage.s3.sigv4 import UNSIGNED_PAYLOAD, sign_headers

#: Body bytes held for a part whose request is not connected yet, before the client waits.
HELD_MAX = 1024 * 1024


class Flow:
    """Pauses and resumes a body's source (the client's transport) for any number of
    reasons at once: it reads again once no reason is left."""

    def __init__(self, source: Any = None) -> None:
        self.source = source
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons and self.source is not None:
            self.source.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and self.source is not None:
            self.source.resumeProducing()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)


class Streams:
    """Signed streaming requests to one bucket, over a pool of kept-alive connections."""

    def __init__(
        self,
        reactor: Any,
        bucket: Bucket,
        credentials: Credentials,
        ca_file: Path | None = None,
        *,
        connections: int = 32,
    ) -> None:
        self.reactor = reactor
        self.bucket = bucket
        self.credentials = credentials
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections
        self.pool.retryAutomatically = False
        if bucket.secure:
            from twisted.internet.ssl import Certificate
            from twisted.web.client import BrowserLikePolicyForHTTPS

            trust = Certificate.loadPEM(ca_file.read_bytes()) if ca_file else None
            self.agent = Agent(reactor, BrowserLikePolicyForHTTPS(trust), pool=self.pool)
        else:
            self.agent = Agent(reactor, pool=self.pool)

    def request(
        self,
        method: str,
        key: str,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> defer.Deferred[Any]:
        """Send a request (`body`: an IBodyProducer of known length, or None); the answer's
        head comes as an IResponse."""
        all_headers = {"host": self.bucket.host}
        for name, value in (headers or {}).items():
            all_headers[name.lower()] = value
        if body is not None:
            all_headers["content-length"] = str(body.length)
        signed = sign_headers(
            method,
            self.bucket.path(key),
            query,
            all_headers,
            self.credentials,
            self.bucket.region,
            datetime.now(UTC),
            payload_hash=UNSIGNED_PAYLOAD,
        )
        all_headers.update(signed)
        all_headers.pop("content-length", None)  # (Twisted writes it from the producer)
        raw = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in all_headers.items()})
        url = self.bucket.url(key, query).encode("ascii")
        return self.agent.request(method.encode("ascii"), url, raw, body)  # type: ignore[no-any-return]

    def close(self) -> defer.Deferred[Any]:
        return self.pool.closeCachedConnections()  # type: ignore[no-any-return]

    # -- what the backend asks of the reactor (it imports no Twisted itself) ----------------

    def flow(self) -> Flow:
        return Flow()

    def upload(self, *args: Any, **kwargs: Any) -> StreamedUpload:
        return StreamedUpload(self, *args, **kwargs)

    def pieces(self, **kwargs: Any) -> PieceStream:
        return PieceStream(self, **kwargs)

    def small(self, *args: Any, **kwargs: Any) -> defer.Deferred[tuple[int, str, bytes]]:
        return small_request(self, *args, **kwargs)

    def on_reactor(self) -> bool:
        """Whether the caller runs on the reactor's thread."""
        from twisted.python import threadable

        return bool(threadable.isInIOThread())

    def call_on_reactor(self, call: Callable[..., object], *args: object) -> None:
        self.reactor.callFromThread(call, *args)

    def succeed(self, result: object = None) -> defer.Deferred[Any]:
        return defer.succeed(result)

    def deferred(self) -> defer.Deferred[Any]:
        return defer.Deferred()

    def in_thread(self, call: Callable[..., object], *args: object) -> defer.Deferred[Any]:
        from twisted.internet import threads

        return threads.deferToThread(call, *args)

    def every(self, interval: float, call: Callable[[], object]) -> Callable[[], None]:
        """Call `call` every `interval` seconds (on the reactor, from the reactor); the
        function returned stops it."""
        from twisted.internet import task

        loop = task.LoopingCall(call)
        loop.clock = self.reactor
        loop.start(interval, now=False).addErrback(lambda _: None)

        def stop() -> None:
            if loop.running:
                loop.stop()

        return stop

    def wait(self, deferred: Callable[[], defer.Deferred[Any]]) -> Any:
        """From a thread: the result of the Deferred that `deferred` gives on the reactor
        (its failure raised)."""
        from twisted.internet.threads import blockingCallFromThread

        return blockingCallFromThread(self.reactor, deferred)  # type: ignore[arg-type]


def attach_streams(storage: Any, reactor: Any) -> None:
    """Have an object store backend stream its bodies on `reactor`."""
    client = storage.client
    storage.attach(Streams(reactor, client.bucket, client.credentials, client.ca_file))


def _answer_error(response: Any, body: bytes, what: str) -> StoreError:
    from hmacfs.storage.s3.client import Answer, error_of

    return error_of(Answer(response.code, {}, body), what)


@implementer(IBodyProducer)
class BodyWriter:
    """The body of one request to the store, of known length, written as the client's bytes
    arrive. Bytes written before the request is connected are held (the client pauses past
    `HELD_MAX`); the store's connection pausing this pauses the client."""

    def __init__(self, length: int, flow: Flow, name: str) -> None:
        self.length = length
        self.remaining = length
        self._flow = flow
        self._name = name
        self._consumer: Any = None
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._done: defer.Deferred[None] | None = None
        self._stopped = False

    def write(self, data: bytes) -> None:
        self.remaining -= len(data)
        if self._consumer is None:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > HELD_MAX:
                self._flow.pause(f"{self._name}: connecting")
            return
        self._consumer.write(data)
        self._check_done()

    def _check_done(self) -> None:
        if self.remaining == 0 and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        self._consumer = consumer
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held:
            consumer.write(data)
        self._flow.resume(f"{self._name}: connecting")
        if self.remaining == 0:
            return defer.succeed(None)
        self._done = defer.Deferred()
        return self._done

    def pauseProducing(self) -> None:
        self._flow.pause(f"{self._name}: store busy")

    def resumeProducing(self) -> None:
        self._flow.resume(f"{self._name}: store busy")

    def stopProducing(self) -> None:
        # The request to the store failed or was cancelled: its outcome says why.
        self._stopped = True
        self._flow.resume(f"{self._name}: store busy")
        self._flow.resume(f"{self._name}: connecting")
        self._done = None

    def release(self) -> None:
        """Let go of the client (the upload ended): no reason of this body holds it."""
        self._flow.resume(f"{self._name}: store busy")
        self._flow.resume(f"{self._name}: connecting")


@dataclass
class Sent:
    """What the store answered to an upload's body."""

    #: The status of the single PUT (200 stored, 412 a file was there already), or of the
    #: multipart upload's last failing step (200 when every part was stored).
    status: int = 0
    #: The entity tag of the object (single PUT) or of each part, in order.
    etags: list[str] = field(default_factory=list)
    upload_id: str | None = None


class StreamedUpload:
    """One upload's body on its way into the store (see the module's docstring).

    Runs on the reactor. `write` raises StoreError once the store refused a part (the upload
    is then to be aborted); `sent` fires with `Sent` once every answer is in.
    """

    def __init__(
        self,
        streams: Streams,
        key: str,
        size: int,
        part_size: int,
        headers: Mapping[str, str],
        *,
        flow: Flow,
        in_flight: int = 4,
        hash_part_size: int | None = None,
    ) -> None:
        self.streams = streams
        self.key = key
        self.size = size
        self.part_size = part_size
        self.flow = flow
        self.in_flight = in_flight
        self.multipart = size > part_size
        self.result = Sent()
        self.error: StoreError | None = None
        self._written = 0
        self._part: BodyWriter | None = None
        self._part_number = 0
        self._waiting: dict[int, defer.Deferred[Any]] = {}
        self._pending_parts: list[tuple[int, BodyWriter]] = []
        self._upload_id: defer.Deferred[str] | None = None
        self._aborted = False
        self._all_written = defer.Deferred[None]()
        self.sent: defer.Deferred[Sent] = defer.Deferred()
        self._headers = dict(headers)
        if not self.multipart:
            writer = BodyWriter(size, flow, "body")
            self._part = writer
            put_headers = {**self._headers, "if-none-match": "*"}
            d = streams.request("PUT", key, (), put_headers, writer)
            self._track(0, d, writer)
            if size == 0:
                self._part = None
                self._wrote_all()
        else:
            self._upload_id = streams.request("POST", key, (("uploads", ""),), self._headers)
            self._upload_id.addCallback(self._created)
            self._upload_id.addErrback(self._create_failed)
        self._all_written.addCallback(lambda _: self._settle())

    # -- the multipart upload's creation -------------------------------------------------------

    def _created(self, response: Any) -> defer.Deferred[str]:
        def started(upload_id: str) -> str:
            self.result.upload_id = upload_id
            for number, writer in self._pending_parts:
                self._start_part(number, writer)
            self._pending_parts = []
            return upload_id

        return upload_id_of(response).addCallback(started)

    def _create_failed(self, failure: Failure) -> None:
        self._fail(_as_store_error(failure, "starting a multipart upload"))

    # -- the body --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        while data:
            part = self._part
            if part is None:
                part = self._next_part()
            take = data if len(data) <= part.remaining else data[: part.remaining]
            data = data[len(take) :]
            self._written += len(take)
            part.write(take)
            if part.remaining == 0:
                self._part = None
                if self._written == self.size:
                    self._wrote_all()

    def _next_part(self) -> BodyWriter:
        self._part_number += 1
        number = self._part_number
        length = min(self.part_size, self.size - self._written)
        writer = BodyWriter(length, self.flow, f"part {number}")
        self._part = writer
        if self.result.upload_id is None:
            self._pending_parts.append((number, writer))
        else:
            self._start_part(number, writer)
        return writer

    def _start_part(self, number: int, writer: BodyWriter) -> None:
        if self._aborted:
            return
        assert self.result.upload_id is not None
        query = (("partNumber", str(number)), ("uploadId", self.result.upload_id))
        d = self.streams.request("PUT", self.key, query, {}, writer)
        self._track(number, d, writer)

    def _track(self, number: int, d: defer.Deferred[Any], writer: BodyWriter) -> None:
        self._waiting[number] = d
        if len(self._waiting) > self.in_flight:
            self.flow.pause("parts in flight")
        what = "storing the body" if number == 0 else f"storing part {number}"

        def answered(response: Any) -> defer.Deferred[None]:
            def read(body: bytes) -> None:
                if number == 0:
                    self.result.status = response.code
                    if response.code == 412:
                        return
                if response.code != 200:
                    raise _answer_error(response, body, what)
                etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].decode("latin-1")
                if number == 0:
                    self.result.etags = [etag]
                else:
                    while len(self.result.etags) < number:
                        self.result.etags.append("")
                    self.result.etags[number - 1] = etag

            return readBody(response).addCallback(read)  # type: ignore[no-any-return]

        def ended(result: object) -> None:
            writer.release()
            self._waiting.pop(number, None)
            if len(self._waiting) <= self.in_flight:
                self.flow.resume("parts in flight")
            if isinstance(result, Failure):
                self._fail(_as_store_error(result, what))
            self._settle()

        d.addCallback(answered).addBoth(ended)

    def _wrote_all(self) -> None:
        if not self._all_written.called:
            self._all_written.callback(None)

    def _settle(self) -> None:
        """Fire `sent` once every byte is written and every answer is in (or on failure)."""
        if self.sent.called:
            return
        if self.error is not None:
            if not self._waiting:
                self.sent.errback(Failure(self.error))
            return
        if self._all_written.called and not self._waiting and self._upload_ready():
            self.result.status = self.result.status or 200
            self.sent.callback(self.result)

    def _upload_ready(self) -> bool:
        return not self.multipart or self.result.upload_id is not None

    def _fail(self, error: StoreError) -> None:
        if self.error is None:
            self.error = error
        for d in list(self._waiting.values()):
            d.cancel()
        self._settle()

    def abort(self) -> defer.Deferred[None]:
        """Stop sending, cancel what is in flight and abort the multipart upload, if any."""
        self._aborted = True
        if self.error is None:
            self.error = StoreError("upload aborted")
        for d in list(self._waiting.values()):
            d.cancel()
        if self._part is not None:
            self._part.release()
        if not self.multipart:
            return defer.succeed(None)
        upload_ids = self._upload_id
        assert upload_ids is not None

        def abort_upload(upload_id: str | None) -> defer.Deferred[Any] | None:
            if not upload_id:  # (never created)
                return None
            return self.streams.request(
                "DELETE", self.key, (("uploadId", upload_id),)
            ).addCallback(readBody)

        done: defer.Deferred[Any] = upload_ids.addCallback(abort_upload)
        done.addErrback(lambda _: None)  # (the sweeper aborts what is left)
        return done


# -- a resumable upload's pieces -------------------------------------------------------------


@implementer(IBodyProducer)
class SmallBody:
    """A small request body held whole (facts, holder records)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def small_request(
    streams: Streams,
    method: str,
    key: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    query: Sequence[tuple[str, str]] = (),
) -> defer.Deferred[tuple[int, str, bytes]]:
    """A request with a small body (or none): its status, entity tag and body."""
    producer = SmallBody(body) if body is not None else None
    d = streams.request(method, key, query, headers, producer)

    def answered(response: Any) -> defer.Deferred[tuple[int, str, bytes]]:
        etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].decode("latin-1")
        return readBody(response).addCallback(  # type: ignore[no-any-return]
            lambda data: (response.code, etag, data)
        )

    return d.addCallback(answered)  # type: ignore[no-any-return]


@dataclass
class Piece:
    """A stretch of a resumable upload stored by one request to the store: the whole object
    (``single``), a part of its multipart upload (``part``) or the bytes after the last part
    (``tail``, an object of its own)."""

    kind: str
    start: int
    length: int
    number: int = 0
    #: What the store answered: its status and entity tag; and the MD5 of what was sent.
    status: int = 0
    etag: str = ""
    md5: str = ""

    @property
    def end(self) -> int:
        return self.start + self.length


class PieceStream:
    """The bytes of one request of a resumable upload, on their way into the store as
    pieces (see `hmacfs.storage.s3.resumable`). Runs on the reactor.

    Pieces are cut at `part_size` from `start` (where the stored parts end); the first one
    begins with `prefix` (the stored tail, read back), and the request's bytes follow. A
    piece that ends where the request does, short of the upload's end and smaller than S3's
    smallest part, is a tail; the whole upload in one piece is one create-only PUT; anything
    else is a part. `stored` is told of each piece the store took; `created` of the
    multipart upload, once there is one."""

    def __init__(
        self,
        streams: Streams,
        *,
        key: str,
        tail_key: Callable[[int], str],
        headers: Mapping[str, str],
        size: int,
        part_size: int,
        min_part: int,
        start: int,
        prefix: bytes,
        end: int,
        upload_id: str | None,
        next_number: int,
        flow: Flow,
        in_flight: int,
        stored: Callable[[Piece], None],
        created: Callable[[str], None],
        tee: Callable[[Piece, bytes], None] | None = None,
    ) -> None:
        self.streams = streams
        self.key = key
        self.tail_key = tail_key
        self.headers = dict(headers)
        self.size = size
        self.part_size = part_size
        self.min_part = min_part
        self.end = end
        self.flow = flow
        self.in_flight = in_flight
        self._stored = stored
        self._created = created
        self._pos = start
        self._number = next_number
        self.error: StoreError | None = None
        self._piece: tuple[Piece, BodyWriter, Any] | None = None
        self._waiting: dict[int, tuple[defer.Deferred[Any], BodyWriter]] = {}
        self._upload_id: defer.Deferred[str] | None = (
            defer.succeed(upload_id) if upload_id is not None else None
        )
        self._quiet: list[defer.Deferred[None]] = []
        self._tee = tee
        #: The piece a cut dropped, and how many of its bytes had come (see `cut`).
        self.cut_piece: tuple[Piece, int] | None = None
        if prefix:
            self.write(prefix)

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        while data:
            if self._piece is None:
                self._next_piece()
            assert self._piece is not None
            piece, writer, digest = self._piece
            take = data if len(data) <= writer.remaining else data[: writer.remaining]
            data = data[len(take) :]
            self._pos += len(take)
            digest.update(take)
            if self._tee is not None:
                self._tee(piece, take)
            writer.write(take)
            if writer.remaining == 0:
                piece.md5 = digest.hexdigest()
                self._piece = None

    def _next_piece(self) -> None:
        import hashlib

        start = self._pos
        if start >= self.end:
            raise StoreError("more bytes than the request has")
        stop = min(start + self.part_size, self.end)
        if start == 0 and stop == self.size and self._number == 1:
            piece = Piece("single", start, stop - start)
        elif stop < self.size and stop - start < self.min_part:
            piece = Piece("tail", start, stop - start)
        else:
            piece = Piece("part", start, stop - start, number=self._number)
            self._number += 1
        writer = BodyWriter(piece.length, self.flow, f"piece at {start}")
        self._piece = (piece, writer, hashlib.md5(usedforsecurity=False))
        if piece.kind == "single":
            put_headers = {**self.headers, "if-none-match": "*"}
            request = self.streams.request("PUT", self.key, (), put_headers, writer)
            self._send(piece, writer, request)
        elif piece.kind == "tail":
            request = self.streams.request("PUT", self.tail_key(start), (), {}, writer)
            self._send(piece, writer, request)
        else:
            self._send(piece, writer, self._part_request(piece, writer))

    def _part_request(self, piece: Piece, writer: BodyWriter) -> defer.Deferred[Any]:
        if self._upload_id is None:
            query = (("uploads", ""),)
            self._upload_id = self.streams.request("POST", self.key, query, self.headers)
            self._upload_id.addCallback(self._read_upload_id)

            def answered(result: object) -> object:
                self._settle()  # (`settled` waits for this answer too)
                return result

            self._upload_id.addBoth(answered)
        sent: list[defer.Deferred[Any]] = []

        def cancel(_: defer.Deferred[Any]) -> None:
            for request in sent:
                request.cancel()  # (which drops its connection to the store)

        d: defer.Deferred[Any] = defer.Deferred(canceller=cancel)

        def relay(result: object) -> None:
            if d.called:
                return
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

        def send(upload_id: str) -> None:
            if d.called:  # (cut before the multipart upload existed)
                return
            query = (("partNumber", str(piece.number)), ("uploadId", upload_id))
            request = self.streams.request("PUT", self.key, query, {}, writer)
            sent.append(request)
            request.addBoth(relay)

        def failed(failure: Failure) -> Failure:
            writer.stopProducing()
            if not d.called:
                d.errback(failure)
            return failure

        def on_id(upload_id: str) -> str:
            send(upload_id)
            return upload_id

        self._upload_id.addCallbacks(on_id, failed)
        return d

    def _read_upload_id(self, response: Any) -> defer.Deferred[str]:
        def started(upload_id: str) -> str:
            self._created(upload_id)
            return upload_id

        return upload_id_of(response).addCallback(started)

    def _send(self, piece: Piece, writer: BodyWriter, d: defer.Deferred[Any]) -> None:
        self._waiting[piece.start] = (d, writer)
        if len(self._waiting) > self.in_flight:
            self.flow.pause("pieces in flight")
        what = f"storing the bytes from {piece.start}"

        def answered(response: Any) -> defer.Deferred[None]:
            def read(body: bytes) -> None:
                piece.status = response.code
                if response.code == 412 and piece.kind == "single":
                    return  # (an object is there: the commit compares)
                if response.code != 200:
                    raise _answer_error(response, body, what)
                etag = (response.headers.getRawHeaders(b"etag") or [b""])[0]
                piece.etag = etag.decode("latin-1")

            return readBody(response).addCallback(read)  # type: ignore[no-any-return]

        def ended(result: object) -> None:
            writer.release()
            self._waiting.pop(piece.start, None)
            if len(self._waiting) <= self.in_flight:
                self.flow.resume("pieces in flight")
            if isinstance(result, Failure):
                if self.error is None:
                    self.error = _as_store_error(result, what)
            elif writer.remaining == 0:
                self._stored(piece)
            self._settle()

        d.addCallback(answered).addBoth(ended)

    def _settle(self) -> None:
        if self._waiting or (self._upload_id is not None and not self._upload_id.called):
            return
        quiet, self._quiet = self._quiet, []
        for d in quiet:
            d.callback(None)

    def settled(self) -> defer.Deferred[None]:
        """Fires once no piece is on its way any more (stored or failed)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._quiet.append(d)
        self._settle()
        return d

    def cut(self) -> defer.Deferred[None]:
        """The request ended early: drop the piece still waiting for bytes (pieces whose
        bytes are all sent still get their answers); fires once none is on its way. The
        piece dropped, and how many bytes it had, are `cut_piece`."""
        if self._piece is not None:
            piece, writer, _ = self._piece
            self._piece = None
            self.cut_piece = (piece, piece.length - writer.remaining)
            waiting = self._waiting.get(piece.start)
            if waiting is not None:
                waiting[0].cancel()
            writer.release()
        return self.settled()

    def abort(self) -> defer.Deferred[None]:
        """Drop every piece on its way."""
        self._piece = None
        for d, writer in list(self._waiting.values()):
            d.cancel()
            writer.release()
        if self.error is None:
            self.error = StoreError("upload aborted")
        return self.settled()


def upload_id_of(response: Any) -> defer.Deferred[str]:
    """The UploadId in the store's answer to the start of a multipart upload (StoreError
    when it refused, or said none)."""

    def read(body: bytes) -> str:
        if response.code != 200:
            raise _answer_error(response, body, "starting a multipart upload")
        found = [e.text for e in parse_xml(body).iter() if e.tag.endswith("UploadId")]
        if not found or not found[0]:
            raise StoreError("starting a multipart upload: no UploadId in the answer")
        return found[0]

    return readBody(response).addCallback(read)  # type: ignore[no-any-return]


def _as_store_error(failure: Failure, what: str) -> StoreError:
    error = failure.value
    if isinstance(error, StoreError):
        return error
    if isinstance(error, defer.CancelledError):
        return StoreError(f"{what}: cancelled")
    return StoreError(f"{what}: {failure.getErrorMessage() or type(error).__name__}")


# -- downloads -------------------------------------------------------------------------------


@implementer(IPushProducer)
class RangeSender(Protocol):
    """Hands the body of one ranged GET from the store to a request, pausing the store's
    connection while the request's transport is full."""

    def __init__(self, write: Callable[[bytes], None], done: defer.Deferred[int]) -> None:
        self._write = write
        self._done = done
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self._write(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._done.called:
            return
        if reason.check(ResponseDone):
            self._done.callback(self.received)
        else:
            self._done.errback(reason)

    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()
