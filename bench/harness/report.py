"""compare.py's report: the results of a run, the table rows and the targets they are judged by,
the tables as text and Markdown, the JSON and Markdown files.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.common import num, size_name
from harness.files import DiskRate
from harness.sampling import BUSY_MACHINE_CORES
from harness.workloads import MEDIUM, SMALL, BigTransfer, IdleMemory, LatencyLoop
from harness.wrk import WrkRun

#: curl keeping this much of a core busy during a 1-connection transfer is at its own limit:
#: the rate is then the client's, whichever server it came from.
CLIENT_BOUND_CORES = 0.9


@dataclass
class Results:
    profile: str
    workers_requested: int | None
    ours_processes: int = 1
    nginx_workers: int = 1
    workers_note: str = ""
    big: list[BigTransfer] = field(default_factory=list)
    durable: list[BigTransfer] = field(default_factory=list)
    dd_mb_s: list[float] = field(default_factory=list)
    #: 1-connection GETs of the test file from `bare_sendfile_server`, one per round.
    bare_get_mb_s: list[float] = field(default_factory=list)
    wrk: list[WrkRun] = field(default_factory=list)
    loops: list[LatencyLoop] = field(default_factory=list)
    memory: dict[str, object] = field(default_factory=dict)
    #: The 1 GiB transfers over https, one worker each (labels "ours tls", "nginx tls").
    tls_big: list[BigTransfer] = field(default_factory=list)
    #: What a handshake with each https server settled on ("TLSv1.3 TLS_AES_256_GCM_SHA384").
    tls_negotiated: dict[str, str] = field(default_factory=dict)
    #: The filesystem's own rate of small durable files, beside ours with fsync = true.
    disk_rates: list[DiskRate] = field(default_factory=list)
    idle: list[IdleMemory] = field(default_factory=list)
    profiles: dict[str, dict[str, object]] = field(default_factory=dict)
    other_load_at_start: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """A goal for one row: ours/reference at least ``ratio``, or ours below ``below``."""

    ratio: float | None = None
    below: float | None = None

    def text(self) -> str:
        if self.ratio is not None:
            return f">= {self.ratio:g}x"
        return f"< {self.below:g}"

    def met(self, ours: float | None, ref: float | None) -> bool | None:
        if self.ratio is not None:
            return None if ours is None or not ref else ours / ref >= self.ratio
        if self.below is not None and ours is not None:
            return ours < self.below
        return None


@dataclass
class TableRow:
    workload: str
    unit: str
    ours: float | None
    ref: float | None
    ref_name: str = "nginx"
    target: Target | None = None
    note: str = ""
    #: The reference's figure is only a lower bound (wrk used up its list of fresh paths): a
    #: ratio it seems to reach is not known to be reached.
    ref_lower_bound: bool = False
    #: Both servers' figures are the client's limit (curl kept a whole core busy with either):
    #: the ratio cannot tell the servers apart, whichever side of the target it falls.
    client_bound: bool = False

    @property
    def ratio(self) -> float | None:
        return None if self.ours is None or not self.ref else self.ours / self.ref

    @property
    def met(self) -> bool | None:
        if self.client_bound:
            return None
        met = None if self.target is None else self.target.met(self.ours, self.ref)
        return None if met and self.ref_lower_bound else met

    def as_dict(self) -> dict[str, object]:
        return {"workload": self.workload, "unit": self.unit, "ours": self.ours,
                "reference": self.ref, "reference_name": self.ref_name, "ratio": self.ratio,
                "target": self.target.text() if self.target else None, "met": self.met,
                "note": self.note}


TARGET_BIG_PUT = Target(ratio=1.2)
TARGET_DURABLE = Target(ratio=0.9)
TARGET_BIG_GET = Target(ratio=1.5)
TARGET_SMALL_PUT = Target(ratio=1.0)
#: ... and on a tmpfs, where the filesystem costs next to nothing.
TARGET_SMALL_PUT_TMPFS = Target(ratio=0.5)
TARGET_MEDIUM_PUT = Target(ratio=1.0)
TARGET_SMALL_GET = Target(ratio=0.7)
TARGET_P99_DURING_UPLOAD_MS = Target(below=20.0)
TARGET_TLS_GET = Target(ratio=1.0)
TARGET_TLS_PUT = Target(ratio=1.2)


def _digits(unit: str) -> int:
    return {"req/s": 0, "files/s": 0, "MB/s": 1, "ms": 2}.get(unit, 2)


def _note_for(ours: WrkRun | None, ref: WrkRun | None) -> str:
    parts = []
    for who, r in (("ours", ours), ("nginx", ref)):
        if r is None:
            continue
        if r.error:
            parts.append(f"{who}: {r.error}")
            continue
        if r.non_2xx or r.socket_errors:
            parts.append(f"{who}: {r.non_2xx} non-2xx, {r.socket_errors} socket errors")
        if r.list_exhausted:
            parts.append(f"{who}: list used up (lower bound)")
        if r.other_load_cores is not None and r.other_load_cores > BUSY_MACHINE_CORES:
            parts.append(f"{who}: machine busy ({r.other_load_cores} cores used by others)")
    return "; ".join(parts)


def best_run(runs: Sequence[WrkRun], label: str, storage: str | None, method: str, size: int,
             conc: int) -> WrkRun | None:
    """The fastest error-free of a workload's rounds for one server (else its first round)."""
    mine = [r for r in runs if r.server == label and r.method == method and r.size == size
            and r.concurrency == conc and (storage is None or r.storage == storage)]
    good = [r for r in mine if not r.error and r.req_s is not None]
    if good:
        return max(good, key=lambda r: r.req_s or 0.0)
    return mine[0] if mine else None


