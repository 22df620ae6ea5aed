#!/usr/bin/env python3
"""Large-file throughput and memory benchmark for the hmacfs upload server.

For every requested size and for ``fsync = true`` (durable, the default) and
``fsync = false`` (fast mode) this script starts ``python -m hmacfs`` on port 0
of 127.0.0.1 (see bench/harness), PUTs a test file with curl, GETs it back, checks status codes
and sizes, and samples the server's resident memory while each phase runs.
It also measures ``dd ... conv=fdatasync`` on the same filesystem so the
durable PUT rate can be compared with what the disk itself can do.

Units: MB = 10^6 bytes (throughput), MiB = 2^20 bytes (memory); sizes given on
the command line (``16M``, ``1G``) are binary (MiB, GiB).

See bench/README.md for how to run it and what the columns mean.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# bench/ is not a package: running `python bench/large_transfer.py` puts this directory on
# sys.path.
from harness import REPO_ROOT
from harness.common import (
    CURL,
    DD,
    HOST,
    KIB,
    MIB,
    UPLOAD_PREFIX,
    BenchError,
    mb_per_s,
    run_driver,
    size_label,
)
from harness.curl import run_curl, sha256_of_download
from harness.files import check_free_space, create_test_file, dd_fdatasync
from harness.report import text_table, write_json
from harness.sampling import RssSampler, kib_to_mib, read_tree_max_kib
from harness.servers import running_ours

from tests.helpers.signing import mac_v1

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "large_transfer.json"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": KIB, "m": MIB, "g": 1024 * MIB, "t": 1024 * 1024 * MIB}


# --------------------------------------------------------------------------- helpers


def parse_size(text: str) -> int:
    """Parse ``16M``, ``1G``, ``512k``, ``1GiB`` or a plain byte count (binary units)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 16M, 1G, 1048576)")
    value = int(m.group(1)) * _SIZE_MULT[m.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


# --------------------------------------------------------------------------- measurement


@dataclass
class Row:
    size_bytes: int
    size: str
    fsync: bool
    run: int
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    put_status: int | None = None
    put_seconds: float | None = None
    put_mb_s: float | None = None
    get_status: int | None = None
    get_seconds: float | None = None
    get_bytes: int | None = None
    get_mb_s: float | None = None
    content_verified: bool | None = None
    rss_idle_mib: float | None = None
    rss_peak_upload_mib: float | None = None
    rss_peak_download_mib: float | None = None
    vmhwm_after_upload_mib: float | None = None
    vmhwm_final_mib: float | None = None
    rss_samples_upload: int = 0
    rss_samples_download: int = 0
    dd_fdatasync_mb_s: float | None = None
    put_vs_dd_ratio: float | None = None


def measure_one(
    row: Row, pid: int, port: int, test_file: Path, test_sha: str | None
) -> None:
    """One PUT + GET against a running server, filling ``row`` in place."""
    size = row.size_bytes
    path = f"bench-{os.urandom(8).hex()}/large-{row.size}-fsync{int(row.fsync)}-r{row.run}.bin"
    url = f"http://{HOST}:{port}{UPLOAD_PREFIX}{path}"
    row.rss_idle_mib = kib_to_mib(read_tree_max_kib(pid, "VmRSS"))

    os.sync()  # do not let earlier dirty pages (fsync = false runs) leak into this one
    with RssSampler(pid) as sampler:
        put = run_curl(
            ["-T", str(test_file), "-H", "Expect:", f"{url}?v={mac_v1(path, size)}"],
            size, upload=True,
        )
    row.rss_peak_upload_mib = kib_to_mib(sampler.peak_kib)
    row.rss_samples_upload = sampler.samples
    row.vmhwm_after_upload_mib = kib_to_mib(read_tree_max_kib(pid, "VmHWM"))
    row.put_status, row.put_seconds = put.status, put.seconds
    row.put_mb_s = mb_per_s(size, put.seconds)
    row.errors += put.problems("PUT", size, (201,))
    if row.errors:
        row.vmhwm_final_mib = row.vmhwm_after_upload_mib
        return

    with RssSampler(pid) as sampler:
        get = run_curl([url], size, upload=False)
    row.rss_peak_download_mib = kib_to_mib(sampler.peak_kib)
    row.rss_samples_download = sampler.samples
    row.vmhwm_final_mib = kib_to_mib(read_tree_max_kib(pid, "VmHWM"))
    row.get_status, row.get_seconds, row.get_bytes = get.status, get.seconds, get.bytes
    row.get_mb_s = mb_per_s(size, get.seconds)
    row.errors += get.problems("GET", size, (200,))

    if test_sha is not None and not row.errors:
        got = sha256_of_download(url, size)
        row.content_verified = got == test_sha
        if not row.content_verified:
            row.errors.append(f"GET: content differs from the upload (sha256 {got})")


# --------------------------------------------------------------------------- output


COLUMNS: list[tuple[str, str]] = [
    ("size", "size"),
    ("fsync", "fsync"),
    ("run", "run"),
    ("PUT MB/s", "put_mb_s"),
    ("GET MB/s", "get_mb_s"),
    ("idle RSS MiB", "rss_idle_mib"),
    ("peak RSS up MiB", "rss_peak_upload_mib"),
    ("peak RSS down MiB", "rss_peak_download_mib"),
    ("VmHWM MiB", "vmhwm_final_mib"),
    ("dd fdatasync MB/s", "dd_fdatasync_mb_s"),
    ("PUT/dd", "put_vs_dd_ratio"),
    ("status", "ok"),
]


def _cell(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key == "ok":
        return "ok" if value else "FAIL"
    if key == "fsync":
        return "true" if value else "false"
    if key == "put_vs_dd_ratio" and isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[dict[str, object]]) -> str:
    return text_table(COLUMNS, rows, _cell, left=2)


def median_rows(rows: Sequence[Row]) -> list[dict[str, object]]:
    """Per (size, fsync): medians over the successful runs (memory: maxima)."""
    groups: dict[tuple[int, bool], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.size_bytes, r.fsync), []).append(r)
    out: list[dict[str, object]] = []
    for (size_bytes, fsync), members in groups.items():
        good = [r for r in members if r.ok]

        def med(attr: str, good: list[Row] = good) -> float | None:
            vals = [v for r in good if isinstance(v := getattr(r, attr), float)]
            return statistics.median(vals) if vals else None

        def peak(attr: str, good: list[Row] = good) -> float | None:
            vals = [v for r in good if isinstance(v := getattr(r, attr), float)]
            return max(vals) if vals else None

        out.append({
            "size_bytes": size_bytes,
            "size": members[0].size,
            "fsync": fsync,
            "run": f"med{len(good)}",
            "runs_ok": len(good),
            "runs": len(members),
            "put_mb_s": med("put_mb_s"),
            "get_mb_s": med("get_mb_s"),
            "rss_idle_mib": med("rss_idle_mib"),
            "rss_peak_upload_mib": peak("rss_peak_upload_mib"),
            "rss_peak_download_mib": peak("rss_peak_download_mib"),
            "vmhwm_final_mib": peak("vmhwm_final_mib"),
            "dd_fdatasync_mb_s": med("dd_fdatasync_mb_s"),
            "put_vs_dd_ratio": med("put_vs_dd_ratio"),
            "ok": len(good) == len(members),
        })
    return out


