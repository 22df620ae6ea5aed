"""Client-chosen text never reaches the log raw: the escaping itself, forwarded addresses
that are not addresses, the site's log lines, and the line observer's last line of defence."""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from hmacfs.core.printable import printable, printable_line
from hmacfs.http.fast import FastPaths
from hmacfs.http.proxies import TrustedProxies, parse_hop
from hmacfs.http.site import UploadSite
from hmacfs.process.logs import LineObserver
from hmacfs.storage.local import LocalStorage
from tests.helpers.config import make_config
from tests.helpers.signing import mac_v1

FORBIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
_ESCAPE = re.compile(r"\\(?:\\|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def unescape(text: str) -> str:
    """The inverse of `printable`: proof that the escaping loses nothing."""

    def one(m: re.Match[str]) -> str:
        return "\\" if m[0] == "\\\\" else chr(int(m[1] or m[2] or m[3], 16))

    return _ESCAPE.sub(one, text)


def clean(text: str) -> bool:
    return all(c.isprintable() and unicodedata.category(c) not in FORBIDDEN for c in text)


# --- printable ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("a1b2/photo.jpg", "a1b2/photo.jpg"),
        ("caf\u00e9/\u65e5\u672c.txt", "caf\u00e9/\u65e5\u672c.txt"),  # printable Unicode stays
        ("with space", "with space"),
        ("ev\x1b[31mil", "ev\\x1b[31mil"),
        ("a\x7fb", "a\\x7fb"),
        ("a\x85b", "a\\x85b"),  # NEL, a C1 control
        ("a\u2028b", "a\\u2028b"),  # LINE SEPARATOR
        ("a\u2029b", "a\\u2029b"),  # PARAGRAPH SEPARATOR
        ("a\u202eb", "a\\u202eb"),  # RIGHT-TO-LEFT OVERRIDE (Cf)
        ("a\u00adb", "a\\xadb"),  # SOFT HYPHEN (Cf)
        ("a\u00a0b", "a\\xa0b"),  # NO-BREAK SPACE
        ("a\r\nb\tc\x00", "a\\x0d\\x0ab\\x09c\\x00"),
        ("a\U000e0001b", "a\\U000e0001b"),  # LANGUAGE TAG (Cf), beyond the BMP
        ("a\udcffb", "a\\udcffb"),  # a lone surrogate (surrogateescape)
        ("back\\slash", "back\\\\slash"),
        ("a\\x85b", "a\\\\x85b"),  # not to be confused with "a\x85b"
        ("", ""),
    ],
)
def test_printable(raw: str, logged: str) -> None:
    assert printable(raw) == logged
    assert unescape(logged) == raw


def test_printable_returns_plain_text_itself() -> None:
    text = "a1b2/some-file_name.tar.gz"
    assert printable(text) is text


@given(st.text())
def test_printable_output_is_clean_and_reversible(text: str) -> None:
    logged = printable(text)
    assert clean(logged)
    assert unescape(logged) == text


@given(st.text(), st.text())
def test_printable_is_unambiguous(a: str, b: str) -> None:
    if a != b:
        assert printable(a) != printable(b)


@given(st.text(alphabet=st.characters(codec="ascii")))
def test_printable_ascii_is_ascii(text: str) -> None:
    assert printable(text).isascii()


@given(st.text())
def test_printable_line_is_clean_and_keeps_backslashes(text: str) -> None:
    logged = printable_line(text)
    assert clean(logged)
    assert logged.count("\\") >= text.count("\\")
    if text.isprintable():
        assert logged is text


# --- forwarded addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hop", "address"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:5678", "1.2.3.4"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:1234", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("ev\x1b[31mil", None),
        ("unknown", None),
        ("_hidden", None),
        ("host.example", None),
        ("1.2.3.4:", None),
        ("1.2.3.4:port", None),
        ("1.2.3.4:5678:9", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("[2001:db8::1]:", None),
        ("[1.2.3.4]junk", None),
        ("fe80::1%\x1b[31m", None),
        ("fe80::1%", None),
        ("1.2.3.4\x85", None),
        ("", None),
    ],
)
def test_parse_hop(hop: str, address: str | None) -> None:
    ip = parse_hop(hop)
    assert (str(ip) if ip is not None else None) == address


def forwarded_client(peer: str | None, *values: str, trusted: tuple[str, ...] = ()) -> str:
    proxies = TrustedProxies(trusted or ("127.0.0.1", "10.0.0.0/8", "::1"))
    return proxies.client_address(peer, [v.encode("latin-1") for v in values])


