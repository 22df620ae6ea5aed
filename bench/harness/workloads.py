"""compare.py's workloads: the 1 GiB transfers, wrk runs of PUTs and GETs, timed GETs on one
connection (idle and during a large upload), the bare sendfile loop, py-spy profiles.

Each works on a running `BenchServer` (ours or nginx) and returns what it measured; none raises
for a failed request (that is recorded in the result), only for a run that cannot go on.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.common import (
    CURL,
    GIB,
    HOST,
    KIB,
    MIB,
    BenchError,
    clean_env,
    mb_per_s,
    num,
    settle,
    size_name,
    transfer_timeout,
)
from harness.curl import run_curl
from harness.files import DiskRate, durable_files
from harness.idle import check_idle, open_idle, raise_nofile, tree_rss_by_pid
from harness.profiling import PY_SPY_RATE, top_functions
from harness.sampling import BUSY_MACHINE_CORES, OtherLoad, tree_cpu_seconds
from harness.servers import BenchServer
from harness.wrk import WRK_MAX_THREADS, WrkRun, run_wrk, write_list

SMALL, MEDIUM = 4 * KIB, MIB
#: Bounds of the single-connection request loops (workload 4 and the idle baseline).
LOOP_MAX_SECONDS = 120.0
MAX_LOOP_ERRORS = 100
HTTP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Profile:
    """How big and how long: the full run, or the `--quick` smoke run."""

    name: str
    big_size: int
    wrk_seconds: int
    put_concurrency: tuple[int, ...]
    get_concurrency: tuple[int, ...]
    #: Most PUTs one wrk run may make (its list of fresh paths), by body size.
    put_requests: dict[int, int]
    #: Files uploaded before the GET runs, by size.
    get_files: dict[int, int]
    #: Rounds of the 1 GiB transfers (and of dd / the durable PUT); the best one is reported.
    big_rounds: int
    #: Rounds of each wrk PUT run, the servers taking turns to go first; the best is reported.
    put_rounds: int
    #: The same for each wrk GET run.
    get_rounds: int
    during_upload_max_requests: int
    idle_get_requests: int
    #: Idle keep-alive connections opened to measure the memory each costs a server.
    idle_connections: int = 1000


def remove_uploads(server: BenchServer, prefix: str, *, wipe_meta: bool = False) -> int:
    """Delete the top-level upload dirs named ``prefix*``; return how many there were.

    With ``wipe_meta``, for our server also every metadata file (not their dirs), so each PUT
    run starts from the same directory sizes and no stale inode entry lingers. Only before
    the GET files are uploaded: their metadata must stay.
    """
    count = 0
    with os.scandir(server.storage) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                count += 1
                shutil.rmtree(entry.path, ignore_errors=True)
    if wipe_meta and server.kind == "ours":
        meta = server.storage / ".hmacfs" / "meta"
        if meta.is_dir():
            for sub in meta.iterdir():
                if sub.is_dir():
                    for f in sub.iterdir():
                        f.unlink(missing_ok=True)
    return count


@dataclass
class BigTransfer:
    server: str
    size: int
    round: int = 1
    put_status: int | None = None
    put_seconds: float | None = None
    put_mb_s: float | None = None
    put_cpu_s: float | None = None
    put_cpu_s_per_gb: float | None = None
    get_status: int | None = None
    get_seconds: float | None = None
    get_mb_s: float | None = None
    get_cpu_s: float | None = None
    get_cpu_s_per_gb: float | None = None
    put_other_load_cores: float | None = None
    get_other_load_cores: float | None = None
    #: The cores curl itself kept busy (about 1: the rate is the client's limit).
    put_client_cores: float | None = None
    get_client_cores: float | None = None
    errors: list[str] = field(default_factory=list)


def big_put_get(server: BenchServer, test_file: Path, size: int, round_no: int, *,
                get: bool = True) -> BigTransfer:
    """One PUT (and GET) of ``test_file`` over one connection with curl; CPU of the server."""
    result = BigTransfer(server.label, size, round_no)
    rel = f"big-{secrets.token_hex(6)}/big.bin"
    settle()
    server.sampler.set_phase("big PUT")
    cpu0 = tree_cpu_seconds(server.pid)
    with OtherLoad() as other:
        put = run_curl([*server.curl_args, "-T", str(test_file), "-H", "Expect:",
                        server.base_url + server.put_target(rel, size)], size, upload=True)
    cpu1 = tree_cpu_seconds(server.pid)
    result.put_other_load_cores = other.cores
    result.put_client_cores = put.client_cores
    result.put_status, result.put_seconds = put.status, put.seconds
    result.put_mb_s = mb_per_s(size, put.seconds)
    result.put_cpu_s = cpu1 - cpu0
    result.put_cpu_s_per_gb = result.put_cpu_s / (size / 1e9)
    result.errors += put.problems("PUT", size, server.put_statuses)
    if get and not result.errors:
        server.sampler.set_phase("big GET")
        cpu2 = tree_cpu_seconds(server.pid)
        with OtherLoad() as other:
            got = run_curl([*server.curl_args, server.base_url + server.get_target(rel)], size,
                           upload=False)
        cpu3 = tree_cpu_seconds(server.pid)
        result.get_other_load_cores = other.cores
        result.get_client_cores = got.client_cores
        result.get_status, result.get_seconds = got.status, got.seconds
        result.get_mb_s = mb_per_s(size, got.seconds)
        result.get_cpu_s = cpu3 - cpu2
        result.get_cpu_s_per_gb = result.get_cpu_s / (size / 1e9)
        result.errors += got.problems("GET", size, (200,))
    server.sampler.set_phase("idle")
    remove_uploads(server, "big-")
    return result


@contextlib.contextmanager
def bare_sendfile_server(path: Path) -> Iterator[int]:
    """A loopback server (a thread of this process) that answers every connection with the
    whole of ``path`` through blocking sendfile(2), then closes it; yields its port.

    No parsing, no event loop, no headers beyond Content-Length: the least work any server
    can do per byte sent, so curl's rate from it is what loopback allows a 1-connection GET
    on this machine, the ceiling for both servers' GET figures.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the 0.2 s timeout, or closed at the end
                continue
            with conn, open(path, "rb") as body:
                conn.settimeout(HTTP_TIMEOUT_S)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                size = os.fstat(body.fileno()).st_size
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n" % size)
                conn.setblocking(True)  # sendfile(2) waits for room instead of EAGAIN
                offset = 0
                with contextlib.suppress(OSError):  # curl gave up: its error is reported
                    while offset < size:
                        sent = os.sendfile(conn.fileno(), body.fileno(), offset, size - offset)
                        if sent == 0:
                            break
                        offset += sent

    thread = threading.Thread(target=serve, name="bare-sendfile", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=10)


