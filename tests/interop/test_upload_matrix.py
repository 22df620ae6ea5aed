"""XEP-0363 through real XMPP servers and clients into hmacfs: mode x scheme x client x file.

Each cell runs one client as a subprocess: it logs in to the XMPP server, discovers the
upload component, asks for a slot, and PUTs the file to the URL the XMPP server signed for
hmacfs, over plain HTTP or over hmacfs's own TLS (`scheme`). The test then downloads the GET
URL with urllib and compares the bytes, or checks that the refusal happened at the expected
step (see `matrix.py` for the size limits).

HTTPS is verified everywhere against the session's test CA (hostname `localhost` included):
slixmpp through SSL_CERT_FILE, nbxmpp through its libsoup session's TLS database (see the
client scripts), the downloads here through an `ssl` context with only that CA. The
`https-wrong-ca` cells give the clients a different CA and expect a certificate error.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.server import Server
from tests.interop.matrix import (
    CLIENTS,
    FILES,
    MODE_DESCRIPTIONS,
    MODES,
    OUR_LIMIT,
    SCHEME_DESCRIPTIONS,
    SCHEMES,
    WRONG_CA,
    XMPP_LIMIT,
    Expect,
    FileCase,
    expected,
    url_scheme,
)
from tests.interop.xmpp_servers import Account, Certificate, HTTPSCertificate

pytestmark = [pytest.mark.interop, pytest.mark.slow]

CLIENTS_DIR = Path(__file__).parent / "clients"
CLIENT_TIMEOUT = 90.0
DOWNLOAD_TIMEOUT = 60.0


def run_client(
    client: str, account: Account, path: Path, xmpp_ca: Path, http_ca: Path
) -> dict[str, Any]:
    """Run one upload client and return its JSON outcome (see clients/slixmpp_upload.py).

    `xmpp_ca` is the XMPP server's certificate, `http_ca` the CA the client trusts for
    HTTPS uploads. slixmpp runs in this interpreter's environment (the project venv, slixmpp
    from PyPI) and trusts `http_ca` through SSL_CERT_FILE (its upload plugin takes no SSL
    context); nbxmpp runs with Debian's python, as Gajim does, and is given the file.
    """
    python = sys.executable if client == "slixmpp" else "/usr/bin/python3"
    command = [
        python, str(CLIENTS_DIR / f"{client}_upload.py"),
        "--jid", account.jid, "--password", account.password,
        "--host", account.host, "--port", str(account.port),
        "--ca-file", str(xmpp_ca), "--timeout", "60",
    ]  # fmt: skip
    env = dict(os.environ)
    if client == "slixmpp":
        env["SSL_CERT_FILE"] = str(http_ca)
    else:
        command += ["--http-ca-file", str(http_ca)]
    result = subprocess.run(
        [*command, str(path)],
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
        env=env,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(
            f"{client} client exited with {result.returncode} without an outcome:\n"
            + result.stderr[-3000:]
        )
    outcome: dict[str, Any] = json.loads(lines[-1])
    outcome["stderr"] = result.stderr[-2000:]
    if outcome["http_ca"] != str(http_ca):
        raise AssertionError(
            f"{client} client trusts {outcome['http_ca']!r} for HTTPS, not {str(http_ca)!r}"
        )
    return outcome


def download(url: str, ca: Path) -> tuple[int, str, bytes]:
    """GET `url` as an ordinary HTTP client would, trusting only `ca` for HTTPS (hostname
    checked); (status, media type, body). A certificate it does not trust raises
    `urllib.error.URLError` with an `ssl.SSLCertVerificationError` as its reason."""
    context = ssl.create_default_context(cafile=str(ca))  # no default CAs: only `ca`
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT, context=context) as response:
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


def slot_problem(scheme: str, outcome: dict[str, Any]) -> str | None:
    """Why the slot's URLs are not what this cell's scheme promises, or None."""
    for key in ("put_url", "get_url"):
        url = outcome[key]
        if url is None:
            continue
        parts = urllib.parse.urlsplit(url)
        want = url_scheme(scheme)
        if parts.scheme != want or (want == "https" and parts.hostname != "localhost"):
            return f"the slot's {key} is {redact(url)}, not an {want} URL of the cell's listener"
    return None


def untrusted_download(url: str, ca: Path) -> str | None:
    """The certificate error a download trusting only `ca` gets, or None if it got through."""
    try:
        download(url, ca)
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            return e.reason.verify_message
        raise
    return None


def check_cell(
    mode: str,
    scheme: str,
    file_case: FileCase,
    outcome: dict[str, Any],
    tls: HTTPSCertificate,
) -> tuple[bool, str]:
    """Compare one client run with the expected outcome; (passed, reason for the table)."""
    expect = expected(mode, scheme, file_case)
    problem = slot_problem(scheme, outcome)
    if problem is not None:
        return False, problem
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
    if expect is Expect.CERTIFICATE_REFUSED:
        refused = outcome["step"] == "put" and outcome["status"] is None
        if not (refused and outcome["certificate_error"]):
            return False, f"expected a certificate error at the PUT; {describe(outcome)}"
        # The test's own downloads refuse that CA too, and trust the right one.
        download_error = untrusted_download(outcome["get_url"], tls.wrong_ca)
        if download_error is None:
            return False, "the download trusting only the wrong CA got through"
        status, _, _ = download(outcome["get_url"], tls.ca)
        if status != 404:
            return False, f"PUT failed on the certificate but GET answered {status}"
        return True, (
            f"PUT refused by the client: {outcome['certificate_error']}; nothing stored "
            f"(GET 404; GET trusting the wrong CA: {download_error})"
        )
    if expect is Expect.PUT_TOO_LARGE:
        if outcome["step"] == "put" and outcome["status"] == 413:
            status, _, _ = download(outcome["get_url"], tls.ca)
            if status == 404:
                return True, f"slot granted, PUT 413 (hmacfs limit {OUR_LIMIT}), nothing stored"
            return False, f"PUT got 413 but GET of the slot's URL answered {status}"
        return False, f"expected hmacfs's 413 at the PUT; {describe(outcome)}"
    # Expect.STORED
    if outcome["step"] != "done":
        return False, f"expected the upload to succeed; {describe(outcome)}"
    status, content_type, body = download(outcome["get_url"], tls.ca)
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


def server_errors(log: list[str]) -> list[str]:
    """hmacfs log lines that say something went wrong inside the server, whatever the client
    saw: for each "Unhandled Error" or traceback, the exception line that ends it."""
    found = []
    for index, line in enumerate(log):
        continued = index > 0 and "Unhandled Error" in log[index - 1]
        traceback = "Traceback (most recent call last)" in line and not continued
        if "Unhandled Error" in line or traceback:
            following = [x.strip() for x in log[index + 1 : index + 40]]
            exceptions = [x for x in following if "Error" in x and not x.startswith("File ")]
            found.append((exceptions[0] if exceptions else line.strip())[:200])
    return found


def run_cell(
    mode: str,
    scheme: str,
    client: str,
    file_case: FileCase,
    account: Account,
    path: Path,
    upload_server: Server,
    certificate: Certificate,
    tls: HTTPSCertificate,
    record_reason: Callable[[str], None],
) -> None:
    """One cell: the client uploads `path`, `check_cell` judges, the table gets the reason."""
    log_start = len(upload_server.log)
    http_ca = tls.wrong_ca if scheme == WRONG_CA else tls.ca
    outcome = run_client(client, account, path, certificate.cert, http_ca)
    passed, reason = check_cell(mode, scheme, file_case, outcome, tls)
    errors = server_errors(upload_server.log[log_start:])
    if errors:
        passed, reason = False, f"hmacfs logged an unhandled error: {errors[-1]} ({reason})"
    record_reason(reason)
    assert passed, (
        f"{MODE_DESCRIPTIONS[mode]}, {SCHEME_DESCRIPTIONS[scheme]}, {outcome['client']}, "
        f"{file_case.note}:\n"
        f"  {reason}\n"
        f"  expected: {expected(mode, scheme, file_case).value}\n"
        f"  slot: PUT {redact(outcome['put_url'])} headers {outcome['put_header_names']}\n"
        f"        GET {redact(outcome['get_url'])}\n"
        f"hmacfs log during this cell:\n  "
        + "\n  ".join(upload_server.log[log_start:][-20:])
        + f"\nclient stderr:\n{outcome['stderr']}"
    )


@pytest.mark.parametrize("file_case", FILES, ids=[f.key for f in FILES])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("mode", MODES)
def test_upload(
    mode: str,
    scheme: str,
    client: str,
    file_case: FileCase,
    account: Account,
    upload_files: dict[str, Path],
    upload_server: Server,
    certificate: Certificate,
    https_certificate: HTTPSCertificate,
    record_reason: Callable[[str], None],
) -> None:
    run_cell(
        mode, scheme, client, file_case, account, upload_files[file_case.key],
        upload_server, certificate, https_certificate, record_reason,
    )  # fmt: skip


UNTRUSTED_FILE = next(f for f in FILES if f.key == "binary")


@pytest.mark.parametrize("file_case", [UNTRUSTED_FILE], ids=[UNTRUSTED_FILE.key])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("scheme", [WRONG_CA])
@pytest.mark.parametrize("mode", MODES)
def test_untrusted_certificate(
    mode: str,
    scheme: str,
    client: str,
    file_case: FileCase,
    account: Account,
    upload_files: dict[str, Path],
    upload_server: Server,
    certificate: Certificate,
    https_certificate: HTTPSCertificate,
    record_reason: Callable[[str], None],
) -> None:
    """The https slots, but the client trusts only a CA with the same name as the one that
    issued hmacfs's certificate and another key: the client must refuse the certificate at
    the PUT (so it verifies, and with the CA it was given), and nothing may be stored."""
    log_start = len(upload_server.log)
    run_cell(
        mode, scheme, client, file_case, account, upload_files[file_case.key],
        upload_server, certificate, https_certificate, record_reason,
    )  # fmt: skip
    requests = [line for line in upload_server.log[log_start:] if " PUT " in line]
    assert not requests, f"a PUT reached hmacfs: {requests}"