def _rounds_note(runs: Sequence[WrkRun], ours: WrkRun | None, ref: WrkRun | None) -> str:
    """"rounds ours 1500/1700, nginx 1600/2100" when a workload ran more than once."""
    parts = []
    for who, best in (("ours", ours), ("nginx", ref)):
        if best is None:
            continue
        rates = [r.req_s for r in sorted(runs, key=lambda r: r.round)
                 if r.server == best.server and r.storage == best.storage
                 and r.method == best.method and r.size == best.size
                 and r.concurrency == best.concurrency]
        if len(rates) > 1:
            parts.append(f"{who} " + "/".join(num(x, 0) for x in rates))
    return "best of rounds: " + ", ".join(parts) if parts else ""


def _cpu_note(ours: WrkRun | None, ref: WrkRun | None) -> str:
    """"CPU per request ours/nginx 150/46 us" (of the best rounds)."""
    figures = [r.cpu_us_per_request if r is not None and not r.error else None
               for r in (ours, ref)]
    if all(f is None for f in figures):
        return ""
    return "CPU per request ours/nginx " + "/".join(num(f, 0) for f in figures) + " us"


def wrk_rows(runs: Sequence[WrkRun], ours_label: str, ref_label: str, *,
             with_targets: bool, tag: str = "", tmpfs: bool = False) -> list[TableRow]:
    rows = []
    keys = sorted({(r.method, r.size, r.concurrency) for r in runs},
                  key=lambda k: (k[0] != "PUT", k[1], k[2]))
    for method, size, conc in keys:
        ours = best_run(runs, ours_label, None, method, size, conc)
        ref = best_run(runs, ref_label, None, method, size, conc)
        target = None
        if with_targets:
            if method == "PUT" and size == SMALL and conc == 10:
                target = TARGET_SMALL_PUT_TMPFS if tmpfs else TARGET_SMALL_PUT
            elif method == "PUT" and size == MEDIUM and not tmpfs:
                target = TARGET_MEDIUM_PUT
            elif method == "GET" and size == SMALL:
                target = TARGET_SMALL_GET
        rows.append(TableRow(
            f"{tag}{size_name(size)} {method} c={conc}", "req/s",
            ours.req_s if ours and not ours.error else None,
            ref.req_s if ref and not ref.error else None,
            target=target,
            ref_lower_bound=bool(ref and ref.list_exhausted),
            note="; ".join(x for x in (_note_for(ours, ref), _rounds_note(runs, ours, ref),
                                       _cpu_note(ours, ref) if size == SMALL else "") if x),
        ))
    return rows