def bare_get(test_file: Path, size: int) -> tuple[float | None, str | None]:
    """MB/s of one curl GET of ``test_file`` from `bare_sendfile_server`; an error or None."""
    settle()
    with bare_sendfile_server(test_file) as port:
        got = run_curl([f"http://{HOST}:{port}/"], size, upload=False)
    if got.error or got.status != 200 or got.bytes != size:
        return None, got.error or f"status {got.status}, {got.bytes} of {size} bytes"
    return mb_per_s(size, got.seconds), None


def put_runs(servers: Sequence[BenchServer], profile: Profile, workdir: Path, storage_kind: str,
             sizes: Sequence[int]) -> list[WrkRun]:
    """Workload 2: PUTs of fresh paths at each concurrency; uploads removed after each run.

    Each (size, concurrency) runs ``profile.put_rounds`` times per server, the servers taking
    turns to go first: on a disk, small uploads swing with the filesystem's state (its journal,
    the writeback of the last run's deletions) from one minute to the next, and a single run
    of each server a minute apart compares two different disks.
    """
    runs = []
    for size in sizes:
        for conc in profile.put_concurrency:
            for round_no in range(1, profile.put_rounds + 1):
                order = servers if round_no % 2 else list(reversed(servers))
                for server in order:
                    runs.append(put_run(server, profile, workdir, storage_kind, size, conc,
                                        round_no))
    settle()
    return runs


def put_run(server: BenchServer, profile: Profile, workdir: Path, storage_kind: str, size: int,
            conc: int, round_no: int) -> WrkRun:
    """One wrk PUT run of fresh paths; the uploads are removed afterwards."""
    lines = profile.put_requests[size]
    prefix = f"p{size}c{conc}-{secrets.token_hex(3)}-"
    list_file = workdir / "put-list.txt"
    write_list(list_file, [server.put_target(f"{prefix}{i:06d}/f.bin", size)
                           for i in range(lines)])
    run = WrkRun(server.label, storage_kind, "PUT", size, conc,
                 min(WRK_MAX_THREADS, conc), profile.wrk_seconds, lines, round=round_no)
    settle()
    run_wrk(run, server, list_file, "once")
    run.stored = remove_uploads(server, prefix, wipe_meta=True)
    list_file.unlink(missing_ok=True)
    if run.error is None and run.stored < run.ok:
        run.error = f"{run.ok} PUTs answered 2xx but only {run.stored} files are there"
    report_wrk(run)
    return run


