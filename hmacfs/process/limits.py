"""Process limits a server with many connections needs."""

from __future__ import annotations

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
