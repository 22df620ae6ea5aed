"""wrk load runs over a precomputed list of request targets (bench/wrk/paths.lua)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import BENCH_DIR
from harness.common import MB, clean_env, size_name
from harness.sampling import OtherLoad, tree_cpu_seconds
from harness.servers import BenchServer

WRK = "/usr/bin/wrk"
WRK_SCRIPT = BENCH_DIR / "wrk" / "paths.lua"
#: wrk's own per-request timeout: a slow 1 MiB PUT at c=100 must count as slow, not as lost.
WRK_TIMEOUT_S = 30
#: A wrk run may take this much longer than its -d before it is killed.
WRK_GRACE_S = 60.0
WRK_MAX_THREADS = 2


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
    #: CPU time (utime + stime) the server's processes spent per answered request, in µs.
    cpu_us_per_request: float | None = None
    error: str | None = None
    raw: dict[str, float] = field(default_factory=dict)


def write_list(path: Path, targets: Sequence[str]) -> None:
    """The list of request targets wrk walks, one a line."""
    path.write_text("\n".join(targets) + "\n", encoding="ascii")


def run_wrk(run: WrkRun, server: BenchServer, list_file: Path, mode: str) -> WrkRun:
    """Run wrk with bench/wrk/paths.lua over ``list_file`` and fill ``run`` in place.

    ``mode``: "once" (each target at most once, for PUTs) or "cycle". A failed run is
    recorded in ``run.error``; nothing is raised.
    """
    body = run.size if run.method == "PUT" else 0
    cmd = [
        WRK, "-t", str(run.threads), "-c", str(run.concurrency), "-d", f"{run.seconds}s",
        "--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(WRK_SCRIPT), server.base_url,
        "--", str(list_file), run.method, str(body), str(run.threads), mode,
    ]
    server.sampler.set_phase(f"{run.method} {size_name(run.size)} c={run.concurrency}")
    try:
        cpu_before = tree_cpu_seconds(server.pid)
        with OtherLoad() as other:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(),
                                  timeout=run.seconds + WRK_GRACE_S, check=False)
        cpu = tree_cpu_seconds(server.pid) - cpu_before
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
    if run.requests > 0:
        run.cpu_us_per_request = cpu / run.requests * 1e6
    if run.duration_s > 0:
        run.req_s = run.ok / run.duration_s
        run.mb_s = run.ok * run.size / run.duration_s / MB
    run.p50_ms, run.p90_ms = raw["p50_us"] / 1e3, raw["p90_us"] / 1e3
    run.p99_ms, run.p999_ms = raw["p99_us"] / 1e3, raw["p99.9_us"] / 1e3
    run.max_ms, run.mean_ms = raw["latency_max_us"] / 1e3, raw["latency_mean_us"] / 1e3
    return run
