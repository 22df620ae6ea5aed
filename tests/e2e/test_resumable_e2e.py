"""End to end: resumable uploads (draft-ietf-httpbis-resumable-upload, interop versions 3 to 8)
on the wire, with a client of our own that speaks the draft as Apple's URLSession does
(tests.helpers.resumable): the 104 and its Location, a connection reset in the middle of a
body, HEAD and PATCH from the offset reported, against the real server process.

The offsets are exact: before a connection is cut, the client waits until the server has read
every byte it sent (the TCP queues of both ends), so the server holds exactly what was sent.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.certs import TestCA
from tests.helpers import resumable as rufh
from tests.helpers.resumable import PARTIAL_UPLOAD, PROBLEM_TYPES, Response, says_complete
from tests.helpers.server import Server, children, start_https_server, start_server, stop_server
from tests.helpers.signing import SECRET, mac_v1, mac_v2

VERSIONS = [3, 4, 5, 6, 7, 8]
#: The versions whose wire differs the most (completeness field, media type, problem types,
#: Upload-Limit keys, 410 for a completed upload).
KEY_VERSIONS = [3, 6, 7, 8]
#: The versions the client of our own speaks as URLSession would across restarts, workers
#: and TLS: the oldest Apple ships, and the two newest drafts.
URLSESSION_LIKE = [3, 7, 8]
MAX_UPLOAD = 50_000_000
METRICS_TOML = '[metrics]\nlisten = ["127.0.0.1:0"]\n'
UPLOADS = "/upload/.hmacfs/uploads/"
SIZE = 300_000
CUT = 100_000

T = TypeVar("T")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server (one process) for the module's tests that need nothing special."""
    server = start_server(
        tmp_path_factory.mktemp("resumable"), max_upload_size=MAX_UPLOAD, track=False
    )
    yield server
    assert stop_server(server) == 0
    assert not any("Traceback" in line for line in server.log), server.log_tail(60)


# -- helpers ---------------------------------------------------------------------------------


def signed(base: str, size: int, name: str = "file.bin") -> tuple[str, str]:
    """A fresh slot: its signed path and its URL signed with scheme v for `size` bytes."""
    rel = f"{uuid.uuid4()}/{name}"
    return rel, f"{base}/upload/{rel}?v={mac_v1(rel, size)}"


def data(size: int = SIZE) -> bytes:
    return os.urandom(size)


def location_pattern(base: str) -> re.Pattern[str]:
    return re.compile(re.escape(base + UPLOADS) + r"[0-9a-f]{64}")


def kept_partials(storage: Path) -> set[str]:
    """The files under .hmacfs/partial/ that hold something (the empty ones kept ready for new
    uploads left out) and the facts beside them."""
    partial = storage / ".hmacfs" / "partial"
    found = set()
    for entry in os.scandir(partial):
        if entry.is_file(follow_symlinks=False) and (
            entry.name.endswith(".json") or entry.stat().st_size > 0
        ):
            found.add(entry.name)
    return found


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def check_104(response: Response, version: int, base: str, size: int) -> str:
    """The first 104 of a creation: the version echoed, an absolute Location under the upload
    prefix, Upload-Limit from 6 on (`expires` for 6, `max-age` later); its Location."""
    assert response.status == 104, response
    assert response.reason == rufh.RESUMPTION_SUPPORTED, response.reason
    assert response.headers.get("upload-draft-interop-version") == str(version), response.pairs
    location = response.headers.get("location", "")
    assert location_pattern(base).fullmatch(location), (location, base)
    if version >= 6:
        limits = rufh.parse_limit(response.headers["upload-limit"])
        assert limits.get("max-size") == str(size), limits
        if version == 6:
            assert "expires" in limits and "max-age" not in limits, limits
        else:
            assert "max-age" in limits and "expires" not in limits, limits
    return location


def check_informational(exchange: rufh.Exchange, version: int, base: str, size: int) -> str:
    """Every 1xx of a creation: a first 104 with Location, later ones (progress) without."""
    assert exchange.informational, "no 104 came"
    location = check_104(exchange.informational[0], version, base, size)
    for later in exchange.informational[1:]:
        assert later.status == 104, later
        assert "location" not in later.headers, later.pairs
        assert later.headers.get("upload-draft-interop-version") == str(version)
    return location