def format_table(rows: Sequence[TableRow], markdown: bool = False) -> str:
    head = ["workload", "unit", "ours", "nginx / ref", "ours/ref", "target", "met"]
    body = []
    for r in rows:
        digits = _digits(r.unit)
        ref = num(r.ref, digits) + (f" ({r.ref_name})" if r.ref_name != "nginx" else "")
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        body.append([r.workload, r.unit, num(r.ours, digits), ref, num(r.ratio, 2),
                     r.target.text() if r.target else "", met if r.target else ""])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in (0, 1, 5) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(c) for c in body)])


#: How the latency table names the runs of each storage kind ("durable": ours with fsync).
_STORAGE_TAGS = {"disk": "", "tls": "TLS "}


def latency_table(runs: Sequence[WrkRun], ours_label: str, ref_label: str,
                  markdown: bool = False) -> str:
    head = ["workload", "ours p50", "nginx p50", "ours p99", "nginx p99", "ours max",
            "nginx max", "errors ours/nginx"]
    body = []
    keys = sorted({(r.storage, r.method, r.size, r.concurrency) for r in runs},
                  key=lambda k: (k[0], k[1] != "PUT", k[2], k[3]))
    for storage, method, size, conc in keys:
        def pick(label: str, storage: str = storage, method: str = method, size: int = size,
                 conc: int = conc) -> WrkRun | None:
            server = next((r.server for r in runs if r.server.startswith(label)
                           and r.storage == storage), label)
            return best_run(runs, server, storage, method, size, conc)

        o, n = pick(ours_label), pick(ref_label)

        def err(r: WrkRun | None) -> str:
            if r is None:
                return "-"
            return "ERR" if r.error else str(r.non_2xx + r.socket_errors)

        body.append([
            f"{_STORAGE_TAGS.get(storage, storage + ' ')}{size_name(size)} {method} c={conc}",
            num(o.p50_ms if o else None, 2), num(n.p50_ms if n else None, 2),
            num(o.p99_ms if o else None, 2), num(n.p99_ms if n else None, 2),
            num(o.max_ms if o else None, 1), num(n.max_ms if n else None, 1),
            f"{err(o)}/{err(n)}",
        ])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h)
              for i, h in enumerate(head)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
        for cells in [head, ["-" * w for w in widths], *body]
    )


def _busy(transfers: Sequence[BigTransfer], phase: str) -> list[str]:
    """Notes for the rounds during which other processes were busy (``phase`` "put"/"get")."""
    return [f"{t.server} round {t.round}: machine busy ({load} cores used by others)"
            for t in transfers for load in (getattr(t, f"{phase}_other_load_cores"),)
            if load is not None and load > BUSY_MACHINE_CORES]


def _client_limit(transfers: Sequence[BigTransfer], labels: Sequence[str], phase: str
                  ) -> tuple[bool, str]:
    """Whether curl was at its own limit in the best round of each of `labels` (``phase``
    "put"/"get"), and a note that says so (empty when it was not, for either)."""
    cores = []
    for label in labels:
        mine = [t for t in transfers if t.server == label and not t.errors
                and getattr(t, f"{phase}_mb_s") is not None]
        if not mine:
            return False, ""
        best = max(mine, key=lambda t: getattr(t, f"{phase}_mb_s"))
        cores.append(getattr(best, f"{phase}_client_cores"))
    if any(c is None for c in cores) or not all(c >= CLIENT_BOUND_CORES for c in cores):
        return False, ""
    used = "/".join(num(c, 2) for c in cores)
    return True, (f"client-bound: curl kept {used} of a core busy ({'/'.join(labels)}); "
                  "the server's CPU per GB tells them apart")


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _median_of(transfers: Sequence[BigTransfer], label: str, key: str) -> float | None:
    """The median of one figure over the error-free rounds of one server."""
    known = [getattr(t, key) for t in transfers if t.server == label and not t.errors]
    values = [v for v in known if v is not None]
    return statistics.median(values) if values else None


def best_of(transfers: Sequence[BigTransfer], label: str
            ) -> tuple[float | None, float | None, list[str]]:
    """Best PUT and GET MB/s over the rounds of one server, and every error seen."""
    mine = [t for t in transfers if t.server == label]
    puts = [t.put_mb_s for t in mine if t.put_mb_s is not None and not t.errors]
    gets = [t.get_mb_s for t in mine if t.get_mb_s is not None and not t.errors]
    errors = [f"{label} round {t.round}: {e}" for t in mine for e in t.errors]
    return (max(puts) if puts else None, max(gets) if gets else None, errors)


