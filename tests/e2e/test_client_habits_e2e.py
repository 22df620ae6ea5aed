"""End to end: one test per HTTP habit of a real XMPP client, with its request heads written
field by field as that client's HTTP stack builds them (tests.helpers.clients, which names
the client source each habit was read in).

Slots are signed as the XMPP server would sign them (docs/SIGNING.md): Prosody v1 (`?v=`) or
v2 (`?v2=`, which also signs the type named in the slot request), or the HMAC File Server
header form (`Cookie: auth=` / `Authorization: Basic`, with the slot's `Expires`). Each test
uploads, downloads again and compares the bytes and what the server says the file is.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import clients
from tests.helpers.clients import Answer, wire
from tests.helpers.resumable import Connection, Response
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import mac_v1, mac_v2

#: A small JPEG: SOI, a JFIF APP0 segment, a few bytes of scan, EOI.
JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + b"\xff\xdb\x00\x43\x00" + bytes(range(64))
    + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + bytes(range(200, 256)) * 40
    + b"\xff\xd9"
)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
ORIGIN = "https://chat.example.org"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server process (workers = 1) with the default configuration, for every habit."""
    srv = start_server(tmp_path_factory.mktemp("habits"), workers=1, track=False)
    yield srv
    assert stop_server(srv) == 0


def slot_id() -> str:
    return str(uuid.uuid4())


def prosody_slot(server: Server, name: str) -> tuple[str, str]:
    """The signed path and the put URL (without its query) Prosody hands out for `name`."""
    sid = slot_id()
    return f"{sid}/{name}", server.url(f"{sid}/{clients.prosody_segment(name)}")


def mac_with_expires(path: str, size: int, content_type: str, expires: str) -> str:
    """The `basic`/`cookie` MAC with an Expires header: the v2 message + "\\0" + Expires."""
    return mac_v2(path, size, f"{content_type}\0{expires}")


def put(url: str, fields: clients.Fields, body: bytes) -> Answer:
    return clients.send(url, wire("PUT", clients.target_of(url), fields), body)


def fetch(url: str, fields: clients.Fields, method: str = "GET") -> Response:
    return clients.send(
        url, wire(method, clients.target_of(url), fields), method=method
    ).final


def plain_get(url: str) -> Response:
    return fetch(url, [("Host", clients.host_of(url)), ("Connection", "close")])


def assert_created(answer: Answer, request: clients.Fields) -> None:
    assert answer.final.status == 201, (
        f"request {request}\nanswer {answer.final.status} {answer.final.pairs} "
        f"{answer.final.body[:300]!r}"
    )


def assert_served(
    url: str, body: bytes, content_type: str, disposition: str
) -> Response:
    got = plain_get(url)
    assert got.status == 200, (got.status, got.pairs, got.body[:300])
    assert got.body == body
    assert got.headers["content-type"] == content_type
    assert got.headers["content-disposition"] == disposition
    return got


# -- Content-Type ---------------------------------------------------------------------------


def test_kaidan_qxmpp_put_without_content_type(server: Server) -> None:
    """QXmpp before 1.13 (Kaidan) names the type in the slot request but puts no Content-Type
    on the PUT (qxmpp-project/qxmpp src/client/QXmppHttpUploadManager.cpp). The v2 MAC signs
    image/jpeg; the server should also try the type `.jpg` implies and serve that type."""
    path, url = prosody_slot(server, "IMG_20240611_183512.jpg")
    url += f"?v2={mac_v2(path, len(JPEG), 'image/jpeg')}"
    fields = clients.qxmpp_put(url, [], len(JPEG))
    assert_created(put(url, fields, JPEG), fields)
    assert_served(url, JPEG, "image/jpeg", 'inline; filename="IMG_20240611_183512.jpg"')


def test_movim_put_without_content_type(server: Server) -> None:
    """Movim PUTs from its own server with no Content-Type (movim/movim
    app/Widgets/UploadFile/UploadFile.php) after a slot request naming the type
    (src/Moxl/Stanza/Upload.php): as for Kaidan, `.png` implies the signed image/png."""
    path, url = prosody_slot(server, "screenshot 2024-06-11.png")
    url += f"?v2={mac_v2(path, len(PNG), 'image/png')}"
    fields = clients.reactphp_put(url, [], len(PNG))
    assert_created(put(url, fields, PNG), fields)
    assert_served(
        url,
        PNG,
        "image/png",
        "inline; filename=\"screenshot 2024-06-11.png\"",
    )