def check_offset(response: Response, version: int, offset: int, size: int) -> None:
    """A HEAD of an upload: 204, the offset, what is complete, Upload-Length, no-store."""
    assert response.status == 204, response
    assert response.headers.get("upload-offset") == str(offset), response.pairs
    assert says_complete(version, response.headers) is (offset == size), response.pairs
    assert response.headers.get("upload-length") == str(size), response.pairs
    assert "no-store" in response.headers.get("cache-control", ""), response.pairs
    assert response.headers.get("upload-draft-interop-version") == str(version), response.pairs
    if version >= 6:
        assert "max-size" in rufh.parse_limit(response.headers["upload-limit"]), response.pairs


def check_completed(response: Response, version: int, size: int) -> None:
    """The answer to the request that completed an upload: 201, the final offset."""
    assert response.status == 201, response
    assert response.headers.get("upload-offset") == str(size), response.pairs
    assert says_complete(version, response.headers) is True, response.pairs
    assert response.headers.get("upload-draft-interop-version") == str(version), response.pairs


def check_problem(response: Response, kind: str) -> dict[str, object]:
    problem = response.problem()
    assert problem.get("type") == PROBLEM_TYPES + kind, problem
    assert isinstance(problem.get("title"), str), problem
    return problem


def fetch(url: str, tls: ssl.SSLContext | None = None) -> Response:
    return rufh.get(url.split("?", 1)[0], tls=tls)


@dataclass
class Cut:
    """A creation whose connection was reset after `offset` body bytes."""

    rel: str
    url: str
    body: bytes
    location: str
    offset: int

    @property
    def rest(self) -> bytes:
        return self.body[self.offset :]


def cut_creation(
    base: str,
    version: int,
    *,
    size: int = SIZE,
    cut: int = CUT,
    method: str = "PUT",
    tls: ssl.SSLContext | None = None,
) -> Cut:
    body = data(size)
    rel, url = signed(base, size)
    exchange = rufh.create(url, body, version, method=method, cut_after=cut, tls=tls)
    assert exchange.final is None, exchange.final
    assert exchange.sent == cut
    location = check_informational(exchange, version, base, size)
    return Cut(rel, url, body, location, cut)


def on(location: str, base: str) -> str:
    """`location` with the scheme and authority of `base` (the same upload on another server)."""
    parts, origin = urlsplit(location), urlsplit(base)
    return urlunsplit((origin.scheme, origin.netloc, parts.path, parts.query, ""))


def stall(base: str, version: int, cut: int = CUT) -> tuple[rufh.Transfer, Cut]:
    """A creation that sent `cut` body bytes (all read by the server) and then sends nothing
    more, its connection left open."""
    body = data()
    rel, url = signed(base, len(body))
    transfer = rufh.start_create(url, body, version)
    transfer.send(cut)
    assert transfer.wait_informational() is not None
    assert transfer.final is None, transfer.final
    transfer.settle()
    location = check_informational(transfer.exchange(), version, base, len(body))
    return transfer, Cut(rel, url, body, location, cut)


def resume(upload: Cut, version: int, tls: ssl.SSLContext | None = None) -> None:
    """HEAD (the offset is what was sent), PATCH the rest (201), GET: the exact bytes."""
    size = len(upload.body)
    check_offset(rufh.head(upload.location, version, tls=tls), version, upload.offset, size)
    answer = rufh.patch(upload.location, version, upload.offset, upload.rest, tls=tls)
    check_completed(answer, version, size)
    got = fetch(upload.url, tls=tls)
    assert got.status == 200
    assert got.body == upload.body


