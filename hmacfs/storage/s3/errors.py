"""What goes wrong with an object store (light: the command line imports it)."""

from __future__ import annotations


class StoreError(Exception):
    """The object store refused a request, or could not be reached."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        #: The HTTP status of the answer (0: no answer).
        self.status = status
        #: The S3 error code of the answer ("NoSuchKey", "PreconditionFailed", ...).
        self.code = code
