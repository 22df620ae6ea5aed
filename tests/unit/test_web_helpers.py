"""Response helpers: media types, Content-Disposition, CORS, writing small answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from twisted.internet.interfaces import ISSLTransport
from zope.interface import directlyProvides

from hmacfs.core.download import parse_ranges
from hmacfs.core.headers import (
    content_disposition,
    cors_headers,
    is_inline,
    preflight_headers,
    safe_media_type,
)
from hmacfs.core.settings import HttpSettings
from hmacfs.http.fast.direct import DirectWrites, send_answer


def write_now(transport: object, data: bytes, channel: object) -> None:
    """What the channel's transport does with an answer once DirectWrites stands in."""
    writes = DirectWrites(transport, transport.socket, channel)  # type: ignore[attr-defined]
    try:
        transport.write(data)  # type: ignore[attr-defined]
    finally:
        writes.remove()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("image/jpeg", "image/jpeg"),
        ("text/plain; charset=utf-8", "text/plain; charset=utf-8"),
        ('text/plain; charset="utf-8"', 'text/plain; charset="utf-8"'),
        ("", None),
        (None, None),
        ("image", None),
        ("text/html\r\nX-Evil: 1", None),
        ("image/jpég", None),
        ("a/b; c", None),
    ],
)
def test_safe_media_type(value: str | None, expected: str | None) -> None:
    assert safe_media_type(value) == expected


@pytest.mark.parametrize(
    ("media_type", "inline"),
    [
        ("image/png", True),
        ("video/mp4", True),
        ("audio/ogg", True),
        ("text/plain; charset=utf-8", True),
        ("IMAGE/PNG", True),
        ("image/svg+xml", False),
        ("text/html", False),
        ("application/pdf", False),
        ("application/octet-stream", False),
        ("text/javascript", False),
    ],
)
def test_inline_only_for_safe_types(media_type: str, inline: bool) -> None:
    assert is_inline(media_type) is inline


def test_content_disposition_rfc6266() -> None:
    assert content_disposition("inline", "a.png") == 'inline; filename="a.png"'
    value = content_disposition("attachment", 'très "cool";.pdf')
    assert value.startswith('attachment; filename="tr_s _cool__.pdf"')
    assert value.endswith("filename*=UTF-8''tr%C3%A8s%20%22cool%22%3B.pdf")


def test_cors_default_is_wildcard_without_credentials() -> None:
    headers = dict(cors_headers(HttpSettings(), "https://a.example"))
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers


def test_cors_listed_origins_are_echoed() -> None:
    settings = HttpSettings(cors_origins=("https://a.example",), cors_credentials=True)
    headers = dict(cors_headers(settings, "https://a.example"))
    assert headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Vary"] == "Origin"
    other = dict(cors_headers(settings, "https://evil.example"))
    assert "Access-Control-Allow-Origin" not in other


def test_cors_wildcard_with_credentials_echoes_the_origin() -> None:
    settings = HttpSettings(cors_credentials=True)
    headers = dict(cors_headers(settings, "https://b.example"))
    assert headers["Access-Control-Allow-Origin"] == "https://b.example"


def test_cors_disabled() -> None:
    assert cors_headers(HttpSettings(cors_enabled=False), "https://a.example") == []
    assert preflight_headers(HttpSettings(cors_enabled=False), "https://a.example") == []


def test_preflight_lists_methods_headers_and_max_age() -> None:
    settings = HttpSettings(cors_methods=("GET", "PUT"), cors_headers=("Authorization",))
    headers = dict(preflight_headers(settings, "https://a.example"))
    assert headers["Access-Control-Allow-Methods"] == "GET, PUT"
    assert headers["Access-Control-Allow-Headers"] == "Authorization"
    assert headers["Access-Control-Max-Age"] == "86400"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", [(0, 9)]),
        ("bytes=5-", [(5, 99)]),
        ("bytes=-10", [(90, 99)]),
        ("bytes=-1000", [(0, 99)]),
        ("bytes=90-1000", [(90, 99)]),
        ("BYTES = 1-2", [(1, 2)]),
        ("bytes=0-0,5-6", [(0, 0), (5, 6)]),
        ("bytes=0-0, 200-300, 98-", [(0, 0), (98, 99)]),  # the unsatisfiable one left out
        ("bytes=100-", []),  # well-formed, unsatisfiable: 416
        ("bytes=-0", []),
        ("bytes=9-3", None),  # malformed: the whole file
        ("bytes=", None),
        ("bytes=a-b", None),
        ("bytes=\u0661-\u0662", None),  # digits, but not ASCII ones
        ("items=0-1", None),
        ("bytes", None),
    ],
)
def test_parse_ranges(header: str, expected: list[tuple[int, int]] | None) -> None:
    assert parse_ranges(header, 100) == expected


def test_no_range_of_an_empty_file_is_satisfiable() -> None:
    assert parse_ranges("bytes=0-1", 0) == []
    assert parse_ranges("bytes=-3", 0) == []


def test_date_header_is_now_to_the_second() -> None:
    from twisted.web.http import datetimeToString

    from hmacfs.core.headers import http_date_now

    before = datetimeToString(int(time.time()))
    value = http_date_now()
    after = datetimeToString(int(time.time()))
    assert value in (before, after)
    assert http_date_now() in (value, after, datetimeToString(int(time.time())))


