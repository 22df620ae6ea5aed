"""Everything under the site: uploads (the commit once the body is in), downloads (through
the download plan) and CORS preflights. Refusals become answers in `hmacfs.http.answers`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web import http, resource, server

from hmacfs.core import download
from hmacfs.core.headers import (
    ALLOWED_METHODS,
    BASE_HEADERS,
    cors_fields,
    cors_headers,
    encoded,
    preflight_headers,
)
from hmacfs.core.paths import decode_path, split_target
from hmacfs.core.refusals import BadRequest, InternalError, MethodNotAllowed, NotFound, Refusal
from hmacfs.http import _twisted
from hmacfs.http.answers import write_refusal
from hmacfs.http.body import send_body
from hmacfs.storage.backend import StoredFile

if TYPE_CHECKING:
    from hmacfs.http.request import UploadRequest
    from hmacfs.http.site import UploadSite


def _header(request: http.Request, name: bytes) -> str | None:
    value = request.requestHeaders.getRawHeaders(name)
    return value[0].decode("latin-1") if value else None




class Root(resource.Resource):  # type: ignore[misc]
    """Everything under the site: uploads, downloads, CORS preflight."""

    isLeaf = True

    def __init__(self, site: UploadSite) -> None:
        super().__init__()
        self.site = site

    def render(self, request: UploadRequest) -> bytes | int:
        for name, value in BASE_HEADERS:
            request.setHeader(name, value)
        health_path = self.site.config.metrics.health_path
        if health_path and split_target(request.uri)[0] == health_path.encode():
            return self.site.health_resource.render(request)  # type: ignore[no-any-return]
        origin = _header(request, b"origin")
        settings = self.site.config.http
        try:
            if request.method == b"OPTIONS":
                if request.rel is None:
                    request.rel = self._path_for_log(request)
                preflight = _header(request, b"access-control-request-method") is not None
                extra = (preflight_headers if preflight else cors_headers)(settings, origin)
                self._set(request, encoded(extra))
                request.setHeader(b"allow", ALLOWED_METHODS.encode())
                if request.prepared is None and not preflight:
                    self.site.resumptions.options(request)
                if request.prepared is not None:
                    self._set(request, encoded(request.prepared.headers))
                request.setHeader(b"content-length", b"0")
                return b""
            self._set(request, list(cors_fields(settings, origin)))
            if request.uri == b"*":
                raise MethodNotAllowed("only OPTIONS applies to *", headers=(("Allow", "OPTIONS"),))
            if request.prepared is not None:
                request.setResponseCode(request.prepared.status)
                self._set(request, encoded(request.prepared.headers))
                return b""
            if request.upload is not None:
                return self._finish_put(request)
            if request.method in (b"PUT", b"POST", b"PATCH"):
                raise BadRequest("upload was not admitted")
            if request.method in (b"GET", b"HEAD"):
                return self._download(request)
            raise MethodNotAllowed("method not allowed", headers=(("Allow", ALLOWED_METHODS),))
        except Refusal as e:
            return write_refusal(request, e, settings)

    def _path_for_log(self, request: UploadRequest) -> str:
        """What a preflight's log line names: the path it asks about, as a PUT or GET of it
        would be logged (a path no PUT could use, as it came)."""
        raw_path, _ = split_target(request.uri)
        resources = self.site.resumptions.resource_prefix()
        if raw_path.startswith(resources):
            return resources.decode("latin-1") + "..."  # (the token is a credential)
        try:
            return decode_path(raw_path, self.site.config.server.upload_prefix) or "/"
        except Refusal:
            return raw_path.decode("latin-1")

    @staticmethod
    def _set(request: http.Request, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            request.setHeader(name, value)

    # -- PUT: the body is in; make it visible ------------------------------------------------

    def _finish_put(self, request: UploadRequest) -> int:
        upload = request.upload
        if upload is None:
            raise BadRequest("upload was not admitted")
        settings = self.site.config.http
        exchange = request.resumable

        def answer(status: int, refusal: Refusal | None) -> None:
            if _twisted.request_disconnected(request):
                return
            if refusal is None and status < 300:
                request.setResponseCode(status)
                if exchange is not None:
                    resumptions = self.site.resumptions
                    self._set(request, encoded(resumptions.answer_headers(exchange, upload)))
                request.setHeader(b"content-length", b"0")
            else:
                request.write(
                    write_refusal(request, refusal or InternalError("internal error"), settings)
                )
            request.finish()

        if exchange is None:
            upload.commit(answer)
        else:
            upload.finish(answer, self.site.resumptions.part_status(exchange))
        return server.NOT_DONE_YET  # type: ignore[no-any-return]

    # -- GET/HEAD ----------------------------------------------------------------------------

    def _stored(self, request: UploadRequest, rel: str) -> StoredFile:
        """The file at `rel`, as the quick path just found it, else looked up now."""
        channel: Any = request.channel
        found = getattr(channel, "looked_up", None)
        if found is not None:
            channel.looked_up = None
            if found[0] == rel:
                return found[1]  # type: ignore[no-any-return]
        return self.site.storage.lookup(rel)

    def _download(self, request: UploadRequest) -> bytes | int:
        raw_path, _ = split_target(request.uri)
        rel = decode_path(raw_path, self.site.config.server.upload_prefix)
        if rel == "":
            raise NotFound("not found")
        request.rel = rel
        if self.site.storage.remote:
            self._download_remote(request, rel)
            return server.NOT_DONE_YET  # type: ignore[no-any-return]
        stored = self._stored(request, rel)
        return self._answer_download(request, stored)

    def _download_remote(self, request: UploadRequest, rel: str) -> None:
        """A download from a remote store: looked up on a thread, then streamed."""
        settings = self.site.config.http

        def found(stored: StoredFile) -> None:
            if _twisted.request_disconnected(request):
                return
            try:
                body = self._answer_download(request, stored)
            except Refusal as e:
                body = write_refusal(request, e, settings)
            if body is not server.NOT_DONE_YET:
                assert isinstance(body, bytes)
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            if _twisted.request_disconnected(request):
                return
            error = failure.value
            refusal = error if isinstance(error, Refusal) else InternalError("internal error")
            request.write(write_refusal(request, refusal, settings))
            request.finish()

        self.site.run_blocking(self.site.storage.lookup, rel).addCallback(found).addErrback(
            failed
        )

    def _redirects(self, request: UploadRequest, plan: download.Plan) -> bool:
        """Whether the store is to send this answer's body itself (a GET answered with the
        file or one range of it, when `[storage] redirect_downloads` says so)."""
        return (
            request.method == b"GET"
            and self.site.config.storage.redirect_downloads
            and self.site.storage.remote
            and (plan.status == 200 or (plan.status == 206 and len(plan.body) == 1))
        )

    def _redirect(self, request: UploadRequest, stored: StoredFile, plan: download.Plan) -> bytes:
        """302 to a presigned GET of `stored`, which answers with this plan's type,
        disposition and caching (the Range, if any, is asked again of the store)."""
        lifetime = self.site.config.storage.redirect_lifetime
        ends = [stored.expires] if stored.expires is not None else []
        ttl = self.site.config.server.file_ttl
        if ttl is not None:
            ends.append((stored.uploaded if stored.uploaded is not None else stored.mtime) + ttl)
        if ends:  # (never a URL that outlives the file)
            lifetime = max(1.0, min(lifetime, min(ends) - self.site.wall()))
        storage: Any = self.site.storage  # (remote: an object store, see _redirects)
        location = storage.presigned_download(stored, plan.headers, lifetime)
        request.setResponseCode(302)
        request.setHeader(b"location", location.encode("ascii"))
        # (the URL is good for `lifetime` only, and is the client's own to use)
        request.setHeader(b"cache-control", b"private, max-age=%d" % max(0, int(lifetime) - 5))
        request.setHeader(b"content-length", b"0")
        return b""

    def _answer_download(self, request: UploadRequest, stored: StoredFile) -> bytes | int:
        wanted = {
            name: value
            for name in download.PLAN_HEADERS
            if (value := _header(request, name)) is not None
        }
        plan = download.plan(request.method, wanted, stored, self.site.wall())
        if self._redirects(request, plan):
            return self._redirect(request, stored, plan)
        request.setResponseCode(plan.status)
        self._set(request, list(plan.headers))
        if not plan.body:
            return b""
        reader = self.site.storage.open_reader(stored)

        def vanished() -> bytes:
            for name, _ in plan.headers:
                request.responseHeaders.removeHeader(name)
            return write_refusal(request, NotFound("not found"), self.site.config.http)

        send_body(request, plan, reader, sendfile=self.site.fast.enabled, vanished=vanished)
        return server.NOT_DONE_YET  # type: ignore[no-any-return]
