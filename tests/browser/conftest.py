"""Fixtures for the browser tests: hmacfs, Prosody with WebSocket, and the page Converse.js
runs in, each a real process or server on loopback, started once for the session.

Three origins, so that the browser does real CORS: the page (a static server of this process,
http://127.0.0.1:A), Prosody's WebSocket (ws://127.0.0.1:P) and hmacfs (http://127.0.0.1:B).
Prosody hands out slots for hmacfs under two sets of VirtualHosts: one with hmacfs's secret
(`RIGHT`), one with another secret (`WRONG`), whose uploads hmacfs must refuse.

Nothing here skips: a missing browser, Node.js, npm package or Debian package fails every
browser test with the command that installs it.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import debian
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import SECRET
from tests.interop.xmpp_servers import (
    Account,
    Prosody,
    UploadTarget,
    make_certificate,
    tail,
)

HERE = Path(__file__).parent
NODE_MODULES = HERE / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
PACKAGES_FILE = HERE / "packages.txt"
#: Labels of Prosody's two sets of VirtualHosts (the "scheme" part of their domain names).
RIGHT, WRONG = "http", "wrongsecret"
MODES = ("v2", "jwt")
PASSWORD = "browser-password"
XMPP_LIMIT = 10 << 20


@dataclass(frozen=True)
class Chat:
    """Who logs in to Converse and whom they send the files to."""

    sender: Account
    peer: Account


@dataclass(frozen=True)
class Setup:
    """Everything a test hands the driver, and the logs a failure message shows."""

    page_url: str
    websocket_url: str
    upload_base: str
    chats: dict[tuple[str, str], Chat]  # {(mode, RIGHT or WRONG): chat}
    server: Server
    prosody_log: Path

    def logs(self) -> str:
        return (
            f"--- hmacfs log (end) ---\n{self.server.log_tail(25)}\n"
            f"--- prosody log (end) ---\n{tail(self.prosody_log, 25)}"
        )


def _locked_versions() -> dict[str, str]:
    lock = json.loads((HERE / "package-lock.json").read_text())
    return {name: lock["packages"][f"node_modules/{name}"]["version"]
            for name in ("converse.js", "playwright-core")}


def _installed_version(name: str) -> str | None:
    try:
        manifest: dict[str, Any] = json.loads((NODE_MODULES / name / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return str(manifest.get("version"))


@pytest.fixture(scope="session")
def browser_prerequisites() -> str:
    """Node.js's path, after checking that everything the browser tests run is installed."""
    problems = []
    lines = PACKAGES_FILE.read_text().splitlines()
    packages = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    missing = debian.missing(packages)
    if missing:
        problems.append(
            f"missing Debian packages: {' '.join(missing)} (as root: apt-get install "
            f"--no-install-recommends {' '.join(missing)}, or run ./dev.sh test)"
        )
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    node = shutil.which("node")
    if node is None:
        problems.append("node is missing (apt-get install nodejs npm)")
    for name, version in _locked_versions().items():
        found = _installed_version(name)
        if found != version:
            problems.append(
                f"{name} {version} is not installed in {NODE_MODULES} (found: {found}); run "
                f"PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser"
            )
    if problems:
        pytest.fail("the browser tests cannot run:\n  " + "\n  ".join(problems), pytrace=False)
    assert node is not None
    return node


@pytest.fixture(scope="session")
def browser_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="session")
def upload_server(browser_dir: Path) -> Iterator[Server]:
    """hmacfs with its default [http] settings: what an admin gets without configuring CORS."""
    directory = browser_dir / "hmacfs"
    directory.mkdir()
    server = start_server(directory, workers=1, track=False)
    try:
        yield server
    finally:
        status = stop_server(server)
        (directory / "hmacfs.log").write_text("\n".join(server.log) + "\n")
    assert status == 0, "hmacfs exited uncleanly:\n" + server.log_tail()


class _PageHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # the browser's own network log says what was asked for


@pytest.fixture(scope="session")
def page_url(browser_dir: Path) -> Iterator[str]:
    """The test page and Converse's dist/ from a static server on an origin of its own."""
    root = browser_dir / "page"
    root.mkdir()
    shutil.copy(HERE / "index.html", root / "index.html")
    (root / "dist").symlink_to(NODE_MODULES / "converse.js" / "dist")
    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_PageHandler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def setup(
    browser_prerequisites: str, browser_dir: Path, upload_server: Server, page_url: str
) -> Iterator[Setup]:
    base_url = f"{upload_server.base}/upload"
    targets = {
        RIGHT: UploadTarget(base_url, SECRET.decode(), XMPP_LIMIT),
        WRONG: UploadTarget(base_url, "not-" + SECRET.decode(), XMPP_LIMIT),
    }
    directory = browser_dir / "prosody"
    certificate = make_certificate(directory / "tls", Prosody.domains(targets))
    prosody = Prosody(directory, targets, certificate, websocket=True)
    prosody.write_config()
    chats = {}
    for mode in MODES:
        for label in targets:
            domain = prosody.domain(mode, label)
            chats[mode, label] = Chat(
                prosody.register("alice", domain, PASSWORD),
                prosody.register("bob", domain, PASSWORD),
            )
    prosody.start()
    try:
        yield Setup(
            page_url=page_url,
            websocket_url=prosody.websocket_url,
            upload_base=f"{upload_server.base}/",
            chats=chats,
            server=upload_server,
            prosody_log=prosody.log,
        )
    finally:
        prosody.stop()
