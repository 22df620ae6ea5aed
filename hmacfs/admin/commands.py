"""The admin commands: list, stats, delete, prune and verify the stored files.

Each reads the configuration and opens the storage directory it names, as the service runs:
nothing is held or locked that an upload or a download of any worker waits for. A file removed
while it is being downloaded is still sent whole (the download holds it open); partial uploads
are removed only as the sweeper removes them, so never one that a request holds. Listing,
counting and verifying only read, also on a read-only storage; delete, prune and verify
--repair need to write, and say so when they cannot.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from hmacfs.admin.inventory import (
    LIST_HEADER,
    BadArgument,
    Count,
    Filters,
    Tally,
    duration_option,
    guessed_type,
    human_duration,
    human_size,
    irregular_entries,
    largest,
    leaves_storage,
    list_line,
    record,
    signed_path,
    size_option,
    text_option,
    uploaded_at,
)
from hmacfs.admin.parsers import add_storage_parsers
from hmacfs.core import config
from hmacfs.core.printable import printable
from hmacfs.core.settings import Config
from hmacfs.storage.backend import StoredFile
from hmacfs.storage.local import LocalStorage
from hmacfs.storage.s3.errors import StoreError

#: Exit statuses, those of hmacfs.cli (documented in hmac-file-server(8)).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, TextIO], int]


class Failure(Exception):
    """Ends a command: `message` goes to stderr, `status` is its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _say(message: str) -> None:
    print(f"hmac-file-server: {message}", file=sys.stderr)


def guarded(run: Command) -> Command:
    """`run` with its failures reported as one line on stderr and an exit status: a bad
    argument 2, the storage failing 1. Configuration errors are left to the caller."""

    @functools.wraps(run)
    def command(args: argparse.Namespace, out: TextIO) -> int:
        try:
            return run(args, out)
        except BadArgument as e:
            _say(str(e))
            return EXIT_USAGE
        except Failure as e:
            _say(e.message)
            return e.status
        except BrokenPipeError:
            # The reader went away (`list | head`): nothing more to say, and nothing to say
            # it to; stdout is pointed at /dev/null so that its final flush cannot fail too.
            if out is sys.stdout:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAILURE
        except StoreError as e:
            _say(f"{args.command}: the object store: {e}")
            return EXIT_FAILURE
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            _say(f"{args.command}: {e.strerror or e}{where}")
            return EXIT_FAILURE

    return command


def open_storage_of(cfg: Config, *, writing: bool, command: str) -> LocalStorage:
    """The storage directory of `cfg`. For `writing`, opened exactly as the service opens it
    (where new metadata goes, the quota counts); otherwise without the trial writes that
    opening does (a scratch file in the partial directory), so that it works on a read-only
    storage, reading the metadata of either kind. Raises Failure."""
    if cfg.storage.backend != "local":
        raise Failure(
            f"{command} works on local storage only: [storage] backend is {cfg.storage.backend!r}"
        )
    root = cfg.server.storage_dir
    if not root.is_dir():
        raise Failure(f"storage_dir {root} is not a directory (or does not exist)")
    try:
        if writing:
            from hmacfs.process.stores import open_storage

            opened: LocalStorage = open_storage(cfg)
            return opened
        return LocalStorage(
            root,
            fsync=cfg.server.fsync,
            file_ttl=cfg.server.file_ttl,
            resumable_ttl=cfg.server.resumable_ttl,
            metadata="file",
            partials="named",
        )
    except OSError as e:
        if writing:
            raise Failure(f"{command}: cannot write to storage_dir {root}: {e.strerror}") from e
        raise Failure(f"{command}: cannot open storage_dir {root}: {e.strerror}") from e


def open_bucket_of(cfg: Config, command: str) -> Any:
    """The object store of `cfg` (`[storage] backend = "s3"`), once its bucket answered.
    Raises Failure."""
    from hmacfs.core.credentials import CredentialsError
    from hmacfs.process.stores import open_bucket

    try:
        return open_bucket(cfg)
    except (StoreError, CredentialsError) as e:
        raise Failure(f"{command}: [storage] bucket: {e}") from e


def _json_line(out: TextIO, value: object) -> None:
    out.write(json.dumps(value) + "\n")


def _counted(count: Count) -> str:
    """ "1 file, 300B", "4 files, 5.2K"."""
    return f"{count.files} {'file' if count.files == 1 else 'files'}, {human_size(count.bytes)}"


# -- list -----------------------------------------------------------------------------------