@pytest.mark.parametrize(
    ("values", "client"),
    [
        # The finding: the nearest hop is not an address; the peer is the last one we trust.
        (("1.2.3.4, ev\x1b[31mil",), "127.0.0.1"),
        (("ev\x1b[31mil",), "127.0.0.1"),
        (("unknown",), "127.0.0.1"),
        # Behind a trusted hop, that hop is the last one we trust.
        (("1.2.3.4, junk, 10.0.0.7",), "10.0.0.7"),
        (("1.2.3.4, junk", "10.0.0.7"), "10.0.0.7"),
        # Garbage beyond the client does not matter: the client is found first.
        (("junk\x1b, 1.2.3.4, 10.0.0.7",), "1.2.3.4"),
        # Ports and brackets, as proxies write them, give the bare address.
        (("203.0.113.9:5678",), "203.0.113.9"),
        (("[2001:db8::1]:1234",), "2001:db8::1"),
        (("[2001:db8::1]:1234, [::1]:80",), "2001:db8::1"),
        (("203.0.113.9",), "203.0.113.9"),
        (("203.0.113.9, 10.1.1.1", "10.2.2.2"), "203.0.113.9"),
        # All hops ours: the outermost one.
        (("10.1.1.1, 10.2.2.2",), "10.1.1.1"),
        ((), "127.0.0.1"),
        (("",), "127.0.0.1"),
    ],
)
def test_client_behind_trusted_proxies(values: tuple[str, ...], client: str) -> None:
    assert forwarded_client("127.0.0.1", *values) == client


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert forwarded_client("192.0.2.1", "ev\x1b[31mil") == "192.0.2.1"
    assert TrustedProxies(()).client_address("192.0.2.1", [b"1.2.3.4"]) == "192.0.2.1"
    assert forwarded_client(None, "1.2.3.4") == "unix"


@given(st.lists(st.text(alphabet=st.characters(max_codepoint=0xFF)), max_size=4))
def test_client_address_is_the_peer_or_an_address(hops: list[str]) -> None:
    client = forwarded_client("127.0.0.1", ", ".join(hops))
    assert client == "127.0.0.1" or parse_hop(client) is not None
    assert printable(client) == client


# --- the site's log lines ----------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The text of every event logged meanwhile (as formatted, before the observer)."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("hmacfs"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


def site_for(storage_dir: Path) -> UploadSite:
    clock = Clock()
    clock.advance(1_700_000_000)
    config = make_config(storage_dir, trusted_proxies=("127.0.0.1",), log_level="info")

    def run_blocking(f: Any, *args: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(f, *args)

    storage = LocalStorage(storage_dir, fsync=False, clock=clock.seconds)
    return UploadSite(config, storage, clock, run_blocking=run_blocking, fast=FastPaths(False))


def send(site: UploadSite, *lines: str, body: bytes = b"") -> bytes:
    peer = IPv4Address("TCP", "127.0.0.1", 4321)
    channel = site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    channel.makeConnection(transport)
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body)
    value: bytes = transport.value()
    channel.connectionLost(None)
    return value


def test_site_escapes_what_it_logs(storage_dir: Path, logged: list[str]) -> None:
    site = site_for(storage_dir)
    xff = "X-Forwarded-For: 1.2.3.4, ev\x1b[31mil"
    for path in ("a%C2%85b", "a%E2%80%A8b", "a%5Cx85b"):
        assert send(site, f"GET /upload/{path} HTTP/1.1", "Host: h", xff).startswith(
            b"HTTP/1.1 404"
        )
    name = "a1b2/x\u2029y.txt"
    encoded = "a1b2/x%E2%80%A9y.txt"
    put = f"PUT /upload/{encoded}?v={mac_v1(name, 1)} HTTP/1.1"
    assert send(site, put, "Host: h", "Content-Length: 1", xff, body=b"z").startswith(
        b"HTTP/1.1 201"
    )
    assert (storage_dir / name).read_bytes() == b"z"  # stored under its real name
    refused = f"PUT /upload/{encoded}?v={'0' * 64} HTTP/1.1"
    assert send(site, refused, "Host: h", "Content-Length: 1", xff).startswith(b"HTTP/1.1 403")
    text = "\n".join(logged)
    assert all(clean(line) for line in logged), text
    assert "127.0.0.1 GET a\\x85b -> 404" in text
    assert "127.0.0.1 GET a\\u2028b -> 404" in text
    assert "127.0.0.1 GET a\\\\x85b -> 404" in text  # a backslash is not an escape
    assert "127.0.0.1 PUT a1b2/x\\u2029y.txt -> 201" in text
    assert "127.0.0.1 PUT a1b2/x\\u2029y.txt -> 403 refused" in text
    assert "1.2.3.4" not in text and "31mil" not in text


# --- the line observer -------------------------------------------------------------------------


@pytest.mark.parametrize("journal", [False, True])
def test_observer_escapes_what_reaches_it_raw(journal: bool) -> None:
    stream = io.StringIO()
    observer = LineObserver(stream, journal=journal)
    observer(
        {
            "log_format": "{a} and {b}",
            "a": "ev\x1b[31mil\r\x85",
            "b": "x\u2028y\\z",
            "log_level": LogLevel.info,
            "log_namespace": "test",
            "log_time": 0.0,
        }
    )
    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "ev\\x1b[31mil\\x0d\\x85 and x\\u2028y\\z\n" in out
    assert clean(out.rstrip("\n"))