def metric(text: str, name: str) -> float | None:
    """The sum of the samples of `name` (any labels) in a Prometheus text exposition."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{"):
            total += float(value)
            seen = True
    return total if seen else None


# -- creation --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_creation_answers_104_before_the_body_and_201_after_it(srv: Server, version: int) -> None:
    body = data()
    _, url = signed(srv.base, len(body))
    transfer = rufh.start_create(url, body, version)
    try:
        # Not one body byte sent yet: the 104 comes before the server reads any.
        first = transfer.wait_informational(timeout=10)
        assert first is not None, "no 104 before the body"
        location = check_104(first, version, srv.base, len(body))
        final = transfer.finish()
    finally:
        transfer.connection.close()
    check_informational(transfer.exchange(), version, srv.base, len(body))
    check_completed(final, version, len(body))
    assert final.headers.get("location") == location
    got = fetch(url)
    assert (got.status, got.body) == (200, body)
    # The upload resource of a completed upload says so.
    check_offset(rufh.head(location, version), version, len(body), len(body))


@pytest.mark.parametrize("version", [3, 8])
def test_creation_by_post(srv: Server, version: int) -> None:
    body = data(5000)
    _, url = signed(srv.base, len(body))
    exchange = rufh.create(url, body, version, method="POST")
    check_informational(exchange, version, srv.base, len(body))
    assert exchange.final is not None
    check_completed(exchange.final, version, len(body))
    assert fetch(url).body == body
    # A POST that is not a resumable creation stays what it was.
    _, other = signed(srv.base, 3)
    assert rufh.request("POST", other, body=b"abc").status == 405


@pytest.mark.parametrize("version", VERSIONS)
def test_a_cut_creation_is_resumed_with_head_and_patch(srv: Server, version: int) -> None:
    before = kept_partials(srv.storage)
    upload = cut_creation(srv.base, version)
    assert kept_partials(srv.storage) - before, "no partial kept on disk"
    # Never visible while incomplete.
    assert fetch(upload.url).status == 404
    resume(upload, version)
    check_offset(rufh.head(upload.location, version), version, SIZE, SIZE)


@pytest.mark.parametrize("version", VERSIONS)
def test_resumed_in_several_pieces(srv: Server, version: int) -> None:
    upload = cut_creation(srv.base, version, cut=50_000)
    middle = 180_000
    answer = rufh.patch(
        upload.location, version, upload.offset, upload.body[upload.offset : middle],
        complete=False,
    )
    assert answer.status == (201 if version <= 6 else 204), answer
    assert answer.headers.get("upload-offset") == str(middle), answer.pairs
    assert says_complete(version, answer.headers) is False, answer.pairs
    check_offset(rufh.head(upload.location, version), version, middle, SIZE)
    answer = rufh.patch(upload.location, version, middle, upload.body[middle:])
    check_completed(answer, version, SIZE)
    assert fetch(upload.url).body == upload.body


@pytest.mark.parametrize("version", VERSIONS)
def test_incomplete_creation_then_patch(srv: Server, version: int) -> None:
    body = data()
    _, url = signed(srv.base, len(body))
    part = body[:120_000]
    exchange = rufh.create(url, part, version, complete=False, upload_length=len(body))
    location = check_informational(exchange, version, srv.base, len(body))
    final = exchange.final
    assert final is not None
    assert final.status == 201, final
    assert final.headers.get("location") == location
    assert final.headers.get("upload-offset") == str(len(part)), final.pairs
    assert says_complete(version, final.headers) is False, final.pairs
    assert final.headers.get("upload-draft-interop-version") == str(version)
    if version >= 6:
        assert "max-size" in rufh.parse_limit(final.headers["upload-limit"]), final.pairs
    assert fetch(url).status == 404
    check_offset(rufh.head(location, version), version, len(part), len(body))
    check_completed(rufh.patch(location, version, len(part), body[len(part) :]), version, len(body))
    assert fetch(url).body == body


def test_signing_schemes_v2_and_v3(srv: Server) -> None:
    """A creation signed with v2 (the content type bound) or v3 (method and expiry): the
    resumption needs no signature, and the stored type is the creation's."""
    body = data()
    rel = f"{uuid.uuid4()}/photo.jpg"
    url = f"{srv.base}/upload/{rel}?v2={mac_v2(rel, len(body), 'image/jpeg')}"
    exchange = rufh.create(url, body, 8, headers=[("Content-Type", "image/jpeg")], cut_after=CUT)
    location = check_informational(exchange, 8, srv.base, len(body))
    resume(Cut(rel, url, body, location, CUT), 8)
    assert fetch(url).headers["content-type"] == "image/jpeg"

    rel = f"{uuid.uuid4()}/v3.bin"
    expires = int(time.time()) + 600
    mac = hmac.new(SECRET, f"PUT\n{expires}\n/{rel}".encode(), hashlib.sha256).hexdigest()
    url = f"{srv.base}/upload/{rel}?v3={mac}&expires={expires}"
    exchange = rufh.create(url, body, 6, cut_after=CUT)
    location = check_informational(exchange, 6, srv.base, len(body))
    resume(Cut(rel, url, body, location, CUT), 6)


