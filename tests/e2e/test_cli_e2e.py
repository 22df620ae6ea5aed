"""The command line as an admin uses it: check-config, sign (then curl), dev, --version."""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from hmacfs import __version__
from tests.helpers.client import curl
from tests.helpers.server import Server
from tests.helpers.signing import SECRET


def hmacfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hmacfs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_version() -> None:
    result = hmacfs("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_check_config_masks_the_secret(server: Server) -> None:
    result = hmacfs("--config", str(server.config_path), "check-config")
    assert result.returncode == 0, result.stderr
    assert "max_upload_size" in result.stdout
    assert SECRET.decode() not in result.stdout + result.stderr


def test_config_error_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[server]\nmax_upload_size = "100Q"\n[hmac]\nsecret = "s3cret-s3cret-s3cret"\n'
    )
    for command in ("check-config", "run"):
        result = hmacfs("--config", str(config), command)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert str(config) in lines[0]
        assert "max_upload_size" in lines[0]
        assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = hmacfs("--config", str(tmp_path / "nope.toml"), "check-config")
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("scheme", ["v", "v2", "token", "v3", "jwt", "basic", "cookie", "x-hmac"])
def test_sign_prints_a_url_that_uploads(server: Server, tmp_path: Path, scheme: str) -> None:
    source = tmp_path / "photo.jpg"
    source.write_bytes(os.urandom(1234))
    rel = f"{uuid.uuid4()}/photo {scheme}.jpg"
    result = hmacfs(
        "--config", str(server.config_path), "sign", rel, "--file", str(source),
        "--type", "image/jpeg", "--scheme", scheme,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    upload = next(line for line in lines if line.startswith("# upload: "))
    words = shlex.split(upload.removeprefix("# upload: "))
    assert words[0] == "curl"
    # The printed command uses the configured public address; point it at the test port.
    words = [w.replace("127.0.0.1:0", f"127.0.0.1:{server.port}") for w in words]
    put = subprocess.run(
        [*words, "-o", "/dev/null", "-w", "%{http_code}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert put.stdout == b"201", (put.stdout, put.stderr, lines)
    download = next(line for line in lines if line.startswith("# download: "))
    url = shlex.split(download.removeprefix("# download: "))[-1]
    got = curl(url.replace("127.0.0.1:0", f"127.0.0.1:{server.port}"))
    assert got.stdout == source.read_bytes()


def test_dev_server_prints_a_working_example(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hmacfs", "dev", "--port", "0", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    try:
        commands: list[str] = []
        deadline = time.monotonic() + 30
        while len(commands) < 2 and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.strip().startswith("curl "):
                commands.append(line.strip())
        assert len(commands) == 2, "the dev server printed no curl lines"
        put = subprocess.run(
            [*shlex.split(commands[0]), "-o", "/dev/null", "-w", "%{http_code}"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert put.stdout == b"201", put.stderr
        get = subprocess.run(
            shlex.split(commands[1]), capture_output=True, timeout=60, check=False
        )
        assert get.stdout == b"hello from hmac-file-server\n"
        assert list((tmp_path / "var" / "files").iterdir())
    finally:
        process.terminate()
        process.wait(timeout=15)