def upload_files(server: BenchServer, prefix: str, size: int, count: int) -> list[str]:
    """PUT ``count`` files of ``size`` bytes over one keep-alive connection; their GET targets."""
    body = os.urandom(size)
    targets = []
    conn = server.connection(HTTP_TIMEOUT_S)
    try:
        for i in range(count):
            rel = f"{prefix}{i:04d}/f.bin"
            conn.request("PUT", server.put_target(rel, size), body=body)
            resp = conn.getresponse()
            resp.read()
            if resp.status not in server.put_statuses:
                raise BenchError(f"{server.label}: PUT {rel} answered {resp.status}; "
                                 f"log tail:\n{server.log_tail()}")
            targets.append(server.get_target(rel))
    finally:
        conn.close()
    return targets


def get_runs(servers: Sequence[BenchServer], profile: Profile, workdir: Path,
             storage_kind: str, files: dict[str, dict[int, list[str]]]) -> list[WrkRun]:
    """Workload 3: GETs walking the uploaded files (`files`, by server label and size) round
    and round.

    Each (size, concurrency) runs ``profile.get_rounds`` times per server, the servers taking
    turns to go first, as the PUT runs do: a run right after the uploads, or after a server
    was idle a while, meets a machine in another state (page cache, writeback, memory touched
    for the first time) than one a minute later, and that should not always be one side's.
    """
    runs = []
    sizes = dict.fromkeys(size for server in servers for size in files[server.label])
    for size in sizes:
        for conc in profile.get_concurrency:
            for round_no in range(1, profile.get_rounds + 1):
                order = servers if round_no % 2 else list(reversed(servers))
                for server in order:
                    targets = files[server.label].get(size)
                    if targets is None:
                        continue
                    list_file = workdir / "get-list.txt"
                    write_list(list_file, targets)
                    run = WrkRun(server.label, storage_kind, "GET", size, conc,
                                 min(WRK_MAX_THREADS, conc), profile.wrk_seconds, len(targets),
                                 round=round_no)
                    run_wrk(run, server, list_file, "cycle")
                    report_wrk(run)
                    runs.append(run)
                    list_file.unlink(missing_ok=True)
    return runs


def report_wrk(run: WrkRun) -> None:
    if run.error:
        print(f"  {run.server:<14} {run.method} {size_name(run.size):>6} c={run.concurrency:<3}"
              f" ERROR {run.error}", flush=True)
        return
    flags = []
    if run.non_2xx:
        flags.append(f"{run.non_2xx} non-2xx")
    if run.socket_errors:
        flags.append(f"{run.socket_errors} socket errors")
    if run.list_exhausted:
        flags.append("list used up: rate is a lower bound")
    if run.other_load_cores is not None and run.other_load_cores > BUSY_MACHINE_CORES:
        flags.append(f"other processes used {run.other_load_cores} cores")
    when = f" r{run.round}" if run.method == "PUT" else ""
    print(f"  {run.server:<14} {run.method} {size_name(run.size):>6} c={run.concurrency:<3}{when} "
          f"{num(run.req_s, 0):>7} req/s  p50 {num(run.p50_ms, 2)} ms  "
          f"p99 {num(run.p99_ms, 2)} ms  CPU {num(run.cpu_us_per_request, 0)} us/req  "
          f"{'; '.join(flags)}", flush=True)


@dataclass
class LatencyLoop:
    """Sequential GETs on one keep-alive connection, timed one by one."""

    server: str
    what: str
    requests: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    upload_status: int | None = None
    upload_mb_s: float | None = None
    other_load_cores: float | None = None
    error: str | None = None


def _percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def timed_gets(server: BenchServer, target: str, size: int, keep_going: Callable[[], bool],
               max_requests: int, result: LatencyLoop) -> None:
    """GET ``target`` until ``keep_going()`` is false, ``max_requests`` or 120 s are reached."""
    latencies: list[float] = []
    conn = http.client.HTTPConnection(HOST, server.port, timeout=HTTP_TIMEOUT_S)
    deadline = time.monotonic() + LOOP_MAX_SECONDS
    try:
        while (len(latencies) < max_requests and result.errors < MAX_LOOP_ERRORS
               and time.monotonic() < deadline and keep_going()):
            start = time.perf_counter()
            try:
                conn.request("GET", target)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                result.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, server.port, timeout=HTTP_TIMEOUT_S)
                continue
            latencies.append(time.perf_counter() - start)
            if resp.status != 200 or len(body) != size:
                result.errors += 1
    finally:
        conn.close()
    result.requests = len(latencies)
    if latencies:
        ordered = sorted(latencies)
        result.p50_ms = _percentile(ordered, 50) * 1e3
        result.p99_ms = _percentile(ordered, 99) * 1e3
        result.max_ms = ordered[-1] * 1e3
        result.mean_ms = statistics.fmean(ordered) * 1e3


