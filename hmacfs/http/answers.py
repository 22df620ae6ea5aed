"""The one writer of error answers: a `Refusal` becomes the same status, headers and body
whether it is written before the body was read (straight to the transport) or after it
(through the request)."""

from __future__ import annotations

import functools
from typing import Any

from twisted.logger import Logger
from twisted.web import http

from hmacfs.core.headers import BASE_HEADERS, cors_fields, encoded, http_date_now
from hmacfs.core.refusals import InternalError, Refusal
from hmacfs.core.resumable import problem_body
from hmacfs.core.settings import HttpSettings

_log = Logger(namespace="hmacfs.http")

#: Reason phrases Twisted does not know.
_REASONS = {423: b"Locked"}


@functools.lru_cache(maxsize=64)
def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status) or http.RESPONSES.get(status, b"Error")


def as_refusal(error: BaseException, what: str) -> Refusal:
    """`error` if it is a Refusal; anything else is a bug, logged with `what` was being done,
    and answered as a bare internal error."""
    if isinstance(error, Refusal):
        return error
    _log.failure("{what} failed", what=what)
    return InternalError("internal error")


def refusal_headers(
    refusal: Refusal,
    settings: HttpSettings,
    origin: str | None,
    extra: list[tuple[str, str]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """Every header of an error answer but Date, Content-Length and Connection (`extra`: the
    fields of a resumable upload's answers)."""
    problem = getattr(refusal, "problem", None) is not None
    return [
        *BASE_HEADERS,
        *cors_fields(settings, origin),
        (b"Content-Type", b"application/problem+json" if problem else b"text/plain; charset=utf-8"),
        (b"Cache-Control", b"no-store"),
        *encoded([*(extra or ()), *refusal.headers]),
    ]


def refusal_body(refusal: Refusal) -> bytes:
    """The problem details of a refusal that has them, else its text."""
    return problem_body(refusal) or (refusal.text + "\n").encode("utf-8")


def _exchange_headers(request: Any) -> list[tuple[str, str]] | None:
    exchange = getattr(request, "resumable", None)
    return exchange.headers() if exchange is not None else None


def raw_refusal(
    refusal: Refusal,
    settings: HttpSettings,
    origin: str | None,
    request: Any = None,
    *,
    head: bool = False,
    closing: bool = True,
) -> bytes:
    """The whole answer, as bytes for the transport, ending the connection (before the body:
    nothing of the request is read any more), or, not `closing`, keeping it (the body was
    read whole). The answer to a HEAD (`head`) has the Content-Length of its body but not
    the body."""
    body = refusal_body(refusal)
    reason = reason_phrase(refusal.status)
    lines = [b"HTTP/1.1 %d %s" % (refusal.status, reason), b"Date: " + http_date_now()]
    headers = refusal_headers(refusal, settings, origin, _exchange_headers(request))
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    if closing:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


def write_refusal(request: Any, refusal: Refusal, settings: HttpSettings) -> bytes:
    """Set the status and headers of `request` for `refusal`; return the body to write."""
    origin = request.getHeader(b"origin")
    request.setResponseCode(refusal.status, reason_phrase(refusal.status))
    for name, value in refusal_headers(
        refusal,
        settings,
        origin.decode("latin-1") if origin is not None else None,
        _exchange_headers(request),
    ):
        request.setHeader(name, value)
    body = refusal_body(refusal)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body
