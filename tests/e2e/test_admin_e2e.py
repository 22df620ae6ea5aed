"""The admin commands as an admin runs them, on the storage of a server with two workers that
keeps running: files uploaded over HTTP (a v1 URL and Prosody's JWT with its uploader) are
listed, counted, deleted and pruned, and the server then answers 404 for what went and still
serves the rest; verify finds the storage clean, and finds and repairs an orphan made here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from hmacfs.core import auth
from tests.helpers.client import curl
from tests.helpers.server import Server, hmacfs, start_server
from tests.helpers.signing import SECRET, mac_v1


def put(url: str, body: bytes, *headers: str) -> int:
    args = ["-X", "PUT", "--data-binary", "@-", "-o", "/dev/null", "-w", "%{http_code}"]
    for header in ("Content-Type: text/plain", *headers):
        args += ["-H", header]
    result = curl(*args, url, stdin=body)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def status_of(url: str) -> int:
    result = curl("-o", "/dev/null", "-w", "%{http_code}", url)
    return int(result.stdout)


def upload_v1(server: Server, rel: str, body: bytes) -> str:
    url = server.url(quote(rel))
    assert put(f"{url}?v={mac_v1(rel, len(body))}", body) == 201
    return url


def upload_jwt(server: Server, rel: str, body: bytes, uploader: str) -> str:
    signed = auth.sign(
        "jwt", rel, len(body), "text/plain", SECRET, now=time.time(), uploader=uploader
    )
    url = server.url(quote(rel))
    headers = [f"{name}: {value}" for name, value in signed.headers.items()]
    assert put(url, body, *headers) == 201
    return url


def listed(server: Server, *filters: str) -> dict[str, dict[str, object]]:
    result = hmacfs(server, "list", "--json", *filters)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stdout.splitlines()]
    return {str(entry["path"]): entry for entry in entries}


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return start_server(tmp_path, server_toml="workers = 2")


@pytest.mark.workers
def test_admin_commands_while_the_server_runs(server: Server) -> None:
    slot = uuid.uuid4().hex
    plain = {n: upload_v1(server, f"{slot}/plain {n}.txt", b"plain %d" % n) for n in range(3)}
    juliet = [upload_jwt(server, f"j{n}{slot}/j.txt", b"from juliet", "juliet@example.com")
              for n in range(2)]
    romeo = upload_jwt(server, f"r{slot}/r.txt", b"from romeo", "romeo@example.com")

    entries = listed(server)
    assert len(entries) == 6
    assert entries[f"{slot}/plain 0.txt"]["uploader"] is None
    assert entries[f"r{slot}/r.txt"]["uploader"] == "romeo@example.com"
    assert set(listed(server, "--uploader", "juliet@example.com")) == {
        f"j0{slot}/j.txt", f"j1{slot}/j.txt",
    }

    stats = hmacfs(server, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    counted = json.loads(stats.stdout)
    assert (counted["files"], counted["bytes"]) == (6, 3 * 7 + 2 * 11 + 10)

    verify = hmacfs(server, "verify")
    assert (verify.returncode, verify.stdout) == (0, "clean: 6 files checked\n"), verify.stdout

    # A path and a whole URL.
    deleted = hmacfs(server, "delete", f"{slot}/plain 0.txt", plain[1])
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.splitlines() == [
        f"removed {slot}/plain 0.txt", f"removed {slot}/plain 1.txt",
    ]
    again = hmacfs(server, "delete", f"{slot}/plain 0.txt")
    assert again.returncode == 1 and "no such file" in again.stderr
    bad = hmacfs(server, "delete", "../etc/passwd")
    assert bad.returncode == 2 and "../etc/passwd" in bad.stderr

    dry = hmacfs(server, "prune", "--uploader", "juliet@example.com", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.splitlines()[-1] == "would remove 2 files, 22B"
    assert all(status_of(url) == 200 for url in juliet)
    pruned = hmacfs(server, "prune", "--uploader", "juliet@example.com")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines()[-1] == "removed 2 files, 22B"

    # Every worker answers each request: ask often enough to reach both.
    for _ in range(4):
        for url in (plain[0], plain[1], *juliet):
            assert status_of(url) == 404
        assert status_of(plain[2]) == 200
        assert status_of(romeo) == 200
    assert set(listed(server)) == {f"{slot}/plain 2.txt", f"r{slot}/r.txt"}
    assert hmacfs(server, "verify").returncode == 0
    assert server.process.poll() is None


@pytest.mark.workers
def test_verify_finds_and_repairs_an_orphan(server: Server) -> None:
    kept = upload_v1(server, f"{uuid.uuid4().hex}/kept.txt", b"kept")
    orphan = server.storage / ".hmacfs" / "meta" / "2a" / "42.json"
    orphan.write_text(json.dumps({"v": 1, "path": "gone/file.txt", "size": 3}))
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))

    found = hmacfs(server, "verify", "--json")
    assert found.returncode == 1
    (finding,) = [json.loads(line) for line in found.stdout.splitlines()]
    assert (finding["kind"], finding["path"]) == ("orphaned metadata", ".hmacfs/meta/2a/42.json")

    repaired = hmacfs(server, "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "-> removed" in repaired.stdout
    assert not orphan.exists()
    assert hmacfs(server, "verify").returncode == 0
    assert status_of(kept) == 200


def _read_only_bind(storage: Path) -> list[str]:
    """A command prefix that runs a command with `storage` mounted read-only over itself, in
    a mount namespace of its own (the test command runs as root, as the fault tests do)."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed for the read-only storage test"
    probe = subprocess.run(
        [unshare, "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0"', str(storage)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert probe.returncode == 0, (
        f"a read-only bind mount needs root and mount namespaces: {probe.stderr.strip()}"
    )
    return [unshare, "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && shift && exec "$@"',
            str(storage)]


@pytest.mark.workers
def test_a_read_only_storage(server: Server) -> None:
    prefix = _read_only_bind(server.storage)
    upload_v1(server, f"{uuid.uuid4().hex}/ro.txt", b"ro")
    base = [sys.executable, "-m", "hmacfs", "--config", str(server.config_path)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, "-", *base, *args], capture_output=True, text=True, timeout=60,
            check=False,
        )

    for args in (("list",), ("stats",), ("verify",), ("prune", "--expired", "--dry-run")):
        result = run(*args)
        assert result.returncode == 0, (args, result.stderr)
    for args in (("delete", "x/y.txt"), ("prune", "--expired"), ("verify", "--repair")):
        result = run(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert "cannot write to storage_dir" in result.stderr
        assert "Read-only file system" in result.stderr
