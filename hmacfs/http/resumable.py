"""Resumable uploads over HTTP: the upload resources of `hmacfs.core.resumable`, served.

A resumable creation is a PUT (or POST) to a signed slot that asks for one; the site admits it
as it admits any PUT, with a reopenable partial, and the channel announces it with a
``104 Upload Resumption Supported`` that carries the upload resource's URL (`announcement`).
The upload resource (``<upload prefix>.hmacfs/uploads/<token>``) then answers:

- ``HEAD``: how much has arrived; ``PATCH``: append the next part (from the right offset);
  ``DELETE``: cancel; ``OPTIONS``: the limits.

Partials live in storage, never in memory: any worker process, or a restarted server, takes
an upload over from where it stands. One request at a time holds an upload (the storage's
lock); a new request terminates the one under way, as the draft asks, so that the offset it
reports is the one the next append must give. The exception: an append while another append
is under way gets 409 (the one under way wins).

Every request that takes an upload over claims it in the storage (`Backend.claim`): a holder
in another process lets go of an upload that a newer request claimed (every process looks
while it holds uploads, `Resumptions._look`), and a request that waited for the upload gives
up if a newer one claimed it meanwhile, so that what a request reports is never changed by an
older one.

With an object store the other process may be on another node: the store's answers are
waited for on threads, a request waits longer for the holder to let go (`REMOTE_WAIT`: a
node that died is let go of once its holder record is stale), and the claims are read less
often (`REMOTE_LOOK`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from hmacfs.core import resumable as wire
from hmacfs.core.auth import Grant
from hmacfs.core.printable import printable
from hmacfs.core.refusals import (
    BadRequest,
    LengthRequired,
    MethodNotAllowed,
    NotFound,
    Refusal,
    TooLarge,
)
from hmacfs.core.units import format_size
from hmacfs.http import _twisted
from hmacfs.http.upload import Upload
from hmacfs.metrics import DISCONNECTED
from hmacfs.storage.backend import Busy, Partial, PartialState, appending_claim

if TYPE_CHECKING:
    from hmacfs.http.request import UploadRequest
    from hmacfs.http.site import UploadSite

_log = Logger(namespace="hmacfs.http")

#: How long a request waits for another process to let go of an upload before it gets 409.
RELEASE_WAIT = 5.0
#: How often a request waiting for an upload tries again, and how often a process holding
#: uploads looks whether a newer request claimed one of them (a listing of a directory).
RELEASE_POLL = 0.02
#: For an object store, shared by nodes: how long a request waits for the node holding an
#: upload to let go (longer than a dead node's holder record takes to go stale), how often it
#: tries again, and how often a node looks whether another request claimed an upload it holds
#: (a request to the store each time, for each upload held).
REMOTE_WAIT = 20.0
REMOTE_POLL = 0.25
REMOTE_LOOK = 1.0
#: The methods of an upload resource.
RESOURCE_METHODS = "OPTIONS, HEAD, PATCH, DELETE"
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass
class Exchange:
    """What a request of a resumable upload says, and what its answers must say."""

    version: wire.Version
    #: The upload resource's URL (for creations: the 104 and the final answer carry it).
    location: str | None = None
    #: Whether the request is the creation (else a request to the upload resource).
    creation: bool = False

    def headers(self) -> list[tuple[str, str]]:
        """The fields every answer to the request carries."""
        out = [("Upload-Draft-Interop-Version", str(self.version.number))]
        if self.location is not None and self.creation:
            out.append(("Location", self.location))
        return out


@dataclass
class Prepared:
    """The whole answer to a request without a body to store (HEAD, DELETE, OPTIONS)."""

    status: int
    headers: list[tuple[str, str]]


class Resumptions:
    """The resumable uploads of one site: announcements, upload resources, takeovers."""

    def __init__(self, site: UploadSite) -> None:
        self.site = site
        self._watch: task.LoopingCall | None = None
        self._looking = False
        self._prefix: tuple[str | None, bytes] = (None, b"")

    @property
    def enabled(self) -> bool:
        return bool(self.site.config.server.resumable)

    def resource_prefix(self) -> bytes:
        """The path below which upload resources live (asked for every request: worked out
        once per configuration)."""
        prefix = self.site.config.server.upload_prefix
        if self._prefix[0] != prefix:
            self._prefix = (prefix, (prefix + wire.RESOURCE_DIR).encode())
        return self._prefix[1]

    # -- creation ----------------------------------------------------------------------------

    def creation(self, headers: dict[str, str]) -> wire.Creation | None:
        """The resumable creation a PUT or POST asks for (None: a plain upload)."""
        if not self.enabled:
            return None
        return wire.creation_in(headers)

    def created(self, request: UploadRequest, upload: Upload, creation: wire.Creation) -> None:
        """`upload` was admitted as a resumable creation: remember what its answers say."""
        secret = self.site.config.hmac.secrets[0]
        token = wire.make_token(secret, upload.id, upload.rel, upload.size)
        location = self._origin(request) + self.resource_prefix().decode() + token
        request.resumable = Exchange(creation.version, location, creation=True)
        self.site.metrics.resumable_created()
        self._start_watching()

    def announcement(self, request: UploadRequest) -> bytes:
        """The ``104 Upload Resumption Supported`` for an admitted creation."""
        exchange = request.resumable
        assert exchange is not None and exchange.location is not None
        upload = request.upload
        assert upload is not None
        lines = [
            b"HTTP/1.1 104 " + wire.RESUMPTION_SUPPORTED,
            b"Upload-Draft-Interop-Version: %d" % exchange.version.number,
            b"Location: " + exchange.location.encode("latin-1"),
        ]
        if exchange.version.limits:
            limit = exchange.version.limit(upload.size, self.site.storage.resumable_ttl)
            lines.append(b"Upload-Limit: " + limit.encode())
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def _origin(self, request: UploadRequest) -> str:
        """scheme://host[:port] as the client reached us (the public URL when configured)."""
        public = self.site.config.server.public_url
        if public:
            return public.rstrip("/")
        scheme = "https" if self.site.secure(request) else "http"
        host = request.getHeader(b"host")
        text = host.decode("latin-1").strip() if host is not None else ""
        if not _HOST.fullmatch(text):
            address: Any = request.getHost()
            text = f"{address.host}:{address.port}" if hasattr(address, "port") else "localhost"
        return f"{scheme}://{text}"

    # -- answers to uploads ------------------------------------------------------------------

    def answer_headers(self, exchange: Exchange, upload: Upload) -> list[tuple[str, str]]:
        """The fields of the (successful) answer to a creation or append whose body is all
        in: the upload is complete now, or this part of it is kept."""
        version = exchange.version
        done = upload.completes
        out = exchange.headers()
        out.append(("Upload-Offset", str(upload.received)))
        out.append(version.completeness(done))
        if not done and version.limits:
            ttl = self.site.storage.resumable_ttl
            out.append(("Upload-Limit", version.limit(upload.size, ttl)))
        return out

    def part_status(self, exchange: Exchange) -> int:
        """The status of a request that leaves the upload incomplete."""
        return 201 if exchange.creation else exchange.version.intermediate_status()

    # -- requests to upload resources --------------------------------------------------------

    def admit(
        self, method: bytes, token: str, request: UploadRequest, length: int | None
    ) -> defer.Deferred[None] | None:
        """Decide on a request to an upload resource from its headers. Raises a Refusal, or
        returns a Deferred that fires once it is decided (it waited for another request to
        let go of the upload), or None when it is decided already. Decided means: a PATCH
        has its `Upload` attached to `request`, any other request its `Prepared` answer."""
        if not self.enabled:
            raise NotFound("not found")
        headers = request.plain_headers()
        version = wire.version_of(headers.get("upload-draft-interop-version")) or wire.Version(
            wire.NEWEST
        )
        request.resumable = Exchange(version)
        if method == b"OPTIONS":
            request.prepared = Prepared(204, self._options_headers(version))
            return None
        upload_id = wire.id_of(token)
        if upload_id is None:
            raise NotFound("no such upload")
        if method == b"HEAD":
            _no_upload_fields(headers, version)
            return self._settle(
                self._take(upload_id, token, request, appending=False), request, self._head
            )
        if method == b"DELETE":
            _no_upload_fields(headers, version)
            return self._settle(
                self._take(upload_id, token, request, appending=False), request, self._delete
            )
        if method == b"PATCH":
            admit = self._patch_checked(request, headers, version, length)  # (before taking)
            return self._settle(
                self._take(upload_id, token, request, appending=True), request, admit
            )
        raise MethodNotAllowed("method not allowed", headers=(("Allow", RESOURCE_METHODS),))

    def options(self, request: UploadRequest) -> None:
        """An OPTIONS that names an interop version, to any URL: the limits."""
        headers = request.plain_headers()
        version = wire.version_of(headers.get("upload-draft-interop-version"))
        if version is None or not self.enabled:
            return
        request.resumable = Exchange(version)
        request.prepared = Prepared(204, self._options_headers(version)[1:])

    def _options_headers(self, version: wire.Version) -> list[tuple[str, str]]:
        """Allow, and the limits of uploads (the largest a signed slot may have)."""
        out = [("Allow", RESOURCE_METHODS), ("Upload-Draft-Interop-Version", str(version.number))]
        if version.limits:
            limit = self.site.config.server.max_upload_size
            out.append(("Upload-Limit", version.limit(limit, None)))
        if version.number >= 8:
            out.append(("Accept-Patch", wire.PARTIAL_UPLOAD))
        return out

    def _settle(
        self,
        taken: defer.Deferred[tuple[PartialState, Partial | None]],
        request: UploadRequest,
        then: Callable[[UploadRequest, PartialState, Partial | None], None],
    ) -> defer.Deferred[None] | None:
        """Run `then` once the upload is taken; None if that happened at once."""
        done: list[object] = []

        def got(result: tuple[PartialState, Partial | None]) -> None:
            state, partial = result
            try:
                then(request, state, partial)
            except BaseException:
                if partial is not None and not partial.done:
                    partial.close()
                raise
            done.append(True)

        decided: defer.Deferred[None] = taken.addCallback(got)
        if done:
            return None
        failure: list[Any] = []
        if decided.called:
            decided.addErrback(failure.append)
            if failure:
                failure[0].raiseException()
        return decided

    def _take(
        self, upload_id: str, token: str, request: UploadRequest, *, appending: bool
    ) -> defer.Deferred[tuple[PartialState, Partial | None]]:
        """Hold the upload `upload_id` (None for a completed one, which nobody holds), after
        terminating the request under way on it, if any."""
        storage = self.site.storage
        if storage.remote:
            return self._take_remote(upload_id, token, request, appending=appending)
        state = storage.describe(upload_id)
        if not wire.token_matches(
            token, self.site.config.hmac.secrets, upload_id, state.rel, state.size
        ):
            raise NotFound("no such upload")
        if state.complete:
            return defer.succeed((state, None))
        holder = self._holder(upload_id)
        if holder is not None and appending and holder.resumed and holder.interruptible:
            raise wire.busy()  # of two appends at once, the one under way wins
        if appending and request_gone(request):
            # Read (and so admitted) only now, though its client had given up on it and may
            # have asked how far the upload got since: it must not take the upload over.
            raise wire.abandoned()
        # From now on the newest request: a holder in another process lets go (unless both
        # are appends), and any older request still waiting for the upload gives way.
        claim = storage.claim(upload_id, appending=appending)
        if holder is not None:
            self.terminate(holder)
        taken = self._attempt(upload_id, appending, claim)
        if taken is not None:
            return defer.succeed(taken)
        return self._wait(upload_id, appending, claim)

    def _take_remote(
        self, upload_id: str, token: str, request: UploadRequest, *, appending: bool
    ) -> defer.Deferred[tuple[PartialState, Partial | None]]:
        """`_take` for an object store: what the store says is asked from threads, and the
        node holding the upload may be another one (it lets go once it sees the claim)."""
        site = self.site
        storage = site.storage

        def described(state: PartialState) -> Any:
            if not wire.token_matches(
                token, site.config.hmac.secrets, upload_id, state.rel, state.size
            ):
                raise NotFound("no such upload")
            if state.complete:
                return (state, None)
            holder = self._holder(upload_id)
            if holder is not None and appending and holder.resumed and holder.interruptible:
                raise wire.busy()
            if appending and request_gone(request):
                raise wire.abandoned()
            claimed = site.run_blocking(lambda: storage.claim(upload_id, appending=appending))

            def got(claim: str) -> defer.Deferred[tuple[PartialState, Partial | None]]:
                holder = self._holder(upload_id)
                if holder is not None:
                    self.terminate(holder)
                return self._wait(upload_id, appending, claim)

            return claimed.addCallback(got)

        taken: defer.Deferred[tuple[PartialState, Partial | None]] = site.run_blocking(
            storage.describe, upload_id
        ).addCallback(described)
        return taken

    def _attempt(
        self, upload_id: str, appending: bool, claim: str
    ) -> tuple[PartialState, Partial | None] | None:
        """Hold the upload if no other request does and no newer one claimed it; None while
        another request holds it. Raises the refusal of a request that gave way."""
        storage = self.site.storage
        state = storage.describe(upload_id)
        if state.complete:
            return state, None
        if storage.claim_of(upload_id) != claim:
            raise wire.superseded()
        try:
            partial = storage.reopen(upload_id, appending=appending)
        except Busy as e:
            if appending and e.appending:
                raise wire.busy() from None
            return None
        if storage.claim_of(upload_id) != claim:  # (claimed as we took it)
            partial.close()
            raise wire.superseded()
        partial.claim = claim
        return state, partial

    def _wait(
        self, upload_id: str, appending: bool, claim: str
    ) -> defer.Deferred[tuple[PartialState, Partial | None]]:
        """Try to hold the upload every RELEASE_POLL seconds, up to RELEASE_WAIT; give up as
        soon as a newer request has claimed it."""
        clock = self.site.clock
        remote = self.site.storage.remote
        poll = REMOTE_POLL if remote else RELEASE_POLL
        deadline = clock.seconds() + (REMOTE_WAIT if remote else RELEASE_WAIT)
        d: defer.Deferred[tuple[PartialState, Partial | None]] = defer.Deferred()

        def decide(taken: tuple[PartialState, Partial | None] | None) -> None:
            if taken is not None:
                d.callback(taken)
            elif clock.seconds() >= deadline:
                d.errback(wire.locked())
            else:
                clock.callLater(poll, attempt)

        def attempt() -> None:
            if remote:  # (from a thread: each attempt asks the store)
                tried = self.site.run_blocking(self._attempt, upload_id, appending, claim)
                tried.addCallbacks(decide, d.errback)
                return
            try:
                taken = self._attempt(upload_id, appending, claim)
            except Refusal as e:
                d.errback(e)
                return
            decide(taken)

        if remote:
            attempt()
        else:
            clock.callLater(RELEASE_POLL, attempt)
        return d

    def _holder(self, upload_id: str) -> Upload | None:
        for upload in self.site.in_flight:
            if upload.id == upload_id and upload.resumable and not upload.over:
                return upload
        return None

    def terminate(self, upload: Upload) -> None:
        """End the request under way on `upload` (its partial is kept where it stands) and
        close its connection, so that another request can take the upload over."""
        if not upload.interruptible:
            return  # (its body is in: the commit finishes on its own)
        request = self.site.in_flight.get(upload)
        _log.info(
            "taking over the upload of {path}: its earlier request is cut",
            path=printable(upload.rel),
        )
        upload.abort(DISCONNECTED)
        channel = getattr(request, "channel", None)
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    # -- the answers -------------------------------------------------------------------------

    def _resource_headers(
        self, exchange: Exchange, state: PartialState, received: int
    ) -> list[tuple[str, str]]:
        version = exchange.version
        out = exchange.headers()
        out.append(("Upload-Offset", str(received)))
        out.append(version.completeness(state.complete))
        out.append(("Upload-Length", str(state.size)))
        out.append(("Cache-Control", "no-store"))
        if version.limits:
            left = (
                None
                if state.complete
                else state.touched + self.site.storage.resumable_ttl - self.site.wall()
            )
            out.append(("Upload-Limit", version.limit(state.size, left)))
        return out

    def _head(self, request: UploadRequest, state: PartialState, partial: Partial | None) -> None:
        exchange = request.resumable
        assert exchange is not None
        received = state.size if partial is None else partial.received
        if partial is not None:
            partial.close()
        request.prepared = Prepared(204, self._resource_headers(exchange, state, received))

    def _delete(self, request: UploadRequest, state: PartialState, partial: Partial | None) -> None:
        exchange = request.resumable
        assert exchange is not None
        if partial is None:
            raise wire.CompletedUpload(
                "the upload is complete already", headers=(exchange.version.completeness(True),)
            )
        partial.abort()
        _log.info("resumable upload of {path} cancelled", path=printable(state.rel))
        request.prepared = Prepared(204, exchange.headers())

    def _patch_checked(
        self,
        request: UploadRequest,
        headers: dict[str, str],
        version: wire.Version,
        length: int | None,
    ) -> Callable[[UploadRequest, PartialState, Partial | None], None]:
        """Check what a PATCH says by itself (before taking the upload); the returned
        function checks it against the upload and admits it."""
        offset = wire.parse_integer(headers.get("upload-offset"), "Upload-Offset")
        if offset is None:
            raise BadRequest("Upload-Offset required")
        complete = wire.complete_in(version, headers)
        if complete is None:
            if version.completeness_required_on_patch:
                raise BadRequest(f"{version.completeness_field} required")
            complete = True
        media_type = version.patch_media_type
        if media_type is not None:
            given = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
            if given != media_type:
                raise wire.UnsupportedPatch(
                    f"the body must be {media_type}", headers=(("Accept-Patch", media_type),)
                )
        if length is None or not request.requestHeaders.hasHeader(b"content-length"):
            raise LengthRequired("Content-Length required")
        declared = wire.parse_integer(headers.get("upload-length"), "Upload-Length")

        def admit(request: UploadRequest, state: PartialState, partial: Partial | None) -> None:
            if partial is None:
                if state.by_size and complete and length == 0 and offset == state.size:
                    # It was committed when its last byte came, and now the client says so.
                    exchange = request.resumable
                    assert exchange is not None
                    request.prepared = Prepared(
                        201,
                        [
                            *exchange.headers(),
                            ("Upload-Offset", str(state.size)),
                            version.completeness(True),
                        ],
                    )
                    return
                raise wire.completed_upload(version, body_empty=length == 0)
            if request_gone(request):
                raise wire.abandoned()  # (it waited, and its client gave up meanwhile)
            if declared is not None and declared != state.size:
                raise wire.inconsistent_length(version, "Upload-Length is not the upload's size")
            if offset != partial.received:
                raise wire.offset_mismatch(version, partial.received, offset)
            end = offset + length
            if end > state.size:
                raise wire.inconsistent_length(
                    version, f"more than the upload's {format_size(state.size)}"
                )
            if complete and end != state.size:
                raise wire.inconsistent_length(version, "the upload ends short of its size")
            partial.body_end = end
            self._admit_append(request, partial, complete)

        return admit

    def _admit_append(self, request: UploadRequest, partial: Partial, complete: bool) -> None:
        site = self.site
        if partial.size > site.config.server.max_upload_size:
            raise TooLarge("file too large")
        # (an object store compares with what is at the path as it completes the upload)
        existing = None if site.storage.remote else site.storage.existing(partial.rel)
        grant = Grant(
            path=partial.rel,
            size=partial.size,
            content_type=partial.content_type,
            scheme=partial.scheme,
            expires=partial.expires,
            uploader=None,
        )
        request.rel = partial.rel
        request.grant = grant
        upload = site.start_upload(
            request, grant, partial, compare=existing is not None, completes=complete, resumed=True
        )
        site.metrics.resumed()
        del upload
        self._start_watching()

    # -- letting go of uploads other processes ask for ---------------------------------------

    def _start_watching(self) -> None:
        if self._watch is None or not self._watch.running:
            self._watch = task.LoopingCall(self._look)
            self._watch.clock = self.site.clock
            poll = REMOTE_LOOK if self.site.storage.remote else RELEASE_POLL
            self._watch.start(poll, now=False)

    def _look(self) -> None:
        """Let go of the uploads another process asks for; stop looking once none is held."""
        held = [u for u in self.site.in_flight if u.resumable and u.interruptible]
        if not held:
            if self._watch is not None and self._watch.running:
                self._watch.stop()
            return
        storage = self.site.storage
        if storage.remote:
            self._look_remote(held)
            return
        claimed = storage.claimed()
        if not claimed:
            return
        for upload in held:
            if upload.id not in claimed:
                continue
            claim = storage.claim_of(upload.id)
            if claim is None or claim == upload.partial.claim:
                continue
            if upload.resumed and appending_claim(claim):
                continue  # an append while this append is under way: it gets 409
            self.terminate(upload)  # a newer request wants it

    def _look_remote(self, held: list[Upload]) -> None:
        """`_look` for an object store: the claims are read from a thread."""
        if self._looking:
            return
        self._looking = True
        storage = self.site.storage
        ids = sorted({upload.id for upload in held})
        read = self.site.run_blocking(lambda: {i: storage.claim_of(i) for i in ids})

        def seen(claims: dict[str, str | None]) -> None:
            for upload in held:
                claim = claims.get(upload.id)
                if upload.over or not upload.interruptible:
                    continue
                if claim is None or claim == upload.partial.claim:
                    continue
                if upload.resumed and appending_claim(claim):
                    continue
                self.terminate(upload)

        def done(result: object) -> None:
            self._looking = False
            if isinstance(result, Failure):
                _log.debug("reading claims failed: {e}", e=result.getErrorMessage())

        read.addCallback(seen).addBoth(done)

    def stop(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()


def request_gone(request: UploadRequest) -> bool:
    """Whether the client of `request` is gone already (seen on its socket)."""
    channel = request.channel
    return channel is None or channel.transport is None or _twisted.peer_gone(channel.transport)


def _no_upload_fields(headers: dict[str, str], version: wire.Version) -> None:
    for name in ("upload-offset", version.completeness_field.lower(), "upload-length"):
        if name in headers:
            raise BadRequest(f"{name} has no place in this request")
