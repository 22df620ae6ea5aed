"""Request heads as real XMPP clients' HTTP stacks put them on the wire.

Each builder returns the header fields in the order and the spelling the client's stack sends
them, Host included where that stack puts it (OkHttp adds it after the body's fields, Qt
prepends it). Where a builder says what a client does, that was read in the client's own
source (named in the builder's docstring); the fields a closed stack adds by itself
(URLSession's, a browser's) follow what those stacks are documented to send.

`wire` turns fields into the bytes of a request head and `send` puts a head and a body on one
connection and reads the answers, so a head is never rewritten by an HTTP library here.

Nothing here imports pytest or hmacfs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from tests.helpers.resumable import Connection, Response

Fields = list[tuple[str, str]]

#: RFC 3986 unreserved characters: the ones GLib and Qt spell out when they find them escaped.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Characters Qt's URL recoder always escapes in a path (besides controls and non-ASCII).
_QT_ESCAPED = frozenset(b' "<>\\^`{|}')
_HEX = frozenset(b"0123456789abcdefABCDEF")


class Answer(NamedTuple):
    """The informational answers and the final one to one request."""

    informational: list[Response]
    final: Response


def wire(method: str, target: str, fields: Sequence[tuple[str, str]]) -> bytes:
    """The request line and exactly `fields`, in their order ("Name: value", so an empty value
    goes out as "Name: ")."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def send(url: str, head: bytes, body: bytes = b"", *, method: str = "PUT") -> Answer:
    """Send `head` and `body` at once on a new connection to `url`'s origin; every answer."""
    with Connection.to(url) as connection:
        connection.send(head + body)
        informational, final = connection.read_final(method)
    return Answer(informational, final)


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def target_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- how upload components write slot URLs ----------------------------------------------------


def prosody_segment(name: str) -> str:
    """A file name as Prosody puts it in a slot URL: everything but letters, digits and
    `-._~` escaped, with lower-case hex (the spelling docs/SIGNING.md shows)."""
    return "".join(
        chr(b) if b in _UNRESERVED else f"%{b:02x}" for b in name.encode("utf-8")
    )


# -- how HTTP stacks re-encode a URL they are given ------------------------------------------


def glib_path(path: str) -> str:
    """The path GLib's URI parser hands libsoup 3 (`GLib.Uri.parse` with SOUP_HTTP_URI_FLAGS,
    which keeps the path encoded but normalised; GNOME glib `glib/guri.c`, `uri_decoder` with
    `just_normalize`): an escaped unreserved character is spelled out, every other escape gets
    upper-case hex, and a byte that is not printable ASCII (a space, UTF-8) is escaped."""
    return _recoded(path, lambda byte: not 0x21 <= byte <= 0x7E)


def qt_path(path: str) -> str:
    """The path QUrl sends (qtbase `src/corelib/io/qurlrecode.cpp`, `recode`, and the fully
    encoded form QNetworkAccessManager asks for): an escaped unreserved character is decoded,
    every escape kept is written with upper-case hex ("we're pedantic and we'll uppercase the
    hex"), escaped UTF-8 is decoded and encoded again (upper case), and a space, a non-ASCII
    character or one of `"<>\\^`{|}` is escaped."""
    return _recoded(
        path, lambda byte: byte == 0x25 or byte < 0x21 or byte >= 0x7F or byte in _QT_ESCAPED
    )


def _recoded(path: str, escaped: Callable[[int], bool]) -> str:
    """`path` with well-formed escapes normalised (unreserved characters spelled out, upper
    case hex) and every other byte for which `escaped` is true escaped."""
    out: list[str] = []
    data = path.encode("utf-8")
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x25 and _is_escape(data, i):
            value = int(data[i + 1 : i + 3], 16)
            out.append(chr(value) if value in _UNRESERVED else data[i : i + 3].decode().upper())
            i += 3
            continue
        out.append(f"%{byte:02X}" if escaped(byte) else chr(byte))
        i += 1
    return "".join(out)


def _is_escape(data: bytes, i: int) -> bool:
    """Whether `data[i]` (a "%") starts a well-formed escape."""
    pair = data[i + 1 : i + 3]
    return len(pair) == 2 and all(c in _HEX for c in pair)


