"""`[quota]` through real XMPP servers: the uploader is who the slot names.

Prosody's `mod_http_file_share` (external mode) signs a JWT whose `sub` is the uploader's bare
JID; ejabberd's `mod_http_upload` (`external_secret`) puts every upload under
`sha1(user@host)/`. hmacfs keys its per-uploader limits on these, so a slixmpp client
uploading through each server must meet them as its user, and never its neighbour's.

This module runs servers of its own, apart from the session's matrix servers (other
directories, ports, ejabberd node name and distribution port):
- one hmacfs per limit (plain HTTP), see `QUOTAS`, each on a loopback address of its own:
  ejabberd 23.01 names a host's `mod_http_upload` process after its `put_url`'s host and path,
  not its port, so virtual hosts whose `put_url`s differ only by port cannot all start
  ("Multiple virtual hosts can't use a single 'put_url' without the @HOST@ keyword");
- one Prosody with a `mod_http_file_share` VirtualHost per limit (``jwt.hard.prosody.test``,
  ...; the template also adds the `mod_http_upload_external` hosts, unused here), and one
  ejabberd with a virtual host per limit (``hard.ejabberd.test``, ...), each pointed at the
  hmacfs of that limit;
- alice and bob on each of those hosts.

Every file is `FILE_SIZE` bytes and `max_upload_size` is below every limit, so the third
upload is the first one past a 300 KiB limit.
"""

from __future__ import annotations

