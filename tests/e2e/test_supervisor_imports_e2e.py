"""The real supervisor, with two workers and an https listener, runs without anything only
serving needs: no web layer, no prometheus_client, no pyOpenSSL, no libssl/libcrypto, no
storage, no configuration code. Its workers, which serve, check the certificate, serve TLS,
and show worker 0's sweeps in /metrics.

What a worker imported is written at its exit by a sitecustomize module put on the server's
PYTHONPATH (the server itself has no hook for it). The supervisor runs without the site
packages (-S), so without sitecustomize: what it imports is written by the same code run
first in its command line, the one the starting command would exec. The shared objects each
process has loaded are read from /proc/PID/maps while it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import hmacfs.process.supervise
from tests.certs import TestCA
from tests.e2e.test_service_e2e import put_url, upload
from tests.helpers.client import curl
from tests.helpers.server import (
    config_text,
    start_server,
    stop_server,
    wait_for,
    workers_of,
    write_config,
)

SITECUSTOMIZE = textwrap.dedent(
    """
    import atexit, json, os, sys

    def _write():
        path = os.path.join(os.environ["HMACFS_TEST_MODULES"], f"{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump(sorted(name for name, m in sys.modules.items() if m is not None), f)

    atexit.register(_write)
    """
)
#: Modules (and submodules) that only serving needs.
SERVING_ONLY = (
    "twisted.web",
    "prometheus_client",
    "OpenSSL",
    "cryptography",
    "ssl",
    "_ssl",
    "_hashlib",
    "hmacfs.http",
    "hmacfs.metrics",
    "hmacfs.process.node",
    "hmacfs.process.tls",
)
#: What a supervisor does without: the storage (worker 0 sweeps it) and threading (its sweeps
#: ran on threads when the supervisor made them); and what something it runs on would import
#: for a little use (about 2.1 MiB in all): the IDNA codec (getaddrinfo given a str), tempfile,
#: shutil and the compression modules (tempfile, argparse's help formatter), hashlib and
#: secrets (the storage's names), traceback (only for a failure), fractions and decimal (exact
#: sizes and durations; Twisted's web layer imports decimal in a worker).
SUPERVISOR_DOES_WITHOUT = (
    "hmacfs.storage.local",
    "hmacfs.process.stores",
    "threading",
    "fractions",
    "decimal",
    "encodings.idna",
    "unicodedata",
    "tempfile",
    "shutil",
    "bz2",
    "lzma",
    "random",
    "hashlib",
    "secrets",
    "hmac",
    "traceback",
)
#: The configuration's code, and what it runs on, which the supervisor leaves to the command
#: that starts it and to the short-lived reader of the file at a reload.
CONFIGURATION = (
    "hmacfs.core.config",
    "hmacfs.core.settings",
    "hmacfs.core.units",
    "hmacfs.process.planner",
    "hmacfs.process.restart",
    "tomllib",
    "typing",
    "dataclasses",
    "inspect",
    "pathlib",
    "datetime",
    "ipaddress",
)
#: Shared objects that only serving (TLS) loads.
SERVING_LIBRARIES = ("libssl.so", "cryptography", "_ssl.cpython", "_hashlib.cpython")


def among(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def libraries(pid: int) -> set[str]:
    """Which of SERVING_LIBRARIES process `pid` has loaded."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {library for library in SERVING_LIBRARIES if library in maps}


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


@pytest.mark.workers
def test_the_supervisor_loads_nothing_that_only_serving_needs(tmp_path: Path) -> None:
    hook, modules = tmp_path / "hook", tmp_path / "modules"
    hook.mkdir()
    modules.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "ca").mkdir()
    leaf = TestCA(tmp_path / "ca").issue("localhost")
    server = start_server(
        tmp_path,
        listen=("127.0.0.1:0", "https://127.0.0.1:0"),
        workers=2,
        server_toml='sweep_interval = "1s"',
        extra_toml=(
            f'[tls]\ncertificate = "{leaf.certificate}"\nkey = "{leaf.key}"\n'
            '[metrics]\nlisten = ["127.0.0.1:0"]\n'
        ),
        env={"PYTHONPATH": str(hook), "HMACFS_TEST_MODULES": str(modules)},
    )
    supervisor = server.process.pid
    workers = workers_of(server, 2)
    assert libraries(supervisor) == set()
    # It is the process the command started, which became the supervisor's command line.
    command = Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")
    assert command[1:4] == [b"-S", b"-P", str(SUPERVISE).encode()], command
    for pid in workers:
        assert {"libssl.so", "cryptography"} <= libraries(pid)  # (TLS is served)
    # The workers show worker 0's sweeps (the supervisor, which has no metrics of its own,
    # opens no storage).
    assert upload(put_url(server.base, f"{uuid.uuid4()}/a.txt", 3), b"abc") == 201
    address = next(a for a in server.addresses if a.endswith("(metrics)")).split()[0]

    def stored() -> float | None:
        text = curl(f"http://{address}/metrics").stdout.decode()
        return metric(text, "hmacfs_storage_files")

    assert wait_for(lambda: stored() == 1, 20, "the sweep's figures in /metrics")
    assert stop_server(server) == 0
    written = {int(p.stem): json.loads(p.read_text()) for p in modules.iterdir()}
    assert set(written) == set(workers), server.log_tail()
    for pid in workers:
        found = among(written[pid], SERVING_ONLY)
        assert {"twisted.web", "prometheus_client", "OpenSSL", "hmacfs.http"} <= set(found)
        # (and the check finds those modules where they are used)
        found = among(written[pid], SUPERVISOR_DOES_WITHOUT)
        assert {
            "hashlib", "secrets", "tempfile", "shutil", "traceback", "decimal",
            "hmacfs.storage.local", "threading",
        } <= set(found)
        assert {"hmacfs.core.config", "tomllib", "typing", "dataclasses"} <= set(
            among(written[pid], CONFIGURATION)
        )


