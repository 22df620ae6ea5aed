"""A small blocking S3 client: the object store's control requests, made from threads.

The bodies of uploads and downloads stream on the reactor (`hmacfs.http.objectstore`); what
is made here are the short requests around them (HEAD, conditional PUT of small objects,
multipart create/complete/abort, DELETE, listings), with the standard library's http.client,
one kept-alive connection per thread. Every request is signed with SigV4
(`hmacfs.storage.s3.sigv4`).
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from hmacfs.core.credentials import Credentials, CredentialsError, load_credentials
from hmacfs.storage.s3.errors import StoreError
from hmacfs.storage.s3.sigv4 import EMPTY_SHA256, presign_query, sign_headers, uri_encode

#: The S3 XML namespace (answers may or may not use it).
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: Seconds a control request may take.
TIMEOUT = 30.0


@dataclass(frozen=True)
class Bucket:
    """Where the objects are: an endpoint, a bucket in it, and how requests name it."""

    endpoint: str
    name: str
    region: str
    #: Virtual-host addressing (bucket.host/key) rather than path style (host/bucket/key).
    virtual_host: bool = False

    @property
    def secure(self) -> bool:
        return urlsplit(self.endpoint).scheme == "https"

    @property
    def host(self) -> str:
        """The Host header (and the host connected to, with its port)."""
        netloc = urlsplit(self.endpoint).netloc
        return f"{self.name}.{netloc}" if self.virtual_host else netloc

    def path(self, key: str) -> str:
        """The decoded request path of `key` ("" for the bucket itself)."""
        base = urlsplit(self.endpoint).path.rstrip("/")
        if self.virtual_host:
            return f"{base}/{key}"
        return f"{base}/{self.name}/{key}" if key else f"{base}/{self.name}"

    def target(self, key: str, query: Sequence[tuple[str, str]] = ()) -> str:
        """The encoded request target of `key` with `query`."""
        target = uri_encode(self.path(key), keep_slash=True) or "/"
        if query:
            target += "?" + "&".join(
                f"{uri_encode(n, keep_slash=False)}={uri_encode(v, keep_slash=False)}"
                for n, v in query
            )
        return target

    def url(self, key: str, query: Sequence[tuple[str, str]] = ()) -> str:
        scheme = urlsplit(self.endpoint).scheme
        return f"{scheme}://{self.host}{self.target(key, query)}"


class FileSlice:
    """The first `length` bytes of an open file, as a request body read a block at a time
    (`sha256` and `md5` of them worked out beforehand, in one pass)."""

    def __init__(self, file: BinaryIO, length: int) -> None:
        self.file = file
        self.length = length
        sha256 = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False)
        self.seek(0)
        while chunk := self.read(1 << 20):
            sha256.update(chunk)
            md5.update(chunk)
        if self._left:
            raise StoreError("the file is shorter than the body to send")
        self.sha256 = sha256.hexdigest()
        self.md5 = md5.hexdigest()

    def __len__(self) -> int:
        return self.length

    def seek(self, offset: int) -> None:
        assert offset == 0
        self.file.seek(0)
        self._left = self.length

    def read(self, size: int = -1) -> bytes:
        count = self._left if size < 0 else min(size, self._left)
        data = self.file.read(count)
        self._left -= len(data)
        return data


@dataclass
class Answer:
    """An answer of the store to a control request."""

    status: int
    #: Its headers, by lower-case name (the last of each).
    headers: dict[str, str]
    body: bytes

    def xml(self) -> ET.Element:
        return parse_xml(self.body)


def parse_xml(body: bytes) -> ET.Element:
    """An answer of the store as XML. The store is the one the configuration names, and
    expat (2.4 on) refuses entity expansion attacks."""
    return ET.fromstring(body)  # noqa: S314 (see the docstring)


def _text(element: ET.Element, name: str) -> str:
    found = element.find(_NS + name)
    if found is None:
        found = element.find(name)
    return (found.text or "") if found is not None else ""


def _all(element: ET.Element, name: str) -> list[ET.Element]:
    return element.findall(_NS + name) + element.findall(name)


def error_of(answer: Answer, what: str) -> StoreError:
    """The StoreError for a refused request (its S3 code and message when it has them)."""
    code = message = ""
    if answer.body.lstrip().startswith(b"<"):
        try:
            root = answer.xml()
            code, message = _text(root, "Code"), _text(root, "Message")
        except ET.ParseError:
            pass
    detail = code or f"HTTP {answer.status}"
    if message:
        detail += f": {message}"
    return StoreError(f"{what}: {detail}", answer.status, code)


@dataclass(frozen=True)
class Listed:
    """An object as a listing shows it."""

    key: str
    size: int
    etag: str
    modified: float


@dataclass(frozen=True)
class Unfinished:
    """A multipart upload begun and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: float


