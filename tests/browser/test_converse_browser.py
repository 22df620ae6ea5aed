"""Converse.js, a browser XMPP client, in headless Chromium: uploads through real Prosody to
hmacfs, with the CORS a browser really does.

User alice logs in over WebSocket, opens a chat with bob and sends two files through the chat
toolbar's upload button: 200 KB of random bytes and a small PNG, both with a space and a
non-ASCII letter in their names. Converse asks Prosody for a slot, PUTs the file to hmacfs on
another origin (a preflight OPTIONS first, since a PUT with a Content-Type is never a simple
request) and posts the GET URL in the chat. The page then fetches every URL with `fetch()`, a
CORS GET, and the bytes must be the ones sent.

Both of Prosody's ways of handing out slots for an external server: `mod_http_upload_external`
with protocol v2 (`?v2=` in the PUT URL) and `mod_http_file_share` in external mode (a JWT in
the slot's `Authorization` header, which Converse sends with the PUT). When Prosody signs with
another secret than hmacfs's, the PUT must get a 403 and Converse must show an error.

hmacfs runs with its default [http] settings: what a browser gets from a server whose admin
never touched CORS. The driver is converse_upload.mjs (Converse.js and playwright-core pinned
by package-lock.json, installed by ./dev.sh test with `npm ci`).
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import subprocess
import urllib.parse
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import MODES, PASSWORD, RIGHT, WRONG, Setup

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HERE = Path(__file__).parent
DRIVER = HERE / "converse_upload.mjs"
#: Per step (login, each upload); the driver process gets a bound of its own on top.
STEP_TIMEOUT = 20
DRIVER_TIMEOUT = 120
BINARY_NAME = "données brutes.bin"
IMAGE_NAME = "point ü.png"
BINARY_SIZE = 200 * 1024
#: hmacfs's answer to a PUT signed with another secret: a bad MAC is 403, a JWT that does not
#: verify is 401 (a Bearer token refused, as Prosody's own mod_http_file_share answers it).
REFUSED = {"v2": 403, "jwt": 401}


def png(width: int = 3, height: int = 2) -> bytes:
    """A small valid RGB PNG, made here so that no image file has to be committed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    # Every row starts with its filter byte (0: none).
    raw = b"".join(
        b"\0" + b"".join(bytes([40 * x, 80 * y, 200]) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("upload-files")
    binary = directory / BINARY_NAME
    binary.write_bytes(random.Random(363).randbytes(BINARY_SIZE))
    image = directory / IMAGE_NAME
    image.write_bytes(png())
    return [binary, image]


def run_driver(node: str, setup: Setup, mode: str, label: str, files: Sequence[Path],
               tmp_path: Path) -> dict[str, Any]:
    chat = setup.chats[mode, label]
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    spec = {
        "page_url": setup.page_url,
        "websocket_url": setup.websocket_url,
        "jid": chat.sender.jid,
        "password": PASSWORD,
        "peer": chat.peer.jid,
        "upload_base": setup.upload_base,
        "files": [str(path) for path in files],
        "user_data_dir": str(profile),
        "screenshot": str(tmp_path / "failure.png"),
        "timeout": STEP_TIMEOUT,
    }
    try:
        completed = subprocess.run(
            [node, str(DRIVER)],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT,
            cwd=HERE,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the driver did not finish in {DRIVER_TIMEOUT} s\n{setup.logs()}\n{e}")
    lines = completed.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"the driver exited with {completed.returncode} and no result:\n"
            f"{completed.stdout}\n{completed.stderr}\n{setup.logs()}"
        )
    (tmp_path / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    assert result["ok"], story(result, setup, f"the driver failed: {result['error']}")
    return result


def network_lines(result: dict[str, Any], upload_base: str) -> list[str]:
    """The browser's network log, one request a line (data: URLs and Converse's own files
    left out), with the CORS headers of every request to hmacfs on a line of its own."""
    out = []
    for entry in result["network"]:
        url = entry["url"] or ""
        if url.startswith("data:") or "/dist/" in url:
            continue
        outcome = entry["status"] if entry["status"] is not None else "-"
        if entry["error"]:
            outcome = f"{outcome} {entry['error']}"
        if entry["cors_error"]:
            outcome = f"{outcome} (CORS: {entry['cors_error']})"
        out.append(f"{entry['method']:<7} {outcome!s:<8} {entry['type'] or '':<10} {url}")
        if url.startswith(upload_base):
            out.append(f"{'':<27} sent {entry['request_cors']}, got {entry['response_cors']}")
    return out


def story(result: dict[str, Any], setup: Setup, headline: str) -> str:
    """A failure message: what was asked, what the browser did, what the servers logged."""
    uploads = "\n".join(
        f"  {u['file']}: {u['outcome']} url={u['url']} chat_error={u['chat_error']!r} "
        f"fetch={u['fetch']}"
        for u in result["uploads"]
    )
    return "\n".join(
        [
            headline,
            f"connected: {result['connected']}; screenshot: {result['screenshot']}",
            f"uploads:\n{uploads or '  (none)'}",
            "--- browser network log ---",
            *network_lines(result, setup.upload_base),
            "--- page console (end) ---",
            *result["console"][-25:],
            setup.logs(),
        ]
    )


def requests_to(
    result: dict[str, Any], setup: Setup, path: str
) -> list[tuple[str, int | None, str | None]]:
    """(method, status, error) of every request to hmacfs for `path` (decoded: the GET URL may
    spell it otherwise than the PUT URL), in the order the browser reported them."""
    base = urllib.parse.urlsplit(setup.upload_base)
    found = []
    for entry in result["network"]:
        url = urllib.parse.urlsplit(entry["url"] or "")
        if url.netloc == base.netloc and urllib.parse.unquote(url.path) == path:
            found.append((entry["method"], entry["status"], entry["error"]))
    return found


def puts(result: dict[str, Any], setup: Setup) -> list[dict[str, Any]]:
    base = urllib.parse.urlsplit(setup.upload_base)
    return [
        entry
        for entry in result["network"]
        if entry["method"] == "PUT" and urllib.parse.urlsplit(entry["url"]).netloc == base.netloc
    ]


@pytest.mark.parametrize("mode", MODES)
def test_upload_and_fetch_back(
    browser_prerequisites: str, setup: Setup, files: list[Path], tmp_path: Path, mode: str
) -> None:
    result = run_driver(browser_prerequisites, setup, mode, RIGHT, files, tmp_path)
    assert len(result["uploads"]) == len(files), story(result, setup, "not every file was sent")
    for path, upload in zip(files, result["uploads"], strict=True):
        content = path.read_bytes()
        why = story(result, setup, f"{path.name} ({mode}):")
        assert upload["outcome"] == "message", why
        get_path = urllib.parse.unquote(urllib.parse.urlsplit(upload["url"]).path)
        assert get_path.endswith("/" + path.name), why
        fetched = upload["fetch"]
        assert fetched["error"] is None and fetched["status"] == 200, why
        assert fetched["size"] == len(content), why
        assert fetched["sha256"] == hashlib.sha256(content).hexdigest(), why
        # What the browser did for this file, as the server's requests: the preflight, the
        # upload, and the page's CORS GET (an image is also loaded by Converse's <img>).
        # (The DevTools protocol reports a preflight after the request it is for.)
        requests = requests_to(result, setup, get_path)
        preflights = [status for method, status, _ in requests if method == "OPTIONS"]
        assert len(preflights) == 1 and preflights[0] in (200, 204), why
        assert [s for m, s, _ in requests if m == "PUT"] == [201], why
        assert ("GET", 200, None) in requests, why
        if path.suffix == ".png":
            assert upload["image"] == {"width": 3, "height": 2}, why
    # Each mode's signature is where it should be: v2 in the URL, the JWT in a header that
    # the preflight asked for.
    sent = puts(result, setup)
    asked = [e for e in result["network"] if e["method"] == "OPTIONS"]
    why = story(result, setup, f"where the {mode} signature went:")
    assert len(sent) == len(files), why
    if mode == "v2":
        assert all("?v2=" in e["url"] for e in sent), why
        assert all("authorization" not in e["request_cors"] for e in sent), why
    else:
        assert all("?" not in e["url"] for e in sent), why
        assert all(e["request_cors"].get("authorization") == "Bearer …" for e in sent), why
        assert all(
            "authorization" in e["request_cors"]["access-control-request-headers"]
            for e in asked
        ), why


@pytest.mark.parametrize("mode", MODES)
def test_wrong_secret_is_refused(
    browser_prerequisites: str, setup: Setup, files: list[Path], tmp_path: Path, mode: str
) -> None:
    """Prosody signs with a secret hmacfs does not know: the preflight passes, the PUT is
    refused with an answer the page can read (CORS headers on the error too), no message with
    a URL is posted. Converse 14 shows no error for it: the file's progress bar stays."""
    result = run_driver(browser_prerequisites, setup, mode, WRONG, files[:1], tmp_path)
    why = story(result, setup, f"wrong secret ({mode}):")
    [upload] = result["uploads"]
    assert upload["outcome"] == "error", why
    [put] = puts(result, setup)
    put_path = urllib.parse.unquote(urllib.parse.urlsplit(put["url"]).path)
    requests = requests_to(result, setup, put_path)
    preflights = [status for method, status, _ in requests if method == "OPTIONS"]
    assert len(preflights) == 1 and preflights[0] in (200, 204), why
    # No GET either: Converse posts no URL for a failed upload.
    assert [r for r in requests if r[0] != "OPTIONS"] == [("PUT", REFUSED[mode], None)], why
    assert put["cors_error"] is None, why