def build_rows(res: Results) -> list[TableRow]:
    rows: list[TableRow] = []
    size = size_name(res.big[0].size) if res.big else "1 GiB"
    o_put, o_get, o_err = best_of(res.big, "ours")
    n_put, n_get, n_err = best_of(res.big, "nginx")
    if res.big:
        put_bound, put_note = _client_limit(res.big, ("ours", "nginx"), "put")
        rows.append(TableRow(f"{size} PUT (1 conn)", "MB/s", o_put, n_put,
                             target=TARGET_BIG_PUT, client_bound=put_bound,
                             note=_join(*o_err, *n_err, put_note, *_busy(res.big, "put"))))
        get_bound, get_note = _client_limit(res.big, ("ours", "nginx"), "get")
        rows.append(TableRow(f"{size} GET (1 conn)", "MB/s", o_get, n_get,
                             target=TARGET_BIG_GET, client_bound=get_bound,
                             note=_join(get_note, *_busy(res.big, "get"))))
    if res.big and res.bare_get_mb_s:
        rows.append(TableRow(f"{size} GET beside a bare sendfile loop", "MB/s", o_get,
                             max(res.bare_get_mb_s), ref_name="sendfile loop",
                             note=f"nginx {num(n_get, 1)} MB/s is "
                                  f"{num(n_get / max(res.bare_get_mb_s) if n_get else None, 2)}"
                                  " of the loop"))
    if res.durable and res.dd_mb_s:
        d_put, _, d_err = best_of(res.durable, "ours durable")
        rows.append(TableRow(f"{size} PUT durable (fsync)", "MB/s", d_put, max(res.dd_mb_s),
                             ref_name="dd", target=TARGET_DURABLE, note="; ".join(d_err)))
    disk = [r for r in res.wrk if r.storage == "disk"]
    rows += wrk_rows(disk, "ours", "nginx", with_targets=True)
    for what in ("idle", "during"):
        o = next((x for x in res.loops if x.server == "ours" and x.what.startswith(what)), None)
        n = next((x for x in res.loops if x.server == "nginx" and x.what.startswith(what)), None)
        label = "4 KiB GET c=1, idle" if what == "idle" else (
            f"4 KiB GET c=1 {o.what}" if o else f"4 KiB GET c=1 during {size} PUT")
        for pct in ("p50", "p99"):
            ours_v = getattr(o, f"{pct}_ms") if o else None
            ref_v = getattr(n, f"{pct}_ms") if n else None
            target = TARGET_P99_DURING_UPLOAD_MS if (what, pct) == ("during", "p99") else None
            note = ""
            if what == "during" and o and n:
                note = f"n={o.requests}/{n.requests}, max {num(o.max_ms, 1)}/" \
                       f"{num(n.max_ms, 1)} ms" + "".join(
                           f"; {x.server}: {x.error}" for x in (o, n) if x.error) + "".join(
                           f"; {x.server}: machine busy ({x.other_load_cores} cores used by "
                           "others)" for x in (o, n)
                           if (x.other_load_cores or 0) > BUSY_MACHINE_CORES)
            rows.append(TableRow(f"{label} {pct}", "ms", ours_v, ref_v, target=target,
                                 note=note if pct == "p99" else ""))
    tmpfs = [r for r in res.wrk if r.storage == "tmpfs"]
    if tmpfs:
        rows += wrk_rows(tmpfs, "ours tmpfs", "nginx tmpfs", with_targets=True, tag="tmpfs ",
                         tmpfs=True)
    rows += tls_rows(res)
    rows += durable_small_rows(res)
    rows += idle_rows(res)
    return rows


