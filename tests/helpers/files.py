"""What a storage directory holds: the files a client could see, the partial uploads."""

from __future__ import annotations

import os
from pathlib import Path

from hmacfs.storage.local import LocalStorage


def visible_files(root: Path) -> list[str]:
    """Every file under `root` that a client could see (the bookkeeping directory excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".hmacfs" in dirnames:
            dirnames.remove(".hmacfs")
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def partial_files(storage: LocalStorage) -> list[str]:
    """The partial files of uploads (the empty ones kept ready for new uploads left out).

    Named ones by their name; unnamed ones (O_TMPFILE) as "#<inode>", found among the open
    descriptors of this process (the storage's name for them, and what /proc shows).
    """
    partial = storage.root / ".hmacfs" / "partial"
    found = os.listdir(partial)
    unnamed = os.path.realpath(partial) + "/#"
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(unnamed) and target.endswith(" (deleted)"):
            found.append(target[len(unnamed) - 1 : -len(" (deleted)")])
    ready = storage.live_names()
    return sorted(name for name in found if name not in ready)


def descriptors_on(path: Path, pids: tuple[int | str, ...] = ("self",)) -> int:
    """How many descriptors the processes `pids` ("self": this one) hold open on `path`,
    removed or not."""
    wanted = os.path.realpath(path)
    count = 0
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # (a process that is gone)
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in (wanted, f"{wanted} (deleted)"):
                count += 1
    return count
