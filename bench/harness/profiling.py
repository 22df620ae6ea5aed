"""py-spy's view of our server during a wrk run: where each kind of thread spends its time."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

PY_SPY_RATE = 250

#: Leaf frames of a thread that waits for work: not time spent serving requests.
IDLE_LEAVES = ("Condition.wait ", "Event.wait ", "Thread.join ", "EPollReactor.doPoll ")


#: A stack through one of these is the reactor (main) thread.
REACTOR_FRAMES = ("ReactorBase.run ", "ReactorBase.mainLoop ")


_LINE_RE = re.compile(r":\d+\)$")


@dataclass
class ThreadProfile:
    """Where one kind of thread spent its samples (percentages of one core's wall time)."""

    busy_pct: float = 0.0
    idle_pct: float = 0.0
    own: list[tuple[str, float]] = field(default_factory=list)


def top_functions(raw_file: Path, seconds: float, limit: int = 10) -> dict[str, object]:
    """Summarise py-spy's raw (collapsed stacks) output.

    Per kind of thread (the reactor thread; the thread pool and any other thread) the busy and
    idle share and the lines with the most own time; over all threads the hmacfs functions
    with the most inclusive time. Percentages are of one core's wall time (samples / (rate x
    seconds)), so the reactor thread's busy share says how close it is to saturation.
    """
    wall = PY_SPY_RATE * seconds
    own: dict[str, dict[str, int]] = {"reactor": {}, "other threads": {}}
    busy = {"reactor": 0, "other threads": 0}
    idle = {"reactor": 0, "other threads": 0}
    ours_inclusive: dict[str, int] = {}
    processes: set[str] = set()
    for line in raw_file.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # With --subprocesses, py-spy roots each stack in "process PID:<command line>".
        processes.update(f.split(":", 1)[0] for f in frames if f.startswith("process "))
        kind = ("reactor" if any(f.startswith(REACTOR_FRAMES) for f in frames)
                else "other threads")
        if frames[-1].startswith(IDLE_LEAVES):
            idle[kind] += count
            continue
        busy[kind] += count
        own[kind][frames[-1]] = own[kind].get(frames[-1], 0) + count
        # Inclusive time per function (its line numbers merged), counted once per stack.
        for func in {_LINE_RE.sub(")", f) for f in frames}:
            if "hmacfs/" in func and "hmacfs/cli.py" not in func and "__main__" not in func:
                ours_inclusive[func] = ours_inclusive.get(func, 0) + count

    def pct(n: int) -> float:
        return round(100 * n / wall, 1)

    def top(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:limit]
        return [(name, pct(n)) for name, n in ranked]

    threads = {kind: asdict(ThreadProfile(pct(busy[kind]), pct(idle[kind]), top(own[kind])))
               for kind in own}
    return {"threads": threads, "hmacfs_inclusive": top(ours_inclusive),
            "processes": max(1, len(processes))}


def print_profile(name: str, prof: dict[str, object]) -> None:
    summed = prof.get("processes", 1)
    print(f"\npy-spy, ours during {prof.get('workload', name)} (% of one core's wall time"
          + (f", summed over {summed} processes" if summed != 1 else "")
          + "; idle waits left out):")
    if "error" in prof:
        print(f"  {prof['error']}")
        return
    threads = prof.get("threads")
    if isinstance(threads, dict):
        for kind, info in threads.items():
            print(f"  {kind}: busy {info['busy_pct']}%, waiting {info['idle_pct']}%; "
                  "own time:")
            for func, pct in info["own"]:
                print(f"    {pct:5.1f}%  {func}")
    inclusive = prof.get("hmacfs_inclusive")
    if isinstance(inclusive, list):
        print("  hmacfs functions, inclusive time (all threads):")
        for func, pct in inclusive:
            print(f"    {pct:5.1f}%  {func}")

