#!/usr/bin/env python3
"""hmacfs beside nginx: the same workloads against both servers, in one run, on one filesystem.

Starts our server (``python -m hmacfs --config CONFIG run``, ``fsync = false``) and Debian's
nginx (a private nginx.conf: WebDAV ``PUT`` under /upload/, static GET of the same directory)
on 127.0.0.1 (see bench/harness), and measures:

1. a 1 GiB PUT and GET over one connection (curl), plus the durable upload (a second start of
   our server with ``fsync = true``) beside ``dd bs=1M conv=fdatasync`` of the same size;
2. 4 KiB and 1 MiB PUTs at concurrency 1, 10 and 100 (wrk, a fresh path per request);
3. 4 KiB and 1 MiB GETs at concurrency 10 and 100 (wrk, files uploaded beforehand);
4. 4 KiB GET latency on one connection while a 1 GiB upload runs;
5. peak RSS of each server's processes (our supervisor apart from its workers) and CPU
   seconds per GB moved by the 1 GiB transfers;
6. with ``--tmpfs``, workloads 2 and 3 again with both servers storing on a tmpfs;
7. over https (both servers' built-in TLS, one self-signed certificate, one worker each): the
   1 GiB PUT and GET (curl) and 4 KiB GETs at concurrency 10 (wrk);
8. 4 KiB PUTs at concurrency 10 to our server with ``fsync = true``, beside the filesystem's
   own rate of durable 4 KiB files (a loop of create, write, fsync, rename, fsync of the
   directories) with 1 and with 10 threads;
9. the memory each of 1000 idle keep-alive connections costs each server.

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
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

# bench/ is not a package: running `python bench/compare.py` puts this directory on sys.path.
from harness import REPO_ROOT
from harness.common import (
    CURL,
    DD,
    GIB,
    MIB,
    BenchError,
    clean_env,
    num,
    run_driver,
    settle,
    size_name,
)
from harness.files import check_free_space, create_test_file, dd_fdatasync, tmpfs_mount
from harness.profiling import print_profile
from harness.report import (
    Results,
    build_rows,
    format_table,
    latency_table,
    resource_lines,
    write_report,
)
from harness.sampling import BUSY_MACHINE_CORES, OtherLoad
from harness.servers import (
    NGINX,
    BenchServer,
    nginx_server,
    ours_server,
    ours_supports_workers,
)
from harness.tls import OPENSSL, make_certificate, negotiated
from harness.workloads import (
    MEDIUM,
    SMALL,
    BigTransfer,
    Profile,
    bare_get,
    big_put_get,
    durable_small_puts,
    get_runs,
    gets_during_upload,
    idle_memory,
    profile_run,
    put_runs,
    remove_uploads,
    upload_files,
)
from harness.wrk import WRK

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "compare.json"


FULL = Profile(
    name="full",
    big_size=GIB,
    wrk_seconds=6,
    put_concurrency=(1, 10, 100),
    get_concurrency=(10, 100),
    put_requests={SMALL: 400_000, MEDIUM: 8_000},
    get_files={SMALL: 200, MEDIUM: 50},
    big_rounds=2,
    put_rounds=2,
    get_rounds=2,
    during_upload_max_requests=20_000,
    idle_get_requests=300,
)
QUICK = Profile(
    name="quick",
    big_size=64 * MIB,
    wrk_seconds=2,
    put_concurrency=(10,),
    get_concurrency=(10,),
    put_requests={SMALL: 100_000, MEDIUM: 2_500},
    get_files={SMALL: 50, MEDIUM: 10},
    big_rounds=1,
    put_rounds=1,
    get_rounds=1,
    during_upload_max_requests=5_000,
    idle_get_requests=100,
)


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


def memory_report(server: BenchServer) -> dict[str, object]:
    """The server's sampled memory (its sampler stopped first), with which kind it is."""
    server.sampler.stop()
    return {"kind": server.kind, **server.sampler.report()}


def print_big(t: BigTransfer) -> None:
    print(f"  {t.server:<14} PUT "
          f"{num(t.put_mb_s, 1)} MB/s  GET {num(t.get_mb_s, 1)} MB/s  "
          f"CPU {num(t.put_cpu_s_per_gb, 2)}/{num(t.get_cpu_s_per_gb, 2)} s/GB  "
          f"curl {t.put_client_cores}/{t.get_client_cores} cores  "
          f"others {t.put_other_load_cores}/{t.get_other_load_cores} cores "
          f"{'; '.join(t.errors)}", flush=True)


