"""Workers never import modules from the directory the server was started in.

`python -m` puts the working directory first on sys.path, so a worker started that way in the
inherited working directory would import an `http.py` there instead of the standard library's.
The supervisor here runs with `-P` too (through a wrapper), so that only the workers are tested.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_service_e2e import put_url, upload
from tests.helpers.server import start_server, stop_server, workers_of

SHADOW = """\
from pathlib import Path
Path(__file__).with_name("imported").write_text("imported")
raise SystemExit("the http.py of the working directory was imported")
"""


@pytest.mark.workers
def test_workers_do_not_import_from_the_working_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "http.py").write_text(SHADOW, encoding="utf-8")
    marker = cwd / "imported"
    wrapper = tmp_path / "python-P"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -P "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)

    server = start_server(tmp_path, workers=2, cwd=cwd, python=str(wrapper))
    workers_of(server, 2)
    for n in range(6):  # more uploads than workers: likely to reach both
        rel = f"{uuid.uuid4()}/{n}.txt"
        assert upload(put_url(server.base, rel, 2), b"ok") == 201
        assert (server.storage / rel).read_bytes() == b"ok"
    assert stop_server(server) == 0
    assert not marker.exists(), "a worker imported the working directory's http.py"
    assert not any("working directory" in line for line in server.log), server.log_tail()
