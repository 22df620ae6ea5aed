"""Resumable uploads on the wire: the IETF draft "Resumable Uploads for HTTP"
(draft-ietf-httpbis-resumable-upload), every interop version from 3 to 8.

Pure functions and tables only: which requests ask for a resumable upload, what each
version's fields and answers look like, and the upload resource's token. The HTTP layer
(`hmacfs.http.resumable`) does the I/O.

The versions differ in small ways, all of them in `Version`:

====  ==========  =========================================================================
 N    drafts      differences
====  ==========  =========================================================================
 3    -01         ``Upload-Incomplete`` (``?1``: more follows) instead of ``Upload-Complete``
 4    -02         ``Upload-Complete`` (``?0``: more follows)
 5    -03         HEAD may answer 200 too (we answer 204 throughout)
 6    -04, -05    PATCH bodies are ``application/partial-upload``; ``Upload-Limit`` (with
                  ``expires``); problem types for a wrong offset and a completed upload
 7    -06..-08    ``Upload-Complete`` required on PATCH; intermediate appends answer 204;
                  ``max-age`` instead of ``expires``; inconsistent-length problem type
 8    -09..-11    ``Upload-Limit`` required in the 104 and HEAD; an empty append to a
                  completed upload is 410; OPTIONS names ``Accept-Patch``
====  ==========  =========================================================================
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hmacfs.core.refusals import BadRequest, Conflict, Gone, Headers, Reason, Refusal

#: The interop versions served (``Upload-Draft-Interop-Version``).
VERSIONS = range(3, 9)
#: The version assumed for a request to an upload resource that names none (or an unknown one).
NEWEST = 8
#: The media type of PATCH bodies from version 6 on.
PARTIAL_UPLOAD = "application/partial-upload"
#: The reason phrase of the informational response.
RESUMPTION_SUPPORTED = b"Upload Resumption Supported"
#: Where upload resources live, below the upload prefix (never a stored file's path: the first
#: segment is reserved).
RESOURCE_DIR = ".hmacfs/uploads/"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"

_TOKEN = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{32}")
_INTEGER = re.compile(r"[0-9]{1,15}")
_TOKEN_CONTEXT = b"hmac-file-server resumable upload\x00"


@dataclass(frozen=True)
class Version:
    """What one interop version puts on the wire."""

    number: int

    @property
    def inverted(self) -> bool:
        """Version 3 says ``Upload-Incomplete`` (true: more follows)."""
        return self.number == 3

    @property
    def completeness_field(self) -> str:
        return "Upload-Incomplete" if self.inverted else "Upload-Complete"

    @property
    def patch_media_type(self) -> str | None:
        """The media type a PATCH body must have, if any."""
        return PARTIAL_UPLOAD if self.number >= 6 else None

    @property
    def limits(self) -> bool:
        """Whether ``Upload-Limit`` exists."""
        return self.number >= 6

    @property
    def problems(self) -> bool:
        """Whether errors are described as problem details (RFC 9457)."""
        return self.number >= 6

    @property
    def completeness_required_on_patch(self) -> bool:
        return self.number >= 7

    def completeness(self, complete: bool) -> tuple[str, str]:
        """The completeness field saying `complete`."""
        return self.completeness_field, "?0" if complete == self.inverted else "?1"

    def intermediate_status(self) -> int:
        """The status of an append or creation that leaves the upload incomplete."""
        return 204 if self.number >= 7 else 201

    def limit(self, max_size: int, max_age: float | None) -> str:
        """The ``Upload-Limit`` value: the largest size, and how long the upload resource is
        kept from now (``expires`` in version 6, ``max-age`` later)."""
        parts = [f"max-size={max_size}"]
        if max_age is not None:
            key = "expires" if self.number == 6 else "max-age"
            parts.append(f"{key}={max(0, int(max_age))}")
        return ", ".join(parts)


def version_of(value: str | None) -> Version | None:
    """The version an ``Upload-Draft-Interop-Version`` value names, if served."""
    # ASCII digits only: str.isdigit() also takes "²" and "①", which int() refuses.
    text = value.strip() if value is not None else ""
    if not _INTEGER.fullmatch(text):
        return None
    number = int(text)
    return Version(number) if number in VERSIONS else None


def parse_boolean(value: str | None) -> bool | None:
    """A structured-field boolean (``?0``, ``?1``), None when absent or anything else."""
    if value is None:
        return None
    text = value.strip()
    if text == "?1":
        return True
    if text == "?0":
        return False
    return None


def parse_integer(value: str | None, name: str) -> int | None:
    """A non-negative structured-field integer, None when absent. Raises BadRequest."""
    if value is None:
        return None
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(text)


def complete_in(version: Version, headers: Mapping[str, str]) -> bool | None:
    """Whether the request says it completes the upload; None when it says nothing."""
    flag = parse_boolean(headers.get(version.completeness_field.lower()))
    if flag is None:
        return None
    return not flag if version.inverted else flag


@dataclass(frozen=True)
class Creation:
    """A request that creates a resumable upload (it passed `creation_in`)."""

    version: Version
    #: Whether this request's body completes the upload.
    complete: bool
    #: The whole upload's size, when the request says it (``Upload-Length``).
    length: int | None


def creation_in(headers: Mapping[str, str]) -> Creation | None:
    """The resumable creation a PUT or POST asks for, or None for a plain upload: it names a
    served interop version and carries that version's completeness field (anything less is
    ignored, never refused). Raises BadRequest for a malformed ``Upload-Length`` or an
    ``Upload-Offset`` other than 0."""
    version = version_of(headers.get("upload-draft-interop-version"))
    if version is None:
        return None
    complete = complete_in(version, headers)
    if complete is None:
        return None
    offset = parse_integer(headers.get("upload-offset"), "Upload-Offset")
    if offset not in (None, 0):
        raise BadRequest("Upload-Offset of a new upload must be 0")
    return Creation(version, complete, parse_integer(headers.get("upload-length"), "Upload-Length"))


def total_size(creation: Creation, content_length: int | None) -> int:
    """The size of the whole upload a creation starts: ``Upload-Length``, else the body of a
    request that completes it. Raises the version's inconsistent-length refusal when the two
    disagree, BadRequest when neither says it."""
    if creation.length is not None:
        if content_length is not None and (
            content_length > creation.length
            or (creation.complete and content_length != creation.length)
        ):
            raise inconsistent_length(creation.version, "Upload-Length and Content-Length disagree")
        return creation.length
    if creation.complete and content_length is not None:
        return content_length
    raise BadRequest("an incomplete upload needs Upload-Length (the signed size)")


# -- the upload resource's token ---------------------------------------------------------------


def _token_mac(secret: bytes, upload_id: str, rel: str, size: int) -> str:
    message = _TOKEN_CONTEXT + f"{upload_id}\x00{rel}\x00{size}".encode()
    return hmac.digest(secret, message, hashlib.sha256)[:16].hex()


def new_id() -> str:
    """A new upload's identity: 128 random bits."""
    return secrets.token_hex(16)


