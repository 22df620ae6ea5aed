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
        def read(body: bytes) -> str:
            if response.code != 200:
                raise _answer_error(response, body, "starting a multipart upload")
            root = parse_xml(body)
            found = [e.text for e in root.iter() if e.tag.endswith("UploadId")]
            if not found or not found[0]:
                raise StoreError("starting a multipart upload: no UploadId in the answer")
            self.result.upload_id = found[0]
            for number, writer in self._pending_parts:
                self._start_part(number, writer)
            self._pending_parts = []
            return found[0]

        return readBody(response).addCallback(read)  # type: ignore[no-any-return]

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
