"""The `[quota]` limits: checked from a PUT's headers, and the soft limit after its 201.

Who uploads is what the slot says: a JWT's `sub`, or ejabberd's first path segment (the
SHA-1 of the uploader's bare JID, 40 hex digits). The bytes stored come from the counts kept
in the storage directory (`hmacfs.storage.usage`), shared by every process, so two workers
see the same numbers; uploads still under way are not counted until they are stored.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from hmacfs.core.printable import printable
from hmacfs.core.refusals import Reason, StorageFailure, TooLarge
from hmacfs.core.settings import QuotaSettings
from hmacfs.core.units import format_size
from hmacfs.storage.usage import DAY

if TYPE_CHECKING:
    from hmacfs.core.auth import Grant
    from hmacfs.http.site import UploadSite
    from hmacfs.storage.backend import Backend

_log = Logger(namespace="hmacfs.quota")

#: ejabberd's mod_http_upload puts each upload under sha1(user@host) in lower-case hex.
_HASHED_JID = re.compile(r"[0-9a-f]{40}")


def uploader_of(grant: Grant, settings: QuotaSettings) -> str | None:
    """Who uploads `grant`'s file, where the slot says."""
    if grant.uploader is not None:
        return grant.uploader
    if settings.uploader_from_path:
        first = grant.path.split("/", 1)[0]
        if _HASHED_JID.fullmatch(first):
            return first
    return None


def check(site: UploadSite, grant: Grant, uploader: str | None) -> None:
    """Refuse an upload of `grant.size` new bytes that a limit does not leave room for:
    413 for the uploader's own limits, 507 for the storage's. Reads a few small files."""
    settings = site.config.quota
    size = grant.size
    storage = site.storage
    if settings.min_free_space:
        free = storage.free_bytes()
        if free is not None and free - size < settings.min_free_space:
            raise StorageFailure("not enough free space to store this upload", Reason.QUOTA)
    accounting = storage.accounting
    if accounting is None:
        return
    if settings.total_limit:
        total = accounting.total()
        if total is not None and total.bytes + size > settings.total_limit:
            raise StorageFailure("the storage is full (its quota is used up)", Reason.QUOTA)
    if uploader is None:
        return
    if settings.uploader_limit:
        stored = accounting.of(uploader).bytes
        if stored + size > settings.uploader_limit:
            raise TooLarge(
                f"upload quota exceeded: {format_size(stored)} of "
                f"{format_size(settings.uploader_limit)} stored",
                Reason.QUOTA,
            )
    if settings.uploader_daily_limit:
        today = accounting.uploaded_since(uploader, site.wall() - DAY)
        if today + size > settings.uploader_daily_limit:
            raise TooLarge(
                f"daily upload quota exceeded: {format_size(today)} of "
                f"{format_size(settings.uploader_daily_limit)} in the last 24 hours",
                Reason.QUOTA,
            )


def enforce_soft_limit(storage: Backend, uploader: str, limit: int, keep: str) -> list[str]:
    """Delete the uploader's oldest files (never `keep`, the one just stored) until its
    stored bytes are within `limit`; the paths deleted. Blocking: on a thread."""
    accounting = storage.accounting
    assert accounting is not None  # (only called with one)
    deleted: list[str] = []
    stored = accounting.of(uploader).bytes
    for entry in accounting.oldest(uploader):
        if stored <= limit:
            break
        if entry.rel == keep:
            continue
        if not storage.delete(entry.rel):
            # Gone already: uncounted by whoever removed it, else now (never twice).
            accounting.forget(entry.rel, entry.size, uploader)
        deleted.append(entry.rel)
        stored = accounting.of(uploader).bytes
    return deleted


def after_upload(site: UploadSite, uploader: str | None, rel: str) -> None:
    """After a 201: bring the uploader back under its soft limit, on a thread."""
    limit = site.config.quota.uploader_soft_limit
    storage = site.storage
    if not limit or uploader is None or storage.accounting is None:
        return

    def done(deleted: list[str]) -> None:
        if deleted:
            site.metrics.quota_deleted(len(deleted))
            _log.info(
                "{uploader} is over its soft limit of {limit}: deleted its {count} oldest"
                " file(s): {paths}",
                uploader=printable(uploader),
                limit=format_size(limit),
                count=len(deleted),
                paths=printable(", ".join(deleted)),
            )

    def failed(failure: Any) -> None:
        _log.warn("the soft limit of {uploader} could not be enforced: {e}",
                  uploader=printable(uploader), e=failure.getErrorMessage())

    site.run_blocking(enforce_soft_limit, storage, uploader, limit, rel).addCallbacks(
        done, failed
    )
