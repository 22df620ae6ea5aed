"""Domain errors raised by path decoding and storage, mapped to HTTP statuses in one place."""

from __future__ import annotations


class HttpError(Exception):
    """A refusal with an HTTP status and a short plain-text reason for the client."""

    status = 500

    def __init__(self, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers


class BadRequest(HttpError):
    status = 400


class Forbidden(HttpError):
    status = 403


class NotFound(HttpError):
    status = 404


class MethodNotAllowed(HttpError):
    status = 405


class Conflict(HttpError):
    status = 409


class Gone(HttpError):
    status = 410


class LengthRequired(HttpError):
    status = 411


class TooLarge(HttpError):
    status = 413


class UriTooLong(HttpError):
    status = 414


class StorageFailure(HttpError):
    """The disk refused (full, read-only, permissions): the upload is not stored."""

    status = 507