@guarded
def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    filters = Filters(
        uploader=text_option("--uploader", args.uploader),
        older_than=duration_option("--older-than", args.older_than),
        larger_than=size_option("--larger-than", args.larger_than),
        type_prefix=text_option("--type", args.type),
        expired=args.expired,
    )
    cfg = config.load(args.config)
    storage: Any = (
        open_bucket_of(cfg, "list")
        if cfg.storage.backend == "s3"
        else open_storage_of(cfg, writing=False, command="list")
    )
    now = time.time()
    header = not args.json
    # Streamed as the walk finds them: memory stays flat however many files are stored.
    for stored in storage.files():
        if not filters.matches(stored, now):
            continue
        if args.json:
            _json_line(out, record(stored))
            continue
        if header:
            print(LIST_HEADER, file=out)
            header = False
        print(list_line(stored, now), file=out)
    return EXIT_OK


# -- stats ----------------------------------------------------------------------------------


def _partial_counts(storage: Any) -> dict[str, Count]:
    counts = {"kept": Count(), "in_progress": Count(), "abandoned": Count()}
    for partial in storage.partial_files():
        if partial.abandoned is not None:
            counts["abandoned"].add(partial.size)
        elif partial.kind == "resumable":
            counts["kept"].add(partial.size)
        elif partial.kind == "plain":
            counts["in_progress"].add(partial.size)
    return counts


@guarded
def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    if args.top < 0:
        raise BadArgument(f"--top: {args.top} is negative (0 shows all)")
    cfg = config.load(args.config)
    storage: Any = (
        open_bucket_of(cfg, "stats")
        if cfg.storage.backend == "s3"
        else open_storage_of(cfg, writing=False, command="stats")
    )
    now = time.time()
    tally = Tally()
    for stored in storage.files():
        tally.add(stored, now)
    partials = _partial_counts(storage)
    if args.json:
        _json_line(out, _stats_json(tally, partials, now, args.top))
    else:
        out.writelines(line + "\n" for line in _stats_lines(tally, partials, now, args.top))
    return EXIT_OK


def _stats_json(
    tally: Tally, partials: dict[str, Count], now: float, top: int
) -> dict[str, object]:
    oldest = tally.oldest
    return {
        "files": tally.total.files,
        "bytes": tally.total.bytes,
        "expired": tally.expired.as_json(),
        "uploaders": [
            {"uploader": name, **count.as_json()} for name, count in largest(tally.uploaders, top)
        ],
        "content_types": [
            {"content_type": name, **count.as_json()} for name, count in largest(tally.types, top)
        ],
        "oldest": None
        if oldest is None
        else {
            "path": oldest.rel,
            "uploaded": int(uploaded_at(oldest)),
            "age": int(now - uploaded_at(oldest)),
        },
        "partials": {name: count.as_json() for name, count in partials.items()},
    }


def _stats_lines(tally: Tally, partials: dict[str, Count], now: float, top: int) -> list[str]:
    expired = tally.expired.files
    lines = [f"stored: {_counted(tally.total)} ({expired} expired, waiting for the sweep)"]
    if tally.oldest is not None:
        age = human_duration(now - uploaded_at(tally.oldest))
        lines.append(f"oldest: {printable(tally.oldest.rel)} ({age} old)")
    kept, busy, abandoned = partials["kept"], partials["in_progress"], partials["abandoned"]
    lines.append(
        f"partial uploads: {kept.files} kept for resumption ({human_size(kept.bytes)}), "
        f"{busy.files} in progress ({human_size(busy.bytes)}), "
        f"{abandoned.files} abandoned ({human_size(abandoned.bytes)})"
    )
    for title, counts, none in (
        ("by uploader", tally.uploaders, "(no uploader)"),
        ("by content type", tally.types, "(no metadata)"),
    ):
        shown = largest(counts, top)
        lines.append(f"{title}:")
        lines += [
            f"  {printable(name) if name else none:<32}  {_counted(count)}" for name, count in shown
        ]
        if len(shown) < len(counts):
            lines.append(f"  ... and {len(counts) - len(shown)} more")
    return lines


# -- delete and prune -----------------------------------------------------------------------


@guarded
def cmd_delete(args: argparse.Namespace, out: TextIO) -> int:
    cfg = config.load(args.config)
    prefix = cfg.server.upload_prefix
    # Every argument is judged before anything is removed: a typo removes nothing.
    targets = [(argument, signed_path(argument, prefix)) for argument in args.paths]
    if cfg.storage.backend == "s3":
        return _delete_objects(open_bucket_of(cfg, "delete"), targets, out)
    root = cfg.server.storage_dir
    for argument, rel in targets:
        if leaves_storage(root, root.joinpath(*rel.split("/"))):
            raise BadArgument(
                f"{printable(argument)}: leads out of the storage directory (a symbolic link)"
            )
    storage = open_storage_of(cfg, writing=True, command="delete")
    status = EXIT_OK
    for argument, rel in targets:
        shown = printable(argument)
        path = storage.path_of(rel)
        if path.is_symlink():
            _say(f"{shown}: a symbolic link, not a stored file (see verify)")
            status = EXIT_FAILURE
            continue
        removed = _remove(storage, rel, shown)
        if removed is None:
            status = EXIT_FAILURE
        elif removed:
            print(f"removed {printable(rel)}", file=out)
        else:
            hint = " (a percent-encoded path: give the whole URL)" if "%" in argument else ""
            _say(f"{shown}: no such file{hint}")
            status = EXIT_FAILURE
    return status


