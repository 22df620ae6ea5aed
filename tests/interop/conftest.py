"""Fixtures for the interop matrix: hmacfs, Prosody and ejabberd as real processes.

Every server is started once per session on loopback with free ports, in directories of this
session, and stopped at the end; a session finalizer then checks with pgrep that no process
of this session is left. The summary table is printed by `pytest_terminal_summary`.

One hmacfs serves both schemes: a plain listener and its built-in TLS listener, with a
certificate for `localhost` from a CA made for this session (`https_ca`). One Prosody and one
ejabberd serve both schemes too (a virtual host per scheme).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import TestCA
from tests.helpers import debian
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import SECRET
from tests.interop.matrix import (
    CLIENTS,
    FILES,
    MODE_DESCRIPTIONS,
    OUR_LIMIT,
    SCHEME_DESCRIPTIONS,
    SCHEMES,
    XMPP_LIMIT,
    CellResult,
    format_table,
    url_scheme,
)
from tests.interop.xmpp_servers import (
    Account,
    Certificate,
    Ejabberd,
    HTTPSCertificate,
    Prosody,
    UploadTarget,
    make_certificate,
)

HERE = Path(__file__).parent
PROJECT = HERE.parent.parent
PACKAGES_FILE = HERE / "packages.txt"
REQUIREMENTS_FILE = HERE / "requirements.txt"
MARKER = "interop"
PASSWORD = "interop-password"

RESULTS = pytest.StashKey[list[CellResult]]()
CELL = pytest.StashKey[tuple[str, str, str, str]]()
REASON = pytest.StashKey[str]()


# -- collection: marker, prerequisites ------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # pyproject runs pytest with --strict-markers; registering here keeps this directory
    # self-contained until the marker is listed in pyproject.toml (harmless afterwards).
    config.addinivalue_line(
        "markers", f"{MARKER}: real XMPP servers and clients against hmacfs (tests/interop)"
    )
    config.stash[RESULTS] = []


def debian_packages() -> list[str]:
    lines = PACKAGES_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def missing_debian_packages() -> list[str]:
    return debian.missing(debian_packages())


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop at once, naming the command, when the matrix is selected but cannot run."""
    if not any(item.get_closest_marker(MARKER) for item in session.items):
        return
    problems = []
    missing = missing_debian_packages()
    if missing:
        problems.append(
            f"missing Debian packages: {' '.join(missing)}\n"
            f"    install them as root: apt-get install --no-install-recommends "
            f"{' '.join(missing)}\n"
            f"    (or run ./dev.sh test as root; the list is {PACKAGES_FILE.relative_to(PROJECT)})"
        )
    if any(importlib.util.find_spec(module) is None for module in ("slixmpp", "aiohttp")):
        problems.append(
            f"slixmpp (with aiohttp) is not installed for {sys.executable}\n"
            f"    install it: {sys.executable} -m pip install -r {REQUIREMENTS_FILE}"
        )
    if problems:
        pytest.exit(
            "tests/interop cannot run:\n  " + "\n  ".join(problems),
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker(MARKER) and callspec is not None:
            params = callspec.params
            if {"mode", "scheme", "client", "file_case"} <= params.keys():
                item.stash[CELL] = (
                    params["mode"],
                    params["scheme"],
                    params["client"],
                    params["file_case"].key,
                )


# -- results table ----------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Turn every matrix cell's outcome (including a failed setup) into a table row."""
    # An old-style wrapper: pytest 7.2 (Debian 12) has no `wrapper=True`.
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    cell = item.stash.get(CELL, None)
    failed_setup = report.when == "setup" and report.failed
    if cell is not None and (report.when == "call" or failed_setup):
        reason = item.stash.get(REASON, None)
        if reason is None or failed_setup:
            last = report.longreprtext.strip().splitlines()[-1:] or ["?"]
            reason = ("setup failed: " if failed_setup else "") + last[0][:200]
        item.config.stash[RESULTS].append(CellResult(*cell, report.passed, reason))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    results = terminalreporter.config.stash.get(RESULTS, [])
    if not results:
        return
    terminalreporter.write_sep(
        "=", "XEP-0363 interop matrix (server mode x scheme x client x file)"
    )
    for mode, description in MODE_DESCRIPTIONS.items():
        terminalreporter.write_line(f"{mode:<15} {description}")
    for scheme, description in SCHEME_DESCRIPTIONS.items():
        terminalreporter.write_line(f"{scheme:<15} {description}")
    terminalreporter.write_line(
        f"limits: hmacfs max_upload_size {OUR_LIMIT} bytes, XMPP servers {XMPP_LIMIT} bytes"
    )
    terminalreporter.write_line("")
    for line in format_table(results):
        terminalreporter.write_line(line)
    failed = sum(not r.passed for r in results)
    terminalreporter.write_line(f"{len(results) - failed} passed, {failed} failed")


# -- processes --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def interop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interop")


@pytest.fixture(scope="session")
def session_token() -> str:
    """Part of every path and node name this session uses outside `interop_dir`."""
    return secrets.token_hex(4)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running(interop_dir: Path, session_token: str) -> Iterator[None]:
    """After every other session fixture is torn down, no process of this session may run.

    Processes are recognised by paths and names unique to this session (never by program
    name: other test sessions may run servers of their own on the same machine).
    """
    yield
    leftovers = []
    for marker in (f"{interop_dir}/", session_token):
        found = subprocess.run(
            ["pgrep", "-a", "-f", marker], capture_output=True, text=True, check=False
        ).stdout.splitlines()
        leftovers += [line for line in found if int(line.split()[0]) != os.getpid()]
    for line in leftovers:
        # Ours: its command line names this session's directory or token.
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not leftovers, "processes left running (now killed):\n" + "\n".join(leftovers)


def start_upload_server(directory: Path, max_upload_size: int, tls: HTTPSCertificate) -> Server:
    """Start hmacfs with `max_upload_size`, a plain and a TLS listener on loopback (through
    tests.helpers.server.start_server)."""
    directory.mkdir(parents=True, exist_ok=True)
    return start_server(
        directory,
        max_upload_size=max_upload_size,
        listen=("127.0.0.1:0", "https://127.0.0.1:0"),
        extra_toml=f'[tls]\ncertificate = "{tls.certificate}"\nkey = "{tls.key}"\n',
    )


@pytest.fixture(scope="session")
def https_certificate(interop_dir: Path) -> HTTPSCertificate:
    ca = TestCA(interop_dir / "https-ca", name="hmacfs interop test CA")
    leaf = ca.issue("hmacfs", hosts=("localhost",))
    # Same subject name as the real CA, another key: only the signature tells them apart.
    wrong = TestCA(interop_dir / "wrong-ca", name="hmacfs interop test CA")
    return HTTPSCertificate(leaf.certificate, leaf.key, ca.path, wrong.path)


@pytest.fixture(scope="session")
def upload_server(interop_dir: Path, https_certificate: HTTPSCertificate) -> Iterator[Server]:
    server = start_upload_server(interop_dir / "hmacfs", OUR_LIMIT, https_certificate)
    try:
        yield server
    finally:
        status = stop_server(server)
        (interop_dir / "hmacfs" / "hmacfs.log").write_text("\n".join(server.log) + "\n")
    assert status == 0, "hmacfs exited uncleanly:\n" + "\n".join(server.log[-30:])
    unhandled = sum("Unhandled Error" in line for line in server.log)
    assert not unhandled, (
        f"hmacfs logged {unhandled} unhandled errors in this session; see "
        f"{interop_dir / 'hmacfs' / 'hmacfs.log'}"
    )


@pytest.fixture(scope="session")
def upload_targets(upload_server: Server) -> dict[str, UploadTarget]:
    """The one place that decides the upload URLs: {scheme: target}.

    The HTTPS URL names `localhost` (the name in hmacfs's certificate) with the port of the
    TLS listener, which listens on 127.0.0.1 (what `localhost` resolves to here).
    """
    tls_address = next(a for a in upload_server.addresses if a.startswith("https://"))
    tls_port = int(tls_address.rsplit(":", 1)[1])
    bases = {"http": upload_server.base, "https": f"https://localhost:{tls_port}"}
    assert set(bases) == set(SCHEMES)
    return {
        scheme: UploadTarget(
            base_url=f"{base}/upload", secret=SECRET.decode(), xmpp_limit=XMPP_LIMIT
        )
        for scheme, base in bases.items()
    }


@pytest.fixture(scope="session")
def certificate(interop_dir: Path) -> Certificate:
    """The XMPP servers' self-signed c2s certificate (not hmacfs's: see https_certificate)."""
    domains = Prosody.domains(SCHEMES) + Ejabberd.domains(SCHEMES)
    return make_certificate(interop_dir / "tls", domains)


@pytest.fixture(scope="session")
def prosody(
    interop_dir: Path, upload_targets: dict[str, UploadTarget], certificate: Certificate
) -> Iterator[dict[str, dict[str, dict[str, Account]]]]:
    """Prosody with one VirtualHost per mode and scheme: {mode: {scheme: {client: account}}}."""
    server = Prosody(interop_dir / "prosody", upload_targets, certificate)
    server.write_config()
    accounts = {
        f"prosody-{kind}": {
            scheme: {
                client: server.register(client, server.domain(kind, scheme), PASSWORD)
                for client in CLIENTS
            }
            for scheme in upload_targets
        }
        for kind in server.kinds
    }
    server.start()
    try:
        yield accounts
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ejabberd(
    interop_dir: Path,
    upload_targets: dict[str, UploadTarget],
    certificate: Certificate,
    session_token: str,
) -> Iterator[dict[str, dict[str, dict[str, Account]]]]:
    """An ejabberd node, a virtual host per scheme: {"ejabberd": {scheme: {client: account}}}."""
    server = Ejabberd(upload_targets, certificate, session_token)
    try:
        server.write_config()
        server.start()
        yield {
            "ejabberd": {
                scheme: {
                    client: server.register(client, server.domain(scheme), PASSWORD)
                    for client in CLIENTS
                }
                for scheme in upload_targets
            }
        }
    finally:
        server.stop()
        server.remove(keep_logs_in=interop_dir / "ejabberd-logs")


@pytest.fixture
def account(request: pytest.FixtureRequest, mode: str, scheme: str, client: str) -> Account:
    """The account `client` logs in with on the virtual host that provides `mode` with slot
    URLs of `scheme`'s URL scheme; its server is started on first use and shared by the rest
    of the session."""
    servers = "ejabberd" if mode == "ejabberd" else "prosody"
    accounts: dict[str, dict[str, dict[str, Account]]] = request.getfixturevalue(servers)
    return accounts[mode][url_scheme(scheme)][client]


@pytest.fixture(scope="session")
def upload_files(interop_dir: Path) -> dict[str, Path]:
    """Every file of the matrix, written once: {case key: path}."""
    directory = interop_dir / "upload-files"
    directory.mkdir()
    paths = {}
    for case in FILES:
        path = directory / case.name
        path.write_bytes(case.content())
        assert path.stat().st_size == case.size
        paths[case.key] = path
    return paths


@pytest.fixture
def record_reason(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Call with the cell's explanation (shown in the table) before asserting."""

    def record(reason: str) -> None:
        request.node.stash[REASON] = reason

    return record
