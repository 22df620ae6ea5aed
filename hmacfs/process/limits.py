"""Process limits a server with many connections needs, how many processes it runs, and the
memory it gives back once started."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
from pathlib import Path

#: The kernel's ceiling on a process's descriptors (where /proc does not say).
_NR_OPEN_DEFAULT = 1 << 20
_NR_OPEN = Path("/proc/sys/fs/nr_open")


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open descriptors to the hard one (systemd's default soft limit
    of 1024 is reached by about 500 slow clients: a socket and a file each). Returns the soft
    limit before and after; a limit that cannot be raised is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = _NR_OPEN_DEFAULT
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


def worker_count(configured: int) -> int:
    """How many worker processes `[server] workers = configured` means: itself, or one per
    core for 0."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


def release_free_memory() -> bool:
    """Hand back to the kernel the memory that start-up used and freed (compiling modules
    without cached bytecode leaves megabytes of it), which the C library keeps otherwise: glibc's
    malloc_trim(3). Returns whether it could; elsewhere (musl) it does nothing."""
    with contextlib.suppress(OSError, AttributeError):
        trim = ctypes.CDLL(None).malloc_trim
        trim.argtypes = [ctypes.c_size_t]
        trim(0)
        return True
    return False