def _delete_objects(storage: Any, targets: list[tuple[str, str]], out: TextIO) -> int:
    """`delete` on an object store: each object and its metadata (one object) removed."""
    status = EXIT_OK
    for argument, rel in targets:
        shown = printable(argument)
        removed = _remove(storage, rel, shown)
        if removed is None:
            status = EXIT_FAILURE
        elif removed:
            print(f"removed {printable(rel)}", file=out)
        else:
            _say(f"{shown}: no such file")
            status = EXIT_FAILURE
    return status


def _remove(storage: Any, rel: str, shown: str) -> bool | None:
    """Remove the stored file `rel`: whether it was there, or None (said on stderr) when the
    storage refused."""
    from hmacfs.core.refusals import Refusal

    try:
        return bool(storage.delete(rel))
    except OSError as e:
        _say(f"{shown}: cannot remove: {e.strerror}")
        return None
    except (StoreError, Refusal) as e:
        _say(f"{shown}: cannot remove: {e}")
        return None


def _unchanged(stored: StoredFile) -> bool:
    """Whether `stored` is still the file at its path (not a new upload that took the path
    once it was swept)."""
    try:
        st = os.lstat(stored.location)
    except OSError:
        return False
    return (st.st_size, st.st_mtime) == (stored.size, stored.mtime)


@guarded
def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    filters = Filters(
        uploader=text_option("--uploader", args.uploader),
        older_than=duration_option("--older-than", args.older_than),
        expired=args.expired,
    )
    if filters == Filters():
        raise BadArgument("prune: give at least one of --older-than, --uploader, --expired")
    cfg = config.load(args.config)
    remote = cfg.storage.backend == "s3"
    storage: Any
    if remote:
        storage = open_bucket_of(cfg, "prune")
    elif args.dry_run:
        storage = open_storage_of(cfg, writing=False, command="prune")
    else:
        storage = open_storage_of(cfg, writing=True, command="prune")
    unchanged = storage.unchanged if remote else _unchanged
    now = time.time()
    # Chosen by a whole walk first, then removed: removing prunes emptied directories, which
    # the walk would otherwise step into.
    chosen = [stored for stored in storage.files() if filters.matches(stored, now)]
    done = Count()
    status = EXIT_OK
    for stored in chosen:
        shown = printable(stored.rel)
        if args.dry_run:
            print(f"would remove {shown}", file=out)
            done.add(stored.size)
            continue
        removed = unchanged(stored) and _remove(storage, stored.rel, shown)
        if removed is None:
            status = EXIT_FAILURE
        elif removed:
            print(f"removed {shown}", file=out)
            done.add(stored.size)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {_counted(done)}", file=out)
    return status


# -- verify ---------------------------------------------------------------------------------


