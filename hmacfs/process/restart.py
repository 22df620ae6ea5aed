"""What a reload applies and what waits for a restart, for the node and the supervisor alike
(without Twisted: the supervisor runs without it)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

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
