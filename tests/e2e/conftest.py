"""Fixtures for the end-to-end tests: the real server as a child process on port 0.

The server itself (`start_server`, `Server`, ...) lives in tests.helpers.server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.server import Server, start_server, stop_server, stop_started


@pytest.fixture(autouse=True)
def _no_server_left_behind() -> Iterator[None]:
    """Stop (gracefully, then not) any server a test started and did not stop itself."""
    yield
    stop_started()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server (one process) for a whole module; stopped, and its exit checked, at the end."""
    srv = start_server(tmp_path_factory.mktemp("server"), track=False)
    yield srv
    assert stop_server(srv) == 0