def test_refused_creations_get_the_plain_refusals_and_no_104(srv: Server) -> None:
    body = data(4000)
    rel, url = signed(srv.base, len(body))
    bad = url.split("?")[0] + "?v=" + "0" * 64
    exchange = rufh.create(bad, body, 8)
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 403
    # Upload-Length is the size signed: a total beyond the signed size is refused.
    exchange = rufh.create(url, body[:1000], 8, complete=False, upload_length=len(body) + 1)
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 403
    # Larger than max_upload_size: 413 before the body.
    big = MAX_UPLOAD + 1
    _, big_url = signed(srv.base, big)
    exchange = rufh.create(big_url, body[:1000], 8, complete=False, upload_length=big)
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 413
    assert fetch(big_url).status == 404
    # The slot's file exists already: 409.
    assert rufh.request("PUT", url, body=body).status == 201
    again = url.split("?")[0] + f"?v={mac_v1(rel, 5)}"
    exchange = rufh.create(again, b"other", 8)
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 409
    assert fetch(url).body == body


# -- what is refused on the upload resource --------------------------------------------------


@pytest.mark.parametrize("version", [6, 7, 8])
def test_patch_without_the_partial_upload_type_is_415(srv: Server, version: int) -> None:
    upload = cut_creation(srv.base, version)
    for content_type in (None, "application/octet-stream"):
        answer = rufh.patch(
            upload.location, version, upload.offset, upload.rest, content_type=content_type
        )
        assert answer.status == 415, answer
        assert PARTIAL_UPLOAD in answer.headers.get("accept-patch", ""), answer.pairs
        check_offset(rufh.head(upload.location, version), version, upload.offset, SIZE)
    resume(upload, version)


@pytest.mark.parametrize("version", [3, 4, 5])
def test_patch_needs_no_media_type_before_6(srv: Server, version: int) -> None:
    upload = cut_creation(srv.base, version)
    answer = rufh.patch(upload.location, version, upload.offset, upload.rest, content_type=None)
    check_completed(answer, version, SIZE)
    assert fetch(upload.url).body == upload.body


