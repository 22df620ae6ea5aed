"""curl as the benchmarks run it: one transfer, its status, time and size, bounded in time."""

from __future__ import annotations

import hashlib
import resource
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from harness.common import CURL, MIB, clean_env, transfer_timeout


@dataclass
class CurlResult:
    status: int
    seconds: float
    speed_b_s: float
    bytes: int
    error: str | None = None
    #: CPU seconds curl itself used (user and system): near `seconds`, it used a whole core,
    #: and the rate is curl's own limit rather than the server's.
    client_cpu_s: float | None = None

    @property
    def client_cores(self) -> float | None:
        """The cores curl kept busy over the transfer."""
        if self.client_cpu_s is None or self.seconds <= 0:
            return None
        return round(self.client_cpu_s / self.seconds, 2)

    def problems(self, what: str, size: int, statuses: Collection[int]) -> list[str]:
        """What went wrong with this transfer of `size` bytes (`what`: "PUT" or "GET"), as
        lines for a result's errors; none when the status is one of `statuses` and every
        byte went through."""
        out = [f"{what}: {self.error}"] if self.error else []
        if self.status not in statuses:
            expected = " or ".join(str(s) for s in sorted(statuses))
            out.append(f"{what}: status {self.status}, expected {expected}")
        elif self.bytes != size:
            moved = "curl sent" if what == "PUT" else "received"
            out.append(f"{what}: {moved} {self.bytes} bytes, expected {size}")
        return out


def run_curl(args: Sequence[str], size: int, upload: bool) -> CurlResult:
    """One curl run of ``size`` bytes (up or down), the body to /dev/null; never raises.

    curl's CPU is what this process's reaped children used meanwhile: nothing else of the
    benchmark starts or reaps a child while curl runs."""
    var = "upload" if upload else "download"
    cmd = [
        CURL, "-q", "-sS", "-g", "--noproxy", "*",
        "--max-time", f"{transfer_timeout(size):.0f}",
        "-o", "/dev/null",
        "-w", f"%{{http_code}} %{{time_total}} %{{speed_{var}}} %{{size_{var}}}",
        *args,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=clean_env(),
            timeout=transfer_timeout(size) + 30, check=False,
        )
    except subprocess.TimeoutExpired:
        return CurlResult(0, 0.0, 0.0, 0, "curl timed out")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        code, total, speed, nbytes = proc.stdout.split()
        result = CurlResult(int(code), float(total), float(speed), int(float(nbytes)),
                            client_cpu_s=cpu)
    except ValueError:
        return CurlResult(0, 0.0, 0.0, 0, f"unparsable curl output {proc.stdout!r}")
    if proc.returncode != 0:
        result.error = f"curl exit {proc.returncode}: {proc.stderr.strip()}"
    return result


def sha256_of_download(url: str, size: int) -> str:
    """Untimed content check: stream the body through sha256 without storing it."""
    digest = hashlib.sha256()
    cmd = [CURL, "-q", "-sS", "-g", "--noproxy", "*", "--fail",
           "--max-time", f"{transfer_timeout(size):.0f}", url]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, env=clean_env()) as proc:
        out = proc.stdout
        assert out is not None
        while chunk := out.read(MIB):  # ends at EOF; curl is bounded by --max-time
            digest.update(chunk)
        proc.wait(timeout=transfer_timeout(size))
        if proc.returncode != 0:
            return f"curl exit {proc.returncode}"
    return digest.hexdigest()