def measure_tls(args: argparse.Namespace, workdir: Path, res: Results, profile: Profile,
                test_file: Path, workers: int | None) -> None:
    """Workload 7: both servers with their own TLS on one certificate, one worker each."""
    big = profile.big_size
    disk = workdir / "disk"
    tls = make_certificate(workdir / "tls")
    with contextlib.ExitStack() as stack:
        # One worker each (`workers = 1`; left out where ours has no workers: one process).
        ours = stack.enter_context(ours_server(
            args.python, workdir, disk / "ours-tls", label="ours tls", fsync=False,
            workers=1 if workers is not None else None, tls=tls))
        nginx = stack.enter_context(nginx_server(
            workdir, disk / "nginx-tls", disk / "nginx-tls-body", label="nginx tls", workers=1,
            tls=tls))
        for server in (ours, nginx):
            res.tls_negotiated[server.label] = (f"{negotiated(server.port, tls.certificate)} "
                                                f"({tls_library(server.kind, args.python)})")
            print(f"  {server.label:<14} pid {server.pid} on {server.base_url}: "
                  f"{res.tls_negotiated[server.label]}", flush=True)
        for round_no in range(1, profile.big_rounds + 1):
            for server in (ours, nginx) if round_no % 2 else (nginx, ours):
                t = big_put_get(server, test_file, big, round_no)
                res.tls_big.append(t)
                print_big(t)
        targets = {server.label: upload_files(server, f"g{SMALL}-", SMALL,
                                              profile.get_files[SMALL])
                   for server in (ours, nginx)}
        settle()
        c10 = replace(profile, get_concurrency=(10,))
        res.wrk += get_runs((ours, nginx), c10, workdir, "tls",
                            {label: {SMALL: paths} for label, paths in targets.items()})
        for server in (ours, nginx):
            res.memory[server.label] = memory_report(server)


def measure(args: argparse.Namespace, workdir: Path, res: Results, stack: contextlib.ExitStack,
            output_dir: Path) -> None:
    profile: Profile = QUICK if args.quick else FULL
    big = profile.big_size
    free_needed = 6 * big + profile.put_requests[MEDIUM] * MEDIUM + 512 * MIB
    check_free_space(workdir, free_needed)
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
    create_test_file(test_file, big)
    dd_fdatasync(test_file, workdir / "dd.bin", big)  # untimed: the first one is slow here

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
            print_big(t)
        bare, error = bare_get(test_file, big)
        if bare is not None:
            res.bare_get_mb_s.append(bare)
        print(f"  {'bare sendfile':<14} GET {num(bare, 1)} MB/s  (a loop doing no other work) "
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
    res.wrk += get_runs((ours, nginx), profile, workdir, "disk", files)
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
                  f"p50 {num(loop.p50_ms, 2)} ms  p99 {num(loop.p99_ms, 2)} ms  "
                  f"max {num(loop.max_ms, 1)} ms  {loop.error or ''}", flush=True)

    print(f"\n[1b] durable {size_name(big)} PUT (fsync = true) beside dd conv=fdatasync",
          flush=True)
    with ours_server(args.python, workdir, disk / "ours-durable", label="ours durable",
                     fsync=True, workers=workers) as durable:
        for round_no in range(1, profile.big_rounds + 1):
            res.dd_mb_s.append(dd_fdatasync(test_file, workdir / "dd.bin", big))
            t = big_put_get(durable, test_file, big, round_no, get=False)
            res.durable.append(t)
            print(f"  dd conv=fdatasync {res.dd_mb_s[-1]:.1f} MB/s; ours durable PUT "
                  f"{num(t.put_mb_s, 1)} MB/s {'; '.join(t.errors)}", flush=True)
        res.memory[durable.label] = memory_report(durable)

    print(f"\n[7] over https, one worker each: {size_name(big)} PUT and GET (curl), "
          f"{size_name(SMALL)} GET c=10 (wrk)", flush=True)
    measure_tls(args, workdir, res, profile, test_file, workers)
    test_file.unlink(missing_ok=True)

    print(f"\n[8] durable {size_name(SMALL)} PUTs (fsync = true) c=10 beside the disk's own "
          f"rate of durable {size_name(SMALL)} files", flush=True)
    with ours_server(args.python, workdir, disk / "ours-durable-4k", label="ours durable 4K",
                     fsync=True, workers=workers) as durable_small:
        runs, rates = durable_small_puts(durable_small, profile, workdir, disk)
        res.wrk += runs
        res.disk_rates += rates
        res.memory[durable_small.label] = memory_report(durable_small)

    # The memory figures of the servers' workloads so far: the idle connections below have a
    # row of their own and must not raise the peaks (the samplers stop here).
    for server in (ours, nginx):
        res.memory[server.label] = memory_report(server)

    print(f"\n[9] memory per idle connection: {profile.idle_connections} idle keep-alive "
          "connections to each server", flush=True)
    for server in (ours, nginx):
        held = idle_memory(server, files[server.label][SMALL][0], profile.idle_connections)
        res.idle.append(held)
        print(f"  {server.label:<14} {held.opened} held in {num(held.open_seconds, 1)} s, "
              f"RSS {held.rss_before_kib} -> {held.rss_after_kib} KiB: "
              f"{num(held.kib_per_connection, 2)} KiB per connection "
              f"{'; '.join(held.errors)}", flush=True)

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
            t_files = {server.label: {size: upload_files(server, f"g{size}-", size, count)
                                      for size, count in profile.get_files.items()}
                       for server in (t_ours, t_nginx)}
            settle()
            res.wrk += get_runs((t_ours, t_nginx), profile, workdir, "tmpfs", t_files)
            for server in (t_ours, t_nginx):
                res.memory[server.label] = memory_report(server)