def rss_growth_note(summary: Sequence[dict[str, object]]) -> list[str]:
    """Compare peak RSS of the smallest and largest size (the number that matters)."""
    notes: list[str] = []
    sizes = sorted({int(str(s["size_bytes"])) for s in summary})
    if len(sizes) < 2:
        return notes
    lo, hi = sizes[0], sizes[-1]
    for fsync in (True, False):
        small = next((s for s in summary if s["size_bytes"] == lo and s["fsync"] is fsync), None)
        big = next((s for s in summary if s["size_bytes"] == hi and s["fsync"] is fsync), None)
        if small is None or big is None:
            continue
        parts = []
        for key, what in (("rss_peak_upload_mib", "upload"), ("rss_peak_download_mib", "download")):
            a, b = small.get(key), big.get(key)
            if isinstance(a, float) and isinstance(b, float):
                parts.append(f"{what} {a:.1f} -> {b:.1f} MiB ({b - a:+.1f})")
        if parts:
            notes.append(
                f"peak RSS {size_label(lo)} -> {size_label(hi)}, fsync={str(fsync).lower()}: "
                + ", ".join(parts)
            )
    return notes


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="PUT/GET throughput and server memory for large files "
        "(MB = 10^6 bytes, MiB = 2^20 bytes; size suffixes K/M/G are binary).",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", type=parse_size, default=None,
                   help="one file size, e.g. 1G (default: 1G)")
    g.add_argument("--sizes", type=parse_sizes, default=None,
                   help="comma-separated sizes, e.g. 16M,1G")
    p.add_argument("--runs", type=int, default=1, help="repetitions per size and fsync mode")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs `-m hmacfs` (default: this one)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="parent dir for the test file, storage and dd target "
                   "(default: system temp dir, usually /tmp)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"JSON results file (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")
    p.add_argument("--verify-content", action=argparse.BooleanOptionalAction, default=True,
                   help="after the timed GET, download once more (untimed) and compare sha256")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 100:
        p.error("--runs must be between 1 and 100")
    args.size_list = args.sizes or [args.size or parse_size("1G")]
    return args


def measure_all(
    args: argparse.Namespace, workdir: Path, rows: list[Row], dd_results: list[dict[str, object]]
) -> None:
    """The whole measurement loop; appends to ``rows`` / ``dd_results`` as it goes."""
    sizes: list[int] = args.size_list
    runs: int = args.runs
    for size in sizes:
        label = size_label(size)
        # test file + `runs` stored copies (storage is wiped per server) + slack
        check_free_space(workdir, size * (runs + 1) + 64 * MIB)
        test_file = workdir / f"test-{label}.bin"
        print(f"[{label}] creating test file ({size} bytes) ...", flush=True)
        try:
            test_sha = create_test_file(test_file, size)
            # One untimed warm-up copy: the first large write after creating the test file
            # is often much slower on VMs and would make the "disk limit" look too low.
            dd_fdatasync(test_file, workdir / "dd-target.bin", size)
            dd_rates = []
            for n in range(runs):
                rate = dd_fdatasync(test_file, workdir / "dd-target.bin", size)
                dd_rates.append(rate)
                print(f"[{label}] dd conv=fdatasync run {n + 1}: {rate:.1f} MB/s", flush=True)
            dd_median = statistics.median(dd_rates)
            dd_results.append({"size_bytes": size, "size": label,
                               "runs_mb_s": dd_rates, "median_mb_s": dd_median})
            for fsync in (True, False):
                storage = Path(tempfile.mkdtemp(prefix="files-", dir=workdir))
                try:
                    measure_server(args, workdir, storage, fsync, size, test_file, test_sha,
                                   dd_median, rows)
                finally:
                    shutil.rmtree(storage, ignore_errors=True)
        finally:
            test_file.unlink(missing_ok=True)


def measure_server(
    args: argparse.Namespace, workdir: Path, storage: Path, fsync: bool, size: int,
    test_file: Path, test_sha: str, dd_median: float, rows: list[Row],
) -> None:
    """The runs of one size on one server (started here, fresh storage); appends to ``rows``.

    One worker process per core, as this benchmark has always measured (the server's
    default, written out): the memory columns are of the largest single process.
    """
    label = size_label(size)
    with running_ours(args.python, workdir, storage, label=f"large-{label}-fsync-{fsync}",
                      fsync=fsync, workers=os.cpu_count() or 1, log_level="info") as server:
        pid, port = server.process.pid, server.port
        print(f"[{label}] fsync={str(fsync).lower()}: server pid {pid} "
              f"on {HOST}:{port}", flush=True)
        for n in range(1, args.runs + 1):
            row = Row(size_bytes=size, size=label, fsync=fsync, run=n)
            rows.append(row)
            measure_one(row, pid, port, test_file, test_sha if args.verify_content else None)
            row.dd_fdatasync_mb_s = dd_median
            if row.put_mb_s is not None and not row.errors:
                row.put_vs_dd_ratio = row.put_mb_s / dd_median
            row.ok = not row.errors
            status = "ok" if row.ok else "FAIL: " + "; ".join(row.errors)
            print(f"[{label}] fsync={str(fsync).lower()} run {n}: "
                  f"PUT {_cell('put_mb_s', row.put_mb_s)} MB/s, "
                  f"GET {_cell('get_mb_s', row.get_mb_s)} MB/s, "
                  f"peak RSS up/down {_cell('x', row.rss_peak_upload_mib)}/"
                  f"{_cell('x', row.rss_peak_download_mib)} MiB - {status}",
                  flush=True)
            if not row.ok:
                print(f"  server log tail:\n{server.log_tail(15)}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hmacfs-bench-", dir=args.tmpdir)).resolve()
    rows: list[Row] = []
    dd_results: list[dict[str, object]] = []
    fatal: str | None = None
    print(f"work dir: {workdir}  (server: {args.python} -m hmacfs, cwd {REPO_ROOT})")
    try:
        measure_all(args, workdir, rows, dd_results)
    except BenchError as exc:
        fatal = str(exc)
        print(f"error: {fatal}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    row_dicts = [asdict(r) for r in rows]
    summary = median_rows(rows)
    if rows:
        print()
        print(format_table(row_dicts))
        if args.runs > 1:
            print("\nmedian over runs (memory columns: maximum over runs):\n"
                  + format_table(summary))
    notes = rss_growth_note(summary)
    for note in notes:
        print(note)
    if rows:
        print(
            "\nMB = 10^6 bytes, MiB = 2^20 bytes. PUT/GET MB/s = size / curl time_total."
            "\npeak RSS up/down = max VmRSS sampled every 50 ms during that phase;"
            " VmHWM = kernel's lifetime peak RSS after the GET; all RSS figures are of the"
            " largest single server process (supervisor or worker)."
            "\nPUT/dd = PUT MB/s / dd conv=fdatasync MB/s on the same filesystem"
            " (for fsync=true: how close the durable upload is to the disk's limit)."
        )

    all_ok = fatal is None and bool(rows) and all(r.ok for r in rows)
    report = {
        "benchmark": "large_transfer",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "units": {"MB": "10^6 bytes", "MiB": "2^20 bytes",
                  "size suffixes": "binary (K=2^10, M=2^20, G=2^30)"},
        "host": {"platform": platform.platform(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
        "bench_python": sys.version.split()[0],
        "server_python": args.python,
        "tmpdir": str(workdir.parent),
        "sizes": [size_label(s) for s in args.size_list],
        "runs": args.runs,
        "ok": all_ok,
        "error": fatal,
        "dd_fdatasync": dd_results,
        "results": row_dicts,
        "summary": summary,
        "notes": notes,
    }
    output: Path = args.output
    write_json(output, report)
    print(f"\nresults written to {output}")
    if fatal is not None:
        return 2
    if not all_ok:
        failed = sum(not r.ok for r in rows)
        print(f"FAILED: {failed} of {len(rows)} transfers failed", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (CURL, DD):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found", file=sys.stderr)
            return 2
    return run_driver(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