class Report:
    """The findings of `verify`, written as they are made."""

    def __init__(self, out: TextIO, *, as_json: bool, repairing: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.repairing = repairing
        self.found = 0
        self.repaired = 0

    def finding(self, kind: str, path: str, detail: str, repaired: str | None = None) -> None:
        """One problem: its kind, the path it concerns, what is wrong and, when repairing,
        what was done (None: left as it is)."""
        self.found += 1
        self.repaired += repaired is not None
        if self.as_json:
            entry = {"kind": kind, "path": path, "detail": detail, "repaired": repaired is not None}
            if self.repairing:
                entry["action"] = repaired
            _json_line(self.out, entry)
            return
        line = f"{kind}: {printable(path)}: {detail}"
        if self.repairing:
            line += f" -> {repaired}" if repaired is not None else " -> left as it is"
        print(line, file=self.out)

    def summary(self, files: int) -> None:
        if self.as_json:
            return
        found = f"{self.found} {'problem' if self.found == 1 else 'problems'} found"
        if not self.found:
            print(f"clean: {files} {'file' if files == 1 else 'files'} checked", file=self.out)
        elif self.repairing:
            print(f"{found}, {self.repaired} repaired", file=self.out)
        else:
            print(f"{found} (--repair fixes what is safe)", file=self.out)

    @property
    def clean(self) -> bool:
        return self.found == self.repaired


def _check_files(storage: LocalStorage, report: Report) -> int:
    """Stored files against their metadata; how many were checked."""
    checked = 0
    for stored in storage.files():
        checked += 1
        if stored.uploaded is not None:
            continue  # its metadata describes it
        meta = storage.recorded_metadata(stored)
        if meta is None:
            content_type = guessed_type(stored.rel)
            done = None
            if report.repairing and storage.write_metadata(stored, content_type):
                done = f"wrote metadata ({content_type}, uploaded at its mtime)"
            report.finding("no metadata", stored.rel, "a file without metadata", done)
            continue
        if meta.get("path") != stored.rel:
            detail = f"its metadata names another path, {printable(str(meta.get('path')))}"
        elif meta.get("size") != stored.size:
            detail = f"its metadata says {meta.get('size')} bytes, the file has {stored.size}"
        else:
            detail = "its metadata cannot be read"
        report.finding("metadata mismatch", stored.rel, detail)
    return checked


def _check_orphans(storage: LocalStorage, report: Report, now: float) -> None:
    for orphan in storage.orphaned_metadata():
        age = now - orphan.written
        if age <= storage.metadata_grace:
            continue  # may be an upload being linked right now (its metadata comes first)
        names = f"for {printable(orphan.rel)}" if orphan.rel is not None else "unreadable"
        done = None
        if report.repairing and storage.remove_orphaned_metadata(orphan):
            done = "removed"
        detail = f"{names}, written {human_duration(age)} ago"
        where = os.path.relpath(orphan.location, storage.root)
        report.finding("orphaned metadata", where, detail, done)


def _check_partials(storage: Any, report: Report, where: str = ".hmacfs/partial/") -> None:
    """Abandoned partial uploads (`where` names them: the local partial directory);
    --repair removes them as a sweep does."""
    abandoned = [partial for partial in storage.partial_files() if partial.abandoned]
    left: set[str] = set()
    if report.repairing and abandoned:
        storage.sweep_partials()
        left = {p.name for p in storage.partial_files() if p.abandoned is not None}
    for partial in abandoned:
        done = None
        if report.repairing and partial.name not in left:
            done = "removed"
        detail = f"{partial.kind}, {human_size(partial.size)}, {partial.abandoned}"
        if report.repairing and done is None:
            detail += " (a request still holds it)"
        report.finding("abandoned partial", f"{where}{partial.name}", detail, done)


def _verify_bucket(storage: Any, report: Report) -> int:
    """`verify` of an object store: its objects' metadata, the usage ledger against the
    objects (files not counted, markers of files gone), abandoned partial uploads; how many
    files were checked."""
    checked = 0
    ledger = storage.accounting
    for stored in storage.files():
        checked += 1
        if stored.uploaded is None:
            detail = "an object without this server's metadata (stored by another program?)"
            report.finding("no metadata", stored.rel, detail)
        if (
            ledger is not None
            and stored.uploader is not None
            and not ledger.counted(stored.rel, stored.uploader)
        ):
            # (a repair while the upload's own marker is being written counts it twice,
            # until the next sweep drops the older marker)
            done = None
            if report.repairing:
                ledger.added(stored.rel, stored.size, stored.uploader, upload=False)
                done = "counted"
            detail = (
                f"{human_size(stored.size)} of {printable(stored.uploader)} missing from the"
                " usage ledger (the quotas do not see it)"
            )
            report.finding("not counted", stored.rel, detail, done)
    if ledger is not None:
        for key, rel in list(ledger.stale(storage._uploaded)):
            done = None
            if report.repairing:
                storage.client.delete(key)
                done = "removed"
            report.finding(
                "stale usage marker", rel, "counts a file that is gone or was replaced", done
            )
    _check_partials(storage, report, where="")
    return checked


@guarded
def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    cfg = config.load(args.config)
    if cfg.storage.backend == "s3":
        bucket = open_bucket_of(cfg, "verify")
        report = Report(out, as_json=args.json, repairing=args.repair)
        report.summary(_verify_bucket(bucket, report))
        return EXIT_OK if report.clean else EXIT_FAILURE
    storage = open_storage_of(cfg, writing=args.repair, command="verify")
    report = Report(out, as_json=args.json, repairing=args.repair)
    checked = _check_files(storage, report)
    _check_orphans(storage, report, time.time())
    _check_partials(storage, report)
    for entry in irregular_entries(storage.root):
        report.finding("not a regular file", entry.rel, entry.what)
    report.summary(checked)
    return EXIT_OK if report.clean else EXIT_FAILURE


# -- the command line -----------------------------------------------------------------------

#: The arguments are defined apart (`hmacfs.admin.parsers`), so that the command line is built
#: without loading this module.
add_parsers = add_storage_parsers


COMMANDS: dict[str, Command] = {
    "list": cmd_list,
    "stats": cmd_stats,
    "delete": cmd_delete,
    "prune": cmd_prune,
    "verify": cmd_verify,
}
