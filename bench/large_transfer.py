#!/usr/bin/env python3
"""Large-file throughput and memory benchmark for the hmacfs upload server.

For every requested size and for ``fsync = true`` (durable, the default) and
``fsync = false`` (fast mode) this script starts ``python -m hmacfs`` on a free
127.0.0.1 port, PUTs a test file with curl, GETs it back, checks status codes
and sizes, and samples the server's resident memory while each phase runs.
It also measures ``dd ... conv=fdatasync`` on the same filesystem so the
durable PUT rate can be compared with what the disk itself can do.

Units: MB = 10^6 bytes (throughput), MiB = 2^20 bytes (memory); sizes given on
the command line (``16M``, ``1G``) are binary (MiB, GiB).

See bench/README.md for how to run it and what the columns mean.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

CURL = "/usr/bin/curl"
DD = "dd"
SECRET = "bench-secret-0123456789"
UPLOAD_PREFIX = "/upload/"
HOST = "127.0.0.1"

KIB = 1024
MIB = 1024 * KIB
MB = 1_000_000

BLOCK_SIZE = MIB
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
SAMPLE_INTERVAL_S = 0.05
# Per-transfer curl / dd time limit: a fixed allowance plus 1 MB/s worth of data.
BASE_TIMEOUT_S = 60.0
MIN_RATE_B_S = 1 * MB

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "large_transfer.json"

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": KIB, "m": MIB, "g": 1024 * MIB, "t": 1024 * 1024 * MIB}


class BenchError(Exception):
    """A problem that makes further measurement pointless (server will not start...)."""


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


def size_label(size: int) -> str:
    for suffix, mult in (("T", 1024**4), ("G", 1024**3), ("M", MIB), ("K", KIB)):
        if size >= mult and size % mult == 0:
            return f"{size // mult}{suffix}"
    return f"{size}B"


def mb_per_s(size: int, seconds: float) -> float | None:
    return size / seconds / MB if seconds > 0 else None


def transfer_timeout(size: int) -> float:
    return BASE_TIMEOUT_S + size / MIN_RATE_B_S


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def upload_mac(path: str, size: int) -> str:
    """Prosody's v1 scheme: HMAC-SHA256(secret, "<path> <size>") as lowercase hex."""
    return hmac.new(SECRET.encode(), f"{path} {size}".encode(), hashlib.sha256).hexdigest()


