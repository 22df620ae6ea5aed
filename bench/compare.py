#!/usr/bin/env python3
"""hmacfs beside nginx: the same workloads against both servers, in one run, on one filesystem.

Starts our server (``python -m hmacfs --config CONFIG run``, ``fsync = false``) and Debian's
nginx (a private nginx.conf: WebDAV ``PUT`` under /upload/, static GET of the same directory)
on free 127.0.0.1 ports, and measures:

1. a 1 GiB PUT and GET over one connection (curl), plus the durable upload (a second start of
   our server with ``fsync = true``) beside ``dd bs=1M conv=fdatasync`` of the same size;
2. 4 KiB and 1 MiB PUTs at concurrency 1, 10 and 100 (wrk, a fresh path per request);
3. 4 KiB and 1 MiB GETs at concurrency 10 and 100 (wrk, files uploaded beforehand);
4. 4 KiB GET latency on one connection while a 1 GiB upload runs;
5. peak RSS of each server's processes and CPU seconds per GB moved by the 1 GiB transfers;
6. with ``--tmpfs``, workloads 2 and 3 again with both servers storing on a tmpfs.

It prints our figure, nginx's, the ratio (ours/nginx) and the target for each workload, and
writes everything to a JSON file and a Markdown table beside it. Only 127.0.0.1 is contacted;
every request loop is bounded in requests and in time. See bench/COMPARE.md.

Units: MB = 10^6 bytes (throughput), MiB = 2^20 bytes (memory), KiB/MiB/GiB for sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

# bench/ is not a package: running `python bench/compare.py` puts this directory on sys.path.
import large_transfer as lt

HOST = lt.HOST
UPLOAD_PREFIX = lt.UPLOAD_PREFIX
KIB, MIB, MB = lt.KIB, lt.MIB, lt.MB
GIB = 1024 * MIB
SMALL, MEDIUM = 4 * KIB, MIB

NGINX = "/usr/sbin/nginx"
WRK = "/usr/bin/wrk"
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WRK_SCRIPT = BENCH_DIR / "wrk" / "paths.lua"
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "compare.json"

READY_TIMEOUT_S = 20.0
SAMPLE_INTERVAL_S = 0.1
#: wrk's own per-request timeout: a slow 1 MiB PUT at c=100 must count as slow, not as lost.
WRK_TIMEOUT_S = 30
#: A wrk run may take this much longer than its -d before it is killed.
WRK_GRACE_S = 60.0
WRK_MAX_THREADS = 2
#: Bounds of the single-connection request loops (workload 4 and the idle baseline).
LOOP_MAX_SECONDS = 120.0
MAX_LOOP_ERRORS = 100
HTTP_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(lt.BenchError):
    """Measurement cannot go on (a server does not start, a tool is missing, ...)."""


# --------------------------------------------------------------------------- profiles


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
    during_upload_max_requests: int
    idle_get_requests: int


FULL = Profile(
    name="full",
    big_size=GIB,
    wrk_seconds=6,
    put_concurrency=(1, 10, 100),
    get_concurrency=(10, 100),
    put_requests={SMALL: 200_000, MEDIUM: 8_000},
    get_files={SMALL: 200, MEDIUM: 50},
    big_rounds=2,
    put_rounds=2,
    during_upload_max_requests=20_000,
    idle_get_requests=300,
)
QUICK = Profile(
    name="quick",
    big_size=64 * MIB,
    wrk_seconds=2,
    put_concurrency=(10,),
    get_concurrency=(10,),
    put_requests={SMALL: 40_000, MEDIUM: 1_500},
    get_files={SMALL: 50, MEDIUM: 10},
    big_rounds=1,
    put_rounds=1,
    during_upload_max_requests=5_000,
    idle_get_requests=100,
)


def size_name(size: int) -> str:
    """4 KiB, 1 MiB, 1 GiB: the names used in the tables."""
    for unit, mult in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= mult and size % mult == 0:
            return f"{size // mult} {unit}"
    return f"{size} B"


# --------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; the name in parentheses may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now (empty if ``root`` is gone)."""
    children: dict[int, list[int]] = {}
    alive = False
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fields = _stat_fields(pid)
            if fields is None:
                continue
            alive = alive or pid == root
            children.setdefault(int(fields[1]), []).append(pid)
    if not alive:
        return []
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and its live descendants, plus what they reaped (cutime...)."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return "?"


def system_busy_ticks() -> int:
    """user + nice + system time of all CPUs so far (/proc/stat), in clock ticks.

    Interrupt and softirq time is left out: loopback traffic is mostly softirq work that the
    benchmark itself causes.
    """
    with open("/proc/stat", encoding="ascii") as fh:
        fields = fh.readline().split()
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def kernel_thread_ticks() -> int:
    """CPU ticks so far of the kernel threads (kthreadd, pid 2, and its children)."""
    ticks = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(int(entry.name))
            if fields is not None and (entry.name == "2" or fields[1] == "2"):
                ticks += int(fields[11]) + int(fields[12])
    return ticks


def own_ticks() -> float:
    """CPU ticks so far of this script and everything it started (servers, wrk, curl)."""
    return tree_cpu_seconds(os.getpid()) * CLK_TCK


class OtherLoad:
    """How many cores other processes (other users of this machine) used during a block.

    All CPUs' user and system time, less this script's process tree (its servers, and wrk
    and curl once reaped) and less the kernel's threads (which also do our writeback). The
    benchmark is only as good as the machine is quiet: every figure carries this, and the
    table notes the runs during which something else was busy.
    """

    def __init__(self) -> None:
        self.cores: float | None = None
        self._start = 0.0
        self._before = (0, 0.0, 0)

    @staticmethod
    def _now() -> tuple[int, float, int]:
        return system_busy_ticks(), own_ticks(), kernel_thread_ticks()

    def __enter__(self) -> OtherLoad:
        self._before = self._now()
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._start
        busy, own, kernel = (a - b for a, b in zip(self._now(), self._before, strict=True))
        if elapsed > 0:
            self.cores = round(max(0.0, busy - own - kernel) / CLK_TCK / elapsed, 2)


#: Other processes using more than this many cores during a measurement make it suspect.
BUSY_MACHINE_CORES = 0.25


@dataclass
class PhasePeak:
    """Highest sampled RSS of a process tree during one phase."""

    sum_kib: int = 0
    max_kib: int = 0
    processes: int = 0
    samples: int = 0