def make_token(secret: bytes, upload_id: str, rel: str, size: int) -> str:
    """The token of an upload resource: its id (128 random bits) and a MAC that binds it to
    the signed path and size, so that a token is worth nothing for any other upload."""
    return upload_id + _token_mac(secret, upload_id, rel, size)


def id_of(token: str) -> str | None:
    """The upload id a token carries, None when it is not shaped like one."""
    return token[:32] if _TOKEN.fullmatch(token) else None


def token_matches(
    token: str, secrets_: Iterable[bytes], upload_id: str, rel: str, size: int
) -> bool:
    """Whether `token` was made (by `make_token`, with any of `secrets_`) for this upload.
    Constant time in the MAC."""
    if not _TOKEN.fullmatch(token) or not _ID.fullmatch(upload_id) or token[:32] != upload_id:
        return False
    given = token[32:]
    found = False
    for secret in secrets_:
        found |= hmac.compare_digest(_token_mac(secret, upload_id, rel, size), given)
    return found


# -- refusals in each version's words ----------------------------------------------------------


class ProblemRefusal(Refusal):
    """A refusal whose body is a problem details object (``application/problem+json``) where
    the version has problem types, plain text before that."""

    def __init__(
        self,
        text: str,
        reason: Reason | None = None,
        headers: Headers = (),
        *,
        problem: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(text, reason, headers)
        self.problem = problem


class OffsetMismatch(ProblemRefusal, Conflict):
    """409: an append at another offset than where the upload stands."""


class InconsistentLength(ProblemRefusal, BadRequest):
    """400: sizes that disagree (with each other, or with the upload's)."""


class CompletedUpload(ProblemRefusal, BadRequest):
    """400: an append to (or a cancellation of) an upload that is complete already."""


class CompletedUploadGone(ProblemRefusal, Gone):
    """410: an empty append to a completed upload (version 8)."""

    default_reason = Reason.BAD_REQUEST


class UnsupportedPatch(Refusal):
    """415: a PATCH body of another media type than the version asks for (RFC 5789)."""

    status = 415
    default_reason = Reason.BAD_REQUEST


def _problem(version: Version, kind: str, title: str, **fields: int) -> dict[str, object] | None:
    if not version.problems:
        return None
    return {"type": PROBLEM_TYPES + kind, "title": title, **fields}


def offset_mismatch(version: Version, expected: int, provided: int) -> OffsetMismatch:
    """409 for an append at the wrong offset; it tells the right one."""
    return OffsetMismatch(
        f"Upload-Offset is {expected}, not {provided}",
        headers=(("Upload-Offset", str(expected)), version.completeness(False)),
        problem=_problem(
            version,
            "mismatching-upload-offset",
            "offset from request does not match offset of resource",
            **{"expected-offset": expected, "provided-offset": provided},
        ),
    )


def inconsistent_length(version: Version, text: str) -> InconsistentLength:
    problem = (
        _problem(version, "inconsistent-upload-length", "inconsistent length values for upload")
        if version.number >= 7
        else None
    )
    return InconsistentLength(text, problem=problem)


def completed_upload(version: Version, body_empty: bool) -> ProblemRefusal:
    """An append to an upload that is complete already."""
    if version.number >= 8 and not body_empty:
        return inconsistent_length(version, "the upload is complete already")
    problem = _problem(version, "completed-upload", "upload is already completed")
    headers = (version.completeness(True),)
    if version.number >= 8:
        return CompletedUploadGone(
            "the upload is complete already", headers=headers, problem=problem
        )
    return CompletedUpload("the upload is complete already", headers=headers, problem=problem)


def busy() -> Conflict:
    return Conflict("upload is in use by another request")


class Locked(Refusal):
    """423: another request holds the upload and did not let go in time (try again)."""

    status = 423
    default_reason = Reason.CONFLICT


def locked() -> Locked:
    return Locked("upload is in use by another request", headers=(("Retry-After", "1"),))


def abandoned() -> Conflict:
    """An append whose client had gone before it could take the upload over."""
    return Conflict("the client is gone")


def superseded() -> Conflict:
    """A request that waited for an upload, which a newer request claimed meanwhile."""
    return Conflict("a newer request took this upload over")


def problem_body(refusal: Refusal) -> bytes | None:
    """The problem details of `refusal`, as its body, if it has them."""
    problem = getattr(refusal, "problem", None)
    if problem is None:
        return None
    return json.dumps(problem, separators=(",", ":")).encode()
