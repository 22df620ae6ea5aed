"""The supervisor's plan, made from the configuration by a process that reads it.

The supervisor (`hmacfs.process.supervisor`) holds no configuration code: the command that
starts it reads the file, makes its plan (`supervisor_plan`) and hands it over across an exec
(`start_supervisor`); at a reload, a short-lived child (`python -m hmacfs.process.planner
FILE`) reads the file again and writes one line of JSON on its standard output: {"plan": ...}
or, for a file that does not load, {"error": "the reason, naming the key and the file"}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from hmacfs.core import config as config_module
from hmacfs.core.config import ConfigError
from hmacfs.core.settings import Config
from hmacfs.process.restart import RESTART_ONLY, WORKER_KEEPS
from hmacfs.process.systemd import ActivatedSockets


def supervisor_plan(cfg: Config) -> dict[str, Any]:
    """`cfg` as the supervisor runs it (`SupervisorPlan` says what each entry is)."""
    if cfg.source is None:
        raise ValueError("worker processes read the configuration file: it needs one")
    server = cfg.server
    restart_only: dict[str, Any] = {
        f"[server] {key}": _jsonable(getattr(server, key)) for key in RESTART_ONLY
    }
    restart_only["[metrics] listen"] = list(cfg.metrics.listen)
    return {
        "source": str(cfg.source),
        "listeners": [listener.as_dict() for listener in server.listeners],
        "metrics_listeners": [listener.as_dict() for listener in cfg.metrics.listeners],
        "log_level": server.log_level,
        "storage_dir": str(server.storage_dir),
        "shutdown_timeout": server.shutdown_timeout,
        "counts_stored_files": cfg.counts_stored_files,
        "quota_counts": cfg.quota.counts,
        "warnings": list(cfg.warnings),
        "restart_only": restart_only,
        "kept": {key: restart_only[f"[server] {key}"] for key in WORKER_KEEPS},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    return value


def answer(source: Path) -> dict[str, Any]:
    """What the planner writes for the file at `source`."""
    try:
        cfg = config_module.load(source, check_certificate=False)
    except ConfigError as e:
        return {"error": str(e)}
    return {"plan": supervisor_plan(cfg)}


def start_supervisor(
    cfg: Config, *, count: int, activated: ActivatedSockets, metrics_dir: Path
) -> None:
    """Replace this process by the supervisor of `count` workers for `cfg` (it never returns).

    The new interpreter runs without the site packages (-S), finding hmacfs and sdnotify
    where this process found them, and keeps its docstrings: without -OO it finds the
    bytecode Debian compiled at installation, where with it (a directory it cannot write) it
    would compile every module it imports at every start, which costs more memory (about
    3 MiB with Debian's python3) than the docstrings it would leave out (about 0.1). It keeps
    the pid (systemd's main process), the sockets systemd passed, and the signals it handles
    blocked until it has its handlers."""
    from hmacfs.process.supervisor import HANDLED_SIGNALS, SUPERVISOR_ENV

    for fd in activated.fds:
        os.set_inheritable(fd, True)
    handed = {
        "plan": supervisor_plan(cfg),
        "count": count,
        "activated": {"fds": activated.fds, "names": activated.names},
        "metrics_dir": str(metrics_dir),
    }
    os.environ[SUPERVISOR_ENV] = json.dumps(handed)
    child_search_path(os.environ)
    script = str(Path(__file__).with_name("supervise.py"))
    roots = [root for root in _import_roots() if root]
    argv = [sys.executable, "-S", "-P", script, "--config", str(cfg.source), *roots]
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        os.execv(sys.executable, argv)  # noqa: S606 (this interpreter, a fixed command line)
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        raise


def _import_roots() -> list[str]:
    """Where this process found hmacfs and sdnotify: the directories a supervisor without the
    site packages adds to its path."""
    import importlib.util

    from hmacfs.process.supervisor import PACKAGE_ROOT

    roots = [PACKAGE_ROOT]
    spec = importlib.util.find_spec("sdnotify")
    if spec is not None and spec.origin:
        found = Path(spec.origin).resolve()
        roots.append(str(found.parents[1] if found.name == "__init__.py" else found.parent))
    return list(dict.fromkeys(roots))


def child_search_path(env: MutableMapping[str, str]) -> None:
    """Put where this process found hmacfs on `env`'s PYTHONPATH when it was found only
    through the working directory (`python -m hmacfs` in a checkout), which the children
    (started with -P) do not search."""
    from hmacfs.process.supervisor import PACKAGE_ROOT

    # (sys.path[0] is the working directory or the script's, which a child has not)
    inherited = sys.path if sys.flags.safe_path else sys.path[1:]
    if PACKAGE_ROOT not in {os.path.realpath(p) for p in inherited if p}:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if len(words) != 1:
        print("usage: python -m hmacfs.process.planner CONFIG", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(answer(Path(words[0]))) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
