"""GETs and HEADs the channel answers itself (`UploadChannel.answer_quickly`).

The quick answer must be the full path's answer, header for header; everything it does not
answer exactly like that must be left untouched (nothing written) for the full path.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

import pytest

from hmacfs.core.settings import HttpSettings
from hmacfs.http.fast.quick import QUICK_MAX_SIZE, answer_quickly
from hmacfs.storage.held import HELD_SETTLED
from tests.helpers.config import make_config
from tests.helpers.signing import mac_v2
from tests.protocol.test_upload_protocol import Harness, pump, put_head, status_of

#: A header that sends a request down the full path without changing its answer.
FULL_PATH = "If-None-Match: \"no-such-tag\""


def head(method: str, target: str, *extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: up.example", "User-Agent: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upload(harness: Harness, target: str, body: bytes, content_type: str) -> None:
    """PUT `body` to `target` (percent-encoded, below the upload prefix)."""
    channel, transport = harness.connect()
    query = f"v2={mac_v2(unquote(target), len(body), content_type)}"
    channel.dataReceived(put_head(target, len(body), query, f"Content-Type: {content_type}") + body)
    assert status_of(transport.value()) == 201


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    top, _, body = response.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    headers.pop("date")
    return int(lines[0].split()[1]), headers, body


def quick(harness: Harness, data: bytes) -> bytes:
    channel, transport = harness.connect()
    assert answer_quickly(channel, data), "the quick path declined"
    assert channel.requests == []
    return transport.value()


def full(harness: Harness, data: bytes) -> bytes:
    channel, transport = harness.connect()
    channel.dataReceived(data)
    return pump(channel, transport)


FILES = {
    "img1/photo.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png"),
    "svg1/drawing.svg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    "txt1/tr%C3%A8s%20%C3%A9t%C3%A9.txt": ("été\n".encode(), "text/plain; charset=utf-8"),
    "bin1/empty.bin": (b"", "application/octet-stream"),
    "big1/edge.bin": (b"e" * QUICK_MAX_SIZE, "application/octet-stream"),
}


@pytest.fixture
def stocked(storage_dir: Path) -> Harness:
    harness = Harness(make_config(storage_dir, max_upload_size=10 * QUICK_MAX_SIZE))
    for target, (body, content_type) in FILES.items():
        upload(harness, target, body, content_type)
    # A file another server stored: no metadata, the type comes from its name.
    (harness.storage.root / "other").mkdir()
    (harness.storage.root / "other" / "notes.txt").write_bytes(b"plain\n")
    return harness


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("target", [*FILES, "other/notes.txt"])
@pytest.mark.parametrize(
    "extra",
    [(), ("Origin: https://web.example",), ("Connection: keep-alive", "Accept: */*")],
)
def test_quick_answer_is_the_full_answer(
    stocked: Harness, method: str, target: str, extra: tuple[str, ...]
) -> None:
    url = "/upload/" + target
    status, headers, body = parse(quick(stocked, head(method, url, *extra)))
    slow = full(stocked, head(method, url, *extra, FULL_PATH))
    full_status, full_headers, full_body = parse(slow)
    assert (status, headers) == (full_status, full_headers)
    assert body == full_body
    assert status == 200
    assert int(headers["content-length"]) == len(FILES.get(target, (b"plain\n",))[0])
    if method == "GET":
        assert len(body) == int(headers["content-length"])
    else:
        assert body == b""


def test_quick_answer_follows_the_cors_settings(storage_dir: Path) -> None:
    config = make_config(storage_dir)
    http_settings = HttpSettings(cors_origins=("https://web.example",), cors_credentials=True)
    harness = Harness(replace(config, http=http_settings))
    upload(harness, "c1/a.txt", b"a", "text/plain")
    for origin in ("Origin: https://web.example", "Origin: https://evil.example"):
        data = head("GET", "/upload/c1/a.txt", origin)
        _, headers, _ = parse(quick(harness, data))
        slow = full(harness, head("GET", "/upload/c1/a.txt", origin, FULL_PATH))
        assert parse(slow)[1] == headers
        assert headers["vary"] == "Origin"
    assert headers.get("access-control-allow-origin") is None  # the last one was not allowed


def test_quick_answers_follow_a_reload_of_the_cors_settings(stocked: Harness) -> None:
    """An answer worked out once is not given again under other [http] settings."""
    data = head("GET", "/upload/img1/photo.png", "Origin: https://web.example")
    for _ in range(2):
        assert parse(quick(stocked, data))[1]["access-control-allow-origin"] == "*"
    only = HttpSettings(cors_origins=("https://app.example",))
    stocked.site.reconfigure(replace(stocked.config, http=only))
    _, headers, _ = parse(quick(stocked, data))
    assert "access-control-allow-origin" not in headers
    slow = full(stocked, head("GET", "/upload/img1/photo.png", "Origin: https://web.example",
                              FULL_PATH))
    assert headers == parse(slow)[1]
    stocked.site.reconfigure(replace(stocked.config, http=HttpSettings(cors_enabled=False)))
    _, headers, _ = parse(quick(stocked, head("GET", "/upload/img1/photo.png")))
    assert not [name for name in headers if name.startswith("access-control-")]


@pytest.mark.parametrize("held", [True, False], ids=["held", "looked-up"])
def test_a_file_stored_anew_at_a_path_gets_its_own_quick_answer(
    stocked: Harness, storage_dir: Path, held: bool
) -> None:
    """A file removed and stored again at the same path (another type, another size) is
    answered as itself, whether the first one was held open or looked up each time."""
    files = stocked.storage.held
    if held:
        files.wall = lambda: time.time() + HELD_SETTLED  # (as if stored a while ago)
    else:
        files.capacity = 0
    data = head("GET", "/upload/txt1/tr%C3%A8s%20%C3%A9t%C3%A9.txt")
    for _ in range(2):
        _, headers, body = parse(quick(stocked, data))
        assert headers["content-type"] == "text/plain; charset=utf-8"
    assert len(files) == (1 if held else 0)
    assert stocked.storage.delete("txt1/très été.txt")
    upload(stocked, "txt1/tr%C3%A8s%20%C3%A9t%C3%A9.txt", b"{}", "application/json")
    status, headers, body = parse(quick(stocked, data))
    assert (status, body) == (200, b"{}")
    assert headers["content-type"] == "application/json"
    assert headers == parse(full(stocked, head("GET", data.split()[1].decode(), FULL_PATH)))[1]


@pytest.mark.parametrize(
    "data",
    [
        head("GET", "/upload/img1/photo.png", "Range: bytes=0-1"),
        head("GET", "/upload/img1/photo.png", FULL_PATH),
        head("GET", "/upload/img1/photo.png", "If-Modified-Since: Tue, 01 Jan 2030 00:00:00 GMT"),
        head("GET", "/upload/img1/photo.png", "Content-Length: 0"),
        head("GET", "/upload/img1/photo.png", "Transfer-Encoding: chunked"),
        head("GET", "/upload/img1/photo.png", "Connection: close"),
        head("GET", "/upload/img1/photo.png", "Host: twice.example"),
        head("GET", "/upload/img1/photo.png", "Bad Header: x"),
        head("GET", "/upload/img1/photo.png", "Folded: a", " continued"),
        head("get", "/upload/img1/photo.png"),
        head("PUT", "/upload/img1/photo.png"),
        head("OPTIONS", "/upload/img1/photo.png"),
        b"GET /upload/img1/photo.png HTTP/1.0\r\n\r\n",
        head("GET", "/upload/img1/photo.png") + head("GET", "/upload/img1/photo.png"),
        head("GET", "/upload/img1/photo.png")[:-2],
        head("GET", "/upload/img1/ph\xf6to.png"),
        head("GET", "/upload/img1/nothing-here.png"),
        head("GET", "/upload/img1/%2e%2e/%2e%2e/etc/passwd"),
        head("GET", "/upload/.hmacfs/meta"),
        head("GET", "/elsewhere/img1/photo.png"),
        head("GET", "/upload/"),
        head("GET", "/health"),
    ],
)
def test_what_the_quick_path_leaves_alone(stocked: Harness, data: bytes) -> None:
    channel, transport = stocked.connect()
    assert not answer_quickly(channel, data)
    assert transport.value() == b""
    assert not channel.requests


def test_a_path_asked_for_again_is_taken_as_the_first_time(
    stocked: Harness, storage_dir: Path
) -> None:
    """Request paths decoded before are kept: a refused one is refused again, and one kept
    for one upload prefix means another file under another prefix."""
    for _ in range(2):
        channel, transport = stocked.connect()
        assert not answer_quickly(channel, head("GET", "/upload/img1/%2e%2e/photo.png"))
        assert transport.value() == b""
        channel, transport = stocked.connect()
        assert answer_quickly(channel, head("GET", "/upload/img1/photo.png"))
        assert transport.value().endswith(FILES["img1/photo.png"][0])
    (storage_dir / "root" / "upload" / "img1").mkdir(parents=True)
    (storage_dir / "root" / "upload" / "img1" / "photo.png").write_bytes(b"another file")
    at_root = Harness(make_config(storage_dir / "root", upload_prefix="/"))
    channel, transport = at_root.connect()
    assert answer_quickly(channel, head("GET", "/upload/img1/photo.png"))
    assert transport.value().endswith(b"\r\n\r\nanother file")


def test_files_over_the_quick_size_take_the_full_path(stocked: Harness) -> None:
    upload(stocked, "big2/over.bin", b"o" * (QUICK_MAX_SIZE + 1), "application/octet-stream")
    channel, transport = stocked.connect()
    assert not answer_quickly(channel, head("GET", "/upload/big2/over.bin"))
    assert transport.value() == b""
    # What the quick path found is what the full path answers with, once, for that path only
    # (a changed content type shows which one was used).
    assert channel.looked_up is not None and channel.looked_up[0] == "big2/over.bin"
    marked = replace(channel.looked_up[1], content_type="a/b")
    for path, expected in (("big2/over.bin", b"a/b"), ("other/path", b"application/octet-stream")):
        channel.looked_up = (path, marked)
        transport.clear()
        channel.dataReceived(head("GET", "/upload/big2/over.bin", FULL_PATH))
        response = pump(channel, transport)
        assert status_of(response) == 200 and b"Content-Type: " + expected in response
        assert response.endswith(b"o" * (QUICK_MAX_SIZE + 1))
        assert channel.looked_up is None


def test_symlinked_file_takes_the_full_path_and_leaves_nothing_outside(
    stocked: Harness, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not for you")
    os.symlink(secret, stocked.storage.root / "other" / "link.txt")
    data = head("GET", "/upload/other/link.txt")
    channel, _ = stocked.connect()
    assert not answer_quickly(channel, data)
    assert status_of(full(stocked, data)) == 404


def test_keep_alive_connection_mixes_quick_and_full_answers(stocked: Harness) -> None:
    channel, transport = stocked.connect()
    png = FILES["img1/photo.png"][0]
    channel.dataReceived(head("GET", "/upload/img1/photo.png"))  # quick
    first = transport.value()
    assert status_of(first) == 200 and first.endswith(png)
    transport.clear()
    channel.dataReceived(head("GET", "/upload/img1/photo.png", "Range: bytes=0-3"))  # full
    assert status_of(pump(channel, transport)) == 206
    assert transport.value().endswith(png[:4])
    transport.clear()
    channel.dataReceived(head("HEAD", "/upload/other/notes.txt"))  # quick again
    assert status_of(transport.value()) == 200
    assert not transport.disconnecting


def test_quick_answers_are_counted_and_logged(stocked: Harness) -> None:
    before = stocked.site.metrics.registry.get_sample_value(
        "hmacfs_downloads_total", {"status": "200"}
    ) or 0.0
    quick(stocked, head("GET", "/upload/other/notes.txt"))
    after = stocked.site.metrics.registry.get_sample_value(
        "hmacfs_downloads_total", {"status": "200"}
    )
    assert after == before + 1


def test_no_quick_answer_while_stopping(stocked: Harness) -> None:
    stocked.site.stopping = True
    channel, transport = stocked.connect()
    assert not answer_quickly(channel, head("GET", "/upload/other/notes.txt"))
    channel.dataReceived(head("GET", "/upload/other/notes.txt"))
    assert pump(channel, transport).endswith(b"plain\n")
    assert transport.disconnecting  # the full path makes it the connection's last answer


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "size", [0, 1, 4096, QUICK_MAX_SIZE - 1, QUICK_MAX_SIZE, QUICK_MAX_SIZE + 1, 300_000]
)
@pytest.mark.parametrize("extra", [(), ("Range: bytes=1-",), ("Range: bytes=0-0,2-2",)])
def test_every_size_is_answered_alike_with_the_fast_paths_on_and_off(
    tmp_path: Path, method: str, size: int, extra: tuple[str, ...]
) -> None:
    """The same files on two sites, one with the fast paths and one without: every answer
    (quick, full, ranged) is the same header for header and byte for byte."""
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    answers = []
    for fast in (True, False):
        harness = Harness(make_config(tmp_path / str(fast), max_upload_size=10**6), fast=fast)
        upload(harness, "sz1/f.bin", body, "application/octet-stream")
        os.utime(harness.storage.root / "sz1" / "f.bin", (1_700_000_000, 1_700_000_000))
        harness.storage._meta_cache.clear()
        response = full(harness, head(method, "/upload/sz1/f.bin", *extra))
        answers.append(parse(response))
    (status, headers, got), (plain_status, plain_headers, plain_got) = answers
    if "multipart" in headers.get("content-type", ""):
        boundary = headers["content-type"].split('"')[1].encode()
        plain_boundary = plain_headers["content-type"].split('"')[1].encode()
        plain_got = plain_got.replace(plain_boundary, boundary)
        plain_headers["content-type"] = headers["content-type"]
    assert (status, headers) == (plain_status, plain_headers)
    assert got == plain_got
    if method == "HEAD" or not size:
        assert got == b""
    elif not extra:
        assert status == 200 and got == body
    elif extra == ("Range: bytes=1-",):
        assert (status, got) == ((206, body[1:]) if size > 1 else (416, b""))
