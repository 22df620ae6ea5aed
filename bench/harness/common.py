"""Units, loopback constants, the error that ends a run, and child environments."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

HOST = "127.0.0.1"
UPLOAD_PREFIX = "/upload/"
CURL = "/usr/bin/curl"
DD = "dd"

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MB = 1_000_000

# Per-transfer curl / dd time limit: a fixed allowance plus 1 MB/s worth of data.
BASE_TIMEOUT_S = 60.0
MIN_RATE_B_S = 1 * MB


class BenchError(Exception):
    """A problem that makes further measurement pointless (server will not start...)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_driver(run: Callable[[], int], interrupted: str = "temporary files removed") -> int:
    """A driver's exit status: `run`'s, 2 for a BenchError, 130 for Ctrl-C or SIGTERM (which
    interrupts `run` as Ctrl-C does, so that its clean-up runs)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return run()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; {interrupted}", file=sys.stderr)
        return 130


def size_label(size: int) -> str:
    """16M, 1G: the size names of large_transfer's table (binary units)."""
    for suffix, mult in (("T", 1024**4), ("G", 1024**3), ("M", MIB), ("K", KIB)):
        if size >= mult and size % mult == 0:
            return f"{size // mult}{suffix}"
    return f"{size}B"


def size_name(size: int) -> str:
    """4 KiB, 1 MiB, 1 GiB: the size names of compare's tables."""
    for unit, mult in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= mult and size % mult == 0:
            return f"{size // mult} {unit}"
    return f"{size} B"


def mb_per_s(size: int, seconds: float) -> float | None:
    """MB/s (10^6 bytes) of `size` bytes in `seconds`; None for a zero duration."""
    return size / seconds / MB if seconds > 0 else None


def transfer_timeout(size: int) -> float:
    """Seconds a curl or dd run of `size` bytes may take before it is given up."""
    return BASE_TIMEOUT_S + size / MIN_RATE_B_S


def clean_env() -> dict[str, str]:
    """Environment for child processes: no proxies (only 127.0.0.1 is contacted), C locale."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["LC_ALL"] = "C"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file, for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def settle() -> None:
    """Write back dirty pages left by the previous run so they do not slow the next one."""
    os.sync()


def num(value: float | None, digits: int) -> str:
    """A figure as the tables show it: "-" for none, thousands separated for whole numbers."""
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"
