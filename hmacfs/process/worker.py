"""The worker's side of the supervisor's pipe: what a worker is handed, what it reports.

The supervisor starts each worker with WORKER_ENV naming the descriptors of its listening
sockets and of its status pipe. Over the pipe the worker says "ready" once it accepts
connections, then "beat N" every BEAT_INTERVAL seconds (N: its uploads in flight).
"""

from __future__ import annotations

import json
import os
import signal
import sys

from hmacfs.process.listeners import activated_listener
from hmacfs.process.systemd import ActivatedSockets

TYPE_CHECKING = False  # (the supervisor imports no typing: `hmacfs.process.supervisor`)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Protocol

    from hmacfs.core.listener import Listener

#: Environment variable carrying a worker's sockets and status pipe (JSON).
WORKER_ENV = "HMACFS_WORKER"
#: How often a worker reports to its supervisor.
BEAT_INTERVAL = 1.0
#: The exit status of a worker that finds the configuration invalid (`hmacfs.cli`'s): it
#: checks the certificate of the https listeners, which its supervisor leaves to it.
EXIT_CONFIG = 2
#: The exit status of a start that fails otherwise (`hmacfs.cli`'s).
EXIT_FAILURE = 1


class ConfigRefused(RuntimeError):
    """A worker exited with EXIT_CONFIG before it was ready: it found the configuration (or
    the certificate) invalid, and said why on its standard error."""


class StorageRefused(RuntimeError):
    """A worker could not use the storage (its directory, or its bucket) and exited before it
    was ready; the message says why, as a single server's would."""


def start_failed(error: BaseException, notifier: Any) -> int:
    """Say why the start (of a supervisor or a single server) failed, on stderr and in
    STATUS=; returns the exit status (`hmacfs.cli`'s)."""
    if isinstance(error, ConfigRefused):  # (a worker refused the configuration, and said why)
        message, status = str(error), EXIT_CONFIG
    elif isinstance(error, StorageRefused):  # (a worker could not use the storage)
        message, status = str(error), EXIT_FAILURE
    else:
        message, status = f"cannot listen: {error}", EXIT_FAILURE
    print(f"hmac-file-server: {message}", file=sys.stderr, flush=True)
    notifier.status(message)
    return status


def plan_text(
    index: int,
    status_fd: int,
    listen: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    *,
    sweeps: bool = False,
    recount: bool = False,
    kept: Mapping[str, Any] | None = None,
) -> str:
    """WORKER_ENV's value: `listen` and `metrics` list the sockets, each as
    {"name", "fd", "entry", "tls"}; `sweeps` and `recount` say whether this worker sweeps
    the storage and counts its files for the quotas, `kept` the `[server]` values only a
    restart applies, as the supervisor runs them (see `WorkerPlan`)."""
    plan: dict[str, Any] = {
        "index": index, "status_fd": status_fd, "listen": listen, "metrics": metrics,
    }
    if sweeps:
        plan["sweeps"] = True
    if recount:
        plan["recount"] = True
    if kept:
        plan["kept"] = dict(kept)
    return json.dumps(plan)


class WorkerPlan:
    """What the supervisor handed a worker: its sockets (by name) and its status pipe,
    whether it is the one worker that sweeps the storage (reporting each sweep to the
    supervisor) and, at its start, counts the stored files for the quotas, and the
    `[server]` values only a restart applies (`storage_dir`, `sweep_interval`) as the
    supervisor runs them, which a worker started by a reload keeps whatever the file says now
    (`hmacfs.process.restart.keep_running`)."""

    def __init__(
        self,
        *,
        index: int,
        status_fd: int,
        activated: ActivatedSockets,
        listeners: tuple[Listener, ...],
        metrics_listeners: tuple[Listener, ...],
        sweeps: bool = False,
        recount: bool = False,
        kept: Mapping[str, Any] | None = None,
    ) -> None:
        self.index = index
        self.status_fd = status_fd
        self.activated = activated
        self.listeners = listeners
        self.metrics_listeners = metrics_listeners
        self.sweeps = sweeps
        self.recount = recount
        self.kept: dict[str, Any] = dict(kept or {})


def worker_plan(environ: Mapping[str, str] | None = None) -> WorkerPlan | None:
    """The plan in WORKER_ENV, or None when this process is not a worker."""
    env = os.environ if environ is None else environ
    text = env.get(WORKER_ENV)
    if not text:
        return None
    data = json.loads(text)
    activated = ActivatedSockets()
    found: dict[str, list[Listener]] = {"listen": [], "metrics": []}
    for key, target in found.items():
        for item in data[key]:
            fd = int(item["fd"])
            os.set_blocking(fd, False)
            activated.fds.append(fd)
            activated.names[item["name"]] = fd
            target.append(activated_listener(item["name"], bool(item["tls"])))
    return WorkerPlan(
        index=int(data["index"]),
        status_fd=int(data["status_fd"]),
        activated=activated,
        listeners=tuple(found["listen"]),
        metrics_listeners=tuple(found["metrics"]),
        sweeps=bool(data.get("sweeps", False)),
        recount=bool(data.get("recount", False)),
        kept=data.get("kept") or {},
    )


if TYPE_CHECKING:

    class Reporter(Protocol):
        """Where a worker's reports go."""

        def send(self, line: str) -> None:
            """Send one report line; never raises."""


class StatusPipe:
    """The worker's end of the pipe to the supervisor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def send(self, line: str) -> None:
        """Write `line`; if the supervisor is gone, stop this worker (gracefully)."""
        if self.closed:
            return
        try:
            os.write(self.fd, line.encode() + b"\n")
        except OSError:
            # The supervisor is gone: a worker must not outlive it.
            self.closed = True
            from twisted.logger import Logger  # (a worker runs on Twisted; its supervisor not)

            Logger(namespace="hmacfs.process.worker").error("the supervisor went away; stopping")
            os.kill(os.getpid(), signal.SIGTERM)  # the same graceful stop as ever


def ignore_hangup() -> None:
    """Workers are replaced, not reloaded: SIGHUP goes to the supervisor only."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