def with_path(url: str, path: str) -> str:
    """`url` with its path replaced (query kept)."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{path}{query}"


def spaces_escaped(name: str) -> str:
    """A file name escaped as a client that sends spaces as `%20` does."""
    return quote(name, safe="")


# -- OkHttp 4 (Conversations) ---------------------------------------------------------------

CONVERSATIONS_AGENT = "Conversations/2.12.12 (Android 14)"


def okhttp_put(url: str, slot: Fields, content_type: str, length: int) -> Fields:
    """Conversations' PUT (iNPUTmice/Conversations `http/SlotRequester.java`,
    `http/HttpUploadConnection.java`, `services/AbstractConnectionManager.java`): the slot's
    Authorization/Cookie/Expires, then `Content-Type` = the type it asked the slot for ("" for
    a type Android does not know), its User-Agent from an application interceptor; OkHttp's
    bridge then moves a parsable Content-Type behind it (an empty one does not parse and stays
    where it was, empty) and appends Content-Length, Host, Connection and Accept-Encoding."""
    fields = [*slot]
    if content_type:
        fields += [("User-Agent", CONVERSATIONS_AGENT), ("Content-Type", content_type)]
    else:
        fields += [("Content-Type", ""), ("User-Agent", CONVERSATIONS_AGENT)]
    return [
        *fields,
        ("Content-Length", str(length)),
        ("Host", host_of(url)),
        ("Connection", "Keep-Alive"),
        ("Accept-Encoding", "gzip"),
    ]


def okhttp_head(url: str) -> Fields:
    """Conversations' HEAD before a download (`http/HttpDownloadConnection.java`): it asks for
    `Accept-Encoding: identity` itself, so OkHttp adds no gzip."""
    return [
        ("Accept-Encoding", "identity"),
        ("User-Agent", CONVERSATIONS_AGENT),
        ("Host", host_of(url)),
        ("Connection", "Keep-Alive"),
    ]


def okhttp_get(url: str, resume_from: int | None) -> Fields:
    """Conversations' GET; a resumed one carries `Range: bytes=N-` (and then OkHttp does not
    add Accept-Encoding: gzip)."""
    if resume_from is None:
        return [
            ("User-Agent", CONVERSATIONS_AGENT),
            ("Host", host_of(url)),
            ("Connection", "Keep-Alive"),
            ("Accept-Encoding", "gzip"),
        ]
    return [
        ("Range", f"bytes={resume_from}-"),
        ("User-Agent", CONVERSATIONS_AGENT),
        ("Host", host_of(url)),
        ("Connection", "Keep-Alive"),
    ]


# -- Qt network access (QXmpp/Kaidan, Psi) ---------------------------------------------------


def qt_request(url: str, app_fields: Fields) -> Fields:
    """What QHttpNetworkConnection sends (qtbase `src/network/access/qhttpnetworkconnection.cpp`,
    `prepareRequest`): Host prepended, the request's own fields in the order set, then
    Content-Length, Connection, Accept-Encoding, Accept-Language and User-Agent where the
    application set none."""
    names = {name.lower() for name, _ in app_fields}
    fields = [("Host", host_of(url)), *app_fields]
    for name, value in (
        ("Connection", "Keep-Alive"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Accept-Language", "en,*"),
        ("User-Agent", "Mozilla/5.0"),
    ):
        if name.lower() not in names:
            fields.append((name, value))
    return fields


def qxmpp_put(url: str, slot: Fields, length: int) -> Fields:
    """QXmpp's PUT before 1.13 (qxmpp-project/qxmpp `src/client/QXmppHttpUploadManager.cpp`):
    the slot's headers as raw headers and nothing else, so no Content-Type although the slot
    request named one; Qt adds Content-Length from the file's size."""
    return qt_request(url, [*slot, ("Content-Length", str(length))])


def psi_put(url: str, slot: Fields, content_type: str, length: int) -> Fields:
    """Psi's PUT (psi-im/iris `src/xmpp/xmpp-im/httpfileupload.cpp`): the slot's headers, then
    Content-Type when it has one, then Content-Length."""
    fields = [*slot]
    if content_type:
        fields.append(("Content-Type", content_type))
    return qt_request(url, [*fields, ("Content-Length", str(length))])


def psi_get(url: str, start: int, size: int) -> Fields:
    """Psi's ranged GET (psi-im/psi `src/filesharingdownloader.cpp`): `bytes=a-b` for a known
    size, `bytes=a-` otherwise."""
    end = str(start + size - 1) if size else ""
    return qt_request(url, [("Range", f"bytes={start}-{end}")])


# -- libsoup 3 (Dino, Gajim up to 2.3) -------------------------------------------------------


def soup_put(
    url: str, slot: Fields, content_type: str, length: int, user_agent: str | None = None
) -> Fields:
    """A libsoup 3 PUT as Dino (dino/dino `plugins/http-files/src/file_sender.vala`) and Gajim
    up to 2.3 (`gajim/common/modules/httpupload.py` through python-nbxmpp `nbxmpp/http.py`)
    build it: `set_request_body` gives Content-Type and Content-Length, the slot's
    Authorization/Cookie/Expires are appended, then the session's fields."""
    fields = [
        ("Host", host_of(url)),
        ("Content-Type", content_type),
        ("Content-Length", str(length)),
        *slot,
    ]
    if user_agent is not None:
        fields.append(("User-Agent", user_agent))
    return [*fields, ("Accept-Encoding", "gzip, deflate, br")]


# -- URLSession (Monal, Siskin, ChatSecure) --------------------------------------------------

URLSESSION_TAIL: Fields = [
    ("Accept", "*/*"),
    ("Accept-Language", "en-GB,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Connection", "keep-alive"),
]


