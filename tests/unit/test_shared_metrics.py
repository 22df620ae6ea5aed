"""What workers share beyond prometheus_client's files: the sweep's figures handed over in a file,
and a dead worker's live gauges forgotten as prometheus_client itself forgets them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import multiprocess

from hmacfs.process.shared_metrics import (
    FIGURES_FILE,
    SweepFigures,
    forget_live_gauges,
    multiprocess_dir,
    remove_directory,
    shared_directory,
)
from hmacfs.storage.backend import SweepReport


class Gauges:
    """What `SweepFigures.take` sets (the two methods of `hmacfs.metrics.Metrics`)."""

    def __init__(self) -> None:
        self.storage: list[tuple[int, int]] = []
        self.kept: list[tuple[int, int]] = []

    def set_storage(self, files: int, size: int) -> None:
        self.storage.append((files, size))

    def set_kept_partials(self, count: int, size: int) -> None:
        self.kept.append((count, size))


def test_the_workers_take_each_sweep_once(tmp_path: Path) -> None:
    supervisor, worker, gauges = SweepFigures(tmp_path), SweepFigures(tmp_path), Gauges()
    assert not worker.take(gauges)  # nothing swept yet
    supervisor.publish(SweepReport(files=3, bytes=300, kept=1, kept_bytes=10))
    assert worker.take(gauges)
    assert not worker.take(gauges)  # the same figures: not read again
    supervisor.publish(SweepReport(files=2, bytes=200))
    assert worker.take(gauges)
    assert gauges.storage == [(3, 300), (2, 200)] and gauges.kept == [(1, 10), (0, 0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [FIGURES_FILE]  # no temporary left


def test_figures_that_cannot_be_read_change_nothing(tmp_path: Path) -> None:
    worker, gauges = SweepFigures(tmp_path), Gauges()
    (tmp_path / FIGURES_FILE).write_text("{not json")
    assert not worker.take(gauges)
    (tmp_path / FIGURES_FILE).write_text(json.dumps({"files": 1}))
    assert not worker.take(gauges)
    assert gauges.storage == [] and gauges.kept == []
    SweepFigures(tmp_path / "gone").publish(SweepReport())  # never raises


def test_the_shared_directory_is_prometheus_clients() -> None:
    assert shared_directory({}) is None
    assert shared_directory({"PROMETHEUS_MULTIPROC_DIR": "/run/x"}) == Path("/run/x")


def test_the_metrics_directory_is_new_and_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, temporary = tmp_path / "run", tmp_path / "tmp"
    runtime.mkdir()
    temporary.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{runtime}:{tmp_path / 'other'}")
    monkeypatch.setenv("TMPDIR", str(temporary))
    first, second = multiprocess_dir(), multiprocess_dir()
    assert first != second
    assert first.parent == second.parent == runtime  # (systemd's first directory)
    assert first.name.startswith("hmacfs-metrics-")
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert multiprocess_dir().parent == temporary
    # A temporary directory that cannot be used is passed over, as tempfile passes it over.
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    monkeypatch.setenv("TEMP", str(temporary))
    assert multiprocess_dir().parent == temporary
    # Where systemd's directory is gone, the error says so rather than going elsewhere.
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError):
        multiprocess_dir()


def test_the_metrics_directory_is_removed_with_all_it_holds(tmp_path: Path) -> None:
    shared, outside = tmp_path / "shared", tmp_path / "outside"
    (shared / "deeper" / "still").mkdir(parents=True)
    outside.mkdir()
    (outside / "kept").write_text("x")
    for name in ("counter_1.db", "deeper/a", "deeper/still/b"):
        (shared / name).write_text("x")
    (shared / "link").symlink_to(outside)
    remove_directory(shared)
    assert not shared.exists()
    assert (outside / "kept").read_text() == "x"  # (a link is removed, not followed)
    remove_directory(shared)  # (nothing there: no error)


_WRITE_METRICS = """
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
registry = CollectorRegistry()
for mode in ("livesum", "livemax", "liveall", "max", "all"):
    Gauge(f"g_{mode}", "a gauge", registry=registry, multiprocess_mode=mode).set(1)
Counter("c", "a counter", registry=registry).inc()
Histogram("h", "a histogram", registry=registry).observe(1)
"""


def test_a_dead_workers_live_gauges_go_as_with_prometheus_client(tmp_path: Path) -> None:
    """`forget_live_gauges` removes the very files `multiprocess.mark_process_dead` does,
    with the files the installed prometheus_client writes (two processes' worth)."""
    written = tmp_path / "written"
    written.mkdir()
    pids = []
    for _ in range(2):
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(written))
        done = subprocess.run(
            [sys.executable, "-c", _WRITE_METRICS + "import os; print(os.getpid())"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )
        pids.append(int(done.stdout))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(written, ours)
    shutil.copytree(written, theirs)
    dead = pids[0]
    forget_live_gauges(dead, ours)
    multiprocess.mark_process_dead(dead, str(theirs))
    left = sorted(p.name for p in ours.iterdir())
    assert left == sorted(p.name for p in theirs.iterdir())
    assert len(left) < len(list(written.iterdir()))  # (something was removed)
    assert any(name.endswith(f"_{dead}.db") for name in left)  # (not everything of it)
    forget_live_gauges(dead, tmp_path / "gone")  # never raises
