"""The test file, free space, ``dd conv=fdatasync`` on the same filesystem, a tmpfs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from harness.common import DD, MIB, BenchError, clean_env, mb_per_s, transfer_timeout

BLOCK_SIZE = MIB


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
    """Raises BenchError if ``directory``'s filesystem has less than ``needed`` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise BenchError(
            f"not enough free space in {directory}: need ~{needed / MIB:.0f} MiB, "
            f"have {free / MIB:.0f} MiB (use --tmpdir or smaller sizes)"
        )


_DD_RE = re.compile(r"^(\d+) bytes .*copied, ([0-9.]+) s", re.MULTILINE)


def dd_fdatasync(src: Path, dst: Path, size: int) -> float:
    """Copy ``src`` to ``dst`` with ``dd bs=1M conv=fdatasync``; return MB/s (10^6 B/s).

    ``dst`` is deleted afterwards. Raises BenchError if dd fails or copies another size.
    """
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


@contextlib.contextmanager
def tmpfs_mount(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs at ``path`` for the duration; unmounted (lazily if busy) afterwards.

    Raises BenchError if it cannot be mounted (root is needed).
    """
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