def urlsession_put(
    url: str,
    app_fields: Fields,
    length: int,
    agent: str,
    resumable: Sequence[tuple[str, str]] = (),
) -> Fields:
    """A URLSession PUT: the app's fields, Content-Length, what URLSession adds to an upload
    task from iOS 17 on (`resumable`: Upload-Draft-Interop-Version and the completeness
    field), then its own fields."""
    names = {name.lower() for name, _ in app_fields}
    fields = [("Host", host_of(url)), *app_fields]
    if "content-length" not in names:
        fields.append(("Content-Length", str(length)))
    return [*fields, *resumable, ("User-Agent", agent), *URLSESSION_TAIL]


def urlsession_request(url: str, method_fields: Fields, agent: str) -> Fields:
    """A URLSession HEAD or GET with the app's `method_fields`."""
    return [("Host", host_of(url)), *method_fields, ("User-Agent", agent), *URLSESSION_TAIL]


# -- libcurl (profanity, Movim before its ReactPHP proxy) ------------------------------------


def curl_put(
    url: str,
    custom: Fields,
    length: int,
    *,
    user_agent: str | None = None,
    expect: bool = False,
) -> Fields:
    """A libcurl upload (CURLOPT_UPLOAD / CURLOPT_PUT): Host, User-Agent when set, Accept,
    the CURLOPT_HTTPHEADER fields, Content-Length and, for a body above 1 MiB unless
    suppressed, `Expect: 100-continue`."""
    fields = [("Host", host_of(url))]
    if user_agent is not None:
        fields.append(("User-Agent", user_agent))
    fields += [("Accept", "*/*"), *custom, ("Content-Length", str(length))]
    if expect:
        fields.append(("Expect", "100-continue"))
    return fields


# -- ReactPHP (Movim now) --------------------------------------------------------------------


def reactphp_put(url: str, slot: Fields, length: int) -> Fields:
    """Movim's PUT from its server (movim/movim `app/Widgets/UploadFile/UploadFile.php`):
    `Browser::put(url, slot headers, body)`, no Content-Type; the library adds Host first and
    its User-Agent and Content-Length."""
    return [
        ("Host", host_of(url)),
        *slot,
        ("User-Agent", "ReactPHP/1"),
        ("Content-Length", str(length)),
    ]


# -- a browser (Converse.js) ----------------------------------------------------------------

BROWSER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"


def browser_preflight(url: str, origin: str, requested: Sequence[str]) -> Fields:
    """The CORS preflight a browser sends before an XHR PUT with author headers: their names
    lower-cased, sorted and joined by "," (the Fetch standard's CORS-unsafe request-header
    names)."""
    return [
        ("Host", host_of(url)),
        ("Connection", "keep-alive"),
        ("Accept", "*/*"),
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", ",".join(sorted(n.lower() for n in requested))),
        ("Origin", origin),
        ("User-Agent", BROWSER_AGENT),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Dest", "empty"),
        ("Referer", origin + "/"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Accept-Language", "en-GB,en;q=0.9"),
    ]


def converse_put(
    url: str, origin: str, slot: Fields, content_type: str, length: int
) -> Fields:
    """Converse.js's XHR PUT (conversejs/converse.js `src/headless/shared/http-upload.js`):
    `setRequestHeader('Content-type', file.type)` (the empty string for a type the browser
    does not know), then the slot's Authorization and Expires (a page cannot set Cookie)."""
    return [
        ("Host", host_of(url)),
        ("Connection", "keep-alive"),
        ("Content-Length", str(length)),
        ("Content-type", content_type),
        *slot,
        ("User-Agent", BROWSER_AGENT),
        ("Accept", "*/*"),
        ("Origin", origin),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Mode", "cors"),
        ("Sec-Fetch-Dest", "empty"),
        ("Referer", origin + "/"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Accept-Language", "en-GB,en;q=0.9"),
    ]


def preflight_allows(response: Response, origin: str, method: str, requested: Sequence[str]) -> str:
    """Why a browser would refuse the actual request after this preflight answer ("" when it
    would send it): the Fetch standard's CORS check without credentials."""
    allow_origin = response.headers.get("access-control-allow-origin")
    if allow_origin not in ("*", origin):
        return f"Access-Control-Allow-Origin is {allow_origin!r}"
    methods = _tokens(response.headers.get("access-control-allow-methods", ""))
    if method.lower() not in methods and "*" not in methods:
        return f"{method} is not in Access-Control-Allow-Methods {sorted(methods)}"
    allowed = _tokens(response.headers.get("access-control-allow-headers", ""))
    for name in requested:
        lowered = name.lower()
        # "*" covers every name but Authorization, which must be listed by name.
        if lowered not in allowed and not ("*" in allowed and lowered != "authorization"):
            return f"{name} is not in Access-Control-Allow-Headers {sorted(allowed)}"
    return ""


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}