def tls_rows(res: Results) -> list[TableRow]:
    """The https rows: 1 GiB PUT and GET on one connection and 4 KiB GETs (wrk), one worker
    each."""
    rows: list[TableRow] = []
    if res.tls_big:
        size = size_name(res.tls_big[0].size)
        o_put, o_get, o_err = best_of(res.tls_big, "ours tls")
        n_put, n_get, n_err = best_of(res.tls_big, "nginx tls")
        shake = "; ".join(f"{label}: {what}" for label, what in res.tls_negotiated.items())
        labels = ("ours tls", "nginx tls")
        put_bound, put_note = _client_limit(res.tls_big, labels, "put")
        get_bound, get_note = _client_limit(res.tls_big, labels, "get")
        rows.append(TableRow(f"TLS {size} PUT (1 conn, 1 worker)", "MB/s", o_put, n_put,
                             target=TARGET_TLS_PUT, client_bound=put_bound,
                             note=_join(*o_err, *n_err, put_note, *_busy(res.tls_big, "put"))))
        rows.append(TableRow(f"TLS {size} GET (1 conn, 1 worker)", "MB/s", o_get, n_get,
                             target=TARGET_TLS_GET, client_bound=get_bound,
                             note=_join(shake, get_note, *_busy(res.tls_big, "get"))))
        for phase in ("put", "get"):
            # What each server spent per GB (median of the rounds): lower is better, and it
            # still tells the servers apart when curl's rate is the limit of both.
            rows.append(TableRow(
                f"TLS {size} {phase.upper()} server CPU", "s/GB",
                _median_of(res.tls_big, "ours tls", f"{phase}_cpu_s_per_gb"),
                _median_of(res.tls_big, "nginx tls", f"{phase}_cpu_s_per_gb")))
    tls = [r for r in res.wrk if r.storage == "tls"]
    if tls:
        rows += wrk_rows(tls, "ours tls", "nginx tls", with_targets=False, tag="TLS ")
    return rows


def durable_small_rows(res: Results) -> list[TableRow]:
    """Ours with fsync = true, 4 KiB PUTs at c=10, beside the filesystem's own rate of such
    files with as many threads and with one (best round of each)."""
    runs = [r for r in res.wrk if r.storage == "durable"]
    if not runs:
        return []
    ours = best_run(runs, runs[0].server, "durable", "PUT", SMALL, runs[0].concurrency)
    conc = runs[0].concurrency
    rows = []
    for threads in dict.fromkeys((conc, 1)):
        mine = [d for d in res.disk_rates if d.threads == threads]
        rates = [d.files_per_s for d in mine if d.files_per_s is not None]
        notes = [_note_for(ours, None), _rounds_note(runs, ours, None)]
        notes += [f"disk loop: {e}" for d in mine for e in d.errors]
        notes += ["disk loop: file limit reached (lower bound)" for d in mine if d.hit_limit]
        notes += [f"disk loop round {d.round}: machine busy ({d.other_load_cores} cores used "
                  "by others)" for d in mine
                  if d.other_load_cores is not None and d.other_load_cores > BUSY_MACHINE_CORES]
        if len(rates) > 1:
            notes.append("disk loop rounds " + "/".join(num(x, 0) for x in rates))
        rows.append(TableRow(
            f"{size_name(SMALL)} PUT durable c={conc} vs disk loop x{threads}", "files/s",
            ours.req_s if ours and not ours.error else None, max(rates) if rates else None,
            ref_name=f"disk x{threads}", note="; ".join(n for n in notes if n)))
    return rows


def idle_rows(res: Results) -> list[TableRow]:
    """Memory per idle keep-alive connection (KiB, lower is better), ours / nginx."""
    ours = next((x for x in res.idle if x.server == "ours"), None)
    ref = next((x for x in res.idle if x.server == "nginx"), None)
    measured = [x for x in (ours, ref) if x is not None]
    if not measured:
        return []
    notes = []
    for x in measured:
        role = "supervisor" if x.server == "ours" else "master"
        main = next((p for p in x.per_process if p.get("main")), {})
        before, after = main.get("before_kib"), main.get("after_kib")
        grew = (f", {role} {after - before:+d} KiB"
                if isinstance(before, int) and isinstance(after, int) else "")
        notes.append(f"{x.server}: {x.opened} held, RSS {num(_mib(x.rss_before_kib), 1)} -> "
                     f"{num(_mib(x.rss_after_kib), 1)} MiB{grew}"
                     + "".join(f"; {e}" for e in x.errors))
    return [TableRow(f"memory per idle connection ({measured[0].connections} held)", "KiB",
                     ours.kib_per_connection if ours and not ours.errors else None,
                     ref.kib_per_connection if ref and not ref.errors else None,
                     note="; ".join(notes))]


