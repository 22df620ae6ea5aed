"""What each kind of process imports: a supervisor nothing that only serving needs, a worker
no admin command and no argparse.

Each check runs in a fresh interpreter (this one has imported everything), the code path of
the real command: reading the configuration as `run` does, then importing what the process
imports. The same script with a process that serves finds the web layer and TLS, so that the
checks are seen to be able to fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hmacfs
from hmacfs import admin
from hmacfs.admin import commands
from tests.helpers.signing import SECRET

ROOT = Path(hmacfs.__file__).resolve().parents[1]

#: Modules (and their submodules) only serving needs, none of which a supervisor may load.
SERVING_ONLY = (
    "twisted.web",
    "prometheus_client",
    "OpenSSL",
    "cryptography",
    "hmacfs.http",
    "hmacfs.metrics",
    "hmacfs.core.auth",
    "hmacfs.process.node",
    "hmacfs.process.tls",
)
#: What Twisted and the storage would import if they could, and the command hides from a
#: supervisor (they load libssl and libcrypto): the standard library's TLS, OpenSSL's hashes.
TLS_LIBRARIES = ("ssl", "_ssl", "_hashlib")
#: What a supervisor does without (about 1.8 MiB), though what it runs on would import it for
#: a little use: tempfile and shutil (with the compression modules), hashlib and secrets
#: (names in the storage), traceback (needed for a failure only), decimal (exact sizes and
#: durations in the configuration; Twisted's web layer imports it in a process that serves).
LITTLE_USED = (
    "tempfile", "shutil", "bz2", "lzma", "hashlib", "secrets", "traceback", "decimal",
)
#: What the workers have and a supervisor does without: the storage (worker 0 sweeps it), and
#: the threads its sweeps ran on when the supervisor made them.
STORAGE = ("hmacfs.storage.local", "hmacfs.storage.held", "hmacfs.process.stores", "threading")
#: What no server process needs: the admin commands (and argparse, for a worker).
ADMIN_ONLY = ("hmacfs.admin.commands", "hmacfs.admin.inventory", "hmacfs.admin.migrate")


def loaded(code: str, *prefixes: str, env: dict[str, str] | None = None) -> list[str]:
    """The modules among `prefixes` (each with its submodules) that running `code` in a fresh
    interpreter has imported."""
    script = (
        f"{code}\nimport json, sys\nprefixes = {prefixes!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None"
        " and any(m == p or m.startswith(p + '.') for p in prefixes))))"
    )
    environment = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: list[str] = json.loads(done.stdout.splitlines()[-1])
    return found


def config_file(tmp_path: Path, *, workers: int, https: bool = True) -> Path:
    """A configuration (with an https listener whose certificate does not exist: a
    supervisor must not even try to read it), in a directory of its own under `tmp_path`."""
    tmp_path = tmp_path / f"workers-{workers}-{'https' if https else 'http'}"
    tmp_path.mkdir(exist_ok=True)
    lines = [
        "[server]",
        'listen = ["127.0.0.1:0", "https://127.0.0.1:0"]' if https else 'listen = "127.0.0.1:0"',
        f"storage_dir = {json.dumps(str(tmp_path / 'files'))}",
        f"workers = {workers}",
        "[hmac]",
        f"secret = {json.dumps(SECRET.decode())}",
    ]
    if https:
        lines += [
            "[tls]",
            f"certificate = {json.dumps(str(tmp_path / 'missing.pem'))}",
            f"key = {json.dumps(str(tmp_path / 'missing.key'))}",
        ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


def the_command_up_to_its_process(*argv: str) -> str:
    """The real `hmac-file-server ARGV`, stopped once its process (supervisor or node) has
    imported what it runs on, before the reactor starts."""
    return (
        "from hmacfs import cli\n"
        "class Stop(Exception):\n"
        "    pass\n"
        "chosen = cli.process_class\n"
        "def stop_there(cfg):\n"
        "    chosen(cfg)\n"
        "    raise Stop\n"
        "cli.process_class = stop_there\n"
        "try:\n"
        f"    cli.main({list(argv)!r})\n"
        "except Stop:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('the command ended before it chose its process')\n"
    )


#: The configuration's code and what it runs on, which a supervisor does without (the
#: command that starts it reads the file, and so does a short-lived child at a reload).
CONFIGURATION = (
    "hmacfs.core.config", "hmacfs.core.settings", "hmacfs.core.units", "hmacfs.process.planner",
    "hmacfs.process.restart", "tomllib", "typing", "dataclasses", "inspect", "pathlib",
    "datetime", "argparse",
)


def supervisor_loaded(code: str, *prefixes: str) -> list[str]:
    """What `loaded` finds, in an interpreter started as the supervisor's is: without the site
    packages (-S), hmacfs found after the standard library."""
    found: list[str] = json.loads(subprocess.run(
        [sys.executable, "-S", "-P", "-c",
         f"import sys\nsys.path.append({str(ROOT)!r})\n{code}\nimport json\n"
         f"prefixes = {prefixes!r}\n"
         "print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None"
         " and any(m == p or m.startswith(p + '.') for p in prefixes))))"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout)
    return found


def test_the_supervisor_module_loads_nothing_it_does_without() -> None:
    """(tests/e2e/test_supervisor_imports_e2e.py runs the supervisor's real command line.)"""
    code = "import hmacfs.process.supervisor"
    for kind in (SERVING_ONLY, TLS_LIBRARIES, ADMIN_ONLY, LITTLE_USED, STORAGE, CONFIGURATION,
                 ("twisted", "zope", "attr", "asyncio")):
        assert supervisor_loaded(code, *kind) == [], kind
    # (the same check finds them once imported)
    found = supervisor_loaded(code + "\nimport typing, dataclasses", "typing", "dataclasses")
    assert {"typing", "dataclasses"} <= set(found)


def test_the_command_of_a_supervisor_execs_the_supervisors_command_line(
    tmp_path: Path,
) -> None:
    """It reads the configuration and hands over the plan, and imports nothing that only
    serving needs meanwhile (the TLS libraries included)."""
    path = config_file(tmp_path, workers=2)
    code = (
        "import json, os, sys\nfrom hmacfs import cli\n"
        "def execv(executable, argv):\n"
        "    modules = sorted(m for m in sys.modules if sys.modules[m] is not None)\n"
        "    print(json.dumps({'argv': argv, 'plan': os.environ['HMACFS_SUPERVISOR'],"
        " 'modules': modules}))\n"
        "    sys.stdout.flush()\n"
        "    os._exit(0)\n"
        "os.execv = execv\n"
        f"cli.main(['--config', {str(path)!r}])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "RUNTIME_DIRECTORY": str(tmp_path)}, check=False,
    )
    assert done.returncode == 0, done.stderr
    handed = json.loads(done.stdout.splitlines()[-1])
    supervise = str(ROOT / "hmacfs" / "process" / "supervise.py")
    assert handed["argv"][:4] == [sys.executable, "-S", "-P", supervise]
    assert handed["argv"][4:6] == ["--config", str(path)]
    plan = json.loads(handed["plan"])
    assert plan["count"] == 2 and plan["plan"]["source"] == str(path)
    assert [item["text"] for item in plan["plan"]["listeners"]] == [
        "127.0.0.1:0", "https://127.0.0.1:0"
    ]
    modules = handed["modules"]
    for prefix in (*SERVING_ONLY, *TLS_LIBRARIES, *ADMIN_ONLY[:1], *STORAGE, "twisted"):
        assert not any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix


def test_a_process_that_serves_loads_the_web_layer(tmp_path: Path) -> None:
    """The counterpart of the checks above: the same path for a single process finds it."""
    path = config_file(tmp_path, workers=1, https=False)
    found = loaded(the_command_up_to_its_process("--config", str(path), "run"), *SERVING_ONLY)
    assert {"twisted.web", "hmacfs.http", "hmacfs.metrics", "prometheus_client"} <= set(found)
    found = loaded(the_command_up_to_its_process("--config", str(path), "run"), *LITTLE_USED)
    assert set(found) == set(LITTLE_USED)
    found = loaded(the_command_up_to_its_process("--config", str(path), "run"), *STORAGE)
    assert set(found) == set(STORAGE)


def test_a_worker_loads_neither_argparse_nor_the_admin_commands(tmp_path: Path) -> None:
    path = config_file(tmp_path, workers=2, https=False)
    plan = {"index": 0, "status_fd": 1, "listen": [], "metrics": []}  # (what it is handed)
    command = the_command_up_to_its_process("--config", str(path), "worker")
    env = {"HMACFS_WORKER": json.dumps(plan)}
    assert loaded(command, "argparse", "difflib", *ADMIN_ONLY, env=env) == []
    assert "twisted.web" in loaded(command, "twisted.web", env=env)


def test_the_admin_commands_are_loaded_when_they_run() -> None:
    assert set(admin.COMMANDS) == {*commands.COMMANDS, "migrate-config"}
    assert loaded("import hmacfs.cli; hmacfs.cli.build_parser()", *ADMIN_ONLY) == []


#: Twisted's service framework, with the plugin system and persistence it brings: no process
#: uses them (`hmacfs.process.services` stands in, at about 1 MiB less a process).
SERVICE_FRAMEWORK = ("twisted.application", "twisted.plugin", "twisted.persisted.sob", "automat")


def test_no_server_process_loads_twisteds_service_framework(tmp_path: Path) -> None:
    assert supervisor_loaded("import hmacfs.process.supervisor", *SERVICE_FRAMEWORK) == []
    single = config_file(tmp_path, workers=1, https=False)
    assert loaded(the_command_up_to_its_process("--config", str(single), "run"),
                  *SERVICE_FRAMEWORK) == []
    plan = {"index": 0, "status_fd": 1, "listen": [], "metrics": []}
    worker = the_command_up_to_its_process("--config", str(single), "worker")
    assert loaded(worker, *SERVICE_FRAMEWORK, env={"HMACFS_WORKER": json.dumps(plan)}) == []
    # (what the check looks for is there to find once imported)
    assert "twisted.application.service" in loaded(
        "import twisted.application.service", *SERVICE_FRAMEWORK
    )


def test_every_process_that_serves_runs_on_the_servers_reactor(tmp_path: Path) -> None:
    show = "\nfrom twisted.internet import reactor\nprint(type(reactor).__module__)\n"
    single = config_file(tmp_path, workers=1, https=False)
    plan = {"index": 0, "status_fd": 1, "listen": [], "metrics": []}
    for argv, extra in (
        (("--config", str(single), "run"), {}),
        (("--config", str(single), "worker"), {"HMACFS_WORKER": json.dumps(plan)}),
    ):
        code = the_command_up_to_its_process(*argv) + show
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **extra},
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "hmacfs.process.reactor", argv
