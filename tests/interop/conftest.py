"""Fixtures for the interop matrix: hmacfs, Prosody and ejabberd as real processes.

Every server is started once per session on loopback with free ports, in directories of this
session, and stopped at the end; a session finalizer then checks with pgrep that no process
of this session is left. The summary table is printed by `pytest_terminal_summary`.
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

from tests.conftest import SECRET
from tests.e2e.conftest import Server, start_server, stop_server
from tests.interop.matrix import (
    CLIENTS,
    FILES,
    MODE_DESCRIPTIONS,
    OUR_LIMIT,
    XMPP_LIMIT,
    CellResult,
    format_table,
)
from tests.interop.xmpp_servers import (
    Account,
    Certificate,
    Ejabberd,
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
CELL = pytest.StashKey[tuple[str, str, str]]()
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
    missing = []
    for package in debian_packages():
        status = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "install ok installed" not in status:
            missing.append(package)
    return missing


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
            if {"mode", "client", "file_case"} <= params.keys():
                item.stash[CELL] = (params["mode"], params["client"], params["file_case"].key)


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
    terminalreporter.write_sep("=", "XEP-0363 interop matrix (server mode x client x file)")
    for mode, description in MODE_DESCRIPTIONS.items():
        terminalreporter.write_line(f"{mode:<12} {description}")
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


def start_upload_server(directory: Path, max_upload_size: int) -> Server:
    """Start hmacfs with `max_upload_size` (through tests.e2e.conftest.start_server)."""
    directory.mkdir(parents=True, exist_ok=True)
    return start_server(directory, max_upload_size=max_upload_size)


@pytest.fixture(scope="session")
def upload_server(interop_dir: Path) -> Iterator[Server]:
    server = start_upload_server(interop_dir / "hmacfs", OUR_LIMIT)
    try:
        yield server
    finally:
        status = stop_server(server)
        (interop_dir / "hmacfs" / "hmacfs.log").write_text("\n".join(server.log) + "\n")
    assert status == 0, "hmacfs exited uncleanly:\n" + "\n".join(server.log[-30:])


@pytest.fixture(scope="session")
def upload_target(upload_server: Server) -> UploadTarget:
    """The one place that decides the upload URL's scheme (plain HTTP for now; an HTTPS
    hmacfs with its certificate becomes another target here, and the clients and downloads
    then need that certificate as well)."""
    return UploadTarget(
        base_url=f"{upload_server.base}/upload", secret=SECRET.decode(), xmpp_limit=XMPP_LIMIT
    )


@pytest.fixture(scope="session")
def certificate(interop_dir: Path) -> Certificate:
    return make_certificate(interop_dir / "tls", Prosody.domains + Ejabberd.domains)


@pytest.fixture(scope="session")
def prosody(
    interop_dir: Path, upload_target: UploadTarget, certificate: Certificate
) -> Iterator[dict[str, dict[str, Account]]]:
    """Prosody with one VirtualHost per mode: {mode: {client: account}}."""
    server = Prosody(interop_dir / "prosody", upload_target, certificate)
    server.write_config()
    domains = {
        "prosody-v1": server.v1_domain,
        "prosody-v2": server.v2_domain,
        "prosody-jwt": server.jwt_domain,
    }
    accounts = {
        mode: {client: server.register(client, domain, PASSWORD) for client in CLIENTS}
        for mode, domain in domains.items()
    }
    server.start()
    try:
        yield accounts
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ejabberd(
    interop_dir: Path, upload_target: UploadTarget, certificate: Certificate, session_token: str
) -> Iterator[dict[str, dict[str, Account]]]:
    """An ejabberd node: {"ejabberd": {client: account}}."""
    server = Ejabberd(upload_target, certificate, session_token)
    try:
        server.write_config()
        server.start()
        yield {"ejabberd": {client: server.register(client, PASSWORD) for client in CLIENTS}}
    finally:
        server.stop()
        server.remove(keep_logs_in=interop_dir / "ejabberd-logs")


@pytest.fixture
def account(request: pytest.FixtureRequest, mode: str, client: str) -> Account:
    """The account `client` logs in with on the server that provides `mode`; that server is
    started on first use and shared by the rest of the session."""
    servers = "ejabberd" if mode == "ejabberd" else "prosody"
    accounts: dict[str, dict[str, Account]] = request.getfixturevalue(servers)
    return accounts[mode][client]


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

