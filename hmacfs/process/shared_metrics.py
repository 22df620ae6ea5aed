"""What the workers' metrics share beyond prometheus_client's files, without
prometheus_client in the supervisor.

Workers share their metrics through files in one directory (prometheus_client's multi-process
mode, PROMETHEUS_MULTIPROC_DIR), and each worker's /metrics adds them up. Two things more:

- the storage figures of the sweeps (`SweepFigures`), which one worker makes: it writes them
  to a file in that directory, and every worker copies them into its own gauges (kept with
  ``multiprocess_mode="livemax"``: /metrics shows the one value);
- forgetting a dead worker's live gauges (`forget_live_gauges`), as prometheus_client's
  `multiprocess.mark_process_dead` does, so that an upload in flight in a worker that crashed
  is not counted for ever: the supervisor's part, which serves nothing and so loads neither
  prometheus_client nor the web layer.
"""

from __future__ import annotations

import contextlib
import json
import os

# (the supervisor imports this module, and no typing or pathlib: `hmacfs.process.supervisor`)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

    # (the storage, hashlib with it, is imported later, and not by every process)
    from hmacfs.storage.backend import SweepReport

#: The variable naming the shared directory (prometheus_client's).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The file of the last sweep's figures, in that directory (prometheus_client reads only its
#: own ``*.db`` files there).
FIGURES_FILE = "sweep.json"


def multiprocess_dir() -> Path:
    """A fresh directory for the processes to share their metrics in (removed by the caller):
    under systemd's RuntimeDirectory, else the temporary directory."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    # (tempfile.mkdtemp's choice and mode, without its import: that brings shutil, random
    # and the compression modules into a supervisor that needs none of them)
    bases = [runtime] if runtime else [*_temporary_directories(), os.getcwd()]
    error: OSError = FileNotFoundError("no directory for the shared metrics")
    for base in bases:
        path = _path(base) / f"hmacfs-metrics-{os.urandom(8).hex()}"
        try:
            os.mkdir(path, 0o700)
        except OSError as e:
            error = e
            continue
        return path
    raise error


def _temporary_directories() -> list[str]:
    named = [os.environ.get(name, "") for name in ("TMPDIR", "TEMP", "TMP")]
    return [base for base in named if base] + ["/tmp", "/var/tmp", "/usr/tmp"]  # noqa: S108


def _path(text: str) -> Path:
    from pathlib import Path  # (not imported by a supervisor until it is asked for a Path)

    return Path(text)


def remove_directory(path: str | os.PathLike[str]) -> None:
    """Remove `path` and all it holds, as far as it can (shutil.rmtree, errors ignored)."""
    with contextlib.suppress(OSError), os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                remove_directory(entry.path)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def shared_directory(environ: Mapping[str, str] | None = None) -> Path | None:
    """The directory the processes share their metrics in, or None for a single process."""
    env = os.environ if environ is None else environ
    directory = env.get(MULTIPROC_ENV)
    return _path(directory) if directory else None


class SweepFigures:
    """The last sweep's figures in `directory`/FIGURES_FILE: the sweeping worker
    `publish`es them, each worker `take`s them when they have changed.

    Neither raises: metrics must never take a process down (a figure not written or not
    read is the previous one, until the next sweep)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FIGURES_FILE
        #: What identified the file when it was last read (so that it is read once a sweep).
        self._seen: tuple[int, int, int] | None = None

    def publish(self, report: SweepReport) -> None:
        """Write `report`'s figures, replacing the file in one step (a reader never sees
        half of them)."""
        figures = {
            "files": report.files,
            "bytes": report.bytes,
            "kept": report.kept,
            "kept_bytes": report.kept_bytes,
        }
        temporary = self.path.with_name(f".{FIGURES_FILE}.{os.getpid()}")
        try:
            temporary.write_text(json.dumps(figures), encoding="ascii")
            os.replace(temporary, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()

    def take(self, metrics: Any) -> bool:
        """If the figures changed since the last call, give them to `metrics` (a
        `hmacfs.metrics.Metrics`). Returns whether they did."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return False
        try:
            figures = json.loads(self.path.read_bytes())
            files, size = int(figures["files"]), int(figures["bytes"])
            kept, kept_bytes = int(figures["kept"]), int(figures["kept_bytes"])
        except (OSError, ValueError, TypeError, KeyError):
            return False
        self._seen = seen
        metrics.set_storage(files, size)
        metrics.set_kept_partials(kept, kept_bytes)
        return True


def forget_live_gauges(pid: int, directory: str | os.PathLike[str]) -> None:
    """What prometheus_client's `multiprocess.mark_process_dead(pid, directory)` does: remove
    the dead process's files of live gauges (``gauge_live<mode>_<pid>.db``), so that the sum
    and maximum over live processes leave it out. Never raises.

    Done here so that the supervisor need not import prometheus_client (several MiB) for it;
    `tests/unit/test_shared_metrics.py` checks it against prometheus_client's own."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            name = entry.name
            if name.startswith("gauge_live") and name.endswith(f"_{pid}.db"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
