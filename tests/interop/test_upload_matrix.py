"""XEP-0363 through real XMPP servers and clients into hmacfs: every mode x client x file.

Each cell runs one client as a subprocess: it logs in to the XMPP server, discovers the
upload component, asks for a slot, and PUTs the file to the URL the XMPP server signed for
hmacfs. The test then downloads the GET URL with urllib and compares the bytes, or checks
that the refusal happened at the expected step (see `matrix.py` for the size limits).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Server
from tests.interop.matrix import (
    CLIENTS,
    FILES,
    MODE_DESCRIPTIONS,
    MODES,
    OUR_LIMIT,
    XMPP_LIMIT,
    Expect,
    FileCase,
    expected,
)
from tests.interop.xmpp_servers import Account, Certificate

pytestmark = [pytest.mark.interop, pytest.mark.slow]

CLIENTS_DIR = Path(__file__).parent / "clients"
CLIENT_TIMEOUT = 90.0
DOWNLOAD_TIMEOUT = 60.0


def run_client(client: str, account: Account, path: Path, ca_file: Path) -> dict[str, Any]:
    """Run one upload client and return its JSON outcome (see clients/slixmpp_upload.py).

    slixmpp runs in this interpreter's environment (the project venv, slixmpp from PyPI);
    nbxmpp with Debian's python, as Gajim does.
    """
    python = sys.executable if client == "slixmpp" else "/usr/bin/python3"
    command = [
        python, str(CLIENTS_DIR / f"{client}_upload.py"),
        "--jid", account.jid, "--password", account.password,
        "--host", account.host, "--port", str(account.port),
        "--ca-file", str(ca_file), "--timeout", "60",
        str(path),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(
            f"{client} client exited with {result.returncode} without an outcome:\n"
            + result.stderr[-3000:]
        )
    outcome: dict[str, Any] = json.loads(lines[-1])
    outcome["stderr"] = result.stderr[-2000:]
    return outcome


def download(url: str) -> tuple[int, str, bytes]:
    """GET `url` as an ordinary HTTP client would; (status, media type, body)."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as e:
        return e.code, "", e.read()


def decoded_path(url: str) -> str:
    """The URL's path, percent-decoded once: PUT and GET URLs may spell it differently."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)


def redact(url: str | None) -> str:
    """A slot URL without its MAC, for messages."""
    if url is None:
        return "-"
    parts = urllib.parse.urlsplit(url)
    query = "&".join(f"{pair.split('=', 1)[0]}=…" for pair in parts.query.split("&") if pair)
    return urllib.parse.urlunsplit(parts._replace(query=query))


def describe(outcome: dict[str, Any]) -> str:
    """One line saying where the client stopped and why."""
    text = f"ended at {outcome['step']}"
    if outcome.get("status") is not None:
        text += f", HTTP {outcome['status']}"
    if outcome.get("error"):
        text += f": {outcome['error']}"
    return text


def check_cell(mode: str, file_case: FileCase, outcome: dict[str, Any]) -> tuple[bool, str]:
    """Compare one client run with the expected outcome; (passed, reason for the table)."""
    expect = expected(mode, file_case)
    if expect is Expect.CLIENT_REFUSED:
        refused = outcome["step"] == "preflight" and outcome["put_url"] is None
        announced = outcome["max_file_size"] == XMPP_LIMIT
        if refused and announced:
            return True, (
                f"client refused before the slot request ({file_case.size} > announced "
                f"max-file-size {outcome['max_file_size']})"
            )
        return False, f"expected the client to refuse before the slot; {describe(outcome)}"
    if expect is Expect.SLOT_REFUSED:
        if outcome["step"] == "slot" and outcome["condition"]:
            return True, f"slot refused: {outcome['error']}"
        return False, f"expected an XMPP error for the slot request; {describe(outcome)}"
    if expect is Expect.PUT_TOO_LARGE:
        if outcome["step"] == "put" and outcome["status"] == 413:
            status, _, _ = download(outcome["get_url"])
            if status == 404:
                return True, f"slot granted, PUT 413 (hmacfs limit {OUR_LIMIT}), nothing stored"
            return False, f"PUT got 413 but GET of the slot's URL answered {status}"
        return False, f"expected hmacfs's 413 at the PUT; {describe(outcome)}"
    # Expect.STORED
    if outcome["step"] != "done":
        return False, f"expected the upload to succeed; {describe(outcome)}"
    status, content_type, body = download(outcome["get_url"])
    if status != 200:
        return False, f"PUT accepted but GET {redact(outcome['get_url'])} answered {status}"
    if body != file_case.content():
        return False, f"GET returned {len(body)} bytes that differ from the {file_case.size} sent"
    if content_type != outcome["content_type"]:
        return False, f"GET served {content_type}, the client uploaded {outcome['content_type']}"
    notes = []
    stored_name = decoded_path(outcome["get_url"]).rsplit("/", 1)[-1]
    if stored_name != file_case.name:
        # ejabberd replaces everything but letters, digits, "_", "." and "-" with "_".
        notes.append(f"name became {stored_name!r}")
    if decoded_path(outcome["put_url"]) != decoded_path(outcome["get_url"]):
        notes.append("GET path differs from PUT path")
    return True, f"PUT ok, GET 200: same {file_case.size} bytes, {content_type}" + "".join(
        f"; {note}" for note in notes
    )


@pytest.mark.parametrize("file_case", FILES, ids=[f.key for f in FILES])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("mode", MODES)
def test_upload(
    mode: str,
    client: str,
    file_case: FileCase,
    account: Account,
    upload_files: dict[str, Path],
    upload_server: Server,
    certificate: Certificate,
    record_reason: Callable[[str], None],
) -> None:
    log_start = len(upload_server.log)
    outcome = run_client(client, account, upload_files[file_case.key], certificate.cert)
    passed, reason = check_cell(mode, file_case, outcome)
    record_reason(reason)
    assert passed, (
        f"{MODE_DESCRIPTIONS[mode]}, {outcome['client']}, {file_case.note}:\n"
        f"  {reason}\n"
        f"  expected: {expected(mode, file_case).value}\n"
        f"  slot: PUT {redact(outcome['put_url'])} headers {outcome['put_header_names']}\n"
        f"        GET {redact(outcome['get_url'])}\n"
        f"hmacfs log during this cell:\n  "
        + "\n  ".join(upload_server.log[log_start:][-20:])
        + f"\nclient stderr:\n{outcome['stderr']}"
    )