def gets_during_upload(server: BenchServer, test_file: Path, big_size: int, target: str,
                       profile: Profile) -> tuple[LatencyLoop, LatencyLoop]:
    """Workload 4: 4 KiB GET latency idle, then while curl uploads ``test_file``."""
    idle = LatencyLoop(server.label, "idle")
    timed_gets(server, target, SMALL, lambda: True, profile.idle_get_requests, idle)

    # Uploads of the test file one after another on one connection, at least 1 GiB in all: a
    # fast server takes a 64 MiB file (--quick) in less time than the first GET needs.
    repeats = max(1, -(-GIB // big_size))
    label = size_name(big_size) if repeats == 1 else f"{repeats} x {size_name(big_size)}"
    during = LatencyLoop(server.label, f"during {label} PUT")
    token = secrets.token_hex(6)
    settle()
    cmd = [
        CURL, "-q", "-sS", "-g", "--noproxy", "*",
        "--max-time", f"{transfer_timeout(big_size * repeats):.0f}",
        "-w", "%{http_code} %{time_total} %{size_upload}\n", "-H", "Expect:",
    ]
    for i in range(repeats):
        rel = f"during-{token}/big{i}.bin"
        cmd += ["-o", "/dev/null", "-T", str(test_file),
                server.base_url + server.put_target(rel, big_size)]
    server.sampler.set_phase("GETs during big PUT")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    try:
        with OtherLoad() as other:
            time.sleep(0.05)  # let curl connect and start sending before the first sample
            timed_gets(server, target, SMALL, lambda: proc.poll() is None,
                       profile.during_upload_max_requests, during)
            out, err = proc.communicate(timeout=transfer_timeout(big_size * repeats) + 30)
        during.other_load_cores = other.cores
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.sampler.set_phase("idle")
    results: list[list[str]] = []
    statuses: set[int] = set()
    try:
        results = [line.split() for line in out.splitlines() if line.strip()]
        statuses = {int(code) for code, _, _ in results}
        during.upload_status = max(statuses) if len(results) == repeats else 0
        if all(int(float(sent)) == big_size for _, _, sent in results):
            seconds = sum(float(total) for _, total, _ in results)
            during.upload_mb_s = mb_per_s(big_size * len(results), seconds)
    except ValueError:
        during.error = f"unparsable curl output {out!r} {err.strip()}"
    if not statuses <= server.put_statuses or len(results) != repeats:
        during.error = f"upload statuses {sorted(statuses)} of {len(results)} {err.strip()}"
    elif during.requests == 0:
        during.error = "the upload ended before the first GET"
    remove_uploads(server, "during-")
    return idle, during


def profile_run(server: BenchServer, method: str, targets: Sequence[str] | None,
                profile: Profile, workdir: Path, py_spy: str, output_dir: Path
                ) -> dict[str, object]:
    """An extra 4 KiB ``method`` c=10 run (not in the tables) with py-spy recording ours.

    PUTs go to fresh paths; GETs walk ``targets``. The raw stacks are kept in the output dir.
    """
    raw = output_dir / f"compare-profile-{method.lower()}.txt"
    seconds = profile.wrk_seconds
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(server.pid), "--subprocesses", "--nonblocking",
         "--rate", str(PY_SPY_RATE), "--duration", str(seconds), "--format", "raw",
         "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    list_file = workdir / "prof-list.txt"
    try:
        if targets is None:
            prefix = f"prof-{secrets.token_hex(3)}-"
            targets = [server.put_target(f"{prefix}{i:06d}/f.bin", SMALL)
                       for i in range(profile.put_requests[SMALL])]
        write_list(list_file, targets)
        time.sleep(0.5)  # py-spy attaches
        run = WrkRun(server.label, "disk", method, SMALL, 10, 2, seconds, len(targets))
        run_wrk(run, server, list_file, "once" if method == "PUT" else "cycle")
        _, err = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
        list_file.unlink(missing_ok=True)
    if method == "PUT":
        remove_uploads(server, "prof-", wipe_meta=True)
    if spy.returncode != 0 or not raw.exists():
        return {"error": f"py-spy exit {spy.returncode}: {err.strip()[-300:]}"}
    return {"workload": f"4 KiB {method} c=10", "raw_file": str(raw),
            "req_s_while_profiled": run.req_s, **top_functions(raw, seconds)}



def durable_small_puts(server: BenchServer, profile: Profile, workdir: Path, disk: Path,
                       concurrency: int = 10) -> tuple[list[WrkRun], list[DiskRate]]:
    """Workload 8: 4 KiB PUTs of fresh paths at ``concurrency`` to ``server`` (ours with
    ``fsync = true``), beside the filesystem's own rate of such files (`durable_files`, in
    ``disk``, the storage's filesystem) with one thread and with ``concurrency`` threads.

    ``profile.put_rounds`` rounds, the order turned round every other round (disk loops,
    server; server, disk loops), since the disk's rate moves from one minute to the next.
    """
    runs: list[WrkRun] = []
    rates: list[DiskRate] = []
    for round_no in range(1, profile.put_rounds + 1):
        disk_first = round_no % 2 == 1
        if disk_first:
            rates += [_disk_rate(disk, t, profile, round_no) for t in (1, concurrency)]
        runs.append(put_run(server, profile, workdir, "durable", SMALL, concurrency, round_no))
        if not disk_first:
            rates += [_disk_rate(disk, t, profile, round_no) for t in (1, concurrency)]
    return runs, rates


def _disk_rate(disk: Path, threads: int, profile: Profile, round_no: int) -> DiskRate:
    settle()
    rate = durable_files(disk / f"fsync-loop-{secrets.token_hex(3)}", threads=threads,
                         size=SMALL, seconds=profile.wrk_seconds,
                         max_files=profile.put_requests[SMALL], round_no=round_no)
    flags = list(rate.errors)
    if rate.hit_limit:
        flags.append("file limit reached: rate is a lower bound")
    if rate.other_load_cores is not None and rate.other_load_cores > BUSY_MACHINE_CORES:
        flags.append(f"other processes used {rate.other_load_cores} cores")
    print(f"  {'disk loop':<14} {size_name(SMALL)} files, {threads:>2} thread(s) r{round_no} "
          f"{num(rate.files_per_s, 0):>7} files/s  (create, write, fsync, rename, fsync of "
          f"both directories) {'; '.join(flags)}", flush=True)
    return rate


@dataclass
class IdleMemory:
    """What ``connections`` idle keep-alive connections cost a server's memory (VmRSS)."""

    server: str
    connections: int
    opened: int = 0
    refused_503: int = 0
    reset: int = 0
    failed: int = 0
    open_seconds: float | None = None
    rss_before_kib: int | None = None
    rss_after_kib: int | None = None
    kib_per_connection: float | None = None
    #: VmRSS before and after (KiB) of each process, by pid; "main" marks the one started.
    per_process: list[dict[str, object]] = field(default_factory=list)
    checked: int = 0
    checked_ok: int = 0
    errors: list[str] = field(default_factory=list)


def idle_memory(server: BenchServer, target: str, connections: int) -> IdleMemory:
    """Workload 9: the server's summed VmRSS before and after ``connections`` connections,
    each having had one GET of ``target`` answered (200) and then left idle (keep-alive);
    (after - before) / connections held. Every 50th is asked once more before all are closed.
    """
    result = IdleMemory(server.label, connections)
    need = connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        raise_nofile(need)
    request = f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    try:
        before = tree_rss_by_pid(server.pid)
        opened = open_idle(server.port, connections, request)
        try:
            time.sleep(0.2)  # what the last answers left to do (logging, buffers) is done
            after = tree_rss_by_pid(server.pid)
            result.opened, result.refused_503 = len(opened.idle), opened.refused_503
            result.reset, result.failed = opened.reset, opened.failed
            result.open_seconds = opened.seconds
            result.errors += opened.errors
            result.checked, result.checked_ok = check_idle(opened.idle, 50, request)
        finally:
            for sock in opened.idle:
                sock.close()
    except BenchError as exc:
        result.errors.append(str(exc))
        return result
    finally:
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    result.rss_before_kib, result.rss_after_kib = sum(before.values()), sum(after.values())
    result.per_process = [{"pid": pid, "main": pid == server.pid, "before_kib": before.get(pid),
                           "after_kib": after.get(pid)} for pid in sorted({*before, *after})]
    if result.opened:
        result.kib_per_connection = (result.rss_after_kib - result.rss_before_kib) / result.opened
    if result.opened != connections:
        result.errors.append(f"{result.opened} of {connections} connections held "
                             f"({result.refused_503} answered 503, {result.reset} reset, "
                             f"{result.failed} failed)")
    if result.checked_ok != result.checked:
        result.errors.append(f"{result.checked - result.checked_ok} of {result.checked} idle "
                             "connections did not answer a further GET")
    return result
