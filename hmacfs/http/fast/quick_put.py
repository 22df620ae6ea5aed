"""Small PUTs taken whole from one read, without a Request object.

A small upload usually arrives in one piece: its head and its whole body in a single read.
Going through Twisted's header parser, Request and the resource tree costs several times
what storing four kilobytes does. A PUT that arrives so (HTTP/1.1, a Content-Length that is
exactly what followed the head, no Expect, no Transfer-Encoding, not a resumable creation, a
persistent connection) is admitted, stored and answered here, through the same admission,
`Upload` and answers as the full path. Anything else, and any request the admission refuses,
returns False before anything is written or stored, and takes the full path (which then
answers the refusal as it always does).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from hmacfs.core.headers import cors_fields, http_date_now
from hmacfs.core.refusals import InternalError, Refusal
from hmacfs.http.answers import raw_refusal, reason_phrase
from hmacfs.http.fast.direct import send_answer
from hmacfs.http.fast.quick import ANSWERS_KEPT, answered_quickly, head_after_date

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

    from hmacfs.core.auth import Grant
    from hmacfs.core.settings import HttpSettings
    from hmacfs.http.channel import UploadChannel
    from hmacfs.http.upload import Upload

#: A request head taken here: a PUT of an ASCII target, HTTP/1.1, well-formed header lines.
_PUT_HEAD = re.compile(
    rb"PUT (/[\x21-\x7e]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
#: The one header of a 201 that is not on every answer.
_NO_BODY = ((b"Content-Length", b"0"),)
_DIGITS = re.compile(rb"[0-9]{1,18}")
#: Headers that take a PUT down the full path: another framing of the body, an interim
#: answer to send, a protocol switch, a resumable upload's creation.
_DECLINED = frozenset(
    {b"transfer-encoding", b"expect", b"upgrade", b"upload-draft-interop-version"}
)


class _Fields:
    """The request's header fields, as much of Twisted's Headers as admission asks of."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict[bytes, bytes]) -> None:
        self.raw = raw

    def hasHeader(self, name: bytes) -> bool:
        return name.lower() in self.raw

    def getRawHeaders(self, name: bytes, default: Any = None) -> Any:
        value = self.raw.get(name.lower())
        return default if value is None else [value]


class QuickRequest:
    """What admission, the upload bookkeeping and the refusal writer ask of a request, for a
    PUT taken whole here (they otherwise get an `UploadRequest`)."""

    method = b"PUT"
    resumable = None
    prepared = None

    def __init__(self, channel: UploadChannel, raw: dict[bytes, bytes], started: float) -> None:
        self.channel = channel
        self.requestHeaders = _Fields(raw)
        self.started = started
        self.rel: str | None = None
        self.grant: Grant | None = None
        self.upload: Upload | None = None
        self._plain: dict[str, str] | None = None

    def plain_headers(self) -> dict[str, str]:
        """As `UploadRequest.plain_headers` (each name once here: repeated ones decline)."""
        if self._plain is None:
            self._plain = {
                name.decode("latin-1"): value.decode("utf-8", "surrogateescape")
                for name, value in self.requestHeaders.raw.items()
            }
        return self._plain

    def getHeader(self, name: bytes) -> bytes | None:
        return self.requestHeaders.raw.get(name.lower())

    def getClientAddress(self) -> IAddress:
        transport: Any = self.channel.transport
        return transport.getPeer()  # type: ignore[no-any-return]

    def isSecure(self) -> bool:
        return self.channel.isSecure()

    def body_failed(self, refusal: Refusal) -> None:
        """The deadlines' way to cut an upload off (never while the upload is committed)."""
        if self.upload is not None:
            self.upload.abort(refusal.status)
        self.channel.refuse(self, refusal, body_left=0, method=b"PUT")  # type: ignore[arg-type]


def _parse(  # noqa: PLR0911 (each early return declines, before anything is taken)
    data: bytes, limit: int, max_headers: int
) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
    """The target, header fields and body of a PUT that is all in `data`; else None."""
    match = _PUT_HEAD.match(data)
    if match is None or match.end() > limit:
        return None
    target, lines = match.groups()
    headers: dict[bytes, bytes] = {}
    split = lines.split(b"\r\n")
    if len(split) > max_headers:
        return None
    for line in split[:-1]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in headers or name in _DECLINED:
            return None
        headers[name] = value.strip(b" \t")
    length = headers.get(b"content-length")
    if length is None or _DIGITS.fullmatch(length) is None:
        return None
    body = data[match.end() :]
    if int(length) != len(body):
        return None
    if headers.get(b"connection", b"keep-alive").lower() != b"keep-alive":
        return None
    return target, headers, body


#: The head of a success without a body, by status and Origin: the [http] settings it was
#: made for, what goes before the Date's value and what after it.
_success_heads: dict[tuple[int, bytes | None], tuple[object, bytes, bytes]] = {}


def _success_head(
    status: int, origin: bytes | None, settings: HttpSettings
) -> tuple[bytes, bytes]:
    """What goes before and after the Date's value in a `status` answer without a body."""
    kept = _success_heads.get((status, origin))
    if kept is not None and kept[0] is settings:
        return kept[1], kept[2]
    text_origin = origin.decode("latin-1") if origin is not None else None
    before = b"HTTP/1.1 %d %s\r\nDate: " % (status, reason_phrase(status))
    after = head_after_date(cors_fields(settings, text_origin), _NO_BODY)
    if len(_success_heads) >= ANSWERS_KEPT:
        _success_heads.clear()  # (a flood of Origins: made again as they come)
    _success_heads[status, origin] = (settings, before, after)
    return before, after


def take_put(channel: UploadChannel, data: bytes) -> bool:
    """Store and answer the PUT that is all of `data` (a head and its whole body, nothing
    after it) if it is one this path takes; False, with nothing written or stored, else."""
    site = channel.site
    if site.stopping:
        return False
    parsed = _parse(data, channel.totalHeadersSize, channel.maxHeaders)
    if parsed is None:
        return False
    target, headers, body = parsed
    request = QuickRequest(channel, headers, site.now())
    try:
        upload = site.admit_put(target, request, len(body))  # type: ignore[arg-type]
    except Exception:  # a refusal (or a bug): the full path answers it, and logs it
        return False
    channel.resetTimeout()
    try:
        upload.receive(body)
    except Refusal as e:
        request.body_failed(e)
        return True
    transport: Any = channel.transport
    settings = site.config.http
    origin = headers.get(b"origin")

    def answer(status: int, refusal: Refusal | None) -> None:
        if channel.lost:
            channel.release()
            return  # the connection went while the commit ran on a thread
        if refusal is None and status < 300:
            before, after = _success_head(status, origin, settings)
            send_answer(transport, before + http_date_now() + after)
        else:
            refusal = refusal or InternalError("internal error")
            status = refusal.status
            text_origin = origin.decode("latin-1") if origin is not None else None
            send_answer(
                transport, raw_refusal(refusal, settings, text_origin, request, closing=False)
            )
        # (no idle timeout to reset: it was, as the body came, in this same turn of the
        # reactor; and a commit on a thread held the channel, whose release restarts it)
        answered_quickly(
            channel, headers, method=b"PUT", rel=upload.rel, status=status,
            size=upload.received, scheme=upload.grant.scheme, started=request.started,
        )
        channel.release()

    upload.commit(answer)
    if not upload.over:
        # Committed on a thread: what the client sends meanwhile (a pipelined request) waits
        # until the answer is out.
        channel.hold()
    return True
