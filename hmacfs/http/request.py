"""The request: streams an admitted PUT body into its `Upload` instead of a buffer."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import server

from hmacfs.core.refusals import Refusal
from hmacfs.metrics import DISCONNECTED

if TYPE_CHECKING:
    from hmacfs.core.auth import Grant
    from hmacfs.http.resumable import Exchange, Prepared
    from hmacfs.http.site import UploadSite
    from hmacfs.http.upload import Upload


class UploadRequest(server.Request):  # type: ignore[misc]
    """A request whose PUT body goes to its upload."""

    #: The admitted PUT's upload (None for every other request).
    upload: Upload | None = None
    #: The signed path, once known (for the log line).
    rel: str | None = None
    #: What the signature allowed, once verified (its scheme counts a refusal after it).
    grant: Grant | None = None
    #: For a request of a resumable upload: what its answers must say.
    resumable: Exchange | None = None
    #: The whole answer of a request to an upload resource without a body to store.
    prepared: Prepared | None = None
    _site: UploadSite | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        site = getattr(self.channel, "site", None)
        self.started: float = site.now() if site is not None else 0.0

    _plain: dict[str, str] | None = None

    def plain_headers(self) -> dict[str, str]:
        """The request headers as text, by lower-case name (the first of each; cookies
        joined), worked out once. UTF-8 with surrogateescape: auth signs text that way, so
        this gives back the exact bytes."""
        if self._plain is None:
            out: dict[str, str] = {}
            for name, values in self.requestHeaders.getAllRawHeaders():
                key = name.decode("latin-1").lower()
                texts = [v.decode("utf-8", "surrogateescape") for v in values]
                out[key] = "; ".join(texts) if key == "cookie" else texts[0]
            self._plain = out
        return self._plain

    @property
    def scheme(self) -> str | None:
        return self.upload.grant.scheme if self.upload is not None else None

    def gotLength(self, length: int | None) -> None:
        if self.upload is not None:
            self.content = io.BytesIO()  # stays empty: the body goes to the upload
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        upload = self.upload
        if upload is None:
            super().handleContentChunk(data)
            return
        try:
            upload.receive(data)
        except Refusal as e:
            self.body_failed(e)

    def body_failed(self, refusal: Refusal) -> None:
        """The body cannot be stored (too long, storage failure): abort, answer `refusal`."""
        if self.upload is not None:
            self.upload.abort(refusal.status)
        channel: Any = self.channel
        if channel is not None:
            channel.refuse(self, refusal)

    def process(self) -> None:
        site = getattr(self.channel, "site", None)
        if site is not None:
            self._site = site
            site.request_started(self)
        if self.path == b"*":
            # Twisted answers "OPTIONS *" itself, with nothing of ours (security headers,
            # CORS, the limits of resumable uploads): the resources answer it instead.
            self.path = b"/"
        super().process()

    def finish(self) -> None:
        super().finish()
        if self._site is not None:
            self._site.request_ended(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # A client that goes away mid-body leaves nothing visible; retrying the slot works.
        if self.upload is not None:
            self.upload.abort(DISCONNECTED)
        super().connectionLost(reason)
        if self._site is not None:
            self._site.request_ended(self)