def test_conversations_empty_content_type_for_an_unknown_type(server: Server) -> None:
    """Conversations asks for a slot with content-type="" when Android knows no type for the
    file (entities/DownloadableFile.java getMimeType, generator/IqGenerator.java) and sends
    that as `Content-Type: ` through OkHttp: Prosody signed "", which must verify."""
    data = b"CEB\x00\x01" + bytes(range(256)) * 4
    path, url = prosody_slot(server, "conversations_backup.ceb")
    url += f"?v2={mac_v2(path, len(data), '')}"
    fields = clients.okhttp_put(url, [], "", len(data))
    assert ("Content-Type", "") in fields
    assert_created(put(url, fields, data), fields)
    assert_served(
        url, data, "application/octet-stream", 'attachment; filename="conversations_backup.ceb"'
    )


def test_converse_empty_content_type_from_the_browser(server: Server) -> None:
    """Converse.js sets `Content-type` to `file.type`, "" for a type the browser does not know,
    and asked for the slot with that same "" (src/headless/shared/http-upload.js)."""
    data = b"\x03\xd9\xa2\x9a\x67\xfb\x4b\xb5" + bytes(range(256)) * 3
    path, url = prosody_slot(server, "Passwords.kdbx")
    url += f"?v2={mac_v2(path, len(data), '')}"
    fields = clients.converse_put(url, ORIGIN, [], "", len(data))
    answer = put(url, fields, data)
    assert_created(answer, fields)
    # The page reads the status only if the answer allows its origin.
    assert answer.final.headers.get("access-control-allow-origin") in ("*", ORIGIN)
    assert_served(url, data, "application/octet-stream", 'attachment; filename="Passwords.kdbx"')


# -- CORS for Converse.js -------------------------------------------------------------------


@pytest.mark.parametrize(
    "slot_headers",
    [
        pytest.param(("Authorization",), id="file-share-bearer"),
        pytest.param(("Authorization", "Expires"), id="basic-with-expires"),
        pytest.param(("Expires",), id="expires-only"),
    ],
)
def test_converse_preflight_for_its_slot_headers(
    server: Server, slot_headers: tuple[str, ...]
) -> None:
    """Converse.js copies the slot's Authorization and Expires onto its XHR PUT
    (src/headless/shared/http-upload.js), so the browser first asks whether those and
    Content-type may be sent; the default configuration must say yes."""
    url = server.url(f"{slot_id()}/photo.jpg")
    requested = ["Content-Type", *slot_headers]
    fields = clients.browser_preflight(url, ORIGIN, requested)
    answer = fetch(url, fields, method="OPTIONS")
    assert 200 <= answer.status < 300, (answer.status, answer.pairs)
    why = clients.preflight_allows(answer, ORIGIN, "PUT", requested)
    assert not why, f"request {fields}\nanswer {answer.pairs}\n{why}"


def test_default_cors_headers_cover_every_slot_header(server: Server) -> None:
    """XEP-0363 lets a slot hand out Authorization, Cookie and Expires; with Content-Type,
    these are what the default Access-Control-Allow-Headers should list."""
    url = server.url(f"{slot_id()}/photo.jpg")
    answer = fetch(url, clients.browser_preflight(url, ORIGIN, ["content-type"]), "OPTIONS")
    allowed = {
        name.strip().lower()
        for name in answer.headers.get("access-control-allow-headers", "").split(",")
    }
    missing = {"authorization", "cookie", "expires", "content-type"} - allowed
    assert not missing, f"Access-Control-Allow-Headers lacks {sorted(missing)}: {answer.pairs}"


def test_converse_put_with_the_copied_expires(server: Server) -> None:
    """The PUT after the preflight: Basic credentials and the Expires the slot gave, both
    signed (docs/SIGNING.md, `basic`)."""
    path, url = prosody_slot(server, "holiday.jpg")
    expires = str(int(time.time()) + 300)
    mac = mac_with_expires(path, len(JPEG), "image/jpeg", expires)
    credentials = base64.b64encode(f"juliet@capulet.example:{mac}".encode()).decode()
    slot = [("Authorization", f"Basic {credentials}"), ("Expires", expires)]
    fields = clients.converse_put(url, ORIGIN, slot, "image/jpeg", len(JPEG))
    answer = put(url, fields, JPEG)
    assert_created(answer, fields)
    assert answer.final.headers.get("access-control-allow-origin") in ("*", ORIGIN)
    assert_served(url, JPEG, "image/jpeg", 'inline; filename="holiday.jpg"')


# -- URLSession's resumable-upload fields on a plain PUT ------------------------------------


