"""Refusals: every way a request is turned down, raised by auth, paths and storage alike.

One hierarchy, mapped to an HTTP answer in exactly one place (`hmacfs.http.answers`). Each
refusal carries its status, a short plain-text message for the client (never a secret, a MAC or
a token) and a `Reason`, which is also the ``reason`` label of the refusal metrics, so nothing
has to be recovered from the message text.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Reason(enum.StrEnum):
    """Why a request was refused; the value is the metrics label."""

    SIGNATURE = "signature"  # missing, wrong or disabled signature or token; URL outside it
    EXPIRED = "expired"  # a signed URL or token past its expiry; a timestamp outside the window
    TOO_LARGE = "too_large"  # over max_upload_size, other than the signed size, body too long
    LENGTH_REQUIRED = "length_required"  # PUT without Content-Length
    CONFLICT = "conflict"  # the file exists, or another upload is writing it
    BAD_PATH = "bad_path"  # undecodable, hostile, over-long or misplaced path
    BAD_REQUEST = "bad_request"  # any other malformed request (duplicate parameter, short body)
    METHOD = "method"  # a method the server does not serve
    STORAGE = "storage"  # the storage refused (full, read-only, permissions)
    QUOTA = "quota"  # an uploader's or the whole storage's [quota] limit, or its free space
    NOT_FOUND = "not_found"  # nothing is stored there (downloads)
    TIMEOUT = "timeout"  # a request head or body that came too slowly
    INTERNAL = "internal"  # a bug: an unexpected exception


Headers = tuple[tuple[str, str], ...]


class Refusal(Exception):
    """A request turned down: an HTTP status, a `Reason` and a short message for the client.

    Subclasses fix the status and a default reason; `reason` overrides the default where one
    status has several causes (a 403 for an expired URL rather than a wrong signature).
    """

    status: ClassVar[int] = 500
    default_reason: ClassVar[Reason] = Reason.INTERNAL

    def __init__(self, text: str, reason: Reason | None = None, headers: Headers = ()) -> None:
        super().__init__(text)
        self.text = text
        self.reason = reason if reason is not None else self.default_reason
        self.headers = headers
        #: A signature (or token MAC) that the secrets do not give: the usual deployment
        #: mistake, a secret or an upload prefix other than the XMPP server's.
        self.mismatch = False
        #: The signing scheme the request was checked under, when it got that far.
        self.scheme: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.reason.value}, {self.text!r})"


class BadRequest(Refusal):
    status = 400
    default_reason = Reason.BAD_REQUEST


class Unauthorized(Refusal):
    """401: Prosody's JWT answers (with `WWW-Authenticate`)."""

    status = 401
    default_reason = Reason.SIGNATURE


class Forbidden(Refusal):
    status = 403
    default_reason = Reason.SIGNATURE


class NotFound(Refusal):
    status = 404
    default_reason = Reason.NOT_FOUND


class MethodNotAllowed(Refusal):
    status = 405
    default_reason = Reason.METHOD


class Conflict(Refusal):
    status = 409
    default_reason = Reason.CONFLICT


class Gone(Refusal):
    status = 410
    default_reason = Reason.EXPIRED


class RequestTimeout(Refusal):
    """408: the request's head, or its body, came too slowly."""

    status = 408
    default_reason = Reason.TIMEOUT


class LengthRequired(Refusal):
    status = 411
    default_reason = Reason.LENGTH_REQUIRED


class TooLarge(Refusal):
    status = 413
    default_reason = Reason.TOO_LARGE


class UriTooLong(Refusal):
    status = 414
    default_reason = Reason.BAD_PATH


class StorageFailure(Refusal):
    """The storage refused (full, read-only, permissions): the upload is not stored."""

    status = 507
    default_reason = Reason.STORAGE


class InternalError(Refusal):
    """A bug: an exception nothing expected. The client learns nothing more."""

    status = 500
    default_reason = Reason.INTERNAL
