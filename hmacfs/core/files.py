"""Reading the small files an admin names (secrets, certificates, configurations): a FIFO,
a device or a directory given by mistake must not make the process wait or fill its memory."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegularFile(ValueError):
    """The path names a FIFO, a device, a directory or a socket."""


class FileTooLarge(ValueError):
    """The file holds more than the reader takes."""


def read_regular(path: Path, limit: int | None = None) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file `path` (at most `limit` of them) and its status.

    Opened without blocking (a FIFO nobody writes to would hang the open), and refused
    unless it is a regular file. Raises OSError, NotRegularFile, FileTooLarge."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            content = f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)
    if limit is not None and len(content) > limit:
        raise FileTooLarge(f"{path} is larger than {limit} bytes")
    return content, st