class _PlainTransport:
    """The parts of a Twisted TCP transport that `DirectWrites` looks at, over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self._writeDisconnecting = False
        self._writeDisconnected = False
        self.dataBuffer = b""
        self._tempDataBuffer: list[bytes] = []
        self.producer: object = None
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with ours, peer:
        yield ours, peer


def test_write_now_sends_at_once_on_an_idle_plain_connection(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    transport = _PlainTransport(ours)
    write_now(transport, b"HTTP/1.1 200 OK\r\n\r\nbody", channel=None)
    assert peer.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nbody"
    assert transport.written == []


@pytest.mark.parametrize(
    "state",
    ["queued", "temp queued", "other producer", "closing", "half closing", "half closed"],
)
def test_write_now_leaves_to_twisted_what_must_keep_its_order(
    socket_pair: tuple[socket.socket, socket.socket], state: str
) -> None:
    ours, peer = socket_pair
    transport = _PlainTransport(ours)
    if state == "queued":
        transport.dataBuffer = b"earlier"
    elif state == "temp queued":
        transport._tempDataBuffer.append(b"earlier")
    elif state == "other producer":
        transport.producer = object()
    elif state == "closing":
        transport.disconnecting = True
    elif state == "half closing":
        transport._writeDisconnecting = True
    else:
        transport._writeDisconnected = True
    write_now(transport, b"answer", channel=None)
    assert transport.written == [b"answer"]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_direct_writes_stand_in_for_plain_transports_only(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = socket_pair
    transport = _PlainTransport(ours)
    transport.producer = channel = object()  # (a channel registers itself as the producer)
    transport.startWriting = transport.registerProducer = lambda *_: None  # type: ignore[attr-defined]
    writes = DirectWrites.install(transport, channel)
    assert writes is not None
    writes.remove()
    assert "write" not in vars(transport) or transport.write != writes.write
    directlyProvides(transport, ISSLTransport)
    assert DirectWrites.install(transport, channel) is None


def test_write_now_queues_what_the_socket_does_not_take(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    transport = _PlainTransport(ours)
    data = bytes(range(256)) * 40_000  # far more than a socket buffer holds
    write_now(transport, data, channel=None)
    assert len(transport.written) == 1
    taken = len(data) - len(transport.written[0])
    assert 0 < taken < len(data)
    got = b""
    peer.settimeout(5)
    while len(got) < taken:
        got += peer.recv(1 << 20)
    assert got + transport.written[0] == data


class _TlsWrapper:
    """The parts of Twisted's TLS wrapper `DirectWrites` and `send_answer` look at."""

    def __init__(self, inner: _PlainTransport, *, gathering: bool) -> None:
        directlyProvides(self, ISSLTransport)
        self.transport = inner
        self._tlsConnection = object()
        self.disconnecting = False
        self.calls: list[tuple[str, bytes]] = []
        if gathering:
            self._aggregator = type("Aggregator", (), {"_buffer": []})()

    def _flushSendBIO(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def _write(self, data: bytes) -> None:
        self.calls.append(("_write", data))


def test_direct_writes_stand_in_for_the_socket_transport_under_tls(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = socket_pair
    inner = _PlainTransport(ours)
    inner.producer = membrane = object()  # (the wrapper's, for the channel)
    inner.startWriting = inner.registerProducer = lambda *_: None  # type: ignore[attr-defined]
    writes = DirectWrites.install(_TlsWrapper(inner, gathering=True), channel=object())
    assert writes is not None and writes.transport is inner
    inner.write(b"record")  # what the wrapper writes, a TLS record at a time
    assert peer.recv(100) == b"record"
    inner.producer = object()  # (a body producer took over: behind it nothing is written)
    inner.write(b"later")
    assert inner.written == [b"later"]
    writes.remove()
    inner.producer = membrane
    inner.write(b"given back")
    assert inner.written == [b"later", b"given back"]


@pytest.mark.parametrize(
    ("gathering", "waiting", "closing", "expected"),
    [
        (True, [], False, "_write"),  # nothing to keep order with: encrypted now
        (True, [b"earlier"], False, "write"),  # behind what waits to be gathered
        (True, [], True, "write"),  # closing: as Twisted decides
        (False, [], False, "write"),  # a wrapper that gathers nothing (Twisted 22.4)
    ],
)
def test_send_answer_encrypts_at_once_only_when_nothing_waits(
    socket_pair: tuple[socket.socket, socket.socket],
    gathering: bool,
    waiting: list[bytes],
    closing: bool,
    expected: str,
) -> None:
    wrapper = _TlsWrapper(_PlainTransport(socket_pair[0]), gathering=gathering)
    if gathering:
        wrapper._aggregator._buffer = waiting  # type: ignore[attr-defined]
    wrapper.disconnecting = closing
    send_answer(wrapper, b"answer")
    assert wrapper.calls == [(expected, b"answer")]


def test_send_answer_on_a_plain_transport_is_its_write(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    transport = _PlainTransport(socket_pair[0])
    send_answer(transport, b"answer")
    assert transport.written == [b"answer"]
