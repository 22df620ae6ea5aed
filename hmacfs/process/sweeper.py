"""The sweeper of a node, on Twisted's reactor: it keeps the storage clean. With worker
processes one of them sweeps (the one its supervisor asks to), and reports each sweep."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from hmacfs.core.settings import Config
from hmacfs.process.services import Timer
from hmacfs.process.stores import tell_count_failed, tell_counted, tell_sweep
from hmacfs.storage.backend import SweepReport
from hmacfs.storage.local import LocalStorage

_log = Logger(namespace="hmacfs.process.sweeper")


def recount(
    storage: LocalStorage, config: Config, run_blocking: Callable[..., Any]
) -> defer.Deferred[None] | None:
    """When `config` has limits on stored bytes: count the stored files again for them, on
    a thread (at start, and when a reload sets the first such limit). Until that is done,
    the counts kept from before hold. (An object store's ledger is kept always: nothing to
    count again.) What fires once the count is over, whichever way; None if there is none."""
    if not config.counts_stored_files:
        return None

    def counted(total: Any) -> None:
        tell_counted(_log, total)

    def failed(failure: Any) -> None:
        tell_count_failed(_log, failure.getErrorMessage())

    counting: defer.Deferred[None] = run_blocking(storage.rebuild_usage)
    return counting.addCallbacks(counted, failed)


class Sweeper(Timer):
    """Removes expired files and abandoned partial uploads, on a thread, every `interval`
    seconds of `clock` (the first sweep as it starts).

    `active` names the partial files of uploads still in flight; `metrics`, if given, gets
    the storage figures of every sweep, and `published`, if given, its whole report (the
    sweeping worker hands it on to the other workers and to its supervisor). A sweep still
    running when the next is due delays it; stopping waits for it.
    """

    def __init__(
        self,
        storage: LocalStorage,
        interval: float,
        run_blocking: Callable[..., defer.Deferred[Any]],
        *,
        clock: Any,
        active: Callable[[], frozenset[str]] = frozenset,
        metrics: Any = None,
        published: Callable[[SweepReport], None] | None = None,
    ) -> None:
        super().__init__(interval, self.sweep, clock)
        self.storage = storage
        self.run_blocking = run_blocking
        self.active = active
        self.metrics = metrics
        self.published = published
        #: What the last sweep found (None until one has finished).
        self.last: SweepReport | None = None

    def sweep(self) -> defer.Deferred[None]:
        """Sweep once, on a thread. The result never fails: a failure is logged."""
        d = self.run_blocking(self.storage.sweep, self.active())
        return d.addCallbacks(self._report, self._failed)

    def _report(self, result: SweepReport) -> None:
        self.last = result
        tell_sweep(_log, result, self.metrics, self.published)

    def _failed(self, failure: Any) -> None:
        _log.failure("sweeping the storage directory failed", failure)
