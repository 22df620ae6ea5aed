#!/usr/bin/env python3
"""The object store backend against the object store itself: our server on a Ceph gateway
beside boto3 talking to the same gateway directly.

One run starts a throwaway Ceph cluster (tests/helpers/ceph.py: a monitor, an OSD, radosgw) in
a work dir, our server on it (``[storage] backend = "s3"``, ``part_size = "16M"``,
``parts_in_flight = 4``, ``--workers`` processes), writes a random test file and then, per run:

* **ours PUT**: ``curl -T FILE`` to ``/upload/<path>?v=<mac_v1>`` (our server streams it to
  the gateway, multipart with 16 MiB parts, 4 in flight);
* **ours GET**: ``curl -o /dev/null`` of ``/upload/<path>``;
* **boto3 PUT**: ``upload_file`` with ``TransferConfig(multipart_threshold=16M,
  multipart_chunksize=16M, max_concurrency=4)``, in a child process;
* **boto3 GET**: ``download_fileobj`` to /dev/null with the same TransferConfig (ranged GETs,
  4 in flight), in a child process.

The medians of MB/s and the ratio ours/boto3 are printed, with the peak RSS of our server's
process tree and of the boto3 child during each transfer, and the Ceph daemons' RSS
(informational). SHA-256 is checked once (first run) for both paths. After every run the
bucket is emptied and radosgw's garbage collector run, so the OSD (4 GiB) never fills.

Units: MB = 10^6 bytes (throughput), MiB = 2^20 bytes (memory, sizes).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# bench/ is not a package: running `python bench/objectstore.py` puts this directory on
# sys.path; `harness` puts the repository root on it.
from harness import REPO_ROOT
from harness.common import (
    CURL,
    HOST,
    MIB,
    UPLOAD_PREFIX,
    BenchError,
    clean_env,
    mb_per_s,
    run_driver,
    settle,
    size_label,
    transfer_timeout,
)
from harness.curl import run_curl, sha256_of_download
from harness.files import check_free_space
from harness.report import text_table, write_json
from harness.sampling import RssSampler, TreeSampler, kib_to_mib, read_one_kib
from harness.servers import READY_TIMEOUT_S, stop_process_group
from large_transfer import parse_size  # the same --size syntax (binary suffixes)

from tests.helpers.ceph import CephCluster, CephGateway
from tests.helpers.server import Server, ServerDidNotStart, start_server
from tests.helpers.signing import mac_v1

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "objectstore.json"
PART_SIZE = 16 * MIB
PARTS_IN_FLIGHT = 4
CHILD_FLAG = "--boto3-child"
CEPH_START_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------- boto3 child


def child_main(argv: Sequence[str]) -> int:
    """The boto3 side, run as ``objectstore.py --boto3-child OP ENDPOINT REGION BUCKET KEY
    FILE`` (keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): one transfer, timed around
    the transfer call only (as curl's time_total leaves out curl's start), as JSON on stdout."""
    op, endpoint, region, bucket, key, file = argv
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

    gateway = CephGateway(endpoint, os.environ["AWS_ACCESS_KEY_ID"],
                          os.environ["AWS_SECRET_ACCESS_KEY"], region)
    client = gateway.client(read_timeout=120)
    config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                            max_concurrency=PARTS_IN_FLIGHT)
    start = time.perf_counter()
    if op == "upload":
        client.upload_file(file, bucket, key, Config=config)
    elif op == "download":
        with open(os.devnull, "wb") as sink:
            client.download_fileobj(bucket, key, sink, Config=config)
    else:
        raise SystemExit(f"unknown operation {op!r}")
    seconds = time.perf_counter() - start
    size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    print(json.dumps({"seconds": seconds, "bytes": size}), flush=True)
    return 0


@dataclass
class ChildResult:
    seconds: float | None = None
    bytes: int | None = None
    peak_rss_kib: int | None = None
    vmhwm_kib: int | None = None
    error: str | None = None


def run_boto3_child(python: str, op: str, gateway: CephGateway, bucket: str, key: str,
                    file: Path, size: int) -> ChildResult:
    """One boto3 transfer in a child process, its RSS sampled every 50 ms; never raises."""
    env = clean_env()
    env["AWS_ACCESS_KEY_ID"] = gateway.access_key
    env["AWS_SECRET_ACCESS_KEY"] = gateway.secret_key
    cmd = [python, str(Path(__file__).resolve()), CHILD_FLAG, op, gateway.endpoint,
           gateway.region, bucket, key, str(file)]
    result = ChildResult()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          cwd=REPO_ROOT) as proc:
        hwm = 0

        with RssSampler(proc.pid) as sampler:
            deadline = time.monotonic() + transfer_timeout(size) + 30
            while proc.poll() is None and time.monotonic() < deadline:
                hwm = max(hwm, read_one_kib(proc.pid, "VmHWM") or 0)
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                result.error = f"boto3 {op} timed out"
            out, err = proc.communicate(timeout=30)
        result.peak_rss_kib = sampler.peak_kib
        result.vmhwm_kib = hwm or None
    if result.error is None and proc.returncode != 0:
        result.error = f"boto3 {op} exit {proc.returncode}: {err.decode(errors='replace')[-800:]}"
    if result.error is None:
        try:
            data = json.loads(out.decode().strip().splitlines()[-1])
            result.seconds, result.bytes = float(data["seconds"]), int(data["bytes"])
        except (ValueError, KeyError, IndexError):
            result.error = f"boto3 {op}: unparsable output {out[-200:]!r}"
    if result.error is None and result.bytes != size:
        result.error = f"boto3 {op}: object has {result.bytes} bytes, expected {size}"
    return result


# --------------------------------------------------------------------------- measurement


@dataclass
class Row:
    run: int
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    ours_put_mb_s: float | None = None
    ours_get_mb_s: float | None = None
    #: A resumable creation (what Apple's URLSession sends), the whole file in it.
    ours_rput_mb_s: float | None = None
    boto3_put_mb_s: float | None = None
    boto3_get_mb_s: float | None = None
    #: Our server's process tree: the sum of its processes' VmRSS and the largest one.
    ours_put_rss_sum_mib: float | None = None
    ours_put_rss_max_mib: float | None = None
    ours_get_rss_sum_mib: float | None = None
    ours_get_rss_max_mib: float | None = None
    ours_rput_rss_sum_mib: float | None = None
    ours_rput_rss_max_mib: float | None = None
    boto3_put_rss_mib: float | None = None
    boto3_get_rss_mib: float | None = None
    boto3_put_vmhwm_mib: float | None = None
    boto3_get_vmhwm_mib: float | None = None
    ours_sha_ok: bool | None = None
    boto3_sha_ok: bool | None = None
    #: Peak VmRSS of each Ceph daemon during this run's transfers, per phase.
    ceph_rss_mib: dict[str, dict[str, float | None]] = field(default_factory=dict)


class CephRss:
    """Peak VmRSS of each Ceph daemon (mon, osd, rgw) during a block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samplers: dict[str, RssSampler] = {}

    def __enter__(self) -> CephRss:
        self.samplers = {name: RssSampler(pid) for name, pid in self.pids.items()}
        for s in self.samplers.values():
            s.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.samplers.values():
            s.__exit__()

    def peaks(self) -> dict[str, float | None]:
        return {name: _mib(kib_to_mib(s.peak_kib)) for name, s in self.samplers.items()}


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def write_random_file(path: Path, size: int) -> str:
    """``size`` random bytes (os.urandom, 1 MiB at a time: nothing repeats for an object store
    that might compress or deduplicate); its sha256."""
    digest = hashlib.sha256()
    remaining = size
    with open(path, "wb") as fh:
        while remaining > 0:
            chunk = os.urandom(min(MIB, remaining))
            fh.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return digest.hexdigest()


