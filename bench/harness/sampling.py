"""Process trees under measurement: their memory (VmRSS, VmHWM), CPU time, and other load.

A server is a process tree (our supervisor and its workers, nginx's master and its workers),
so every figure here is of a root pid and its live descendants.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.common import KIB

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Other processes using more than this many cores during a measurement make it suspect.
BUSY_MACHINE_CORES = 0.25


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; the name in parentheses may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now (empty if ``root`` is gone)."""
    children: dict[int, list[int]] = {}
    alive = False
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fields = _stat_fields(pid)
            if fields is None:
                continue
            alive = alive or pid == root
            children.setdefault(int(fields[1]), []).append(pid)
    if not alive:
        return []
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def read_one_kib(pid: int, fieldname: str) -> int | None:
    """Read e.g. VmRSS / VmHWM (kB) from /proc/PID/status; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(fieldname + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_tree_max_kib(pid: int, fieldname: str) -> int | None:
    """The largest VmRSS / VmHWM (kB) of any process of the server (`pid` and its worker
    processes): the figure that must stay flat is per process. None if it is gone."""
    values = [v for p in process_tree(pid) if (v := read_one_kib(p, fieldname)) is not None]
    return max(values) if values else None


def kib_to_mib(kib: int | None) -> float | None:
    return None if kib is None else kib / KIB


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and its live descendants, plus what they reaped (cutime...)."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return "?"


def system_busy_ticks() -> int:
    """user + nice + system time of all CPUs so far (/proc/stat), in clock ticks.

    Interrupt and softirq time is left out: loopback traffic is mostly softirq work that the
    benchmark itself causes.
    """
    with open("/proc/stat", encoding="ascii") as fh:
        fields = fh.readline().split()
    return int(fields[1]) + int(fields[2]) + int(fields[3])


def kernel_thread_ticks() -> int:
    """CPU ticks so far of the kernel threads (kthreadd, pid 2, and its children)."""
    ticks = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            fields = _stat_fields(int(entry.name))
            if fields is not None and (entry.name == "2" or fields[1] == "2"):
                ticks += int(fields[11]) + int(fields[12])
    return ticks


def own_ticks() -> float:
    """CPU ticks so far of this script and everything it started (servers, wrk, curl)."""
    return tree_cpu_seconds(os.getpid()) * CLK_TCK


class OtherLoad:
    """How many cores other processes (other users of this machine) used during a block.

    All CPUs' user and system time, less this script's process tree (its servers, and wrk
    and curl once reaped) and less the kernel's threads (which also do our writeback). The
    benchmark is only as good as the machine is quiet: every figure carries this, and the
    table notes the runs during which something else was busy.
    """

    def __init__(self) -> None:
        self.cores: float | None = None
        self._start = 0.0
        self._before = (0, 0.0, 0)

    @staticmethod
    def _now() -> tuple[int, float, int]:
        return system_busy_ticks(), own_ticks(), kernel_thread_ticks()

    def __enter__(self) -> OtherLoad:
        self._before = self._now()
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._start
        busy, own, kernel = (a - b for a, b in zip(self._now(), self._before, strict=True))
        if elapsed > 0:
            self.cores = round(max(0.0, busy - own - kernel) / CLK_TCK / elapsed, 2)


@dataclass
class PhasePeak:
    """Highest sampled RSS of a process tree during one phase."""

    sum_kib: int = 0
    max_kib: int = 0
    processes: int = 0
    samples: int = 0


class TreeSampler:
    """Samples VmRSS of a process and its descendants every 100 ms in a thread.

    ``phase`` names what is being measured; peaks are kept per phase and overall. VmHWM (the
    kernel's own per-process peak) is read for every process seen, so a child that exits
    early is still accounted for.
    """

    INTERVAL_S = 0.1

    def __init__(self, root: int) -> None:
        self.root = root
        self.phase = "idle"
        self.phases: dict[str, PhasePeak] = {}
        self.overall = PhasePeak()
        self.hwm_kib: dict[int, int] = {}
        #: Highest sampled VmRSS of each process seen.
        self.peak_kib: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._pids: list[int] = []
        self._count = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss-tree", daemon=True)

    def sample(self) -> None:
        with self._lock:
            if self._count % 10 == 0 or not self._pids:
                self._pids = process_tree(self.root)
                for pid in self._pids:
                    self._read_hwm(pid)
            self._count += 1
            rss = {pid: v for pid in self._pids if (v := read_one_kib(pid, "VmRSS"))}
            if not rss:
                return
            for pid, v in rss.items():
                self.peak_kib[pid] = max(v, self.peak_kib.get(pid, 0))
            values = list(rss.values())
            total, biggest = sum(values), max(values)
            for peak in (self.overall, self.phases.setdefault(self.phase, PhasePeak())):
                peak.sum_kib = max(peak.sum_kib, total)
                peak.max_kib = max(peak.max_kib, biggest)
                peak.processes = max(peak.processes, len(values))
                peak.samples += 1

    def _read_hwm(self, pid: int) -> None:
        hwm = read_one_kib(pid, "VmHWM")
        if hwm is not None:
            self.hwm_kib[pid] = max(hwm, self.hwm_kib.get(pid, 0))
            self.names.setdefault(pid, process_name(pid))

    def set_phase(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def _run(self) -> None:
        # Bounded: ends when stopped (the server's shutdown always stops it).
        while not self._stop.wait(self.INTERVAL_S):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; read every live process's VmHWM one last time."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for pid in process_tree(self.root):
                self._read_hwm(pid)

    def report(self) -> dict[str, object]:
        def mib(kib: int) -> float:
            return round(kib / KIB, 1)

        hwm = self.hwm_kib
        return {
            "processes": [
                {"pid": pid, "name": self.names.get(pid, "?"), "main": pid == self.root,
                 "vmhwm_mib": mib(kib),
                 "sampled_peak_mib": mib(self.peak_kib[pid]) if pid in self.peak_kib else None}
                for pid, kib in sorted(hwm.items())
            ],
            "vmhwm_sum_mib": mib(sum(hwm.values())) if hwm else None,
            "vmhwm_max_mib": mib(max(hwm.values())) if hwm else None,
            "sampled_peak_sum_mib": mib(self.overall.sum_kib),
            "sampled_peak_max_mib": mib(self.overall.max_kib),
            "max_processes": self.overall.processes,
            "phases": {
                name: {"peak_sum_mib": mib(p.sum_kib), "peak_max_mib": mib(p.max_kib),
                       "processes": p.processes, "samples": p.samples}
                for name, p in self.phases.items()
            },
        }


class RssSampler:
    """Sample the largest VmRSS in ``pid``'s tree every 50 ms in a thread while the ``with``
    block runs (large_transfer's peak per phase)."""

    INTERVAL_S = 0.05

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> bool:
        rss = read_tree_max_kib(self.pid, "VmRSS")
        if rss is None:
            return False
        self.samples += 1
        if self.peak_kib is None or rss > self.peak_kib:
            self.peak_kib = rss
        return True

    def _run(self) -> None:
        # Bounded: ends when stopped or when the process disappears.
        while self._sample() and not self._stop.wait(self.INTERVAL_S):
            pass

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
