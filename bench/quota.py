#!/usr/bin/env python3
"""What the `[quota]` accounting costs a small upload.

Starts ``python -m hmacfs`` (``workers = 1``, ``fsync = false``, a temporary storage
directory) three times: without quotas, with ``uploader_limit`` (each upload's uploader
counted in the storage directory's usage files, its limit read from them), and with
``uploader_limit`` plus ``uploader_daily_limit`` (the uploader's log read too). Each time it
PUTs the same number of small files, one after the other over one keep-alive connection,
signed as Prosody's mod_http_file_share signs them (a JWT whose ``sub`` names the uploader,
ten uploaders in turn), and reports the median and 90th percentile time to 201 and the rate.
Every answer must be 201. The rows are measured in turns (A B C A B C ...), so that a drift of
the machine's speed spreads over all of them.

Run from the repository root: ``.venv/bin/python bench/quota.py [--files 2000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/ is not a package: running `python bench/quota.py` puts this directory on sys.path.
from harness import REPO_ROOT  # noqa: F401 (puts the repository root on the import path)
from harness.common import BenchError, run_driver
from harness.report import text_table

from hmacfs.core import auth
from tests.helpers import resumable as rufh
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import SECRET

SIZE = 4096
UPLOADERS = 10
CONFIGS = {
    "no quota": "",
    "uploader_limit": '[quota]\nuploader_limit = "10T"\n',
    "+ uploader_daily_limit": '[quota]\nuploader_limit = "10T"\nuploader_daily_limit = "10T"\n',
}


def upload_all(server: Server, files: int, tag: str) -> list[float]:
    body = b"q" * SIZE
    times = []
    with rufh.Connection.to(server.base) as connection:
        for n in range(files):
            rel = f"{tag}-{n}/f.bin"
            signed = auth.sign(
                "jwt", rel, SIZE, "application/octet-stream", SECRET,
                now=time.time(), uploader=f"user{n % UPLOADERS}@example.org",
            )
            headers = [
                ("Authorization", signed.headers["Authorization"]),
                ("Content-Type", "application/octet-stream"),
            ]
            started = time.perf_counter()
            answer = rufh.request(
                "PUT", f"{server.base}/upload/{rel}", headers, body=body, connection=connection
            )
            times.append(time.perf_counter() - started)
            if answer.status != 201:
                raise BenchError(f"{rel}: {answer.status} {answer.body[:200]!r}")
    return times


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="uploads per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns of all rows")
    args = parser.parse_args(argv)
    measured: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="hmacfs-quota-bench-") as scratch:
        for round_ in range(args.rounds):
            for index, (name, toml) in enumerate(CONFIGS.items()):
                where = Path(scratch) / f"{round_}-{index}"
                where.mkdir()
                server = start_server(
                    where, toml, server_toml="fsync = false", log_level="warning", notify=True,
                    max_upload_size="1M", track=False,
                )
                try:
                    measured[name] += upload_all(server, args.files, f"r{round_}")
                finally:
                    stop_server(server)
    base = statistics.median(measured["no quota"])
    rows = []
    for name, times in measured.items():
        median = statistics.median(times)
        rows.append({
            "config": name,
            "median": median * 1e6,
            "p90": statistics.quantiles(times, n=10)[-1] * 1e6,
            "rate": len(times) / sum(times),
            "vs": median / base,
        })
    columns = [("config", "config"), ("median µs", "median"), ("p90 µs", "p90"),
               ("uploads/s", "rate"), ("median vs no quota", "vs")]

    def cell(key: str, value: object) -> str:
        if key == "config":
            return str(value)
        if key == "vs":
            return f"{value:.2f}x"
        return f"{value:.0f}"

    print(f"{args.files} uploads of {SIZE} bytes per row and round, {args.rounds} rounds, "
          f"workers 1, fsync off, {UPLOADERS} uploaders (JWT sub) in turn")
    print(text_table(columns, rows, cell, left=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_driver(lambda: run(sys.argv[1:])))
