"""The first half of a node's reload (`hmacfs.process.reload` then reconfigures its site),
and what waits for a restart: RESTART_ONLY, which the supervisor's plan names
(`hmacfs.process.planner`), and what of it a worker keeps (`keep_running`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hmacfs.core import config as config_module
from hmacfs.core.config import ConfigError
from hmacfs.core.settings import Config
from hmacfs.process.lines import say_restart_needed

#: `[server]` keys that a reload cannot apply (the sockets, the directory, the processes).
RESTART_ONLY = ("listen", "storage_dir", "workers", "sweep_interval")
#: Those of them that a worker started by a reload keeps as the supervisor runs them (the
#: sockets are the supervisor's, and so is the number of workers).
WORKER_KEEPS = ("storage_dir", "sweep_interval")


class ReloadStopped(Exception):
    """A reload could not be applied to the end (the message says why)."""


def reloadable(old: Config, new: Config, log: Any) -> Config:
    """`new` as a reload can apply it: what only a restart applies keeps its running value
    (and the log says so)."""
    kept = {}
    for key in RESTART_ONLY:
        if getattr(old.server, key) != getattr(new.server, key):
            say_restart_needed(log, f"[server] {key}")
        kept[key] = getattr(old.server, key)
    if old.metrics.listen != new.metrics.listen:
        say_restart_needed(log, "[metrics] listen")
    return replace(
        new,
        server=replace(new.server, **kept),
        metrics=replace(new.metrics, listen=old.metrics.listen),
    )


def keep_running(cfg: Config, kept: Mapping[str, Any]) -> Config:
    """`cfg` as a worker started by a reload runs it: with the `[server]` values only a
    restart applies (`kept`: WORKER_KEEPS, as the supervisor runs them) instead of those the
    file says now."""
    server = cfg.server
    changes: dict[str, Any] = {}
    if "storage_dir" in kept and Path(kept["storage_dir"]) != server.storage_dir:
        changes["storage_dir"] = Path(kept["storage_dir"])
    if "sweep_interval" in kept and float(kept["sweep_interval"]) != server.sweep_interval:
        changes["sweep_interval"] = float(kept["sweep_interval"])
    return replace(cfg, server=replace(server, **changes)) if changes else cfg


def read_again(
    process: Any,
    source: Path,
    *,
    check_certificate: bool,
    loaded: Callable[[Config], object] | None = None,
) -> Config | None:
    """Read `source` again for `process` (its `config`, `log`, `notifier`, `status_text`):
    RELOADING=1, then the configuration to apply (its warnings logged, what only a restart
    applies kept as it runs: `reloadable`), after `loaded` has seen it as read. A file that
    does not load is logged and named in READY=1's STATUS=, and gives None."""
    process.notifier.reloading()
    try:
        new = config_module.load(source, check_certificate=check_certificate)
    except ConfigError as e:
        process.log.error("reload failed, keeping the running configuration: {error}",
                          error=str(e))
        process.notifier.ready(f"reload failed: {e}; {process.status_text()}")
        return None
    if loaded is not None:
        loaded(new)
    for warning in new.warnings:
        process.log.warn("config: {warning}", warning=warning)
    return reloadable(process.config, new, process.log)
