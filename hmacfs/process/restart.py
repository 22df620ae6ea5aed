"""The first half of a reload, and what waits for a restart, for the node and the supervisor
alike (without Twisted: the supervisor runs without it). Each then applies the configuration
its own way: the node reconfigures its site (`hmacfs.process.reload`), the supervisor
replaces its workers (`hmacfs.process.supervisor`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hmacfs.core import config as config_module
from hmacfs.core.config import ConfigError
from hmacfs.core.settings import Config

#: `[server]` keys that a reload cannot apply (the sockets, the directory, the processes).
RESTART_ONLY = ("listen", "storage_dir", "workers", "sweep_interval")


class ReloadStopped(Exception):
    """A reload could not be applied to the end (the message says why)."""


def reloadable(old: Config, new: Config, log: Any) -> Config:
    """`new` as a reload can apply it: what only a restart applies keeps its running value
    (and the log says so)."""
    kept = {}
    for key in RESTART_ONLY:
        if getattr(old.server, key) != getattr(new.server, key):
            log.warn("[server] {key} changed: restart the service to apply it", key=key)
        kept[key] = getattr(old.server, key)
    if old.metrics.listen != new.metrics.listen:
        log.warn("[metrics] listen changed: restart the service to apply it")
    return replace(
        new,
        server=replace(new.server, **kept),
        metrics=replace(new.metrics, listen=old.metrics.listen),
    )


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
