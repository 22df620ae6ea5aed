"""The test file, free space, ``dd conv=fdatasync`` on the same filesystem, a tmpfs, and the
filesystem's own rate of small durable files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.common import DD, MIB, BenchError, clean_env, mb_per_s, transfer_timeout
from harness.sampling import OtherLoad

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


@dataclass
class DiskRate:
    """Small durable files made per second by `durable_files` with some threads."""

    threads: int
    size: int
    seconds: float
    round: int = 1
    files: int = 0
    files_per_s: float | None = None
    hit_limit: bool = False
    other_load_cores: float | None = None
    errors: list[str] = field(default_factory=list)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_files(parent: Path, *, threads: int, size: int, seconds: float, max_files: int,
                  round_no: int = 1) -> DiskRate:
    """The filesystem's own rate of small durable files, for a server's durable small PUTs.

    ``threads`` threads, for ``seconds`` or until ``max_files`` files in all, each make, one
    after another: a fresh directory under ``parent`` (as every PUT of the wrk runs goes to a
    fresh ``<dir>/f.bin``), a temporary file in it with ``size`` bytes, fsync of that file,
    a rename to ``f.bin``, fsync of the new directory and of ``parent`` (each got a new
    entry). The least a server has to do for such an upload to survive a crash, in plain
    system calls (which release the GIL) with no HTTP. ``parent`` is created and deleted
    again. Errors are recorded, not raised.
    """
    result = DiskRate(threads, size, seconds, round_no)
    parent.mkdir(parents=True)
    block = os.urandom(size)
    lock = threading.Lock()
    counts = [0] * threads
    deadline = 0.0

    def work(index: int) -> None:
        made = 0
        try:
            while time.monotonic() < deadline:
                with lock:
                    if sum(counts) >= max_files:
                        result.hit_limit = True
                        return
                directory = parent / f"t{index:02d}-{made:07d}"
                directory.mkdir()
                temp = directory / "f.tmp"
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temp, directory / "f.bin")
                _sync_dir(directory)
                _sync_dir(parent)
                made += 1
                with lock:
                    counts[index] = made
        except OSError as exc:
            with lock:
                result.errors.append(f"thread {index}: {exc}")

    workers = [threading.Thread(target=work, args=(i,), name=f"fsync-{i}", daemon=True)
               for i in range(threads)]
    try:
        with OtherLoad() as other:
            start = time.monotonic()
            deadline = start + seconds
            for t in workers:
                t.start()
            for t in workers:
                t.join(timeout=seconds + 60)  # bounded: each stops at the deadline
            elapsed = time.monotonic() - start
        result.other_load_cores = other.cores
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    result.files = sum(counts)
    if elapsed > 0 and not result.errors:
        result.files_per_s = result.files / elapsed
    return result