def clean_env() -> dict[str, str]:
    """Environment for child processes: no proxies (only 127.0.0.1 is contacted), C locale."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["LC_ALL"] = "C"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the server's supervisor and worker processes)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def read_proc_kib(pid: int, fieldname: str) -> int | None:
    """The largest VmRSS / VmHWM (kB) of any process of the server (`pid` and its worker
    processes): the figure that must stay flat is per process. None if it is gone."""
    values = [v for p in process_tree(pid) if (v := read_one_kib(p, fieldname)) is not None]
    return max(values) if values else None


def read_one_kib(pid: int, fieldname: str) -> int | None:
    """Read e.g. VmRSS / VmHWM (kB) from /proc/PID/status; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(fieldname + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def kib_to_mib(kib: int | None) -> float | None:
    return None if kib is None else kib / KIB


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


# --------------------------------------------------------------------------- test file


def create_test_file(path: Path, size: int) -> str:
    """Write ``size`` bytes (one random 1 MiB block repeated) in chunks; return its sha256.

    The file is fsynced so later measurements do not compete with its write-back.
    """
    block = os.urandom(BLOCK_SIZE)
    digest = hashlib.sha256()
    remaining = size
    with open(path, "wb") as fh:
        while remaining > 0:
            chunk = block if remaining >= BLOCK_SIZE else block[:remaining]
            fh.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise BenchError(
            f"not enough free space in {directory}: need ~{needed / MIB:.0f} MiB, "
            f"have {free / MIB:.0f} MiB (use --tmpdir or smaller sizes)"
        )


# --------------------------------------------------------------------------- dd


_DD_RE = re.compile(r"^(\d+) bytes .*copied, ([0-9.]+) s", re.MULTILINE)


def dd_fdatasync(src: Path, dst: Path, size: int) -> float:
    """Copy ``src`` to ``dst`` with ``dd bs=1M conv=fdatasync``; return MB/s (10^6 B/s)."""
    os.sync()
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [DD, f"if={src}", f"of={dst}", "bs=1M", "conv=fdatasync"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=transfer_timeout(size),
            check=False,
        )
        wall = time.monotonic() - start
    finally:
        dst.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BenchError(f"dd failed ({proc.returncode}): {proc.stderr.strip()}")
    m = _DD_RE.search(proc.stderr)
    copied, seconds = (int(m.group(1)), float(m.group(2))) if m else (size, wall)
    if copied != size:
        raise BenchError(f"dd copied {copied} bytes, expected {size}")
    rate = mb_per_s(size, seconds if seconds > 0 else wall)
    if rate is None:
        raise BenchError("dd reported a zero duration")
    return rate


# --------------------------------------------------------------------------- memory


class RssSampler:
    """Sample VmRSS of ``pid`` every 50 ms in a thread while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> bool:
        rss = read_proc_kib(self.pid, "VmRSS")
        if rss is None:
            return False
        self.samples += 1
        if self.peak_kib is None or rss > self.peak_kib:
            self.peak_kib = rss
        return True

    def _run(self) -> None:
        # Bounded: ends when stopped or when the process disappears.
        while self._sample() and not self._stop.wait(SAMPLE_INTERVAL_S):
            pass

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


# --------------------------------------------------------------------------- server


def write_config(workdir: Path, port: int, storage: Path, fsync: bool) -> Path:
    config = workdir / f"hmacfs-{port}.toml"
    # json.dumps yields a valid TOML basic string for any path.
    config.write_text(
        "[server]\n"
        f'listen = ["{HOST}:{port}"]\n'
        f"upload_prefix = {json.dumps(UPLOAD_PREFIX)}\n"
        f"storage_dir = {json.dumps(str(storage))}\n"
        'max_upload_size = "2G"\n'
        f"fsync = {'true' if fsync else 'false'}\n"
        "\n[hmac]\n"
        f"secret = {json.dumps(SECRET)}\n",
        encoding="utf-8",
    )
    return config


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"server exited with status {proc.returncode} before listening; "
                f"log tail:\n{tail(log)}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(
        f"server did not accept connections on {HOST}:{port} within "
        f"{READY_TIMEOUT_S:.0f} s; log tail:\n{tail(log)}"
    )


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"  server pid {proc.pid} ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing",
              file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_server(
    python: str, workdir: Path, fsync: bool
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """Start ``python -m hmacfs`` with a fresh storage dir; yield (process, port, log)."""
    port = free_port()
    storage = workdir / f"files-{port}"
    storage.mkdir()
    config = write_config(workdir, port, storage, fsync)
    log = workdir / f"server-{port}.log"
    try:
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen(
                [python, "-m", "hmacfs", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=clean_env(),
            )
        try:
            wait_ready(proc, port, log)
            yield proc, port, log
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        config.unlink(missing_ok=True)


# --------------------------------------------------------------------------- curl


@dataclass
class CurlResult:
    status: int
    seconds: float
    speed_b_s: float
    bytes: int
    error: str | None = None


def run_curl(args: Sequence[str], size: int, upload: bool) -> CurlResult:
    var = "upload" if upload else "download"
    cmd = [
        CURL, "-q", "-sS", "-g", "--noproxy", "*",
        "--max-time", f"{transfer_timeout(size):.0f}",
        "-o", "/dev/null",
        "-w", f"%{{http_code}} %{{time_total}} %{{speed_{var}}} %{{size_{var}}}",
        *args,
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=clean_env(),
            timeout=transfer_timeout(size) + 30, check=False,
        )
    except subprocess.TimeoutExpired:
        return CurlResult(0, 0.0, 0.0, 0, "curl timed out")
    try:
        code, total, speed, nbytes = proc.stdout.split()
        result = CurlResult(int(code), float(total), float(speed), int(float(nbytes)))
    except ValueError:
        return CurlResult(0, 0.0, 0.0, 0, f"unparsable curl output {proc.stdout!r}")
    if proc.returncode != 0:
        result.error = f"curl exit {proc.returncode}: {proc.stderr.strip()}"
    return result


def sha256_of_download(url: str, size: int) -> str:
    """Untimed content check: stream the body through sha256 without storing it."""
    digest = hashlib.sha256()
    cmd = [CURL, "-q", "-sS", "-g", "--noproxy", "*", "--fail",
           "--max-time", f"{transfer_timeout(size):.0f}", url]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, env=clean_env()) as proc:
        out = proc.stdout
        assert out is not None
        while chunk := out.read(BLOCK_SIZE):  # ends at EOF; curl is bounded by --max-time
            digest.update(chunk)
        proc.wait(timeout=transfer_timeout(size))
        if proc.returncode != 0:
            return f"curl exit {proc.returncode}"
    return digest.hexdigest()


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
    row.rss_idle_mib = kib_to_mib(read_proc_kib(pid, "VmRSS"))

    os.sync()  # do not let earlier dirty pages (fsync = false runs) leak into this one
    with RssSampler(pid) as sampler:
        put = run_curl(
            ["-T", str(test_file), "-H", "Expect:", f"{url}?v={upload_mac(path, size)}"],
            size, upload=True,
        )
    row.rss_peak_upload_mib = kib_to_mib(sampler.peak_kib)
    row.rss_samples_upload = sampler.samples
    row.vmhwm_after_upload_mib = kib_to_mib(read_proc_kib(pid, "VmHWM"))
    row.put_status, row.put_seconds = put.status, put.seconds
    row.put_mb_s = mb_per_s(size, put.seconds)
    if put.error:
        row.errors.append(f"PUT: {put.error}")
    if put.status != 201:
        row.errors.append(f"PUT: status {put.status}, expected 201")
    elif put.bytes != size:
        row.errors.append(f"PUT: curl sent {put.bytes} bytes, expected {size}")
    if row.errors:
        row.vmhwm_final_mib = row.vmhwm_after_upload_mib
        return

    with RssSampler(pid) as sampler:
        get = run_curl([url], size, upload=False)
    row.rss_peak_download_mib = kib_to_mib(sampler.peak_kib)
    row.rss_samples_download = sampler.samples
    row.vmhwm_final_mib = kib_to_mib(read_proc_kib(pid, "VmHWM"))
    row.get_status, row.get_seconds, row.get_bytes = get.status, get.seconds, get.bytes
    row.get_mb_s = mb_per_s(size, get.seconds)
    if get.error:
        row.errors.append(f"GET: {get.error}")
    if get.status != 200:
        row.errors.append(f"GET: status {get.status}, expected 200")
    elif get.bytes != size:
        row.errors.append(f"GET: received {get.bytes} bytes, expected {size}")

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
    cells = [[_cell(key, r.get(key)) for _, key in COLUMNS] for r in rows]
    widths = [
        max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _) in enumerate(COLUMNS)
    ]

    def line(values: Sequence[str]) -> str:
        pairs = enumerate(zip(values, widths, strict=True))
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in pairs).rstrip()

    out = [line([t for t, _ in COLUMNS]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)


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


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
                with running_server(args.python, workdir, fsync) as (proc, port, log):
                    print(f"[{label}] fsync={str(fsync).lower()}: server pid {proc.pid} "
                          f"on {HOST}:{port}", flush=True)
                    for n in range(1, runs + 1):
                        row = Row(size_bytes=size, size=label, fsync=fsync, run=n)
                        rows.append(row)
                        measure_one(row, proc.pid, port, test_file,
                                    test_sha if args.verify_content else None)
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
                            print(f"  server log tail:\n{tail(log, 15)}", file=sys.stderr)
        finally:
            test_file.unlink(missing_ok=True)


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
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
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
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; temporary files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