import hashlib
import random
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hmacfs.storage.local import LocalStorage
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import SECRET
from tests.interop.test_upload_matrix import describe, download, redact, run_client
from tests.interop.xmpp_servers import (
    Account,
    Certificate,
    Ejabberd,
    Prosody,
    UploadTarget,
    make_certificate,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

KIB = 1024
FILE_SIZE = 120 * KIB
MAX_UPLOAD_SIZE = "150K"
#: What Prosody and ejabberd announce and enforce: well above every file.
XMPP_LIMIT = 1024 * KIB
#: One hmacfs per scenario: {name: its [quota] section}, each on the next loopback address.
QUOTAS = {
    "hard": '[quota]\nuploader_limit = "300K"\n',
    "soft": '[quota]\nuploader_soft_limit = "300K"\n',
    # The soft limit keeps one file stored; the daily limit still counts the deleted ones.
    "daily": '[quota]\nuploader_daily_limit = "300K"\nuploader_soft_limit = "150K"\n',
}
XMPP_SERVERS = ("prosody", "ejabberd")
USERS = ("alice", "bob")
PASSWORD = "quota-password"
LOG_TIMEOUT = 20.0


# -- servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quota_dir(interop_dir: Path) -> Path:
    """Under the session's directory, so the leftover check recognises these processes."""
    directory = interop_dir / "quota"
    directory.mkdir()
    return directory


@pytest.fixture(scope="module")
def quota_servers(quota_dir: Path) -> Iterator[dict[str, Server]]:
    """{quota name: an hmacfs with that [quota] section}, on 127.0.0.1, 127.0.0.2, ..."""
    servers: dict[str, Server] = {}
    try:
        for number, (name, quota) in enumerate(QUOTAS.items(), start=1):
            directory = quota_dir / f"hmacfs-{name}"
            directory.mkdir()
            servers[name] = start_server(
                directory, quota, listen=(f"127.0.0.{number}:0",), max_upload_size=MAX_UPLOAD_SIZE
            )
        yield servers
    finally:
        statuses: dict[str, int | str] = {}
        for name, server in servers.items():
            try:
                statuses[name] = stop_server(server)
            except AssertionError as e:  # killed: stop the others all the same
                statuses[name] = str(e)
            (quota_dir / f"hmacfs-{name}" / "hmacfs.log").write_text("\n".join(server.log) + "\n")
    for name, server in servers.items():
        assert statuses[name] == 0, f"hmacfs ({name}) exited uncleanly:\n{server.log_tail()}"
        assert not any("Unhandled Error" in line for line in server.log), (
            f"hmacfs ({name}) logged an unhandled error; see {quota_dir / f'hmacfs-{name}'}"
        )


@pytest.fixture(scope="module")
def quota_targets(quota_servers: dict[str, Server]) -> dict[str, UploadTarget]:
    """{quota name: that hmacfs as an upload target}: the XMPP servers' helpers take these
    where they take a URL scheme, so the name goes into the virtual hosts' names."""
    # `Server.base` names 127.0.0.1; the address each one logged is what it listens on.
    return {
        name: UploadTarget(f"http://{server.addresses[0]}/upload", SECRET.decode(), XMPP_LIMIT)
        for name, server in quota_servers.items()
    }


@pytest.fixture(scope="module")
def quota_certificate(quota_dir: Path) -> Certificate:
    return make_certificate(quota_dir / "tls", Prosody.domains(QUOTAS) + Ejabberd.domains(QUOTAS))


@pytest.fixture(scope="module")
def quota_prosody(
    quota_dir: Path, quota_targets: dict[str, UploadTarget], quota_certificate: Certificate
) -> Iterator[dict[str, dict[str, Account]]]:
    server = Prosody(quota_dir / "prosody", quota_targets, quota_certificate)
    server.write_config()
    accounts = {
        name: {user: server.register(user, server.domain("jwt", name), PASSWORD) for user in USERS}
        for name in quota_targets
    }
    server.start()
    try:
        yield accounts
    finally:
        server.stop()


@pytest.fixture(scope="module")
def quota_ejabberd(
    quota_dir: Path,
    quota_targets: dict[str, UploadTarget],
    quota_certificate: Certificate,
    session_token: str,
) -> Iterator[dict[str, dict[str, Account]]]:
    # A token of its own gives a node name and directory apart from the session's ejabberd;
    # it starts with the session's token, which the leftover check looks for.
    server = Ejabberd(quota_targets, quota_certificate, f"{session_token}quota")
    try:
        server.write_config()
        server.start()
        yield {
            name: {user: server.register(user, server.domain(name), PASSWORD) for user in USERS}
            for name in quota_targets
        }
    finally:
        server.stop()
        server.remove(keep_logs_in=quota_dir / "ejabberd-logs")


@pytest.fixture(params=XMPP_SERVERS)
def xmpp(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def accounts(request: pytest.FixtureRequest, xmpp: str) -> dict[str, dict[str, Account]]:
    """{quota name: {user: account}} on `xmpp`, started on first use."""
    found: dict[str, dict[str, Account]] = request.getfixturevalue(f"quota_{xmpp}")
    return found


# -- uploads ----------------------------------------------------------------------------------


def uploader_of(xmpp: str, account: Account) -> str:
    """Who hmacfs should record as the uploader: the JWT's `sub` (the bare JID) for Prosody,
    the hashed JID of the first path segment for ejabberd."""
    if xmpp == "prosody":
        return account.jid
    return hashlib.sha1(account.jid.encode()).hexdigest()


@dataclass(frozen=True)
class Upload:
    """One run of the slixmpp client and what it sent."""

    account: Account
    name: str
    content: bytes
    outcome: dict[str, Any]

    def explain(self, server: Server, log_start: int) -> str:
        """For an assertion message: where the client stopped, and what hmacfs logged."""
        return (
            f"{self.account.jid} uploading {self.name}: {describe(self.outcome)}\n"
            f"  PUT {redact(self.outcome['put_url'])}\n"
            f"hmacfs log since:\n  "
            + "\n  ".join(server.log[log_start:][-15:])
            + f"\nclient stderr:\n{self.outcome['stderr']}"
        )


class Uploads:
    """Uploads through one XMPP server into one hmacfs, checked as they happen."""

    def __init__(self, server: Server, certificate: Certificate, directory: Path) -> None:
        self.server = server
        self.certificate = certificate
        self.directory = directory

    def run(self, account: Account, name: str) -> tuple[Upload, int]:
        """Upload a new file `name` as `account`; the upload, and where hmacfs's log stood."""
        content = random.Random(f"{account.jid}/{name}").randbytes(FILE_SIZE)
        path = self.directory / account.jid / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        log_start = len(self.server.log)
        # Plain HTTP: the CA given for HTTPS is never used (it must only be a valid file).
        cert = self.certificate.cert
        outcome = run_client("slixmpp", account, path, cert, cert)
        return Upload(account, name, content, outcome), log_start

    def stored(self, account: Account, name: str) -> Upload:
        """Upload `name`, which must get a 201 and come back byte for byte."""
        upload, log_start = self.run(account, name)
        assert upload.outcome["step"] == "done", upload.explain(self.server, log_start)
        self.assert_served(upload)
        return upload

    def refused(self, account: Account, name: str, reason: str) -> Upload:
        """Upload `name`: the slot must be granted and hmacfs must refuse the PUT with 413,
        logging `reason`, and store nothing."""
        upload, log_start = self.run(account, name)
        explain = upload.explain(self.server, log_start)
        assert upload.outcome["step"] == "put", explain
        assert upload.outcome["status"] == 413, explain
        line = self.wait_for_log("-> 413 refused: ", log_start)
        assert f"-> 413 refused: {reason}" in line, line
        self.assert_gone(upload)
        return upload

    def assert_served(self, upload: Upload) -> None:
        status, _, body = download(upload.outcome["get_url"], self.certificate.cert)
        assert status == 200, f"GET {redact(upload.outcome['get_url'])} answered {status}"
        assert body == upload.content, (
            f"GET {redact(upload.outcome['get_url'])}: {len(body)} bytes differ from the "
            f"{len(upload.content)} uploaded"
        )

    def assert_gone(self, upload: Upload) -> None:
        status, _, _ = download(upload.outcome["get_url"], self.certificate.cert)
        assert status == 404, f"GET {redact(upload.outcome['get_url'])} answered {status}"

    def wait_for_log(self, text: str, log_start: int) -> str:
        """The first line hmacfs logged since `log_start` that contains `text`. Waits for it:
        the soft limit is enforced after the 201, and stderr is read by a thread of ours, so
        the client may be done before the line is here."""
        deadline = time.monotonic() + LOG_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.server.log[log_start:]:
                if text in line:
                    return line
            time.sleep(0.1)
        raise AssertionError(
            f"hmacfs logged no {text!r} within {LOG_TIMEOUT:.0f} s:\n  "
            + "\n  ".join(self.server.log[log_start:][-15:])
        )

    def wait_for_soft_limit(self, uploader: str, log_start: int) -> str:
        """The log line of the soft limit's deletion of `uploader`'s files."""
        return self.wait_for_log(f"{uploader} is over its soft limit", log_start)

    def stored_names(self) -> dict[str | None, set[str]]:
        """{uploader recorded in the metadata: names of its files}, read from the storage."""
        found: dict[str | None, set[str]] = {}
        for stored in LocalStorage(self.server.storage).files():
            found.setdefault(stored.uploader, set()).add(stored.rel.rsplit("/", 1)[-1])
        return found


def stored_rel(upload: Upload) -> str:
    """The path the file is stored under: the GET URL's path, decoded, below /upload/."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(upload.outcome["get_url"]).path)
    return path.removeprefix("/upload/")


def names(*uploads: Upload) -> set[str]:
    """The names the files were stored under (the last segment of their paths)."""
    return {stored_rel(upload).rsplit("/", 1)[-1] for upload in uploads}


UploadsFor = Callable[[str], Uploads]


@pytest.fixture
def uploads_for(
    quota_servers: dict[str, Server], quota_certificate: Certificate, tmp_path: Path
) -> UploadsFor:
    """Uploads into the hmacfs of a quota name."""

    def make(quota: str) -> Uploads:
        return Uploads(quota_servers[quota], quota_certificate, tmp_path / "files")

    return make


# -- scenarios --------------------------------------------------------------------------------


def test_hard_limit(
    xmpp: str, accounts: dict[str, dict[str, Account]], uploads_for: UploadsFor
) -> None:
    """uploader_limit 300K: alice's third 120K file is refused with 413 before its body,
    her first two stay; bob, on the same server, is not affected."""
    alice, bob = accounts["hard"]["alice"], accounts["hard"]["bob"]
    uploads = uploads_for("hard")
    first = uploads.stored(alice, "alice-1.bin")
    second = uploads.stored(alice, "alice-2.bin")
    uploads.refused(alice, "alice-3.bin", "upload quota exceeded")
    bobs = uploads.stored(bob, "bob-1.bin")
    uploads.assert_served(first)
    uploads.assert_served(second)

    stored = uploads.stored_names()
    assert stored.get(uploader_of(xmpp, alice)) == names(first, second), stored
    assert stored.get(uploader_of(xmpp, bob)) == names(bobs), stored
    if xmpp == "ejabberd":
        for upload in (first, second, bobs):
            path = urllib.parse.urlsplit(upload.outcome["put_url"]).path
            assert path.split("/")[2] == uploader_of(xmpp, upload.account), path


def test_soft_limit(
    xmpp: str, accounts: dict[str, dict[str, Account]], uploads_for: UploadsFor
) -> None:
    """uploader_soft_limit 300K: alice's third 120K file is stored and her oldest one is
    deleted after it; bob's file stays."""
    alice, bob = accounts["soft"]["alice"], accounts["soft"]["bob"]
    uploads = uploads_for("soft")
    test_start = len(uploads.server.log)  # the Prosody and ejabberd runs share this hmacfs
    first = uploads.stored(alice, "alice-1.bin")
    bobs = uploads.stored(bob, "bob-1.bin")
    second = uploads.stored(alice, "alice-2.bin")
    log_start = len(uploads.server.log)
    third = uploads.stored(alice, "alice-3.bin")
    line = uploads.wait_for_soft_limit(uploader_of(xmpp, alice), log_start)
    assert line.endswith(f"deleted its 1 oldest file(s): {stored_rel(first)}"), line

    uploads.assert_gone(first)
    uploads.assert_served(second)
    uploads.assert_served(third)
    uploads.assert_served(bobs)
    log = uploads.server.log[test_start:]
    deletions = [line for line in log if "is over its soft limit" in line]
    assert len(deletions) == 1, deletions  # none for bob, none before alice's third file
    stored = uploads.stored_names()
    assert stored.get(uploader_of(xmpp, alice)) == names(second, third), stored
    assert stored.get(uploader_of(xmpp, bob)) == names(bobs), stored


def test_daily_limit(
    xmpp: str, accounts: dict[str, dict[str, Account]], uploads_for: UploadsFor
) -> None:
    """uploader_daily_limit 300K with a soft limit of 150K: alice keeps one file stored,
    yet her third upload of the day is refused with 413; bob still uploads."""
    alice, bob = accounts["daily"]["alice"], accounts["daily"]["bob"]
    uploads = uploads_for("daily")
    first = uploads.stored(alice, "alice-1.bin")
    log_start = len(uploads.server.log)
    second = uploads.stored(alice, "alice-2.bin")
    uploads.wait_for_soft_limit(uploader_of(xmpp, alice), log_start)
    uploads.assert_gone(first)
    # 120K stored, 240K uploaded today: the daily limit refuses what the stored bytes allow.
    uploads.refused(alice, "alice-3.bin", "daily upload quota exceeded")
    bobs = uploads.stored(bob, "bob-1.bin")
    uploads.assert_served(second)

    stored = uploads.stored_names()
    assert stored.get(uploader_of(xmpp, alice)) == names(second), stored
    assert stored.get(uploader_of(xmpp, bob)) == names(bobs), stored
