"""The bytes stored per uploader in an object store, for the `[quota]` limits, kept in the
bucket itself so that every node sees the same numbers (nothing is counted in a node).

Each stored file of a known uploader has an empty *marker* object whose key says who, what
and how large: ``.hmacfs/usage/<uploader>/<path>/<size>/<when>``. An uploader's usage is one
listing of its markers (a page per thousand files); a file removed takes its marker along.
Uploads are also noted in ``.hmacfs/uploaded/<uploader>/<when>-<size>-<nonce>``, which a
removal leaves alone (the daily limit counts what was uploaded, deleted or not) and the
sweeper deletes after a day. The total is a listing of the bucket's files, kept for
`TOTAL_FRESH` seconds.

The methods are those of `hmacfs.storage.usage.Usage` that the quotas use; all blocking.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote, unquote

from hmacfs.core.paths import RESERVED_SEGMENT
from hmacfs.storage.s3.client import BlockingClient
from hmacfs.storage.usage import DAY, Counts, Entry

#: How long a count of the whole bucket is used before it is made again.
TOTAL_FRESH = 10.0


#: A quoted path longer than this is named by its hash in a marker's key (keys hold 1024
#: bytes), and the path is read from the marker's body.
_LONGEST = 400


def _q(text: str) -> str:
    return quote(text, safe="")


def _who(uploader: str) -> str:
    quoted = _q(uploader)
    if len(quoted) <= _LONGEST // 2:
        return quoted
    return "~" + hashlib.sha256(uploader.encode("utf-8", "surrogatepass")).hexdigest()


def _segment(rel: str) -> str:
    quoted = _q(rel)
    if len(quoted) <= _LONGEST:
        return quoted
    return "~" + hashlib.sha256(rel.encode("utf-8", "surrogatepass")).hexdigest()


class S3Usage:
    """The usage ledger of one bucket (see the module's docstring)."""

    def __init__(
        self,
        client: BlockingClient,
        prefix: str,
        totals: Callable[[], tuple[int, int]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._marks = f"{prefix}{RESERVED_SEGMENT}/usage/"
        self._uploads = f"{prefix}{RESERVED_SEGMENT}/uploaded/"
        self._totals = totals
        self.clock = clock
        self._total: tuple[float, Counts] | None = None
        self._lock = threading.Lock()

    # -- reading ------------------------------------------------------------------------------

    def _markers(self, uploader: str, rel: str | None = None) -> Iterator[tuple[str, Entry]]:
        base = f"{self._marks}{_who(uploader)}/"
        start = base if rel is None else f"{base}{_segment(rel)}/"
        for listed in self.client.list_objects(start):
            parts = listed.key[len(base) :].split("/")
            if len(parts) != 3:
                continue
            try:
                size, when = int(parts[1]), float(parts[2])
            except ValueError:
                continue
            named = unquote(parts[0])
            if parts[0].startswith("~"):  # (a long path: its marker holds it)
                body = self.client.get(listed.key)
                if body is None:
                    continue
                named = body.decode("utf-8", "surrogateescape")
            yield listed.key, Entry(+1, when, size, named)

    def of(self, uploader: str) -> Counts:
        counts = Counts()
        for _, entry in self._markers(uploader):
            counts = counts.plus(entry.size, +1)
        return counts

    def oldest(self, uploader: str) -> list[Entry]:
        """The uploader's files still counted, oldest first."""
        return sorted((entry for _, entry in self._markers(uploader)), key=lambda e: e.when)

    def uploaded_since(self, uploader: str, since: float) -> int:
        total = 0
        for listed in self.client.list_objects(f"{self._uploads}{_who(uploader)}/"):
            when, _, rest = listed.key.rsplit("/", 1)[1].partition("-")
            size = rest.partition("-")[0]
            try:
                if float(when) >= since:
                    total += int(size)
            except ValueError:
                continue
        return total

    def total(self) -> Counts | None:
        """What the bucket holds (counted again once `TOTAL_FRESH` old)."""
        now = time.monotonic()
        with self._lock:
            if self._total is not None and self._total[0] + TOTAL_FRESH > now:
                return self._total[1]
        files, stored = self._totals()
        counts = Counts(files, stored)
        with self._lock:
            self._total = (now, counts)
        return counts

    # -- changes ------------------------------------------------------------------------------

    def counted(self, rel: str, uploader: str) -> bool:
        """Whether the file at `rel` has its marker."""
        return any(True for _ in self._markers(uploader, rel))

    def added(self, rel: str, size: int, uploader: str | None, *, upload: bool = True) -> None:
        """Count a file stored at `rel`; `upload`: it was uploaded now (noted for the daily
        limit), not merely found uncounted."""
        with self._lock:
            if self._total is not None:
                self._total = (self._total[0], self._total[1].plus(size, +1))
        if uploader is None:
            return
        now = self.clock()
        marker = f"{self._marks}{_who(uploader)}/{_segment(rel)}/{size}/{now!r}"
        self.client.put(marker, rel.encode("utf-8", "surrogateescape"))
        if not upload:
            return
        nonce = secrets.token_hex(4)
        self.client.put(f"{self._uploads}{_who(uploader)}/{now!r}-{size}-{nonce}", b"")

    def removed(self, rel: str, size: int, uploader: str | None) -> None:
        with self._lock:
            if self._total is not None:
                self._total = (self._total[0], self._total[1].plus(size, -1))
        if uploader is not None:
            self.forget(rel, size, uploader)

    def forget(self, rel: str, size: int, uploader: str) -> bool:
        """Remove the marker of `rel`; whether there was one (another node's removal took
        it already, else this one does: never uncounted twice)."""
        found = False
        for key, _ in list(self._markers(uploader, rel)):
            self.client.delete(key)
            found = True
        return found

    def reconcile(self, uploaded: Callable[[str], float | None]) -> int:
        """Delete the markers of files that are gone (removed behind the server's back, or
        by a node that died between the removal and its marker's), also those of a file
        that another upload has replaced since; how many. `uploaded` gives when the file at
        a path was uploaded (None: no file there)."""
        gone = 0
        for key, _ in self.stale(uploaded):
            self.client.delete(key)
            gone += 1
        return gone

    def stale(self, uploaded: Callable[[str], float | None]) -> Iterator[tuple[str, str]]:
        """The markers `reconcile` deletes, each one's key and the path it names: those of
        files gone or replaced since, and all but the newest of a path's markers (as a
        repair made while the file's own was being written leaves)."""
        group: tuple[str, str] | None = None
        found: list[tuple[float, str]] = []
        for listed in [*self.client.list_objects(self._marks), None]:
            parts = listed.key[len(self._marks) :].split("/") if listed is not None else []
            if listed is not None and len(parts) != 4:
                continue
            if group is not None and (listed is None or (parts[0], parts[1]) != group):
                yield from self._stale_of(group[1], sorted(found), uploaded)
                found = []
            if listed is None:
                break
            group = (parts[0], parts[1])
            try:
                marked = float(parts[3])
            except ValueError:
                marked = 0.0
            found.append((marked, listed.key))

    def _stale_of(
        self,
        segment: str,
        markers: list[tuple[float, str]],
        uploaded: Callable[[str], float | None],
    ) -> Iterator[tuple[str, str]]:
        """The stale ones of one path's markers (oldest first)."""
        newest, key = markers[-1]
        if segment.startswith("~"):
            body = self.client.get(key)
            if body is None:
                return
            rel = body.decode("utf-8", "surrogateescape")
        else:
            rel = unquote(segment)
        for _, older in markers[:-1]:
            yield older, rel
        # (a file's marker is written after its upload began: an older one is stale)
        there = uploaded(rel)
        if there is None or newest < there:
            yield key, rel

    def sweep(self) -> int:
        """Delete the notes of uploads older than a day; how many."""
        deleted = 0
        cutoff = self.clock() - DAY
        for listed in self.client.list_objects(self._uploads):
            when = listed.key.rsplit("/", 1)[1].partition("-")[0]
            try:
                old = float(when) < cutoff
            except ValueError:
                old = True
            if old:
                self.client.delete(listed.key)
                deleted += 1
        return deleted