def command_lines(cmd: Sequence[str]) -> list[str]:
    """What a short command prints (stdout, else stderr), as lines; never raises."""
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30,
                           check=False, cwd=REPO_ROOT, env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"? ({exc})"]
    return (p.stdout or p.stderr).strip().splitlines() or ["?"]


def tls_library(kind: str, python: str) -> str:
    """The OpenSSL a server does its TLS with: Debian's for nginx, the one pyOpenSSL is built
    on (cryptography's own) for ours."""
    if kind == "nginx":
        line = next((ln for ln in command_lines([NGINX, "-V"]) if "OpenSSL" in ln), "?")
        return line.removeprefix("built with ")
    return command_lines([python, "-c", "from OpenSSL import SSL, __version__ as v; "
                          "print(SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()"
                          " + ', pyOpenSSL', v)"])[0]


def tool_versions(python: str) -> dict[str, str]:
    def first_line(cmd: Sequence[str]) -> str:
        return command_lines(cmd)[0]

    return {
        "nginx": first_line([NGINX, "-v"]),
        "wrk": first_line([WRK, "--version"]),
        "curl": first_line([CURL, "--version"]),
        "server_python": first_line([python, "--version"]),
        "twisted": first_line([python, "-c", "import twisted; print(twisted.__version__)"]),
        "hmacfs": first_line([python, "-m", "hmacfs", "--version"]),
        "nginx_openssl": tls_library("nginx", python),
        "server_openssl": tls_library("ours", python),
        "openssl_cli": first_line([OPENSSL, "version"]),
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
    except BenchError as exc:
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
    problems = [f"{t.server}: {e}" for t in [*res.big, *res.durable, *res.tls_big]
                for e in t.errors]
    problems += [f"{label}: TLS handshake {what}" for label, what in res.tls_negotiated.items()
                 if what.startswith("failed")]
    problems += [f"disk loop x{d.threads} round {d.round}: {e}" for d in res.disk_rates
                 for e in d.errors]
    problems += [f"{x.server} idle connections: {e}" for x in res.idle for e in x.errors]
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
        "tls_transfers": [asdict(t) for t in res.tls_big],
        "tls_negotiated": res.tls_negotiated,
        "disk_durable_file_loops": [asdict(d) for d in res.disk_rates],
        "idle_connections": [asdict(x) for x in res.idle],
        "py_spy": res.profiles,
    }
    md = write_report(output, report, res, rows)
    print(f"\nresults written to {output} and {md} ({elapsed:.0f} s)")
    if fatal is not None:
        return 2
    if problems:
        print("FAILED requests:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in (CURL, NGINX, WRK, OPENSSL) if shutil.which(t) is None]
    if missing or shutil.which(DD) is None:
        print(f"error: missing {', '.join(missing) or 'dd'}: run `bash bench/setup.sh`",
              file=sys.stderr)
        return 2
    return run_driver(lambda: run(args), "servers stopped and temporary files removed")


if __name__ == "__main__":
    sys.exit(main())