class TreeSampler:
    """Samples VmRSS of a process and its descendants every 100 ms in a thread.

    ``phase`` names what is being measured; peaks are kept per phase and overall. VmHWM (the
    kernel's own per-process peak) is read for every process seen, so a child that exits
    early is still accounted for.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.phase = "idle"
        self.phases: dict[str, PhasePeak] = {}
        self.overall = PhasePeak()
        self.hwm_kib: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._pids: list[int] = []
        self._count = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss-tree", daemon=True)

    def sample(self) -> None:
        with self._lock:
            if self._count % 10 == 0 or not self._pids:
                self._pids = process_tree(self.root)
                for pid in self._pids:
                    self._read_hwm(pid)
            self._count += 1
            values = [v for pid in self._pids if (v := lt.read_proc_kib(pid, "VmRSS"))]
            if not values:
                return
            total, biggest = sum(values), max(values)
            for peak in (self.overall, self.phases.setdefault(self.phase, PhasePeak())):
                peak.sum_kib = max(peak.sum_kib, total)
                peak.max_kib = max(peak.max_kib, biggest)
                peak.processes = max(peak.processes, len(values))
                peak.samples += 1

    def _read_hwm(self, pid: int) -> None:
        hwm = lt.read_proc_kib(pid, "VmHWM")
        if hwm is not None:
            self.hwm_kib[pid] = max(hwm, self.hwm_kib.get(pid, 0))
            self.names.setdefault(pid, process_name(pid))

    def set_phase(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def _run(self) -> None:
        # Bounded: ends when stopped (the server's shutdown always stops it).
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; read every live process's VmHWM one last time."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for pid in process_tree(self.root):
                self._read_hwm(pid)

    def report(self) -> dict[str, object]:
        def mib(kib: int) -> float:
            return round(kib / KIB, 1)

        hwm = self.hwm_kib
        return {
            "processes": [
                {"pid": pid, "name": self.names.get(pid, "?"), "main": pid == self.root,
                 "vmhwm_mib": mib(kib)}
                for pid, kib in sorted(hwm.items())
            ],
            "vmhwm_sum_mib": mib(sum(hwm.values())) if hwm else None,
            "vmhwm_max_mib": mib(max(hwm.values())) if hwm else None,
            "sampled_peak_sum_mib": mib(self.overall.sum_kib),
            "sampled_peak_max_mib": mib(self.overall.max_kib),
            "max_processes": self.overall.processes,
            "phases": {
                name: {"peak_sum_mib": mib(p.sum_kib), "peak_max_mib": mib(p.max_kib),
                       "processes": p.processes, "samples": p.samples}
                for name, p in self.phases.items()
            },
        }


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running server under test: ours or nginx."""

    label: str
    kind: str  # "ours" or "nginx"
    proc: subprocess.Popen[bytes]
    port: int
    storage: Path
    log: Path
    processes: int
    sampler: TreeSampler

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def put_statuses(self) -> frozenset[int]:
        return frozenset({201}) if self.kind == "ours" else frozenset({201, 204})

    def put_target(self, rel: str, size: int) -> str:
        """Request target of a PUT of ``size`` bytes to ``rel`` (signed, for ours: v1)."""
        if self.kind == "ours":
            return f"{UPLOAD_PREFIX}{rel}?v={lt.upload_mac(rel, size)}"
        return UPLOAD_PREFIX + rel

    def get_target(self, rel: str) -> str:
        return UPLOAD_PREFIX + rel


_READY_RE = re.compile(r"\bready\b", re.IGNORECASE)


def _log_says_ready(log: Path) -> bool:
    try:
        return _READY_RE.search(log.read_text(encoding="utf-8", errors="replace")) is not None
    except OSError:
        return False


def _notified_ready(notify: socket.socket | None) -> bool:
    """Whether an sd_notify "READY=1" has arrived on ``notify`` (non-blocking)."""
    while notify is not None:
        try:
            message = notify.recv(4096)
        except BlockingIOError:
            return False
        if b"READY=1" in message.split(b"\n"):
            return True
    return False


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, what: str, *,
               notify: socket.socket | None = None, connect_is_enough: bool = True) -> None:
    """Until the server is ready, at most 20 s.

    Ready: an sd_notify READY=1 on ``notify``, a logged line with "ready", or a TCP connect
    that succeeds. A supervisor with worker processes accepts connections (its socket is
    bound) before its workers serve them: there ``connect_is_enough`` is False and a connect
    only counts once the 20 s have passed without READY=1.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    connected = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before it was "
                             f"ready; log tail:\n{lt.tail(log)}")
        if _notified_ready(notify) or _log_says_ready(log):
            return
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                connected = True
        except OSError:
            pass
        if connected and connect_is_enough:
            return
        time.sleep(0.1)
    if connected:
        print(f"  note: {what} accepts connections but sent no READY=1 within "
              f"{READY_TIMEOUT_S:.0f} s; going on", file=sys.stderr)
        return
    raise BenchError(f"{what} was not ready on {HOST}:{port} within {READY_TIMEOUT_S:.0f} s; "
                     f"log tail:\n{lt.tail(log)}")


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (SIGKILL after 10 s), then SIGKILL whatever is left of its group.

    Servers are started in a session of their own, so their process group id is their pid:
    worker processes that outlive their parent are ended by that id, and nothing else.
    """
    try:
        lt.stop_server(proc)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def _started(
    cmd: Sequence[str], log: Path, port: int, what: str, cwd: Path, *,
    notify_path: Path | None = None, connect_is_enough: bool = True,
) -> Iterator[tuple[subprocess.Popen[bytes], TreeSampler]]:
    """Start ``cmd`` in a session of its own; yield it once ready; stop it afterwards.

    With ``notify_path`` the server gets NOTIFY_SOCKET pointing at a datagram socket there,
    read for READY=1 until it is ready and then closed: a status message sent later fails
    at once (the sender ignores that) instead of filling a queue nobody reads.
    """
    env = lt.clean_env()
    env.pop("NOTIFY_SOCKET", None)
    notify: socket.socket | None = None
    # sun_path holds 107 bytes: with a longer work dir path, go by TCP connects alone.
    if notify_path is not None and len(os.fsencode(notify_path)) < 100:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.setblocking(False)
        env["NOTIFY_SOCKET"] = str(notify_path)
    try:
        with open(log, "ab") as log_fh:
            proc = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                cwd=cwd, env=env, start_new_session=True,
            )
    except BaseException:
        if notify is not None:
            notify.close()
        raise
    sampler = TreeSampler(proc.pid)
    try:
        try:
            wait_ready(proc, port, log, what, notify=notify,
                       connect_is_enough=connect_is_enough)
        finally:
            if notify is not None:
                notify.close()
                with contextlib.suppress(OSError):
                    os.unlink(str(notify_path))
        sampler.start()
        try:
            yield proc, sampler
        finally:
            sampler.stop()
    finally:
        stop_process_group(proc)