def _iso_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


@dataclass
class BlockingClient:
    """Signed control requests to one bucket, from any thread (a connection per thread)."""

    bucket: Bucket
    credentials: Credentials
    ca_file: Path | None = None
    timeout: float = TIMEOUT
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def _connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.bucket.endpoint)
        host = self.bucket.host.rsplit(":", 1)[0] if parts.port else self.bucket.host
        host = host.strip("[]")
        if self.bucket.secure:
            import ssl  # (late: a store over plain http never loads OpenSSL this way)

            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None
            )
            return http.client.HTTPSConnection(
                host, parts.port or 443, timeout=self.timeout, context=context
            )
        return http.client.HTTPConnection(host, parts.port or 80, timeout=self.timeout)

    def request(
        self,
        method: str,
        key: str,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | FileSlice = b"",
        *,
        what: str = "",
    ) -> Answer:
        """Make one request and read its whole answer (control requests are small; a larger
        body is a `FileSlice`, read as it is sent). Raises StoreError when the store cannot be
        reached."""
        all_headers = {"host": self.bucket.host}
        for name, value in (headers or {}).items():
            all_headers[name.lower()] = value
        if body or method in ("PUT", "POST"):
            all_headers["content-length"] = str(len(body))
        if isinstance(body, FileSlice):
            payload = body.sha256
        else:
            payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        signed = sign_headers(
            method,
            self.bucket.path(key),
            query,
            all_headers,
            self.credentials,
            self.bucket.region,
            datetime.now(UTC),
            payload_hash=payload,
        )
        all_headers.update(signed)
        target = self.bucket.target(key, query)
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            fresh = connection is None
            if connection is None:
                connection = self._local.connection = self._connect()
            if isinstance(body, FileSlice):
                body.seek(0)
            try:
                connection.request(method, target, body=body or None, headers=all_headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                connection.close()
                self._local.connection = None
                # A kept-alive connection the store closed meanwhile: once more, afresh.
                if not fresh and attempt == 1 and not isinstance(e, socket.timeout):
                    continue
                reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
                raise StoreError(
                    f"{what or method} failed: cannot reach {self.bucket.endpoint}: {reason}"
                ) from None
            answer = Answer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, data
            )
            if response.will_close:
                connection.close()
                self._local.connection = None
            return answer
        raise AssertionError("unreachable")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def presigned(
        self, key: str, query: Sequence[tuple[str, str]], expires: int, method: str = "GET"
    ) -> str:
        """A URL that lets its holder make `method` on `key` (with `query`) for `expires`
        seconds, without credentials of its own."""
        signed = presign_query(
            method,
            self.bucket.path(key),
            query,
            self.bucket.host,
            self.credentials,
            self.bucket.region,
            datetime.now(UTC),
            expires,
        )
        return self.bucket.url(key, signed)

    # -- operations --------------------------------------------------------------------------

    def head_bucket(self) -> None:
        """Raises StoreError unless the bucket answers to these credentials."""
        answer = self.request("HEAD", "", what="checking the bucket")
        if answer.status != 200:
            if answer.status == 404:
                raise StoreError(f"bucket {self.bucket.name!r} does not exist", 404, "NoSuchBucket")
            if answer.status == 403:
                raise StoreError(
                    f"bucket {self.bucket.name!r} refuses these credentials", 403, "AccessDenied"
                )
            raise error_of(answer, "checking the bucket")

    def head(self, key: str) -> Answer | None:
        """The HEAD answer for `key`, or None when there is no such object."""
        answer = self.request("HEAD", key, what="looking up an object")
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise error_of(answer, "looking up an object")
        return answer

    def put(
        self,
        key: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        create_only: bool = False,
    ) -> bool:
        """Store a small object; with `create_only`, only if no object has that key
        (If-None-Match: *). Whether it was stored (False: one was there already)."""
        extra = dict(headers or {})
        if create_only:
            extra["if-none-match"] = "*"
        answer = self.request("PUT", key, headers=extra, body=body, what="storing an object")
        if answer.status == 412 and create_only:
            return False
        if answer.status // 100 != 2:
            raise error_of(answer, "storing an object")
        return True

    def get(self, key: str) -> bytes | None:
        """A small object's body, or None when there is none."""
        answer = self.request("GET", key, what="reading an object")
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise error_of(answer, "reading an object")
        return answer.body

    def delete(self, key: str) -> None:
        answer = self.request("DELETE", key, what="deleting an object")
        if answer.status not in (200, 204, 404):
            raise error_of(answer, "deleting an object")

    def create_multipart(self, key: str, headers: Mapping[str, str]) -> str:
        answer = self.request(
            "POST", key, (("uploads", ""),), headers, what="starting a multipart upload"
        )
        if answer.status != 200:
            raise error_of(answer, "starting a multipart upload")
        upload_id = _text(answer.xml(), "UploadId")
        if not upload_id:
            raise StoreError("starting a multipart upload: no UploadId in the answer")
        return upload_id

    def complete_multipart(
        self, key: str, upload_id: str, etags: Sequence[str], *, create_only: bool = True
    ) -> Answer:
        """Complete a multipart upload of the parts with `etags` (1, 2, ... in order)."""
        parts = "".join(
            f"<Part><PartNumber>{number}</PartNumber><ETag>{_xml_escape(etag)}</ETag></Part>"
            for number, etag in enumerate(etags, start=1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        # (AWS honours If-None-Match here; Ceph's gateway ignores it: see the claim objects)
        headers = {"content-type": "application/xml"}
        if create_only:
            headers["if-none-match"] = "*"
        answer = self.request(
            "POST", key, (("uploadId", upload_id),), headers, body,
            what="completing a multipart upload",
        )
        # S3 may answer 200 with an error in the body, after a while.
        if answer.status == 200 and b"<Error>" not in answer.body[:512]:
            return answer
        raise error_of(answer, "completing a multipart upload")

    def abort_multipart(self, key: str, upload_id: str) -> None:
        answer = self.request(
            "DELETE", key, (("uploadId", upload_id),), what="aborting a multipart upload"
        )
        if answer.status not in (200, 204, 404):
            raise error_of(answer, "aborting a multipart upload")

    def list_objects(self, prefix: str) -> Iterator[Listed]:
        """Every object whose key starts with `prefix`, a page at a time."""
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if token:
                query.append(("continuation-token", token))
            answer = self.request("GET", "", sorted(query), what="listing objects")
            if answer.status != 200:
                raise error_of(answer, "listing objects")
            root = answer.xml()
            for item in _all(root, "Contents"):
                yield Listed(
                    _text(item, "Key"),
                    int(_text(item, "Size") or 0),
                    _text(item, "ETag"),
                    _iso_time(_text(item, "LastModified")),
                )
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return

    def list_unfinished(self, prefix: str) -> Iterator[Unfinished]:
        """Every multipart upload under `prefix` neither completed nor aborted."""
        key_marker = id_marker = ""
        while True:
            query = [("uploads", ""), ("prefix", prefix)]
            if key_marker:
                query += [("key-marker", key_marker), ("upload-id-marker", id_marker)]
            answer = self.request("GET", "", sorted(query), what="listing multipart uploads")
            if answer.status != 200:
                raise error_of(answer, "listing multipart uploads")
            root = answer.xml()
            for item in _all(root, "Upload"):
                yield Unfinished(
                    _text(item, "Key"),
                    _text(item, "UploadId"),
                    _iso_time(_text(item, "Initiated")),
                )
            key_marker = _text(root, "NextKeyMarker")
            id_marker = _text(root, "NextUploadIdMarker")
            if _text(root, "IsTruncated") != "true" or not key_marker:
                return

    def part_bytes(self, key: str, upload_id: str) -> int:
        """The bytes the parts of an unfinished multipart upload hold so far."""
        total = 0
        marker = ""
        while True:
            query = [("uploadId", upload_id)]
            if marker:
                query.append(("part-number-marker", marker))
            answer = self.request("GET", key, sorted(query), what="listing parts")
            if answer.status == 404:
                return total  # (completed or aborted meanwhile)
            if answer.status != 200:
                raise error_of(answer, "listing parts")
            root = answer.xml()
            for part in _all(root, "Part"):
                total += int(_text(part, "Size") or 0)
            marker = _text(root, "NextPartNumberMarker")
            if _text(root, "IsTruncated") != "true" or not marker:
                return total


def _xml_escape(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(text, {'"': "&quot;"})


def metadata_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The user metadata (x-amz-meta-*) of an answer, by name without the prefix."""
    return {
        name[len("x-amz-meta-") :]: value
        for name, value in headers.items()
        if name.startswith("x-amz-meta-")
    }


def http_time(text: str) -> float:
    """A Last-Modified header as a timestamp (0 if it does not parse)."""
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return 0.0


__all__ = [
    "Answer",
    "BlockingClient",
    "Bucket",
    "CredentialsError",
    "Listed",
    "StoreError",
    "Unfinished",
    "error_of",
    "load_credentials",
    "metadata_of",
]

