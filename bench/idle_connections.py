#!/usr/bin/env python3
"""Many idle keep-alive connections: what each costs the server, and whether honest requests
still get through while they are held.

This script starts ``python -m hmacfs`` on port 0 of 127.0.0.1 (see bench/harness) with
``workers = 1`` (or ``--workers N``), stores a small file, and then:

1. times M rounds of honest requests (a 1 MiB PUT, a GET of it, a GET of the small file), each
   on a connection of its own: the latency *before*;
2. records the server's resident memory (VmRSS), opens N connections (5000 by default), each
   of which sends one GET of the small file, reads the answer and then stays open and idle
   (HTTP/1.1 keep-alive), and records VmRSS again: memory per idle connection =
   (RSS after - RSS before) / N (/ the connections admitted, under a cap);
3. while they are held, times the same M rounds again: the latency *after*; then checks that
   every 50th idle connection is still open and answers a further GET.

All the connections come from 127.0.0.1, so the server gets ``max_connections_per_address =
0`` (no cap). With ``--default-caps`` a second server is measured with the default per-address
cap (1024 per process): the connections beyond it are answered 503 (counted), and so are the
honest requests from 127.0.0.1; the same honest requests from 127.0.0.2 are timed as well.

This process raises its own soft RLIMIT_NOFILE to the hard limit (N sockets).

See bench/README.md for how to run it and what the columns mean.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# bench/ is not a package: running `python bench/idle_connections.py` puts this directory on
# sys.path.
from harness import REPO_ROOT
from harness.common import HOST, KIB, MIB, UPLOAD_PREFIX, BenchError, run_driver
from harness.idle import (
    IO_TIMEOUT_S,
    check_idle,
    open_idle,
    raise_nofile,
    read_response,
    tree_rss_kib,
)
from harness.report import text_table, write_json
from harness.servers import READY_TIMEOUT_S, stop_process_group

from tests.helpers.server import Server, ServerDidNotStart, start_server
from tests.helpers.signing import mac_v1

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "idle_connections.json"
DEFAULT_CONNECTIONS = 5000
DEFAULT_ROUNDS = 30
#: Every how many idle connections one is asked for a further GET while they are held.
CHECK_EVERY = 50
#: Source address of the honest requests beside the capped 127.0.0.1 (same loopback net).
OTHER_SOURCE = "127.0.0.2"
#: Descriptors this process keeps for itself beyond the N sockets.
FD_MARGIN = 64
SMALL_REL = "idle/small.txt"
SMALL_BODY = b"a small stored file\n"
BIG_SIZE = 1 * MIB


# --------------------------------------------------------------------------- HTTP on sockets


def get_head(rel: str) -> bytes:
    return f"GET {UPLOAD_PREFIX}{rel} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def put_head(rel: str, size: int) -> bytes:
    return (f"PUT {UPLOAD_PREFIX}{rel}?v={mac_v1(rel, size)} HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode()


@dataclass
class Answer:
    status: int | None  # None: the connection failed (reset, refused, EOF)
    seconds: float
    body_len: int = 0
    error: str | None = None


def one_request(port: int, head: bytes, body: bytes = b"", source: str = HOST) -> Answer:
    """One request on a connection of its own from ``source``; the time covers connecting."""
    start = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S,
                                      source_address=(source, 0)) as sock:
            sock.sendall(head + body)
            status, _, got = read_response(sock)
    except (OSError, BenchError) as exc:
        return Answer(None, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
    return Answer(status, time.perf_counter() - start, len(got))


# --------------------------------------------------------------------------- measurement


@dataclass
class Latencies:
    label: str
    source: str
    put_ms: list[float] = field(default_factory=list)
    get_big_ms: list[float] = field(default_factory=list)
    get_small_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def note(self, kind: str, answer: Answer, want: int) -> bool:
        key = f"{kind} {answer.status if answer.status is not None else 'failed'}"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if answer.status != want and len(self.errors) < 5:
            self.errors.append(f"{kind}: {answer.status} {answer.error or ''}".strip())
        return answer.status == want

    def medians(self) -> dict[str, float | None]:
        return {name: (statistics.median(v) if v else None)
                for name, v in (("put_ms", self.put_ms), ("get_big_ms", self.get_big_ms),
                                ("get_small_ms", self.get_small_ms))}


def honest_rounds(port: int, rounds: int, label: str, big: bytes, *,
                  source: str = HOST) -> Latencies:
    """``rounds`` times: a 1 MiB PUT to a fresh path, a GET of it, a GET of the small file.
    Only answers with the right status (and size) count towards the latencies."""
    lat = Latencies(label, source)
    for i in range(rounds):
        rel = f"idle/{label}-{source}-{i}.bin"
        put = one_request(port, put_head(rel, len(big)), big, source)
        if lat.note("PUT", put, 201):
            lat.put_ms.append(put.seconds * 1000)
        get = one_request(port, get_head(rel), source=source)
        if lat.note("GET 1M", get, 200) and get.body_len == len(big):
            lat.get_big_ms.append(get.seconds * 1000)
        small = one_request(port, get_head(SMALL_REL), source=source)
        if lat.note("GET small", small, 200):
            lat.get_small_ms.append(small.seconds * 1000)
    return lat


@dataclass
class Row:
    caps: str  # "none" or "default"
    workers: int
    connections: int
    opened_idle: int = 0
    refused_503: int = 0
    reset: int = 0
    failed: int = 0
    open_seconds: float | None = None
    rss_before_kib: int | None = None
    rss_after_kib: int | None = None
    kib_per_connection: float | None = None
    checked: int = 0
    checked_ok: int = 0
    before: dict[str, float | None] = field(default_factory=dict)
    after: dict[str, float | None] = field(default_factory=dict)
    after_other_source: dict[str, float | None] = field(default_factory=dict)
    statuses_before: dict[str, int] = field(default_factory=dict)
    statuses_after: dict[str, int] = field(default_factory=dict)
    statuses_after_other_source: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    ok: bool = False


@contextlib.contextmanager
def running_server(args: argparse.Namespace, workdir: Path, storage: Path, caps: str,
                   label: str) -> Iterator[Server]:
    """Our server as bench/harness starts it (port 0, READY=1, a process group of its own), with
    ``caps`` in [server], fsync off and an idle_timeout above the time the connections are
    held; stopped with its process group afterwards."""
    home = Path(tempfile.mkdtemp(prefix=f"idle-{label}-", dir=workdir))
    try:
        server = start_server(
            home, server_toml=f"fsync = false\nidle_timeout = 600\n{caps}",
            listen=(f"{HOST}:0",), workers=args.workers, log_level="warning",
            storage=storage, python=args.python, cwd=REPO_ROOT, env={"LC_ALL": "C"},
            notify=True, new_session=True, track=False, timeout=READY_TIMEOUT_S)
    except ServerDidNotStart as exc:
        shutil.rmtree(home, ignore_errors=True)
        raise BenchError(f"our server (caps {label}): {exc}") from None
    try:
        yield server
    finally:
        stop_process_group(server.process)
        shutil.rmtree(home, ignore_errors=True)


def measure(args: argparse.Namespace, workdir: Path, *, default_caps: bool) -> Row:
    n: int = args.connections
    row = Row("default" if default_caps else "none", args.workers, n)
    caps = "" if default_caps else "max_connections_per_address = 0\n"
    if n + 100 > 16384:
        caps += f"max_connections = {n + 100}\n"
    storage = Path(tempfile.mkdtemp(prefix="files-", dir=workdir))
    big = os.urandom(BIG_SIZE)
    tag = f"caps={row.caps} workers={args.workers}"
    with running_server(args, workdir, storage, caps, row.caps) as server:
        pid, port = server.process.pid, server.port
        print(f"{tag}: server pid {pid} on {HOST}:{port}", flush=True)
        stored = one_request(port, put_head(SMALL_REL, len(SMALL_BODY)), SMALL_BODY)
        if stored.status != 201:
            raise BenchError(f"storing the small file: {stored.status} {stored.error or ''}")
        before = honest_rounds(port, args.rounds, "before", big)
        row.before, row.statuses_before = before.medians(), before.statuses
        row.errors += [f"before: {e}" for e in before.errors]
        row.rss_before_kib = tree_rss_kib(pid)
        opened = open_idle(port, n, get_head(SMALL_REL))
        try:
            row.rss_after_kib = tree_rss_kib(pid)
            row.opened_idle, row.refused_503 = len(opened.idle), opened.refused_503
            row.reset, row.failed, row.open_seconds = opened.reset, opened.failed, opened.seconds
            row.errors += [f"open: {e}" for e in opened.errors]
            if row.rss_before_kib is not None and row.rss_after_kib is not None and opened.idle:
                row.kib_per_connection = (row.rss_after_kib - row.rss_before_kib) / len(
                    opened.idle)
            print(f"{tag}: {len(opened.idle)} idle connections open in {opened.seconds:.1f} s"
                  f" ({opened.refused_503} answered 503, {opened.reset} reset,"
                  f" {opened.failed} failed)", flush=True)
            after = honest_rounds(port, args.rounds, "after", big)
            row.after, row.statuses_after = after.medians(), after.statuses
            row.errors += [f"after: {e}" for e in after.errors if not default_caps]
            if default_caps:
                other = honest_rounds(port, args.rounds, "after2", big, source=OTHER_SOURCE)
                row.after_other_source = other.medians()
                row.statuses_after_other_source = other.statuses
                row.errors += [f"after from {OTHER_SOURCE}: {e}" for e in other.errors]
            row.checked, row.checked_ok = check_idle(opened.idle, CHECK_EVERY,
                                                     get_head(SMALL_REL), SMALL_BODY)
        finally:
            for sock in opened.idle:
                sock.close()
        if server.process.poll() is not None:
            row.errors.append(f"server exited with {server.process.returncode}")
        if row.errors:
            print(f"  server log tail:\n{server.log_tail(15)}", file=sys.stderr)
    shutil.rmtree(storage, ignore_errors=True)
    expected_open = n if not default_caps else min(n, 1024 * args.workers)
    if row.checked_ok != row.checked:
        row.errors.append(f"{row.checked - row.checked_ok} of {row.checked} idle connections "
                          "did not answer a further GET")
    if not default_caps and row.opened_idle != n:
        row.errors.append(f"only {row.opened_idle} of {n} connections stayed open")
    if default_caps and args.workers == 1 and row.opened_idle != expected_open:
        row.errors.append(f"{row.opened_idle} connections admitted, expected {expected_open}")
    row.ok = not row.errors
    for error in row.errors:
        print(f"  {tag}: {error}", file=sys.stderr)
    return row


# --------------------------------------------------------------------------- report



def _ms(value: object) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: Sequence[Row]) -> str:
    lines: list[dict[str, object]] = []
    for r in rows:
        base: dict[str, object] = {"caps": r.caps, "workers": r.workers, "N": r.connections,
                "open": r.opened_idle, "503": r.refused_503 + r.reset,
                "rss0": None if r.rss_before_kib is None else r.rss_before_kib / KIB,
                "rss1": None if r.rss_after_kib is None else r.rss_after_kib / KIB,
                "kib": r.kib_per_connection, "check": f"{r.checked_ok}/{r.checked}",
                "status": "ok" if r.ok else "FAIL"}
        sets = [("before", HOST, r.before, r.statuses_before),
                ("after", HOST, r.after, r.statuses_after)]
        if r.after_other_source:
            sets.append(("after", OTHER_SOURCE, r.after_other_source,
                         r.statuses_after_other_source))
        for i, (when, source, med, statuses) in enumerate(sets):
            refused = sum(c for k, c in statuses.items() if not k.endswith((" 200", " 201")))
            line: dict[str, object] = dict(base) if i == 0 else dict.fromkeys(base, "")
            line |= {"when": when, "from": source, "put": med.get("put_ms"),
                     "get1m": med.get("get_big_ms"), "getsmall": med.get("get_small_ms"),
                     "notok": refused}
            lines.append(line)
    columns = [("caps", "caps"), ("workers", "workers"), ("N", "N"), ("idle open", "open"),
               ("503", "503"), ("RSS before MiB", "rss0"), ("RSS after MiB", "rss1"),
               ("KiB/conn", "kib"), ("still answer", "check"), ("latency", "when"),
               ("from", "from"), ("PUT 1M ms", "put"), ("GET 1M ms", "get1m"),
               ("GET small ms", "getsmall"), ("not 2xx", "notok"), ("status", "status")]

    def cell(key: str, value: object) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if key == "kib" else _ms(value)
        return "" if value is None and key in ("caps",) else str("-" if value is None
                                                                  else value)

    return text_table(columns, lines, cell, left=2)


def server_commit() -> str | None:
    """The repository's commit (with "+dirty" if hmacfs/ has changes), for the report."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hmacfs"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Idle keep-alive connections: server memory per connection and the "
                    "latency of honest requests while they are held.")
    p.add_argument("--connections", "-n", type=int, default=DEFAULT_CONNECTIONS, metavar="N",
                   help=f"idle connections to open (default {DEFAULT_CONNECTIONS})")
    p.add_argument("--rounds", "-m", type=int, default=DEFAULT_ROUNDS, metavar="M",
                   help=f"rounds of honest requests before and after (default {DEFAULT_ROUNDS})")
    p.add_argument("--workers", type=int, default=1, help="the server's workers (default 1)")
    p.add_argument("--default-caps", action="store_true",
                   help="also measure a server with the default per-address cap (1024)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter for `PATH -m hmacfs` (default: this one)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="parent of the work dir (default: the system temp dir)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"JSON results (default {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")
    args = p.parse_args(argv)
    if args.connections < 1 or args.rounds < 1 or not 1 <= args.workers <= 64:
        p.error("--connections and --rounds must be positive, --workers 1..64")
    return args