@pytest.mark.parametrize("version", VERSIONS)
def test_patch_completeness_field_absent(srv: Server, version: int) -> None:
    """Absent means complete up to 6; from 7 on it is required."""
    upload = cut_creation(srv.base, version)
    answer = rufh.patch(upload.location, version, upload.offset, upload.rest, complete=None)
    if version <= 6:
        check_completed(answer, version, SIZE)
    else:
        assert answer.status == 400, answer
        resume(upload, version)
    assert fetch(upload.url).body == upload.body


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_offset_is_409_with_the_current_offset(srv: Server, version: int) -> None:
    upload = cut_creation(srv.base, version)
    for offset in (upload.offset - 1, upload.offset + 1, 0):
        answer = rufh.patch(upload.location, version, offset, upload.body[offset:])
        assert answer.status == 409, answer
        assert answer.headers.get("upload-offset") == str(upload.offset), answer.pairs
        assert answer.headers.get("upload-draft-interop-version") == str(version)
        if version >= 6:
            problem = check_problem(answer, "mismatching-upload-offset")
            assert problem.get("expected-offset") == upload.offset, problem
            assert problem.get("provided-offset") == offset, problem
    check_offset(rufh.head(upload.location, version), version, upload.offset, SIZE)
    resume(upload, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_lengths_beyond_the_signed_size_are_400_and_nothing_is_stored(
    srv: Server, version: int
) -> None:
    upload = cut_creation(srv.base, version)

    def refused(answer: Response) -> None:
        assert answer.status == 400, answer
        if version >= 7:
            check_problem(answer, "inconsistent-upload-length")
        check_offset(rufh.head(upload.location, version), version, upload.offset, SIZE)

    # More than what is left.
    refused(rufh.patch(upload.location, version, upload.offset, upload.rest + b"extra"))
    # Says complete but is short of the size.
    refused(rufh.patch(upload.location, version, upload.offset, upload.rest[:-10]))
    # An Upload-Length other than the size.
    refused(
        rufh.patch(
            upload.location, version, upload.offset, upload.rest, upload_length=SIZE + 1
        )
    )
    # An offset past the end: refused (as inconsistent, or as not the current offset).
    answer = rufh.patch(upload.location, version, SIZE + 10, b"x")
    assert answer.status in (400, 409), answer
    check_offset(rufh.head(upload.location, version), version, upload.offset, SIZE)
    assert fetch(upload.url).status == 404
    resume(upload, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_patch_or_delete_on_a_completed_upload(srv: Server, version: int) -> None:
    body = data(20_000)
    _, url = signed(srv.base, len(body))
    exchange = rufh.create(url, body, version)
    location = check_informational(exchange, version, srv.base, len(body))
    assert exchange.final is not None
    check_completed(exchange.final, version, len(body))
    empty = rufh.patch(location, version, len(body), b"")
    more = rufh.patch(location, version, len(body), b"x")
    if version == 8:
        assert empty.status == 410, empty
        check_problem(empty, "completed-upload")
        assert more.status == 400, more
        check_problem(more, "inconsistent-upload-length")
    else:
        assert empty.status == 400, empty
        assert more.status == 400, more
        if version in (6, 7):
            check_problem(empty, "completed-upload")
    assert rufh.delete(location, version).status == 400
    check_offset(rufh.head(location, version), version, len(body), len(body))
    assert fetch(url).body == body


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_or_garbled_tokens_are_404(srv: Server, version: int) -> None:
    upload = cut_creation(srv.base, version)
    token = upload.location.rsplit("/", 1)[1]
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    other_mac = token[:32] + os.urandom(16).hex()
    for wrong in (flipped, os.urandom(32).hex(), other_mac, token[:-1], token + "0", "z" * 64):
        location = upload.location.rsplit("/", 1)[0] + "/" + wrong
        assert rufh.head(location, version).status == 404, wrong
        patched = rufh.patch(location, version, upload.offset, upload.rest)
        assert patched.status == 404, (wrong, patched)
        assert rufh.delete(location, version).status == 404, wrong
    resume(upload, version)


def test_head_carrying_upload_fields_and_patch_without_offset_or_length(srv: Server) -> None:
    upload = cut_creation(srv.base, 6)
    version = [("Upload-Draft-Interop-Version", "6")]
    for extra in (("Upload-Offset", "0"), ("Upload-Complete", "?0")):
        answer = rufh.request("HEAD", upload.location, [*version, extra])
        assert answer.status == 400, (extra, answer)
    no_offset = [*version, ("Upload-Complete", "?1"), ("Content-Type", PARTIAL_UPLOAD)]
    answer = rufh.request("PATCH", upload.location, no_offset, upload.rest)
    assert answer.status == 400, answer
    no_length = [
        *version, ("Upload-Offset", str(CUT)), ("Upload-Complete", "?1"),
        ("Content-Type", PARTIAL_UPLOAD),
    ]
    answer = rufh.request("PATCH", upload.location, no_length)
    assert answer.status == 411, answer
    resume(upload, 6)


def test_answers_to_head_have_no_body(srv: Server) -> None:
    """Whatever a HEAD of an upload resource is answered (204, 400, 404), nothing follows the
    head: a client keeping the connection would take those bytes for its next answer."""
    upload = cut_creation(srv.base, 8)
    token = os.urandom(32).hex()
    for location, extra in (
        (upload.location, []),
        (upload.location, [("Upload-Offset", "0")]),
        (srv.base + UPLOADS + token, []),
        (srv.base + UPLOADS + "z" * 64, []),
    ):
        fields = [("Upload-Draft-Interop-Version", "8"), *extra, ("Connection", "close")]
        with rufh.Connection.to(location) as conn:
            conn.send(rufh.request_head("HEAD", location, fields))
            answer = conn.read_response("HEAD")
            after = conn.wait_closed()
        assert answer.status in (204, 400, 404), answer
        assert after == b"", (answer.status, extra, after)
    resume(upload, 8)


def test_each_request_speaks_its_own_version(srv: Server) -> None:
    """Created with 3, looked at with 8 (and with no version: as 8), resumed with 6."""
    upload = cut_creation(srv.base, 3)
    check_offset(rufh.head(upload.location, 8), 8, CUT, SIZE)
    unversioned = rufh.head(upload.location, None)
    assert unversioned.status == 204, unversioned
    assert unversioned.headers.get("upload-complete") == "?0", unversioned.pairs
    assert "upload-limit" in unversioned.headers, unversioned.pairs
    assert rufh.patch(upload.location, 6, CUT, upload.rest, content_type=None).status == 415
    check_completed(rufh.patch(upload.location, 6, CUT, upload.rest), 6, SIZE)
    assert fetch(upload.url).body == upload.body


# -- cancellation and limits -----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_delete_removes_the_partial(srv: Server, version: int) -> None:
    before = kept_partials(srv.storage)
    upload = cut_creation(srv.base, version)
    mine = kept_partials(srv.storage) - before
    assert mine, "no partial kept on disk"
    answer = rufh.delete(upload.location, version)
    assert answer.status == 204, answer
    assert answer.headers.get("upload-draft-interop-version") == str(version)
    assert not mine & kept_partials(srv.storage), "the partial is still on disk"
    assert rufh.head(upload.location, version).status == 404
    assert rufh.patch(upload.location, version, upload.offset, upload.rest).status == 404
    assert rufh.delete(upload.location, version).status == 404
    assert fetch(upload.url).status == 404
    # The slot is free again.
    assert rufh.request("PUT", upload.url, body=upload.body).status == 201
    assert fetch(upload.url).body == upload.body


@pytest.mark.parametrize("version", VERSIONS)
def test_options_announce_the_limits(srv: Server, version: int) -> None:
    upload = cut_creation(srv.base, version)
    _, slot_url = signed(srv.base, 10)
    answers = {
        "upload resource": rufh.options(upload.location, version),
        "slot": rufh.options(slot_url, version),
        "*": rufh.options(srv.base, version, target="*"),
    }
    for where, answer in answers.items():
        assert answer.status in (200, 204), (where, answer)
        if version >= 6:
            limits = rufh.parse_limit(answer.headers.get("upload-limit", ""))
            assert limits.get("max-size") == str(MAX_UPLOAD), (where, answer.pairs)
        if version == 8:
            assert PARTIAL_UPLOAD in answer.headers.get("accept-patch", ""), (where, answer.pairs)
    allowed = {m.strip() for m in answers["upload resource"].headers.get("allow", "").split(",")}
    assert {"PATCH", "DELETE"} <= allowed, answers["upload resource"].pairs
    resume(upload, version)


# -- plain clients ---------------------------------------------------------------------------


def test_plain_put_is_unchanged(srv: Server) -> None:
    body = data(10_000)
    _, url = signed(srv.base, len(body))
    exchange = rufh.exchange(
        "PUT", url, [("Content-Type", "application/octet-stream"),
                     ("Content-Length", str(len(body)))], body
    )
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 201
    for name in ("upload-draft-interop-version", "upload-offset", "upload-complete"):
        assert name not in exchange.final.headers, exchange.final.pairs
    assert fetch(url).body == body


@pytest.mark.parametrize("version", ["2", "99", "1.0", ""])
def test_other_interop_versions_are_plain_puts(srv: Server, version: str) -> None:
    body = data(10_000)
    _, url = signed(srv.base, len(body))
    exchange = rufh.create(url, body, version)
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 201, exchange.final
    assert fetch(url).body == body


def test_a_version_without_its_completeness_field_is_a_plain_put(srv: Server) -> None:
    for fields in (
        [("Upload-Draft-Interop-Version", "8")],
        [("Upload-Draft-Interop-Version", "8"), ("Upload-Incomplete", "?0")],
        [("Upload-Draft-Interop-Version", "3"), ("Upload-Complete", "?1")],
        [("Upload-Complete", "?1"), ("Upload-Length", "100")],
    ):
        body = data(100)
        _, url = signed(srv.base, len(body))
        exchange = rufh.exchange("PUT", url, [("Content-Length", "100"), *fields], body)
        assert exchange.informational == [], fields
        assert exchange.final is not None and exchange.final.status == 201, (fields, exchange)
        assert fetch(url).body == body


@pytest.mark.parametrize("version", KEY_VERSIONS)
def test_plain_put_after_a_cut_creation_drops_the_partial(srv: Server, version: int) -> None:
    before = kept_partials(srv.storage)
    upload = cut_creation(srv.base, version)
    mine = kept_partials(srv.storage) - before
    assert mine
    exchange = rufh.exchange("PUT", upload.url, [("Content-Length", str(SIZE))], upload.body)
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 201, exchange.final
    assert fetch(upload.url).body == upload.body
    assert not mine & kept_partials(srv.storage), "the abandoned partial is still on disk"


def test_resumable_off_ignores_the_fields(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="resumable = false")
    body = data(50_000)
    _, url = signed(server.base, len(body))
    exchange = rufh.create(url, body, 8)
    assert exchange.informational == []
    assert exchange.final is not None and exchange.final.status == 201
    assert "upload-draft-interop-version" not in exchange.final.headers
    assert fetch(url).body == body
    token = os.urandom(32).hex()
    assert rufh.head(server.base + UPLOADS + token, 8).status == 404
    assert rufh.patch(server.base + UPLOADS + token, 8, 0, b"x").status == 404
    assert stop_server(server) == 0


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", KEY_VERSIONS)
def test_two_patches_at_once_one_wins(srv: Server, version: int) -> None:
    upload = cut_creation(srv.base, version)
    first = rufh.start_patch(upload.location, version, upload.offset, upload.rest)
    try:
        first.send(len(upload.rest) // 2)
        first.settle()
        second = rufh.patch(upload.location, version, upload.offset, upload.rest)
        assert second.status == 409, second
        won = first.finish()
    finally:
        first.connection.close()
    check_completed(won, version, SIZE)
    assert fetch(upload.url).body == upload.body


@pytest.mark.parametrize("version", KEY_VERSIONS)
def test_head_while_the_creation_is_stalled_ends_it(srv: Server, version: int) -> None:
    transfer, upload = stall(srv.base, version)
    try:
        check_offset(rufh.head(upload.location, version), version, CUT, SIZE)
        # The stalled request was ended: its connection closed by the server.
        transfer.connection.wait_closed(timeout=10)
        # Whatever it sends now is not stored.
        transfer.send(5000)
    finally:
        transfer.connection.close()
    resume(upload, version)


def test_delete_while_the_creation_is_stalled(srv: Server) -> None:
    before = kept_partials(srv.storage)
    transfer, upload = stall(srv.base, 8)
    try:
        assert rufh.delete(upload.location, 8).status == 204
        transfer.connection.wait_closed(timeout=10)
    finally:
        transfer.connection.close()
    assert rufh.head(upload.location, 8).status == 404
    assert not kept_partials(srv.storage) - before
    assert fetch(upload.url).status == 404


def test_idle_timeout_keeps_the_partial(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml="idle_timeout = 1")
    transfer, upload = stall(server.base, 8)
    try:
        transfer.connection.wait_closed(timeout=15)
    finally:
        transfer.connection.close()
    resume(upload, 8)
    assert stop_server(server) == 0


def test_abandoned_partials_are_swept_after_resumable_ttl(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, server_toml='resumable_ttl = "1s"\nsweep_interval = 0.2'
    )
    upload = cut_creation(server.base, 8)
    assert kept_partials(server.storage)
    wait_for(
        lambda: rufh.head(upload.location, 8).status == 404 and not kept_partials(server.storage),
        "the partial to be swept",
    )
    assert stop_server(server) == 0


# -- restarts, workers, TLS ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", URLSESSION_LIKE)
def test_resumed_across_a_restart(tmp_path: Path, version: int) -> None:
    storage = tmp_path / "files"
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = start_server(
        tmp_path / "first", server_toml="shutdown_timeout = 1", storage=storage
    )
    cut = cut_creation(first.base, version)
    # Also one still sending (stalled) when the server stops: what it sent is kept.
    transfer, stalled = stall(first.base, version)
    try:
        assert stop_server(first) == 0
        transfer.connection.wait_closed(timeout=10)
    finally:
        transfer.connection.close()
    second = start_server(tmp_path / "second", storage=storage)
    for upload in (cut, stalled):
        upload.location = on(upload.location, second.base)
        upload.url = on(upload.url, second.base)
        resume(upload, version)
    assert stop_server(second) == 0


def two_workers(server: Server) -> list[int]:
    return wait_for(
        lambda: ((pids := children(server.process.pid)) and len(pids) == 2 and pids) or None,
        "two workers",
    )


@pytest.mark.slow
@pytest.mark.workers
@pytest.mark.parametrize("version", URLSESSION_LIKE)
def test_two_workers(tmp_path: Path, version: int) -> None:
    """Each step of an upload on a chosen worker: created on one, looked at and resumed on
    either; a creation stalled on one worker is given up for a HEAD on the other."""
    server = start_server(tmp_path, workers=2)
    pids = two_workers(server)
    for n in range(4):
        creator, looker, patcher = pids[n % 2], pids[(n + 1) % 2], pids[(n // 2) % 2]
        body = data()
        _, url = signed(server.base, len(body))
        with rufh.connect_to_worker(server.base, pids, creator) as conn:
            transfer = rufh.start_create(url, body, version, connection=conn)
            transfer.send(CUT)
            assert transfer.wait_informational() is not None
            transfer.settle()
            transfer.cut()
        location = check_informational(transfer.exchange(), version, server.base, len(body))
        with rufh.connect_to_worker(server.base, pids, looker) as conn:
            check_offset(rufh.head(location, version, connection=conn), version, CUT, SIZE)
        with rufh.connect_to_worker(server.base, pids, patcher) as conn:
            answer = rufh.patch(location, version, CUT, body[CUT:], connection=conn)
            check_completed(answer, version, SIZE)
        assert fetch(url).body == body

    for holder, other in (pids, pids[::-1]):
        body = data()
        _, url = signed(server.base, len(body))
        conn = rufh.connect_to_worker(server.base, pids, holder)
        transfer = rufh.start_create(url, body, version, connection=conn)
        try:
            transfer.send(CUT)
            assert transfer.wait_informational() is not None
            transfer.settle()
            location = check_informational(transfer.exchange(), version, server.base, SIZE)
            with rufh.connect_to_worker(server.base, pids, other) as looker_conn:
                answer = rufh.head(location, version, connection=looker_conn)
            check_offset(answer, version, CUT, SIZE)
            transfer.connection.wait_closed(timeout=10)
        finally:
            conn.close()
        with rufh.connect_to_worker(server.base, pids, other) as conn:
            answer = rufh.patch(location, version, CUT, body[CUT:], connection=conn)
        check_completed(answer, version, SIZE)
        assert fetch(url).body == body
    assert children(server.process.pid) == pids  # no worker was lost on the way
    assert stop_server(server) == 0
    assert not any("Traceback" in line for line in server.log), server.log_tail(60)


@pytest.mark.slow
def test_over_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue("leaf")
    server, base = start_https_server(tmp_path, leaf.certificate, leaf.key)
    tls = ssl.create_default_context(cafile=str(ca.path))
    for version in URLSESSION_LIKE:
        upload = cut_creation(base, version, tls=tls)
        assert upload.location.startswith(f"{base}{UPLOADS}")
        resume(upload, version, tls=tls)
    body = data()
    rel, url = signed(base, len(body))
    exchange = rufh.create(url, body, 8, tls=tls)
    check_informational(exchange, 8, base, len(body))
    assert exchange.final is not None
    check_completed(exchange.final, 8, len(body))
    assert fetch(url, tls=tls).body == body
    # A stalled creation over TLS, ended by a HEAD.
    body = data()
    rel, url = signed(base, len(body))
    transfer = rufh.start_create(url, body, 8, tls=tls)
    try:
        transfer.send(CUT)
        assert transfer.wait_informational() is not None
        transfer.settle()
        location = check_informational(transfer.exchange(), 8, base, len(body))
        check_offset(rufh.head(location, 8, tls=tls), 8, CUT, SIZE)
        transfer.connection.wait_closed(timeout=10)
    finally:
        transfer.connection.close()
    resume(Cut(rel, url, body, location, CUT), 8, tls=tls)
    assert stop_server(server) == 0


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_count_resumptions(tmp_path: Path) -> None:
    server = start_server(tmp_path, extra_toml=METRICS_TOML)
    address = next(a for a in server.addresses if a.endswith("(metrics)")).split()[0]
    upload = cut_creation(server.base, 8)
    resume(upload, 8)
    text = rufh.get(f"http://{address}/metrics").body.decode()
    assert metric(text, "hmacfs_resumable_created_total") == 1, text
    assert metric(text, "hmacfs_resumptions_total") == 1, text
    assert metric(text, "hmacfs_resumed_bytes_total") == SIZE - CUT, text
    assert metric(text, "hmacfs_partials_kept_total") == 1, text
    assert metric(text, "hmacfs_resumable_partials") is not None, text
    assert metric(text, "hmacfs_resumable_partial_bytes") is not None, text
    assert stop_server(server) == 0