def s3_sha256(client: Any, bucket: str, key: str) -> str:
    """Untimed: stream an object straight from the gateway through sha256."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    while chunk := body.read(MIB):
        digest.update(chunk)
    return digest.hexdigest()


def empty_bucket(cluster: CephCluster, client: Any, bucket: str) -> None:
    """Delete every object of the bucket, then have radosgw collect their data now (it waits
    two hours by default), so that the runs do not fill the 4 GiB OSD."""
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    for item in listed:
        client.delete_object(Bucket=bucket, Key=item["Key"])
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    subprocess.run(["radosgw-admin", "-c", str(cluster.conf), "gc", "process", "--include-all"],
                   capture_output=True, timeout=300, check=False, env=clean_env())


def measure_run(row: Row, args: argparse.Namespace, cluster: CephCluster, gateway: CephGateway,
                bucket: str, server: Server, sampler: TreeSampler, test_file: Path,
                test_sha: str, verify: bool) -> None:
    size: int = args.size
    pids = cluster.pids()
    path = f"bench-{secrets.token_hex(6)}/ours-r{row.run}.bin"
    url = f"http://{HOST}:{server.port}{UPLOAD_PREFIX}{path}"

    def phase(name: str) -> contextlib.AbstractContextManager[CephRss]:
        sampler.set_phase(name)
        return CephRss(pids)

    settle()
    with phase(f"put{row.run}") as ceph:
        put = run_curl(["-T", str(test_file), "-H", "Expect:", f"{url}?v={mac_v1(path, size)}"],
                       size, upload=True)
    row.ceph_rss_mib["ours_put"] = ceph.peaks()
    row.errors += put.problems("ours PUT", size, (201,))
    row.ours_put_mb_s = mb_per_s(size, put.seconds) if not row.errors else None

    if not row.errors:
        with phase(f"get{row.run}") as ceph:
            get = run_curl([url], size, upload=False)
        row.ceph_rss_mib["ours_get"] = ceph.peaks()
        problems = get.problems("ours GET", size, (200,))
        row.errors += problems
        row.ours_get_mb_s = mb_per_s(size, get.seconds) if not problems else None
    if not row.errors:
        rpath = f"bench-{secrets.token_hex(6)}/ours-resumable-r{row.run}.bin"
        rurl = f"http://{HOST}:{server.port}{UPLOAD_PREFIX}{rpath}?v={mac_v1(rpath, size)}"
        with phase(f"rput{row.run}") as ceph:
            rput = run_curl(
                ["-T", str(test_file), "-H", "Expect:", "-H", "Upload-Draft-Interop-Version: 8",
                 "-H", "Upload-Complete: ?1", rurl],
                size, upload=True,
            )
        row.ceph_rss_mib["ours_rput"] = ceph.peaks()
        problems = rput.problems("ours resumable PUT", size, (201,))
        row.errors += problems
        row.ours_rput_mb_s = mb_per_s(size, rput.seconds) if not problems else None
    sampler.set_phase(f"idle{row.run}")
    for attr, name in (
        ("put", f"put{row.run}"), ("get", f"get{row.run}"), ("rput", f"rput{row.run}")
    ):
        peak = sampler.phases.get(name)
        if peak is not None:
            setattr(row, f"ours_{attr}_rss_sum_mib", _mib(kib_to_mib(peak.sum_kib)))
            setattr(row, f"ours_{attr}_rss_max_mib", _mib(kib_to_mib(peak.max_kib)))
    if verify and row.ours_get_mb_s is not None:
        row.ours_sha_ok = sha256_of_download(url, size) == test_sha
        if not row.ours_sha_ok:
            row.errors.append("ours: downloaded content differs from the test file")

    key = f"bench-boto3/direct-r{row.run}.bin"
    settle()
    for op in ("upload", "download"):
        with CephRss(pids) as ceph:
            res = run_boto3_child(args.python, op, gateway, bucket, key, test_file, size)
        short = "put" if op == "upload" else "get"
        row.ceph_rss_mib[f"boto3_{short}"] = ceph.peaks()
        setattr(row, f"boto3_{short}_rss_mib", _mib(kib_to_mib(res.peak_rss_kib)))
        setattr(row, f"boto3_{short}_vmhwm_mib", _mib(kib_to_mib(res.vmhwm_kib)))
        if res.error is not None or res.seconds is None:
            row.errors.append(res.error or f"boto3 {op}: no time")
            break
        setattr(row, f"boto3_{short}_mb_s", mb_per_s(size, res.seconds))
    if verify and row.boto3_get_mb_s is not None:
        row.boto3_sha_ok = s3_sha256(gateway.client(read_timeout=120), bucket, key) == test_sha
        if not row.boto3_sha_ok:
            row.errors.append("boto3: stored object differs from the test file")
    row.ok = not row.errors


@contextlib.contextmanager
def ceph_cluster(directory: Path) -> Iterator[CephCluster]:
    cluster = CephCluster(directory)
    try:
        cluster.start(timeout=CEPH_START_TIMEOUT_S)
    except RuntimeError as exc:
        raise BenchError(str(exc)) from None
    try:
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers()
        if left:
            print("warning: Ceph processes left running:\n" + "\n".join(left), file=sys.stderr)


@contextlib.contextmanager
def our_server(args: argparse.Namespace, home: Path, gateway: CephGateway,
               bucket: str) -> Iterator[Server]:
    storage = "\n".join([
        "[storage]",
        'backend = "s3"',
        f"endpoint = {json.dumps(gateway.endpoint)}",
        f"bucket = {json.dumps(bucket)}",
        f"region = {json.dumps(gateway.region)}",
        f'part_size = "{PART_SIZE // MIB}M"',
        f"parts_in_flight = {PARTS_IN_FLIGHT}",
    ])
    home.mkdir(parents=True, exist_ok=True)
    try:
        server = start_server(
            home, storage, workers=args.workers, log_level="warning", python=args.python,
            cwd=REPO_ROOT,
            env={"LC_ALL": "C", "AWS_ACCESS_KEY_ID": gateway.access_key,
                 "AWS_SECRET_ACCESS_KEY": gateway.secret_key},
            notify=True, new_session=True, track=False, timeout=READY_TIMEOUT_S,
        )
    except ServerDidNotStart as exc:
        raise BenchError(f"our server: {exc}") from None
    try:
        yield server
    finally:
        stop_process_group(server.process)


def measure(args: argparse.Namespace, workdir: Path, filedir: Path, rows: list[Row],
            info: dict[str, object]) -> None:
    size: int = args.size
    check_free_space(filedir, size + 64 * MIB)
    check_free_space(workdir, 2 * size + 512 * MIB)  # the OSD's sparse file holds ~2 objects
    test_file = filedir / f"objectstore-test-{secrets.token_hex(4)}.bin"
    try:
        print(f"creating test file {test_file} ({size} bytes, random) ...", flush=True)
        test_sha = write_random_file(test_file, size)
        print("starting Ceph (mon, osd, radosgw) ...", flush=True)
        started = time.monotonic()
        with ceph_cluster(workdir / "ceph") as cluster:
            gateway = cluster.gateway
            assert gateway is not None
            info["ceph_start_seconds"] = round(time.monotonic() - started, 1)
            bucket = f"bench-{secrets.token_hex(4)}"
            gateway.make_bucket(bucket)
            client = gateway.client(read_timeout=120)
            print(f"Ceph up in {info['ceph_start_seconds']} s: {gateway.endpoint}, "
                  f"bucket {bucket}", flush=True)
            with our_server(args, workdir / "server", gateway, bucket) as server:
                sampler = TreeSampler(server.process.pid)
                sampler.start()
                try:
                    for n in range(1, args.runs + 1):
                        row = Row(run=n)
                        rows.append(row)
                        try:
                            measure_run(row, args, cluster, gateway, bucket, server, sampler,
                                        test_file, test_sha, verify=args.verify_content and n == 1)
                        finally:
                            empty_bucket(cluster, client, bucket)
                        print_run(row)
                        if not row.ok:
                            print("  server log tail:\n" + server.log_tail(15),
                                  file=sys.stderr)
                finally:
                    sampler.stop()
                    info["ours_tree"] = sampler.report()
            info["ceph_vmhwm_mib"] = {
                name: _mib(kib_to_mib(read_one_kib(pid, "VmHWM")))
                for name, pid in cluster.pids().items()
            }
    finally:
        test_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- output


def _f(value: object, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else "-"


def print_run(row: Row) -> None:
    status = "ok" if row.ok else "FAIL: " + "; ".join(row.errors)
    print(f"run {row.run}: ours PUT {_f(row.ours_put_mb_s)} GET {_f(row.ours_get_mb_s)} "
          f"resumable PUT {_f(row.ours_rput_mb_s)} MB/s, "
          f"boto3 PUT {_f(row.boto3_put_mb_s)} GET {_f(row.boto3_get_mb_s)} MB/s; "
          f"peak RSS ours tree PUT {_f(row.ours_put_rss_sum_mib)} GET "
          f"{_f(row.ours_get_rss_sum_mib)} MiB, boto3 PUT {_f(row.boto3_put_rss_mib)} GET "
          f"{_f(row.boto3_get_rss_mib)} MiB - {status}", flush=True)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(rows: Sequence[Row]) -> list[dict[str, object]]:
    """One line per direction: medians of MB/s over the runs, maxima of RSS."""
    def med(attr: str) -> float | None:
        vals = [v for r in rows if isinstance(v := getattr(r, attr), float)]
        return statistics.median(vals) if vals else None

    def peak(attr: str) -> float | None:
        vals = [v for r in rows if isinstance(v := getattr(r, attr), float)]
        return max(vals) if vals else None

    def daemon_peak(daemon: str, short: str) -> float | None:
        """A Ceph daemon's peak during the transfers of `short` (ours and boto3's)."""
        return max((v for r in rows for k, p in r.ceph_rss_mib.items()
                    if k.split("_", 1)[1] == short and isinstance(v := p.get(daemon), float)),
                   default=None)

    out: list[dict[str, object]] = []
    for what, short, theirs in (
        ("PUT", "put", "put"), ("GET", "get", "get"), ("resumable PUT", "rput", "put")
    ):
        ours, boto = med(f"ours_{short}_mb_s"), med(f"boto3_{theirs}_mb_s")
        out.append({
            "op": what,
            "runs": sum(isinstance(getattr(r, f"ours_{short}_mb_s"), float) for r in rows),
            "ours_mb_s": ours,
            "boto3_mb_s": boto,
            "ratio": _ratio(ours, boto),
            "ours_rss_sum_mib": peak(f"ours_{short}_rss_sum_mib"),
            "ours_rss_max_mib": peak(f"ours_{short}_rss_max_mib"),
            "boto3_rss_mib": peak(f"boto3_{theirs}_rss_mib"),
            "ceph_rgw_mib": daemon_peak("rgw", short),
            "ceph_osd_mib": daemon_peak("osd", short),
        })
    return out


COLUMNS: list[tuple[str, str]] = [
    ("op", "op"),
    ("runs", "runs"),
    ("ours MB/s", "ours_mb_s"),
    ("boto3 MB/s", "boto3_mb_s"),
    ("ours/boto3", "ratio"),
    ("ours tree RSS MiB", "ours_rss_sum_mib"),
    ("ours largest proc MiB", "ours_rss_max_mib"),
    ("boto3 child RSS MiB", "boto3_rss_mib"),
    ("radosgw RSS MiB", "ceph_rgw_mib"),
    ("ceph-osd RSS MiB", "ceph_osd_mib"),
]


def _cell(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key == "ratio" and isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="our server on a Ceph gateway beside boto3 on the same gateway: "
        "PUT/GET MB/s and memory (MB = 10^6 bytes, MiB = 2^20 bytes; K/M/G binary)",
    )
    p.add_argument("--size", type=parse_size, default=parse_size("1G"),
                   help="test file size (default 1G)")
    p.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--workers", type=int, default=1, help="our server's workers (default 1)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter for `-m hmacfs` and the boto3 child (default: this one)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="parent of the work dir holding Ceph's data and the server's config "
                   "(default: system temp dir)")
    p.add_argument("--filedir", type=Path, default=None,
                   help="where the test file is written (default /dev/shm if it has room, "
                   "else the work dir)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"JSON results (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")
    p.add_argument("--verify-content", action=argparse.BooleanOptionalAction, default=True,
                   help="check sha256 of both paths once (first run, untimed)")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 100:
        p.error("--runs must be between 1 and 100")
    if not 1 <= args.workers <= 64:
        p.error("--workers must be between 1 and 64")
    if args.size > 2 * 1024 * MIB:
        p.error("--size must be at most 2G (the server's max_upload_size)")
    return args


def _pick_filedir(args: argparse.Namespace, workdir: Path) -> Path:
    if args.filedir is not None:
        path: Path = args.filedir
        path.mkdir(parents=True, exist_ok=True)
        return path
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > args.size + 256 * MIB:
        return shm
    return workdir


def run(args: argparse.Namespace) -> int:
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hmacfs-objbench-", dir=args.tmpdir)).resolve()
    rows: list[Row] = []
    info: dict[str, object] = {}
    fatal: str | None = None
    filedir = _pick_filedir(args, workdir)
    print(f"work dir: {workdir}, test file in {filedir}, size {size_label(args.size)}, "
          f"runs {args.runs}, workers {args.workers}", flush=True)
    try:
        measure(args, workdir, filedir, rows, info)
    except BenchError as exc:
        fatal = str(exc)
        print(f"error: {fatal}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize([r for r in rows if r.ok] or rows)
    if rows:
        print(f"\n{size_label(args.size)}, medians of {sum(r.ok for r in rows)} good runs "
              "(RSS: maximum over the runs):")
        print(text_table(COLUMNS, summary, _cell, left=1))
        verified = [(r.ours_sha_ok, r.boto3_sha_ok) for r in rows if r.ours_sha_ok is not None]
        if verified:
            print(f"sha256 check (run 1): ours {'ok' if verified[0][0] else 'DIFFERS'}, "
                  f"boto3 {'ok' if verified[0][1] else 'DIFFERS'}")
        if "ceph_vmhwm_mib" in info:
            print(f"Ceph daemons' VmHWM at the end (MiB): {info['ceph_vmhwm_mib']}")
        print("\nMB = 10^6 bytes, MiB = 2^20 bytes. ours = curl time_total through our server;"
              " boto3 = upload_file / download_fileobj (16M parts, 4 in flight), timed in the"
              " child around the call. RSS: VmRSS sampled (100 ms for our tree's sum of"
              " processes, 50 ms elsewhere) during each transfer.")

    all_ok = fatal is None and bool(rows) and all(r.ok for r in rows)
    write_json(args.output, {
        "benchmark": "objectstore",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "units": {"MB": "10^6 bytes", "MiB": "2^20 bytes"},
        "host": {"platform": platform.platform(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
        "size_bytes": args.size, "size": size_label(args.size), "runs": args.runs,
        "workers": args.workers, "part_size": PART_SIZE, "parts_in_flight": PARTS_IN_FLIGHT,
        "ok": all_ok, "error": fatal,
        "results": [asdict(r) for r in rows], "summary": summary, **info,
    })
    print(f"\nresults written to {args.output}")
    if fatal is not None:
        return 2
    return 0 if all_ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [CHILD_FLAG]:
        return child_main(argv[1:])
    args = parse_args(argv)
    if shutil.which(CURL) is None:
        print(f"error: {CURL} not found", file=sys.stderr)
        return 2
    return run_driver(lambda: run(args), "Ceph stopped, temporary files removed")


if __name__ == "__main__":
    sys.exit(main())