#: The supervisor's own command line, as the starting command execs it.
SUPERVISE = Path(hmacfs.process.supervise.__file__).resolve()
#: The supervisor's command line with a first word that writes, at its exit, what it imported.
WITH_MODULES_WRITTEN = textwrap.dedent(
    """
    import atexit, json, sys
    path, script = sys.argv[1], sys.argv[2]

    def _write():
        with open(path, "w") as f:
            json.dump(sorted(name for name, m in sys.modules.items() if m is not None), f)

    atexit.register(_write)
    sys.argv = sys.argv[2:]
    with open(script) as f:
        code = compile(f.read(), script, "exec")
    exec(code, {"__name__": "__main__", "__file__": script})
    """
)
#: What the starting command runs instead of its exec: it writes the command line and the
#: environment it would have given the supervisor.
EXEC_WRITTEN = textwrap.dedent(
    """
    import json, os, sys
    from hmacfs import cli

    def _written(executable, argv):
        with open(os.environ["HMACFS_TEST_EXEC"], "w") as f:
            json.dump({"argv": argv, "env": dict(os.environ)}, f)
        os._exit(0)

    os.execv = _written
    sys.exit(cli.main(sys.argv[1:]))
    """
)


@pytest.mark.workers
def test_the_supervisor_imports_no_configuration_code_and_nothing_for_serving(
    tmp_path: Path,
) -> None:
    """The exact command line the starting command execs, run from start to stop with a
    reload between: what the supervisor imported meanwhile (the reload's reading of the file
    included) holds none of the configuration's code, nothing only serving needs, nothing
    it does without; its workers find the new configuration in use."""
    path = tmp_path / "config.toml"
    write_config(path, config_text(tmp_path / "files", workers=2, log_level="info"))
    handed = tmp_path / "exec.json"
    env = {**os.environ, "HMACFS_TEST_EXEC": str(handed), "RUNTIME_DIRECTORY": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", EXEC_WRITTEN, "--config", str(path), "run"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    exec_call = json.loads(handed.read_text())
    argv = exec_call["argv"]
    assert argv[1:4] == ["-S", "-P", str(SUPERVISE)] and argv[4:6] == ["--config", str(path)]
    modules = tmp_path / "supervisor-modules.json"
    command = [*argv[:3], "-c", WITH_MODULES_WRITTEN, str(modules), *argv[3:]]
    process = subprocess.Popen(command, env=exec_call["env"], stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    try:
        assert process.stderr is not None
        for wanted, then in (("ready; storing in", signal.SIGHUP),
                             ("configuration reloaded", signal.SIGTERM)):
            while not any(wanted in line for line in said):
                line = process.stderr.readline()
                assert line, "".join(said)
                said.append(line)
            process.send_signal(then)
        said += process.stderr.readlines()
        assert process.wait(timeout=30) == 0, "".join(said)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    imported = json.loads(modules.read_text())
    assert among(imported, CONFIGURATION) == [], among(imported, CONFIGURATION)
    assert among(imported, SERVING_ONLY) == []
    assert among(imported, SUPERVISOR_DOES_WITHOUT) == []
    assert among(imported, ("twisted", "zope", "attr", "asyncio", "argparse")) == []
    # (and the check finds what it looks for where it is: the supervisor's own modules)
    assert {"hmacfs.process.supervisor", "hmacfs.process.loop", "socket", "json"} <= set(imported)


def run_until_it_exits(path: Path) -> subprocess.CompletedProcess[str]:
    """`hmac-file-server --config PATH run`, for a start that fails."""
    return subprocess.run(
        [sys.executable, "-m", "hmacfs", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.workers
def test_with_workers_a_certificate_that_does_not_load_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    """The supervisor leaves the certificate to its workers; they refuse to start with it,
    and the command fails as for any configuration error (exit status 2, the key named)."""
    path = tmp_path / "config.toml"
    text = config_text(
        tmp_path / "files",
        listen=("127.0.0.1:0", "https://127.0.0.1:0"),
        workers=2,
        log_level="info",
        extra_toml=f'[tls]\ncertificate = "{tmp_path / "no.pem"}"\nkey = "{tmp_path / "no.key"}"',
    )
    write_config(path, text)
    done = run_until_it_exits(path)
    assert done.returncode == 2, done.stderr
    assert "[tls] certificate" in done.stderr
    assert "found the configuration invalid" in done.stderr


@pytest.mark.workers
def test_with_workers_a_storage_that_cannot_be_used_fails_the_start_with_its_reason(
    tmp_path: Path,
) -> None:
    """The supervisor opens no storage: its workers find that they cannot use it, and the
    command fails as a single server does, saying why (once), with exit status 1."""
    path = tmp_path / "config.toml"
    taken = tmp_path / "files"
    taken.write_text("a file where the storage directory should be\n")
    write_config(path, config_text(taken, workers=2, log_level="info"))
    done = run_until_it_exits(path)
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("hmac-file-server: ")]
    assert said == [f"hmac-file-server: cannot use storage_dir {taken}: File exists"], (
        done.stderr
    )