@pytest.mark.parametrize(
    "resumable",
    [
        pytest.param([("Upload-Draft-Interop-Version", "3"), ("Upload-Incomplete", "?0")],
                     id="v3-incomplete-false"),
        pytest.param([("Upload-Draft-Interop-Version", "6"), ("Upload-Complete", "?1")],
                     id="v6-complete"),
        pytest.param([("Upload-Draft-Interop-Version", "6")], id="version-only"),
        pytest.param([("Upload-Complete", "?1")], id="complete-only"),
        pytest.param([("Upload-Incomplete", "?0")], id="incomplete-only"),
    ],
)
def test_monal_urlsession_adds_resumable_fields(
    server: Server, resumable: clients.Fields
) -> None:
    """Monal uploads with a URLSession upload task (monal-im/Monal Monal/Classes/MLHTTPRequest.m,
    from xmpp.m requestHTTPSlotWithParams: Content-Type, then the slot's headers), to which
    iOS 17 and later add resumable-upload fields, all or some of them. A complete PUT stays
    an upload: 201 (a 104 before it is fine), never a refusal."""
    path, url = prosody_slot(server, "IMG_0042.jpg")
    url += f"?v2={mac_v2(path, len(JPEG), 'image/jpeg')}"
    fields = clients.urlsession_put(
        url,
        [("Content-Type", "image/jpeg")],
        len(JPEG),
        "Monal/6.4 CFNetwork/1494.0.7 Darwin/23.4.0",
        resumable,
    )
    answer = put(url, fields, JPEG)
    assert_created(answer, fields)
    assert all(r.status in (100, 104) for r in answer.informational), answer.informational
    assert_served(url, JPEG, "image/jpeg", 'inline; filename="IMG_0042.jpg"')


# -- URL re-encoding ------------------------------------------------------------------------