def ours_config_text(port: int, storage: Path, fsync: bool, workers: int | None) -> str:
    # json.dumps yields a valid TOML basic string for any path.
    lines = [
        "[server]",
        f'listen = ["{HOST}:{port}"]',
        f"upload_prefix = {json.dumps(UPLOAD_PREFIX)}",
        f"storage_dir = {json.dumps(str(storage))}",
        'max_upload_size = "2G"',
        f"fsync = {'true' if fsync else 'false'}",
        'log_level = "warning"',
    ]
    if workers is not None:
        lines.append(f"workers = {workers}")
    lines += ["", "[hmac]", f"secret = {json.dumps(lt.SECRET)}", ""]
    return "\n".join(lines)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (the config holds the secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def ours_supports_workers(python: str, workdir: Path) -> tuple[bool, str]:
    """Whether our server knows ``workers``: does `check-config` mention it?"""
    probe = workdir / "probe.toml"
    write_private(probe, ours_config_text(lt.free_port(), workdir / "probe-files", False, None))
    try:
        proc = subprocess.run(
            [python, "-m", "hmacfs", "--config", str(probe), "check-config"],
            capture_output=True, text=True, cwd=REPO_ROOT, env=lt.clean_env(),
            timeout=60, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError("`python -m hmacfs check-config` did not finish in 60 s") from exc
    finally:
        probe.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BenchError(f"`python -m hmacfs check-config` failed ({proc.returncode}): "
                         f"{proc.stderr.strip()}")
    return "workers" in (proc.stdout + proc.stderr).lower(), proc.stdout


@contextlib.contextmanager
def ours_server(
    python: str, workdir: Path, storage: Path, *, label: str, fsync: bool, workers: int | None
) -> Iterator[Server]:
    """Start our server on a free port; ``workers`` None means: leave the key out."""
    port = lt.free_port()
    storage.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower())
    config = workdir / f"{slug}.toml"
    write_private(config, ours_config_text(port, storage, fsync, workers))
    log = workdir / f"{slug}.log"
    cmd = [python, "-m", "hmacfs", "--config", str(config), "run"]
    with _started(cmd, log, port, f"our server ({label})", REPO_ROOT,
                  notify_path=workdir / f"{slug}.notify",
                  connect_is_enough=workers is None) as (proc, sampler):
        yield Server(label, "ours", proc, port, storage, log, workers or 1, sampler)


def nginx_config_text(
    prefix: Path, port: int, storage: Path, body_temp: Path, workers: int
) -> str:
    # `user root` only where we are root: nginx then keeps its workers' rights (able to write
    # into our temp dirs) instead of switching them to "nobody".
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""# written by bench/compare.py
daemon off;
{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_max_body_size 2g;
    client_body_temp_path {body_temp};
    proxy_temp_path {prefix}/proxy-temp;
    fastcgi_temp_path {prefix}/fastcgi-temp;
    uwsgi_temp_path {prefix}/uwsgi-temp;
    scgi_temp_path {prefix}/scgi-temp;
    # wrk keeps its connections open; so does our server, without a request limit.
    keepalive_requests 1000000;
    server {{
        listen {HOST}:{port};
        location {UPLOAD_PREFIX} {{
            alias {storage}/;
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(workdir: Path, storage: Path, body_temp: Path, *, label: str,
                 workers: int) -> Iterator[Server]:
    """Start nginx with a private config; ``body_temp`` must be on the storage's filesystem."""
    port = lt.free_port()
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower())
    prefix = workdir / slug
    prefix.mkdir()
    storage.mkdir(parents=True, exist_ok=True)
    body_temp.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config_text(prefix, port, storage, body_temp, workers),
                    encoding="utf-8")
    log = prefix / "error.log"
    cmd = [NGINX, "-e", str(log), "-p", str(prefix), "-c", str(conf)]
    with _started(cmd, log, port, f"nginx ({label})", prefix) as (proc, sampler):
        yield Server(label, "nginx", proc, port, storage, log, workers, sampler)


# --------------------------------------------------------------------------- storage upkeep


def remove_uploads(server: Server, prefix: str, *, wipe_meta: bool = False) -> int:
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


def settle() -> None:
    """Write back dirty pages left by the previous run so they do not slow the next one."""
    os.sync()


# --------------------------------------------------------------------------- 1 GiB transfers


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
    errors: list[str] = field(default_factory=list)


def big_put_get(server: Server, test_file: Path, size: int, round_no: int, *,
                get: bool = True) -> BigTransfer:
    """One PUT (and GET) of ``test_file`` over one connection with curl; CPU of the server."""
    result = BigTransfer(server.label, size, round_no)
    rel = f"big-{secrets.token_hex(6)}/big.bin"
    settle()
    server.sampler.set_phase("big PUT")
    cpu0 = tree_cpu_seconds(server.pid)
    with OtherLoad() as other:
        put = lt.run_curl(["-T", str(test_file), "-H", "Expect:",
                           server.base_url + server.put_target(rel, size)], size, upload=True)
    cpu1 = tree_cpu_seconds(server.pid)
    result.put_other_load_cores = other.cores
    result.put_status, result.put_seconds = put.status, put.seconds
    result.put_mb_s = lt.mb_per_s(size, put.seconds)
    result.put_cpu_s = cpu1 - cpu0
    result.put_cpu_s_per_gb = result.put_cpu_s / (size / 1e9)
    if put.error:
        result.errors.append(f"PUT: {put.error}")
    if put.status not in server.put_statuses:
        result.errors.append(f"PUT: status {put.status}")
    elif put.bytes != size:
        result.errors.append(f"PUT: curl sent {put.bytes} of {size} bytes")
    if get and not result.errors:
        server.sampler.set_phase("big GET")
        cpu2 = tree_cpu_seconds(server.pid)
        with OtherLoad() as other:
            got = lt.run_curl([server.base_url + server.get_target(rel)], size, upload=False)
        cpu3 = tree_cpu_seconds(server.pid)
        result.get_other_load_cores = other.cores
        result.get_status, result.get_seconds = got.status, got.seconds
        result.get_mb_s = lt.mb_per_s(size, got.seconds)
        result.get_cpu_s = cpu3 - cpu2
        result.get_cpu_s_per_gb = result.get_cpu_s / (size / 1e9)
        if got.error:
            result.errors.append(f"GET: {got.error}")
        if got.status != 200:
            result.errors.append(f"GET: status {got.status}")
        elif got.bytes != size:
            result.errors.append(f"GET: received {got.bytes} of {size} bytes")
    server.sampler.set_phase("idle")
    remove_uploads(server, "big-")
    return result


# --------------------------------------------------------------------------- wrk


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
        got = lt.run_curl([f"http://{HOST}:{port}/"], size, upload=False)
    if got.error or got.status != 200 or got.bytes != size:
        return None, got.error or f"status {got.status}, {got.bytes} of {size} bytes"
    return lt.mb_per_s(size, got.seconds), None


@dataclass
class WrkRun:
    """One wrk run against one server: rates, latency (ms) and every kind of error."""

    server: str
    storage: str  # "disk" or "tmpfs"
    method: str
    size: int
    concurrency: int
    threads: int
    seconds: int
    list_lines: int
    round: int = 1
    duration_s: float | None = None
    requests: int = 0
    ok: int = 0
    non_2xx: int = 0
    socket_errors: int = 0
    req_s: float | None = None
    mb_s: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    list_exhausted: bool = False
    stored: int | None = None
    other_load_cores: float | None = None
    error: str | None = None
    raw: dict[str, float] = field(default_factory=dict)


def write_list(path: Path, targets: Sequence[str]) -> None:
    path.write_text("\n".join(targets) + "\n", encoding="ascii")


def run_wrk(run: WrkRun, server: Server, list_file: Path, mode: str) -> WrkRun:
    """Run wrk with bench/wrk/paths.lua over ``list_file`` and fill ``run`` in place."""
    body = run.size if run.method == "PUT" else 0
    cmd = [
        WRK, "-t", str(run.threads), "-c", str(run.concurrency), "-d", f"{run.seconds}s",
        "--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(WRK_SCRIPT), server.base_url,
        "--", str(list_file), run.method, str(body), str(run.threads), mode,
    ]
    server.sampler.set_phase(f"{run.method} {size_name(run.size)} c={run.concurrency}")
    try:
        with OtherLoad() as other:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=lt.clean_env(),
                                  timeout=run.seconds + WRK_GRACE_S, check=False)
        run.other_load_cores = other.cores
    except subprocess.TimeoutExpired:
        run.error = f"wrk did not finish within {run.seconds + WRK_GRACE_S:.0f} s"
        return run
    finally:
        server.sampler.set_phase("idle")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        run.error = f"wrk exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}"
        return run
    raw: dict[str, float] = json.loads(line.removeprefix("WRK_RESULT "))
    run.raw = raw
    run.duration_s = raw["duration_us"] / 1e6
    run.requests = int(raw["requests"])
    exhausted = int(raw["exhausted"])
    # A thread that used up its list may have sent a request or two to a 404 path.
    run.non_2xx = max(0, int(raw["errors_status"]) - exhausted)
    run.ok = run.requests - int(raw["errors_status"])
    run.socket_errors = sum(int(raw[k]) for k in
                            ("errors_connect", "errors_read", "errors_write", "errors_timeout"))
    run.list_exhausted = exhausted > 0
    if run.duration_s > 0:
        run.req_s = run.ok / run.duration_s
        run.mb_s = run.ok * run.size / run.duration_s / MB
    run.p50_ms, run.p90_ms = raw["p50_us"] / 1e3, raw["p90_us"] / 1e3
    run.p99_ms, run.p999_ms = raw["p99_us"] / 1e3, raw["p99.9_us"] / 1e3
    run.max_ms, run.mean_ms = raw["latency_max_us"] / 1e3, raw["latency_mean_us"] / 1e3
    return run


def put_runs(servers: Sequence[Server], profile: Profile, workdir: Path, storage_kind: str,
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


def put_run(server: Server, profile: Profile, workdir: Path, storage_kind: str, size: int,
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


def upload_files(server: Server, prefix: str, size: int, count: int) -> list[str]:
    """PUT ``count`` files of ``size`` bytes over one keep-alive connection; their GET targets."""
    body = os.urandom(size)
    targets = []
    conn = http.client.HTTPConnection(HOST, server.port, timeout=HTTP_TIMEOUT_S)
    try:
        for i in range(count):
            rel = f"{prefix}{i:04d}/f.bin"
            conn.request("PUT", server.put_target(rel, size), body=body)
            resp = conn.getresponse()
            resp.read()
            if resp.status not in server.put_statuses:
                raise BenchError(f"{server.label}: PUT {rel} answered {resp.status}; "
                                 f"log tail:\n{lt.tail(server.log)}")
            targets.append(server.get_target(rel))
    finally:
        conn.close()
    return targets


def get_runs(server: Server, profile: Profile, workdir: Path, storage_kind: str,
             files: dict[int, list[str]]) -> list[WrkRun]:
    """Workload 3: GETs walking the uploaded files round and round."""
    runs = []
    for size, targets in files.items():
        list_file = workdir / "get-list.txt"
        write_list(list_file, targets)
        for conc in profile.get_concurrency:
            run = WrkRun(server.label, storage_kind, "GET", size, conc,
                         min(WRK_MAX_THREADS, conc), profile.wrk_seconds, len(targets))
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
          f"{_num(run.req_s, 0):>7} req/s  p50 {_num(run.p50_ms, 2)} ms  "
          f"p99 {_num(run.p99_ms, 2)} ms  {'; '.join(flags)}", flush=True)


# --------------------------------------------------------------------------- small GETs


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


def timed_gets(server: Server, target: str, size: int, keep_going: Callable[[], bool],
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


def gets_during_upload(server: Server, test_file: Path, big_size: int, target: str,
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
        lt.CURL, "-q", "-sS", "-g", "--noproxy", "*",
        "--max-time", f"{lt.transfer_timeout(big_size * repeats):.0f}",
        "-w", "%{http_code} %{time_total} %{size_upload}\n", "-H", "Expect:",
    ]
    for i in range(repeats):
        rel = f"during-{token}/big{i}.bin"
        cmd += ["-o", "/dev/null", "-T", str(test_file),
                server.base_url + server.put_target(rel, big_size)]
    server.sampler.set_phase("GETs during big PUT")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=lt.clean_env())
    try:
        with OtherLoad() as other:
            time.sleep(0.05)  # let curl connect and start sending before the first sample
            timed_gets(server, target, SMALL, lambda: proc.poll() is None,
                       profile.during_upload_max_requests, during)
            out, err = proc.communicate(timeout=lt.transfer_timeout(big_size * repeats) + 30)
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
            during.upload_mb_s = lt.mb_per_s(big_size * len(results), seconds)
    except ValueError:
        during.error = f"unparsable curl output {out!r} {err.strip()}"
    if not statuses <= server.put_statuses or len(results) != repeats:
        during.error = f"upload statuses {sorted(statuses)} of {len(results)} {err.strip()}"
    elif during.requests == 0:
        during.error = "the upload ended before the first GET"
    remove_uploads(server, "during-")
    return idle, during


# --------------------------------------------------------------------------- tmpfs


@contextlib.contextmanager
def tmpfs_mount(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs at ``path`` for the duration; unmounted (lazily if busy) afterwards."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700",
                           "bench-tmpfs", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    if proc.returncode != 0:
        raise BenchError(f"cannot mount a tmpfs at {path} (root needed): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, timeout=60,
                              check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60,
                           check=False)


# --------------------------------------------------------------------------- profiling


PY_SPY_RATE = 250
#: Leaf frames of a thread that waits for work: not time spent serving requests.
IDLE_LEAVES = ("Condition.wait ", "Event.wait ", "Thread.join ", "EPollReactor.doPoll ")
#: A stack through one of these is the reactor (main) thread.
REACTOR_FRAMES = ("ReactorBase.run ", "ReactorBase.mainLoop ")
_LINE_RE = re.compile(r":\d+\)$")


@dataclass
class ThreadProfile:
    """Where one kind of thread spent its samples (percentages of one core's wall time)."""

    busy_pct: float = 0.0
    idle_pct: float = 0.0
    own: list[tuple[str, float]] = field(default_factory=list)


def top_functions(raw_file: Path, seconds: float, limit: int = 10) -> dict[str, object]:
    """Summarise py-spy's raw (collapsed stacks) output.

    Per kind of thread (the reactor thread; the thread pool and any other thread) the busy and
    idle share and the lines with the most own time; over all threads the hmacfs functions
    with the most inclusive time. Percentages are of one core's wall time (samples / (rate x
    seconds)), so the reactor thread's busy share says how close it is to saturation.
    """
    wall = PY_SPY_RATE * seconds
    own: dict[str, dict[str, int]] = {"reactor": {}, "other threads": {}}
    busy = {"reactor": 0, "other threads": 0}
    idle = {"reactor": 0, "other threads": 0}
    ours_inclusive: dict[str, int] = {}
    processes: set[str] = set()
    for line in raw_file.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --subprocesses, py-spy roots each stack in "process PID:<command line>".
        processes.update(f.split(":", 1)[0] for f in frames if f.startswith("process "))
        kind = ("reactor" if any(f.startswith(REACTOR_FRAMES) for f in frames)
                else "other threads")
        if frames[-1].startswith(IDLE_LEAVES):
            idle[kind] += count
            continue
        busy[kind] += count
        own[kind][frames[-1]] = own[kind].get(frames[-1], 0) + count
        # Inclusive time per function (its line numbers merged), counted once per stack.
        for func in {_LINE_RE.sub(")", f) for f in frames}:
            if "hmacfs/" in func and "hmacfs/cli.py" not in func and "__main__" not in func:
                ours_inclusive[func] = ours_inclusive.get(func, 0) + count

    def pct(n: int) -> float:
        return round(100 * n / wall, 1)

    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:limit]
        return [(name, pct(n)) for name, n in ranked]

    threads = {kind: asdict(ThreadProfile(pct(busy[kind]), pct(idle[kind]), top(own[kind])))
               for kind in own}
    return {"threads": threads, "hmacfs_inclusive": top(ours_inclusive),
            "processes": max(1, len(processes))}


def profile_run(server: Server, method: str, targets: Sequence[str] | None,
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


def print_profile(name: str, prof: dict[str, object]) -> None:
    summed = prof.get("processes", 1)
    print(f"\npy-spy, ours during {prof.get('workload', name)} (% of one core's wall time"
          + (f", summed over {summed} processes" if summed != 1 else "")
          + "; idle waits left out):")
    if "error" in prof:
        print(f"  {prof['error']}")
        return
    threads = prof.get("threads")
    if isinstance(threads, dict):
        for kind, info in threads.items():
            print(f"  {kind}: busy {info['busy_pct']}%, waiting {info['idle_pct']}%; "
                  "own time:")
            for func, pct in info["own"]:
                print(f"    {pct:5.1f}%  {func}")
    inclusive = prof.get("hmacfs_inclusive")
    if isinstance(inclusive, list):
        print("  hmacfs functions, inclusive time (all threads):")
        for func, pct in inclusive:
            print(f"    {pct:5.1f}%  {func}")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Target:
    """A goal for one row: ours/reference at least ``ratio``, or ours below ``below``."""

    ratio: float | None = None
    below: float | None = None

    def text(self) -> str:
        if self.ratio is not None:
            return f">= {self.ratio:g}x"
        return f"< {self.below:g}"

    def met(self, ours: float | None, ref: float | None) -> bool | None:
        if self.ratio is not None:
            return None if ours is None or not ref else ours / ref >= self.ratio
        if self.below is not None and ours is not None:
            return ours < self.below
        return None


@dataclass
class TableRow:
    workload: str
    unit: str
    ours: float | None
    ref: float | None
    ref_name: str = "nginx"
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.ours is None or not self.ref else self.ours / self.ref

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ours, self.ref)

    def as_dict(self) -> dict[str, object]:
        return {"workload": self.workload, "unit": self.unit, "ours": self.ours,
                "reference": self.ref, "reference_name": self.ref_name, "ratio": self.ratio,
                "target": self.target.text() if self.target else None, "met": self.met,
                "note": self.note}


TARGET_BIG_PUT = Target(ratio=1.2)
TARGET_DURABLE = Target(ratio=0.9)
TARGET_BIG_GET = Target(ratio=1.5)
TARGET_SMALL_PUT = Target(ratio=0.8)
TARGET_MEDIUM_PUT = Target(ratio=1.0)
TARGET_SMALL_GET = Target(ratio=0.3)
TARGET_P99_DURING_UPLOAD_MS = Target(below=20.0)


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _digits(unit: str) -> int:
    return {"req/s": 0, "MB/s": 1, "ms": 2}.get(unit, 2)


def _note_for(ours: WrkRun | None, ref: WrkRun | None) -> str:
    parts = []
    for who, r in (("ours", ours), ("nginx", ref)):
        if r is None:
            continue
        if r.error:
            parts.append(f"{who}: {r.error}")
            continue
        if r.non_2xx or r.socket_errors:
            parts.append(f"{who}: {r.non_2xx} non-2xx, {r.socket_errors} socket errors")
        if r.list_exhausted:
            parts.append(f"{who}: list used up (lower bound)")
        if r.other_load_cores is not None and r.other_load_cores > BUSY_MACHINE_CORES:
            parts.append(f"{who}: machine busy ({r.other_load_cores} cores used by others)")
    return "; ".join(parts)


def best_run(runs: Sequence[WrkRun], label: str, storage: str | None, method: str, size: int,
             conc: int) -> WrkRun | None:
    """The fastest error-free of a workload's rounds for one server (else its first round)."""
    mine = [r for r in runs if r.server == label and r.method == method and r.size == size
            and r.concurrency == conc and (storage is None or r.storage == storage)]
    good = [r for r in mine if not r.error and r.req_s is not None]
    if good:
        return max(good, key=lambda r: r.req_s or 0.0)
    return mine[0] if mine else None


def _rounds_note(runs: Sequence[WrkRun], ours: WrkRun | None, ref: WrkRun | None) -> str:
    """"rounds ours 1500/1700, nginx 1600/2100" when a workload ran more than once."""
    parts = []
    for who, best in (("ours", ours), ("nginx", ref)):
        if best is None:
            continue
        rates = [r.req_s for r in sorted(runs, key=lambda r: r.round)
                 if r.server == best.server and r.storage == best.storage
                 and r.method == best.method and r.size == best.size
                 and r.concurrency == best.concurrency]
        if len(rates) > 1:
            parts.append(f"{who} " + "/".join(_num(x, 0) for x in rates))
    return "best of rounds: " + ", ".join(parts) if parts else ""


def wrk_rows(runs: Sequence[WrkRun], ours_label: str, ref_label: str, *,
             with_targets: bool, tag: str = "") -> list[TableRow]:
    rows = []
    keys = sorted({(r.method, r.size, r.concurrency) for r in runs},
                  key=lambda k: (k[0] != "PUT", k[1], k[2]))
    for method, size, conc in keys:
        ours = best_run(runs, ours_label, None, method, size, conc)
        ref = best_run(runs, ref_label, None, method, size, conc)
        target = None
        if with_targets:
            if method == "PUT" and size == SMALL and conc == 10:
                target = TARGET_SMALL_PUT
            elif method == "PUT" and size == MEDIUM:
                target = TARGET_MEDIUM_PUT
            elif method == "GET" and size == SMALL:
                target = TARGET_SMALL_GET
        rows.append(TableRow(
            f"{tag}{size_name(size)} {method} c={conc}", "req/s",
            ours.req_s if ours and not ours.error else None,
            ref.req_s if ref and not ref.error else None,
            target=target,
            note="; ".join(x for x in (_note_for(ours, ref), _rounds_note(runs, ours, ref)) if x),
        ))
    return rows


def format_table(rows: Sequence[TableRow], markdown: bool = False) -> str:
    head = ["workload", "unit", "ours", "nginx / ref", "ours/ref", "target", "met"]
    body = []
    for r in rows:
        digits = _digits(r.unit)
        ref = _num(r.ref, digits) + (f" ({r.ref_name})" if r.ref_name != "nginx" else "")
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        body.append([r.workload, r.unit, _num(r.ours, digits), ref, _num(r.ratio, 2),
                     r.target.text() if r.target else "", met if r.target else ""])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(c) for c in body)])


def latency_table(runs: Sequence[WrkRun], ours_label: str, ref_label: str,
                  markdown: bool = False) -> str:
    head = ["workload", "ours p50", "nginx p50", "ours p99", "nginx p99", "ours max",
            "nginx max", "errors ours/nginx"]
    body = []
    keys = sorted({(r.storage, r.method, r.size, r.concurrency) for r in runs},
                  key=lambda k: (k[0], k[1] != "PUT", k[2], k[3]))
    for storage, method, size, conc in keys:
        def pick(label: str, storage: str = storage, method: str = method, size: int = size,
                 conc: int = conc) -> WrkRun | None:
            server = next((r.server for r in runs if r.server.startswith(label)
                           and r.storage == storage), label)
            return best_run(runs, server, storage, method, size, conc)

        o, n = pick(ours_label), pick(ref_label)

        def err(r: WrkRun | None) -> str:
            if r is None:
                return "-"
            return "ERR" if r.error else str(r.non_2xx + r.socket_errors)

        body.append([
            f"{'tmpfs ' if storage == 'tmpfs' else ''}{size_name(size)} {method} c={conc}",
            _num(o.p50_ms if o else None, 2), _num(n.p50_ms if n else None, 2),
            _num(o.p99_ms if o else None, 2), _num(n.p99_ms if n else None, 2),
            _num(o.max_ms if o else None, 1), _num(n.max_ms if n else None, 1),
            f"{err(o)}/{err(n)}",
        ])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(head)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
        for cells in [head, ["-" * w for w in widths], *body]
    )


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    profile: str
    workers_requested: int | None
    ours_processes: int = 1
    nginx_workers: int = 1
    workers_note: str = ""
    big: list[BigTransfer] = field(default_factory=list)
    durable: list[BigTransfer] = field(default_factory=list)
    dd_mb_s: list[float] = field(default_factory=list)
    #: 1-connection GETs of the test file from `bare_sendfile_server`, one per round.
    bare_get_mb_s: list[float] = field(default_factory=list)
    wrk: list[WrkRun] = field(default_factory=list)
    loops: list[LatencyLoop] = field(default_factory=list)
    memory: dict[str, object] = field(default_factory=dict)
    profiles: dict[str, dict[str, object]] = field(default_factory=dict)
    other_load_at_start: float | None = None
    errors: list[str] = field(default_factory=list)


