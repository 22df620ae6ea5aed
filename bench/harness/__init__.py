"""What the benchmark drivers (bench/compare.py, bench/large_transfer.py) share.

- `common`: units, loopback constants, the error that ends a run, child environments;
- `files`: the test file, free space, ``dd conv=fdatasync``, a tmpfs, the disk loop;
- `sampling`: process trees, their memory (VmRSS, VmHWM) and CPU time, other load;
- `servers`: our server (started as the tests start it, tests.helpers.server) and nginx,
  plain or https;
- `tls`: the certificate both https servers share, the TLS settings nginx is given;
- `idle`: many idle keep-alive connections, and a server's memory before and after;
- `curl`, `wrk`: the clients, one transfer or a load run;
- `workloads`: compare.py's workloads, built from the above;
- `report`: tables, the targets they are judged by, JSON;
- `profiling`: py-spy's view of our server.

Our server is started by the tests' own helper; the drivers run as scripts from bench/, so the
repository root is put on the import path here, before anything imports from tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BENCH_DIR.parent

if str(REPO_ROOT) not in sys.path:
    # After the script's own directory (bench/), before site-packages (which may hold some
    # other distribution's top-level `tests`).
    sys.path.insert(1, str(REPO_ROOT))