#: An escape with a lower-case hex digit.
LOWER_ESCAPE = re.compile(r"%(?:[a-f][0-9a-fA-F]|[0-9A-F][a-f])")
#: File names whose Prosody URL has lower-case escapes of several kinds (spaces, sub-delims,
#: UTF-8).
NAMES = ["Ferien (Tag 2) \u2013 été's.jpg", "IMG 0001+copy;v=2.jpg"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stack", ["dino", "gajim", "psi", "kaidan"])
def test_glib_and_qt_send_upper_case_escapes(server: Server, stack: str, name: str) -> None:
    """libsoup 3 (Dino, Gajim up to 2.3) re-encodes the slot URL through GLib's URI parser and
    Qt (Psi, Kaidan) through QUrl: the lower-case escapes of Prosody's URL go out upper-case.
    The signed path is the decoded one, so the MAC still verifies."""
    path, url = prosody_slot(server, name)
    raw_path = clients.target_of(url)
    assert LOWER_ESCAPE.search(raw_path), raw_path  # as Prosody wrote it
    if stack in ("dino", "gajim"):
        sent_path = clients.glib_path(raw_path)
    else:
        sent_path = clients.qt_path(raw_path)
    assert not LOWER_ESCAPE.search(sent_path), sent_path
    if stack == "kaidan":
        # QXmpp sends no Content-Type: sign with v1, which does not bind one.
        query = f"?v={mac_v1(path, len(JPEG))}"
    else:
        query = f"?v2={mac_v2(path, len(JPEG), 'image/jpeg')}"
    sent = clients.with_path(url, sent_path) + query
    if stack == "dino":
        fields = clients.soup_put(sent, [], "image/jpeg", len(JPEG))
    elif stack == "gajim":
        fields = clients.soup_put(sent, [], "image/jpeg", len(JPEG), user_agent="Gajim 2.3.0")
    elif stack == "psi":
        fields = clients.psi_put(sent, [], "image/jpeg", len(JPEG))
    else:
        fields = clients.qxmpp_put(sent, [], len(JPEG))
    assert_created(put(sent, fields, JPEG), fields)
    got = plain_get(clients.with_path(url, sent_path))
    assert (got.status, got.body) == (200, JPEG)
    if stack != "kaidan":  # (a v1 PUT without Content-Type has no type to keep)
        assert got.headers["content-type"] == "image/jpeg"
    # And the download by the URL as Prosody wrote it (what the recipient got).
    assert plain_get(clients.with_path(url, raw_path)).body == JPEG


@pytest.mark.parametrize("stack", ["glib", "qt"])
def test_escaped_unreserved_characters_are_spelled_out(server: Server, stack: str) -> None:
    """GLib and Qt both turn an escaped unreserved character (`%7e`, `%2d`, `%5f`, `%41`) into
    the character itself; a slot whose generator escaped them still verifies."""
    sid = slot_id()
    path = f"{sid}/report~final-v2_A.jpg"
    raw = f"/upload/{sid}/report%7efinal%2dv2%5f%41.jpg"
    sent_path = clients.glib_path(raw) if stack == "glib" else clients.qt_path(raw)
    assert sent_path == f"/upload/{path}"
    url = server.url(f"{sid}/x")  # the origin; the path is replaced
    sent = clients.with_path(url, sent_path) + f"?v2={mac_v2(path, len(JPEG), 'image/jpeg')}"
    if stack == "glib":
        fields = clients.soup_put(sent, [], "image/jpeg", len(JPEG))
    else:
        fields = clients.psi_put(sent, [], "image/jpeg", len(JPEG))
    assert_created(put(sent, fields, JPEG), fields)
    assert plain_get(clients.with_path(url, raw)).body == JPEG


# -- header names ---------------------------------------------------------------------------


def test_chatsecure_lower_case_slot_header_names(server: Server) -> None:
    """ChatSecure lower-cases the slot's header names before forwarding them (ChatSecure-iOS
    ChatSecureCore/Classes/Controllers/FileTransferManager.swift: "authorization", "cookie",
    "expires"), next to its own "Content-Type" and "Content-Length"."""
    path, url = prosody_slot(server, "image.jpg")
    expires = str(int(time.time()) + 300)
    mac = mac_with_expires(path, len(JPEG), "image/jpeg", expires)
    fields = clients.urlsession_put(
        url,
        [
            ("cookie", f"auth={mac}"),
            ("expires", expires),
            ("Content-Type", "image/jpeg"),
            ("Content-Length", str(len(JPEG))),
        ],
        len(JPEG),
        "ChatSecure/5.0 Alamofire/4.9.1",
    )
    assert_created(put(url, fields, JPEG), fields)
    # It does a HEAD first, then the GET (the same file's type and length).
    head = fetch(url, clients.urlsession_request(url, [], "ChatSecure/5.0"), "HEAD")
    assert head.status == 200 and head.headers["content-length"] == str(len(JPEG))
    assert head.headers["content-type"] == "image/jpeg"
    assert_served(url, JPEG, "image/jpeg", 'inline; filename="image.jpg"')


# -- downloads ------------------------------------------------------------------------------


def test_conversations_head_then_resumed_get(server: Server) -> None:
    """Conversations does a HEAD (with Accept-Encoding: identity) and refuses a file without
    Content-Length; it resumes a broken download with `Range: bytes=N-` and appends only when
    Content-Range starts with "bytes N-" (http/HttpDownloadConnection.java)."""
    data = JPEG * 20
    path, url = prosody_slot(server, "VID_20240611_1200.jpg")
    signed = url + f"?v2={mac_v2(path, len(data), 'image/jpeg')}"
    fields = clients.okhttp_put(signed, [], "image/jpeg", len(data))
    assert_created(put(signed, fields, data), fields)

    head = fetch(url, clients.okhttp_head(url), "HEAD")
    assert head.status == 200, (head.status, head.pairs)
    assert head.headers.get("content-length") == str(len(data))
    assert head.headers["content-type"] == "image/jpeg"
    assert head.body == b""

    full = fetch(url, clients.okhttp_get(url, None))
    assert (full.status, full.body) == (200, data)
    assert "content-encoding" not in full.headers

    resume = 12_345
    part = fetch(url, clients.okhttp_get(url, resume))
    assert part.status == 206, (part.status, part.pairs)
    assert part.headers["content-range"] == f"bytes {resume}-{len(data) - 1}/{len(data)}"
    assert part.headers["content-range"].startswith(f"bytes {resume}-")
    assert part.headers["content-length"] == str(len(data) - resume)
    assert part.body == data[resume:]


@pytest.mark.parametrize(("start", "size"), [(0, 1000), (1000, 2500), (4000, 0)])
def test_psi_reads_closed_ranges(server: Server, start: int, size: int) -> None:
    """Psi asks for `bytes=a-b` (or `bytes=a-`) and checks the Content-Range it gets back
    (psi-im/psi src/filesharingdownloader.cpp)."""
    data = JPEG * 5
    path, url = prosody_slot(server, "scan.jpg")
    signed = url + f"?v2={mac_v2(path, len(data), 'image/jpeg')}"
    fields = clients.psi_put(signed, [], "image/jpeg", len(data))
    assert_created(put(signed, fields, data), fields)
    got = fetch(url, clients.psi_get(url, start, size))
    end = start + size - 1 if size else len(data) - 1
    assert got.status == 206, (got.status, got.pairs)
    assert got.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    assert got.body == data[start : end + 1]


# -- Expect: 100-continue -------------------------------------------------------------------


def test_old_movim_expect_100_continue(server: Server) -> None:
    """Movim before its ReactPHP proxy PUT with PHP's curl (CURLOPT_PUT, the slot's headers,
    no Content-Type; movim/movim app/widgets/UploadFile/UploadFile.php at 2520e09d9), and
    libcurl adds `Expect: 100-continue` above 1 MiB: 100 before the body, then 201."""
    data = (JPEG * 800)[: 1_500_000]
    path, url = prosody_slot(server, "video.mp4")
    url += f"?v={mac_v1(path, len(data))}"
    fields = clients.curl_put(url, [], len(data), expect=True)
    with Connection.to(url) as connection:
        connection.send(wire("PUT", clients.target_of(url), fields))
        first = connection.read_response("PUT", timeout=10)
        assert first.status == 100, (first.status, first.pairs)
        connection.send(data)
        _, final = connection.read_final("PUT")
    assert final.status == 201, (fields, final.status, final.pairs, final.body[:300])
    assert plain_get(server.url(path)).body == data


def test_expect_100_continue_refused_before_the_body(server: Server) -> None:
    """A refused PUT with `Expect: 100-continue` gets its refusal at once, with no 100 before
    it and without the server waiting for (or reading) the body."""
    data = b"\0" * 2_000_000
    path, url = prosody_slot(server, "video.mp4")
    url += "?v=" + "0" * 64
    fields = clients.curl_put(url, [], len(data), expect=True)
    with Connection.to(url) as connection:
        connection.send(wire("PUT", clients.target_of(url), fields))
        # No byte of the body is sent: the answer must come without it.
        first = connection.read_response("PUT", timeout=10)
    assert first.status == 403, (first.status, first.pairs, first.body[:300])
    assert plain_get(server.url(path)).status == 404


# -- status codes ---------------------------------------------------------------------------


def test_siskin_counts_only_201(server: Server) -> None:
    """Siskin treats any answer but 201 as a failure, 200 included
    (tigase/siskin-im Shared/util/HTTPFileUploadHelper.swift), and may retry a PUT it did not
    see answered: the retry of the same body is 201 again. Its download starts with a HEAD
    that must be 200 (SiskinIM/util/DownloadManager.swift)."""
    path, url = prosody_slot(server, "photo.jpg")
    url += f"?v2={mac_v2(path, len(JPEG), 'image/jpeg')}"
    fields = clients.urlsession_put(
        url,
        [("Content-Length", str(len(JPEG))), ("Content-Type", "image/jpeg")],
        len(JPEG),
        "Siskin IM/7.4 CFNetwork/1494.0.7 Darwin/23.4.0",
    )
    assert_created(put(url, fields, JPEG), fields)
    assert_created(put(url, fields, JPEG), fields)
    head = fetch(url, clients.urlsession_request(url, [], "Siskin IM/7.4"), "HEAD")
    assert head.status == 200
    assert head.headers["content-disposition"] == 'inline; filename="photo.jpg"'
    assert head.headers["content-length"] == str(len(JPEG))
    assert_served(url, JPEG, "image/jpeg", 'inline; filename="photo.jpg"')


# -- file names -----------------------------------------------------------------------------


def test_profanity_underscores_spaces_in_the_file_name(server: Server) -> None:
    """profanity replaces spaces by "_" before it asks for the slot
    (profanity-im/profanity src/xmpp/stanza.c) and PUTs with libcurl, Content-Type set and
    `Expect:` suppressed (src/tools/http_upload.c)."""
    data = b"meeting notes\n" * 50
    path, url = prosody_slot(server, "my_file.txt")
    assert url.endswith("/my_file.txt")
    url += f"?v2={mac_v2(path, len(data), 'text/plain')}"
    fields = clients.curl_put(
        url, [("Content-Type", "text/plain")], len(data), user_agent="profanity"
    )
    assert_created(put(url, fields, data), fields)
    assert_served(url, data, "text/plain", 'inline; filename="my_file.txt"')


def test_a_name_with_spaces_as_other_clients_send_it(server: Server) -> None:
    """The same file from a client that keeps the spaces: Prosody's URL has `%20`."""
    data = b"meeting notes\n" * 50
    path, url = prosody_slot(server, "my file.txt")
    assert url.endswith("/my%20file.txt")
    url += f"?v2={mac_v2(path, len(data), 'text/plain')}"
    fields = clients.soup_put(url, [], "text/plain", len(data), user_agent="Gajim 2.3.0")
    assert_created(put(url, fields, data), fields)
    assert_served(url, data, "text/plain", 'inline; filename="my file.txt"')
