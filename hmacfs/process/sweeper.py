"""The storage directory as a process opens it, and the sweeper that keeps it clean.

The single-process node and the supervisor both open the storage here (`open_storage`) and
sweep it with `Sweeper`; workers leave sweeping to their supervisor (one sweep, not one per
worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from hmacfs.core.settings import Config
from hmacfs.process.services import Timer
from hmacfs.storage.backend import SweepReport
from hmacfs.storage.local import LocalStorage

_log = Logger(namespace="hmacfs.process.sweeper")


def open_storage(config: Config, wall: Callable[[], float] = time.time) -> Any:
    """The storage of `config` (its directory, or its bucket); `wall` tells the date (file
    ages, expiry).

    Raises OSError when the directory cannot be created or used, StoreError when the bucket
    does not answer."""
    if config.storage.backend == "s3":
        return open_bucket(config, wall)
    storage = LocalStorage(
        config.server.storage_dir,
        fsync=config.server.fsync,
        file_ttl=config.server.file_ttl,
        clock=wall,
        resumable_ttl=config.server.resumable_ttl,
    )
    if config.quota.counts:
        storage.count_usage()
    return storage


def open_bucket(config: Config, wall: Callable[[], float] = time.time) -> Any:
    """The S3 storage of `config`, once its bucket answered. Raises StoreError (its message
    names what is wrong) and CredentialsError."""
    from hmacfs.core.credentials import load_credentials
    from hmacfs.storage.s3.backend import S3Storage
    from hmacfs.storage.s3.client import BlockingClient, Bucket
    from hmacfs.storage.s3.usage import S3Usage

    settings = config.storage
    assert settings.endpoint is not None and settings.bucket is not None
    client = BlockingClient(
        Bucket(
            settings.endpoint,
            settings.bucket,
            settings.region,
            virtual_host=settings.addressing == "virtual",
        ),
        load_credentials(settings.credentials_file, settings.credentials_profile),
        settings.ca_file,
    )
    client.head_bucket()
    server = config.server
    # No part of a live upload is older than a part's time at the slowest rate allowed.
    if server.min_body_rate:
        stale = settings.part_size / server.min_body_rate + 2 * server.idle_timeout
    else:
        stale = server.resumable_ttl
    storage = S3Storage(
        client,
        prefix=settings.prefix,
        part_size=settings.part_size,
        parts_in_flight=settings.parts_in_flight,
        file_ttl=server.file_ttl,
        resumable_ttl=server.resumable_ttl,
        stale_after=stale,
        sweep_every=server.sweep_interval,
        clock=wall,
    )
    # (kept whatever the limits: a limit set later finds every file since counted)
    storage.accounting = S3Usage(client, settings.prefix, storage.usage, wall)
    return storage


def recount(storage: LocalStorage, config: Config, run_blocking: Callable[..., Any]) -> None:
    """When `config` has limits on stored bytes: count the stored files again for them, on
    a thread (at start, and when a reload sets the first such limit). Until that is done,
    the counts kept from before hold. (An object store's ledger is kept always: nothing to
    count again.)"""
    if not config.quota.counts or storage.remote:
        return

    def counted(total: Any) -> None:
        _log.info(
            "counted {files} stored files, {size} bytes, for the quotas",
            files=total.files,
            size=total.bytes,
        )

    def failed(failure: Any) -> None:
        _log.error("counting the stored files for the quotas failed: {e}",
                   e=failure.getErrorMessage())

    run_blocking(storage.rebuild_usage).addCallbacks(counted, failed)


class Sweeper(Timer):
    """Removes expired files and abandoned partial uploads, on a thread, every `interval`
    seconds of `clock` (the first sweep as it starts).

    `active` names the partial files of uploads still in flight; `metrics`, if given, gets
    the storage figures of every sweep, and `published`, if given, its whole report (the
    supervisor, which has no metrics of its own, hands it on to its workers). A sweep still
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
        if result.elsewhere:
            _log.debug("sweep left to another node of the bucket")
        if self.metrics is not None:
            self.metrics.set_storage(result.files, result.bytes)
            self.metrics.set_kept_partials(result.kept, result.kept_bytes)
        if self.published is not None:
            self.published(result)
        if result.expired or result.partials or result.orphans:
            _log.info(
                "sweep removed {expired} expired files, {partials} abandoned partial"
                " uploads, {orphans} stale metadata entries",
                expired=result.expired,
                partials=result.partials,
                orphans=result.orphans,
            )

    def _failed(self, failure: Any) -> None:
        _log.failure("sweeping the storage directory failed", failure)