def _mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def resource_lines(res: Results) -> list[str]:
    lines = []
    for label, rep in res.memory.items():
        if not isinstance(rep, dict):
            continue
        procs = rep.get("processes")
        nprocs = len(procs) if isinstance(procs, list) else 0
        lines.append(
            f"{label:<14} processes {nprocs}  peak RSS (sampled) sum "
            f"{rep.get('sampled_peak_sum_mib')} MiB, largest {rep.get('sampled_peak_max_mib')}"
            f" MiB; VmHWM sum {rep.get('vmhwm_sum_mib')} MiB, largest "
            f"{rep.get('vmhwm_max_mib')} MiB"
        )
        if isinstance(procs, list) and nprocs > 1:
            lines.append(f"{label:<14} {_main_and_workers(rep.get('kind'), procs)}")
    transfers = [*res.big, *res.durable, *res.tls_big]
    for label in dict.fromkeys(t.server for t in transfers):
        rounds = sum(1 for t in transfers if t.server == label and not t.errors)
        put = _median_of(transfers, label, "put_cpu_s_per_gb")
        get = _median_of(transfers, label, "get_cpu_s_per_gb")
        lines.append(f"{label:<14} CPU s/GB ({size_name(transfers[0].size)}, median of "
                     f"{rounds}): PUT {num(put, 2)}, GET {num(get, 2)}")
    return lines



def _main_and_workers(kind: object, procs: Sequence[object]) -> str:
    """"supervisor pid 10: peak RSS 40.1 MiB (VmHWM 40.3); 2 workers: pid 11 41.0 (41.2), ...":
    the process started (our supervisor, nginx's master: the group leader) apart from the
    processes it started."""
    main_name, others = ("supervisor", "workers") if kind == "ours" else ("master", "workers")
    main = [p for p in procs if isinstance(p, dict) and p.get("main")]
    rest = [p for p in procs if isinstance(p, dict) and not p.get("main")]

    def figures(p: dict[str, object]) -> str:
        return f"pid {p.get('pid')} {p.get('sampled_peak_mib')} MiB (VmHWM {p.get('vmhwm_mib')})"

    text = (f"{main_name} {figures(main[0])}" if main else f"{main_name} -")
    return (f"{text}; {len(rest)} {others if len(rest) != 1 else others[:-1]}: "
            + ", ".join(figures(p) for p in rest)
            + " - peak RSS sampled every 100 ms")


def text_table(
    columns: Sequence[tuple[str, str]],
    rows: Sequence[dict[str, object]],
    cell: Callable[[str, object], str],
    left: int,
) -> str:
    """A plain-text table of `rows` under `columns` (title, key): each value shown by
    `cell(key, value)`, the first `left` columns aligned left, the others right."""
    cells = [[cell(key, r.get(key)) for _, key in columns] for r in rows]
    widths = [
        max([len(title)] + [len(c[i]) for c in cells]) for i, (title, _) in enumerate(columns)
    ]

    def line(values: Sequence[str]) -> str:
        pairs = enumerate(zip(values, widths, strict=True))
        return "  ".join(v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in pairs).rstrip()

    out = [line([t for t, _ in columns]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)


def write_json(output: Path, report: dict[str, object]) -> None:
    """Write ``report`` to ``output`` as indented JSON (its directory made if need be)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def write_report(output: Path, report: dict[str, object], res: Results,
                 rows: Sequence[TableRow]) -> Path:
    """Write ``report`` as JSON to ``output`` and the tables as Markdown beside it (``.md``);
    return the Markdown file's path."""
    notes = [r for r in rows if r.note]
    write_json(output, report)
    md = output.with_suffix(".md")
    md.write_text(
        f"# hmacfs beside nginx ({res.profile} run, {report['timestamp']})\n\n"
        f"{res.workers_note}. Ratio = ours / nginx (dd for the durable PUT); latency in ms.\n\n"
        + format_table(rows, markdown=True) + "\n\n"
        + "".join(f"- {r.workload}: {r.note}\n" for r in notes) + ("\n" if notes else "")
        + (latency_table(res.wrk, "ours", "nginx", markdown=True) + "\n\n" if res.wrk else "")
        + "".join(f"- {line}\n" for line in resource_lines(res)),
        encoding="utf-8",
    )
    return md
