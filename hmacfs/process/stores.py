"""The storage as a process opens it, and what a sweep or a count tells the log; without
Twisted, so that the admin commands load none of it.

Every node opens the storage here (`open_storage`); the single-process node sweeps it
(`hmacfs.process.sweeper`), and with worker processes worker 0 does (one sweep, not one per
worker). The supervisor opens no storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hmacfs.core.settings import Config
from hmacfs.storage.backend import SweepReport
from hmacfs.storage.local import LocalStorage


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


def tell_counted(log: Any, total: Any) -> None:
    log.info(
        "counted {files} stored files, {size} bytes, for the quotas",
        files=total.files,
        size=total.bytes,
    )


def tell_count_failed(log: Any, message: str) -> None:
    log.error("counting the stored files for the quotas failed: {e}", e=message)


def tell_sweep(
    log: Any,
    result: SweepReport,
    metrics: Any = None,
    published: Callable[[SweepReport], None] | None = None,
) -> None:
    """Log what sweep `result` did, and hand its figures to `metrics` and `published`."""
    if result.elsewhere:
        log.debug("sweep left to another node of the bucket")
    if metrics is not None:
        metrics.set_storage(result.files, result.bytes)
        metrics.set_kept_partials(result.kept, result.kept_bytes)
    if published is not None:
        published(result)
    if result.expired or result.partials or result.orphans:
        log.info(
            "sweep removed {expired} expired files, {partials} abandoned partial"
            " uploads, {orphans} stale metadata entries",
            expired=result.expired,
            partials=result.partials,
            orphans=result.orphans,
        )