def decide_workers(args: argparse.Namespace, workdir: Path, res: Results) -> int | None:
    """The ``workers`` value for our config (None: leave it out, single process)."""
    supported, _ = ours_supports_workers(args.python, workdir)
    if supported:
        workers: int = args.workers or os.cpu_count() or 1
        res.ours_processes = res.nginx_workers = workers
        res.workers_note = f"workers = {workers} (ours), worker_processes {workers} (nginx)"
        return workers
    res.ours_processes = res.nginx_workers = 1
    res.workers_note = ("single process: `check-config` does not mention workers, so our "
                        "server runs one process and nginx gets worker_processes 1 to match")
    if args.workers not in (None, 1):
        res.workers_note += f" (--workers {args.workers} ignored)"
    return None


def measure(args: argparse.Namespace, workdir: Path, res: Results, stack: contextlib.ExitStack,
            output_dir: Path) -> None:
    profile: Profile = QUICK if args.quick else FULL
    big = profile.big_size
    free_needed = 6 * big + profile.put_requests[MEDIUM] * MEDIUM + 512 * MIB
    lt.check_free_space(workdir, free_needed)
    workers = decide_workers(args, workdir, res)
    print(f"processes: {res.workers_note}", flush=True)
    with OtherLoad() as other:
        time.sleep(2)
    res.other_load_at_start = other.cores
    print(f"other processes on this machine used {other.cores} cores over 2 s"
          + (" - the machine is busy: expect noisy figures" if (other.cores or 0)
             > BUSY_MACHINE_CORES else ""), flush=True)

    test_file = workdir / "big.bin"
    print(f"creating the {size_name(big)} test file and a warm-up dd ...", flush=True)
    lt.create_test_file(test_file, big)
    lt.dd_fdatasync(test_file, workdir / "dd.bin", big)  # untimed: the first one is slow here

    disk = workdir / "disk"
    ours = stack.enter_context(ours_server(args.python, workdir, disk / "ours", label="ours",
                                           fsync=False, workers=workers))
    nginx = stack.enter_context(nginx_server(workdir, disk / "nginx", disk / "nginx-body",
                                             label="nginx", workers=res.nginx_workers))
    print(f"ours: pid {ours.pid} on {ours.base_url}; nginx: pid {nginx.pid} on "
          f"{nginx.base_url}", flush=True)
    for server in (ours, nginx):
        upload_files(server, "check-", SMALL, 1)  # fails early on a wrong config
        remove_uploads(server, "check-", wipe_meta=True)

    print(f"\n[1] {size_name(big)} PUT and GET, one connection (curl), "
          f"{profile.big_rounds} round(s)", flush=True)
    for round_no in range(1, profile.big_rounds + 1):
        # Alternate who goes first: on these VMs memory touched for the first time in a
        # while (page cache of a new file) is slow, and it should not always hit one side.
        for server in (ours, nginx) if round_no % 2 else (nginx, ours):
            t = big_put_get(server, test_file, big, round_no)
            res.big.append(t)
            print(f"  {server.label:<14} PUT "
                  f"{_num(t.put_mb_s, 1)} MB/s  GET {_num(t.get_mb_s, 1)} MB/s  "
                  f"CPU {_num(t.put_cpu_s_per_gb, 2)}/{_num(t.get_cpu_s_per_gb, 2)} s/GB  "
                  f"others {t.put_other_load_cores}/{t.get_other_load_cores} cores "
                  f"{'; '.join(t.errors)}", flush=True)
        bare, error = bare_get(test_file, big)
        if bare is not None:
            res.bare_get_mb_s.append(bare)
        print(f"  {'bare sendfile':<14} GET {_num(bare, 1)} MB/s  (a loop doing no other work) "
              f"{error or ''}", flush=True)

    print("\n[2] PUTs of fresh paths (wrk)", flush=True)
    res.wrk += put_runs((ours, nginx), profile, workdir, "disk", (SMALL, MEDIUM))
    py_spy = (args.py_spy or shutil.which("py-spy")) if args.profile else None
    if args.profile and py_spy is None:
        res.profiles["PUT"] = {"error": "py-spy not found (pip install py-spy; --py-spy PATH)"}
    if py_spy is not None:
        print("  profiling ours with py-spy during an extra 4 KiB PUT c=10 run ...", flush=True)
        res.profiles["PUT"] = profile_run(ours, "PUT", None, profile, workdir, py_spy,
                                          output_dir)
        settle()

    print("\n[3] GETs of uploaded files (wrk)", flush=True)
    files: dict[str, dict[int, list[str]]] = {}
    for server in (ours, nginx):
        files[server.label] = {size: upload_files(server, f"g{size}-", size, count)
                         for size, count in profile.get_files.items()}
    settle()
    for server in (ours, nginx):
        res.wrk += get_runs(server, profile, workdir, "disk", files[server.label])
    if py_spy is not None:
        print("  profiling ours with py-spy during an extra 4 KiB GET c=10 run ...", flush=True)
        res.profiles["GET"] = profile_run(ours, "GET", files[ours.label][SMALL], profile,
                                          workdir, py_spy, output_dir)

    print(f"\n[4] 4 KiB GETs on one connection, idle and during a {size_name(big)} PUT",
          flush=True)
    for server in (ours, nginx):
        idle, during = gets_during_upload(server, test_file, big, files[server.label][SMALL][0],
                                          profile)
        res.loops += [idle, during]
        for loop in (idle, during):
            print(f"  {server.label:<14} {loop.what:<18} n={loop.requests:<5} "
                  f"p50 {_num(loop.p50_ms, 2)} ms  p99 {_num(loop.p99_ms, 2)} ms  "
                  f"max {_num(loop.max_ms, 1)} ms  {loop.error or ''}", flush=True)

    print(f"\n[1b] durable {size_name(big)} PUT (fsync = true) beside dd conv=fdatasync",
          flush=True)
    with ours_server(args.python, workdir, disk / "ours-durable", label="ours durable",
                     fsync=True, workers=workers) as durable:
        for round_no in range(1, profile.big_rounds + 1):
            res.dd_mb_s.append(lt.dd_fdatasync(test_file, workdir / "dd.bin", big))
            t = big_put_get(durable, test_file, big, round_no, get=False)
            res.durable.append(t)
            print(f"  dd conv=fdatasync {res.dd_mb_s[-1]:.1f} MB/s; ours durable PUT "
                  f"{_num(t.put_mb_s, 1)} MB/s {'; '.join(t.errors)}", flush=True)
        durable.sampler.stop()
        res.memory[durable.label] = durable.sampler.report()
    test_file.unlink(missing_ok=True)

    if args.tmpfs:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        size = min(14 * GIB, mem * 6 // 10)
        print(f"\n[6] PUTs and GETs again with storage on a tmpfs ({size // GIB} GiB)",
              flush=True)
        with contextlib.ExitStack() as tstack:
            mnt = tstack.enter_context(tmpfs_mount(workdir / "tmpfs", size))
            t_ours = tstack.enter_context(ours_server(
                args.python, workdir, mnt / "ours", label="ours tmpfs", fsync=False,
                workers=workers))
            t_nginx = tstack.enter_context(nginx_server(
                workdir, mnt / "nginx", mnt / "nginx-body", label="nginx tmpfs",
                workers=res.nginx_workers))
            res.wrk += put_runs((t_ours, t_nginx), profile, workdir, "tmpfs", (SMALL, MEDIUM))
            for server in (t_ours, t_nginx):
                t_files = {size: upload_files(server, f"g{size}-", size, count)
                           for size, count in profile.get_files.items()}
                res.wrk += get_runs(server, profile, workdir, "tmpfs", t_files)
            for server in (t_ours, t_nginx):
                server.sampler.stop()
                res.memory[server.label] = server.sampler.report()

    for server in (ours, nginx):
        server.sampler.stop()
        res.memory[server.label] = server.sampler.report()


def best_of(transfers: Sequence[BigTransfer], label: str
            ) -> tuple[float | None, float | None, list[str]]:
    """Best PUT and GET MB/s over the rounds of one server, and every error seen."""
    mine = [t for t in transfers if t.server == label]
    puts = [t.put_mb_s for t in mine if t.put_mb_s is not None and not t.errors]
    gets = [t.get_mb_s for t in mine if t.get_mb_s is not None and not t.errors]
    errors = [f"{label} round {t.round}: {e}" for t in mine for e in t.errors]
    return (max(puts) if puts else None, max(gets) if gets else None, errors)


def build_rows(res: Results) -> list[TableRow]:
    rows: list[TableRow] = []
    size = size_name(res.big[0].size) if res.big else "1 GiB"
    o_put, o_get, o_err = best_of(res.big, "ours")
    n_put, n_get, n_err = best_of(res.big, "nginx")
    if res.big:
        busy = [f"{t.server} round {t.round}: machine busy ({load} cores used by others)"
                for t in res.big for load in (t.put_other_load_cores,)
                if load is not None and load > BUSY_MACHINE_CORES]
        rows.append(TableRow(f"{size} PUT (1 conn)", "MB/s", o_put, n_put,
                             target=TARGET_BIG_PUT, note="; ".join(o_err + n_err + busy)))
        busy = [f"{t.server} round {t.round}: machine busy ({load} cores used by others)"
                for t in res.big for load in (t.get_other_load_cores,)
                if load is not None and load > BUSY_MACHINE_CORES]
        rows.append(TableRow(f"{size} GET (1 conn)", "MB/s", o_get, n_get,
                             target=TARGET_BIG_GET, note="; ".join(busy)))
    if res.big and res.bare_get_mb_s:
        rows.append(TableRow(f"{size} GET beside a bare sendfile loop", "MB/s", o_get,
                             max(res.bare_get_mb_s), ref_name="sendfile loop",
                             note=f"nginx {_num(n_get, 1)} MB/s is "
                                  f"{_num(n_get / max(res.bare_get_mb_s) if n_get else None, 2)}"
                                  " of the loop"))
    if res.durable and res.dd_mb_s:
        d_put, _, d_err = best_of(res.durable, "ours durable")
        rows.append(TableRow(f"{size} PUT durable (fsync)", "MB/s", d_put, max(res.dd_mb_s),
                             ref_name="dd", target=TARGET_DURABLE, note="; ".join(d_err)))
    disk = [r for r in res.wrk if r.storage == "disk"]
    rows += wrk_rows(disk, "ours", "nginx", with_targets=True)
    for what in ("idle", "during"):
        o = next((x for x in res.loops if x.server == "ours" and x.what.startswith(what)), None)
        n = next((x for x in res.loops if x.server == "nginx" and x.what.startswith(what)), None)
        label = "4 KiB GET c=1, idle" if what == "idle" else (
            f"4 KiB GET c=1 {o.what}" if o else f"4 KiB GET c=1 during {size} PUT")
        for pct in ("p50", "p99"):
            ours_v = getattr(o, f"{pct}_ms") if o else None
            ref_v = getattr(n, f"{pct}_ms") if n else None
            target = TARGET_P99_DURING_UPLOAD_MS if (what, pct) == ("during", "p99") else None
            note = ""
            if what == "during" and o and n:
                note = f"n={o.requests}/{n.requests}, max {_num(o.max_ms, 1)}/" \
                       f"{_num(n.max_ms, 1)} ms" + "".join(
                           f"; {x.server}: {x.error}" for x in (o, n) if x.error) + "".join(
                           f"; {x.server}: machine busy ({x.other_load_cores} cores used by "
                           "others)" for x in (o, n)
                           if (x.other_load_cores or 0) > BUSY_MACHINE_CORES)
            rows.append(TableRow(f"{label} {pct}", "ms", ours_v, ref_v, target=target,
                                 note=note if pct == "p99" else ""))
    tmpfs = [r for r in res.wrk if r.storage == "tmpfs"]
    if tmpfs:
        rows += wrk_rows(tmpfs, "ours tmpfs", "nginx tmpfs", with_targets=False, tag="tmpfs ")
    return rows


def resource_lines(res: Results) -> list[str]:
    lines = []
    for label, rep in res.memory.items():
        if not isinstance(rep, dict):
            continue
        procs = rep.get("processes")
        nprocs = len(procs) if isinstance(procs, list) else 0
        lines.append(
            f"{label:<14} processes {nprocs}  peak RSS (sampled) sum "
            f"{rep.get('sampled_peak_sum_mib')} MiB, largest {rep.get('sampled_peak_max_mib')}"
            f" MiB; VmHWM sum {rep.get('vmhwm_sum_mib')} MiB, largest "
            f"{rep.get('vmhwm_max_mib')} MiB"
        )
    transfers = [*res.big, *res.durable]
    for label in dict.fromkeys(t.server for t in transfers):
        mine = [t for t in transfers if t.server == label and not t.errors]

        def med(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known else None

        lines.append(f"{label:<14} CPU s/GB ({size_name(transfers[0].size)}, median of "
                     f"{len(mine)}): PUT {_num(med([t.put_cpu_s_per_gb for t in mine]), 2)}, "
                     f"GET {_num(med([t.get_cpu_s_per_gb for t in mine]), 2)}")
    return lines


def tool_versions(python: str) -> dict[str, str]:
    def first_line(cmd: Sequence[str]) -> str:
        try:
            p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30,
                               check=False, cwd=REPO_ROOT, env=lt.clean_env())
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"? ({exc})"
        return ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]

    return {
        "nginx": first_line([NGINX, "-v"]),
        "wrk": first_line([WRK, "--version"]),
        "curl": first_line([lt.CURL, "--version"]),
        "server_python": first_line([python, "--version"]),
        "twisted": first_line([python, "-c", "import twisted; print(twisted.__version__)"]),
        "hmacfs": first_line([python, "-m", "hmacfs", "--version"]),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="hmacfs beside nginx on the same workloads (see bench/COMPARE.md).")
    p.add_argument("--quick", action="store_true",
                   help="smoke run of under a minute (64 MiB instead of 1 GiB, 2 s wrk runs, "
                        "concurrency 10 only)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for each server (only if our server supports `workers`; "
                        "default: the number of CPUs there, else 1)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="JSON results; a Markdown table goes beside it with the suffix .md "
                        f"(default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")
    p.add_argument("--tmpfs", action="store_true",
                   help="also run the PUT and GET workloads with storage on a tmpfs (root)")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs `-m hmacfs` (default: this one)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="parent of the work dir: storage, test file and dd target all live "
                        "there, on one filesystem (default: the system temp dir)")
    p.add_argument("--profile", action="store_true",
                   help="record our server with py-spy during an extra 4 KiB PUT c=10 run "
                        "and print its top functions")
    p.add_argument("--py-spy", default=None, help="path of py-spy (default: from PATH)")
    args = p.parse_args(argv)
    if args.workers is not None and not 1 <= args.workers <= 64:
        p.error("--workers must be between 1 and 64")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hmacfs-compare-", dir=args.tmpdir)).resolve()
    output: Path = args.output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    res = Results(profile="quick" if args.quick else "full", workers_requested=args.workers)
    fatal: str | None = None
    started = time.monotonic()
    print(f"work dir: {workdir}", flush=True)
    try:
        with contextlib.ExitStack() as stack:
            measure(args, workdir, res, stack, output.parent)
    except lt.BenchError as exc:
        fatal = str(exc)
        print(f"error: {fatal}", file=sys.stderr)
    except (OSError, subprocess.SubprocessError, http.client.HTTPException) as exc:
        # A server that died mid-run, a full disk...: report what was measured so far.
        fatal = f"{type(exc).__name__}: {exc}"
        print(f"error: {fatal}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = build_rows(res)
    print("\n" + format_table(rows))
    notes = [r for r in rows if r.note]
    for r in notes:
        print(f"  note, {r.workload}: {r.note}")
    if res.wrk:
        print("\nlatency of the wrk runs (ms):\n" + latency_table(res.wrk, "ours", "nginx"))
    print("\nresources:")
    for line in resource_lines(res):
        print("  " + line)
    print(f"  {res.workers_note}")
    for name, prof in res.profiles.items():
        print_profile(name, prof)

    elapsed = time.monotonic() - started
    problems = [f"{t.server}: {e}" for t in [*res.big, *res.durable] for e in t.errors]
    problems += [f"{r.server} {r.method} {size_name(r.size)} c={r.concurrency}: "
                 f"{r.error or f'{r.non_2xx} non-2xx, {r.socket_errors} socket errors'}"
                 for r in res.wrk if r.error or r.non_2xx or r.socket_errors]
    problems += [f"{x.server} {x.what}: {x.error or f'{x.errors} errors'}"
                 for x in res.loops if x.error or x.errors]
    report = {
        "benchmark": "compare",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "profile": res.profile,
        "elapsed_s": round(elapsed, 1),
        "units": {"MB": "10^6 bytes", "MiB": "2^20 bytes", "latency": "ms",
                  "ratio": "ours / reference (nginx, or dd for the durable PUT)"},
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(),
                 "filesystem_of_workdir": str(workdir.parent)},
        "versions": tool_versions(args.python),
        "processes": {"ours": res.ours_processes, "nginx": res.nginx_workers,
                      "note": res.workers_note},
        "other_load_cores_at_start": res.other_load_at_start,
        "ok": fatal is None and not problems,
        "error": fatal,
        "problems": problems,
        "table": [r.as_dict() for r in rows],
        "big_transfers": [asdict(t) for t in res.big],
        "durable": [asdict(t) for t in res.durable],
        "dd_fdatasync_mb_s": res.dd_mb_s,
        "bare_sendfile_get_mb_s": res.bare_get_mb_s,
        "wrk": [asdict(r) for r in res.wrk],
        "single_connection_gets": [asdict(x) for x in res.loops],
        "memory": res.memory,
        "py_spy": res.profiles,
    }
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = output.with_suffix(".md")
    md.write_text(
        f"# hmacfs beside nginx ({res.profile} run, {report['timestamp']})\n\n"
        f"{res.workers_note}. Ratio = ours / nginx (dd for the durable PUT); latency in ms.\n\n"
        + format_table(rows, markdown=True) + "\n\n"
        + "".join(f"- {r.workload}: {r.note}\n" for r in notes) + ("\n" if notes else "")
        + (latency_table(res.wrk, "ours", "nginx", markdown=True) + "\n\n" if res.wrk else "")
        + "".join(f"- {line}\n" for line in resource_lines(res)),
        encoding="utf-8",
    )
    print(f"\nresults written to {output} and {md} ({elapsed:.0f} s)")
    if fatal is not None:
        return 2
    if problems:
        print("FAILED requests:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in (lt.CURL, NGINX, WRK) if shutil.which(t) is None]
    if missing or shutil.which(lt.DD) is None:
        print(f"error: missing {', '.join(missing) or 'dd'}: run `bash bench/setup.sh`",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and temporary files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