def run(args: argparse.Namespace) -> int:
    soft, hard = raise_nofile(args.connections + FD_MARGIN)
    if args.connections + FD_MARGIN > soft:
        raise BenchError(f"RLIMIT_NOFILE is {soft} (hard {hard}): too few descriptors for "
                         f"{args.connections} connections; use --connections "
                         f"{max(1, soft - FD_MARGIN)} or less")
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hmacfs-bench-", dir=args.tmpdir)).resolve()
    commit = server_commit()
    load_before = os.getloadavg()
    print(f"work dir: {workdir}  (server: {args.python} -m hmacfs, commit {commit}); "
          f"RLIMIT_NOFILE {soft}/{hard}")
    print("load average before: " + ", ".join(f"{x:.2f}" for x in load_before), flush=True)
    rows: list[Row] = []
    fatal: str | None = None
    try:
        rows.append(measure(args, workdir, default_caps=False))
        if args.default_caps:
            rows.append(measure(args, workdir, default_caps=True))
    except BenchError as exc:
        fatal = str(exc)
        print(f"error: {fatal}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    if rows:
        print()
        print(table(rows))
        print(f"\nKiB/conn = (summed server VmRSS after - before opening the idle connections)"
              f" / idle open. 503 = connections answered 503 (or reset by the refusal)."
              f"\nstill answer = every {CHECK_EVERY}th idle connection asked for a further GET"
              f" while held. Latency = median ms over {args.rounds} rounds, each request on a"
              f" connection of its own (connecting included); not 2xx = answers other than"
              f" 201/200.")
    print("load average after: " + ", ".join(f"{x:.2f}" for x in load_after))
    all_ok = fatal is None and bool(rows) and all(r.ok for r in rows)
    report = {
        "benchmark": "idle_connections",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "units": {"KiB": "2^10 bytes", "MiB": "2^20 bytes", "ms": "milliseconds"},
        "host": {"platform": platform.platform(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "bench_python": sys.version.split()[0],
        "server_python": args.python,
        "server_commit": commit,
        "client_rlimit_nofile": [soft, hard],
        "connections": args.connections,
        "rounds": args.rounds,
        "workers": args.workers,
        "check_every": CHECK_EVERY,
        "ok": all_ok,
        "error": fatal,
        "results": [asdict(r) for r in rows],
    }
    write_json(args.output, report)
    print(f"\nresults written to {args.output}")
    if fatal is not None:
        return 2
    return 0 if all_ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_driver(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
