"""The open-descriptor limit: raised at start, and set in the unit."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    program = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1]))\n"
        "from hmacfs.process.limits import raise_open_files_limit\n"
        "print(*raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    before, after, now = (int(n) for n in out)
    assert before == 256
    assert after == now > 256
    if hard != resource.RLIM_INFINITY:
        assert now == hard


def test_the_unit_sets_a_descriptor_limit_above_systemds_default() -> None:
    unit = (ROOT / "systemd" / "hmac-file-server.service").read_text()
    limits = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0].split("=", 1)[1]) >= 65536
