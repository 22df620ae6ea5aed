"""Small files held open by the workers of a real server (`hmacfs.storage.held`): a file
removed or replaced behind the server's back is never answered from a held descriptor, and
the descriptor of a removed one is let go by the workers' own timer, without any request."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hmacfs.storage.held import HELD_SETTLED, RELEASE_INTERVAL
from tests.e2e.test_http_e2e import get, put
from tests.helpers.files import descriptors_on
from tests.helpers.server import Server, children, start_server, stop_server
from tests.helpers.signing import mac_v1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("held"), workers=2, track=False)
    yield running
    assert stop_server(running) == 0


def holders(server: Server, path: Path) -> int:
    """How many descriptors the server's processes hold on `path` (removed or not)."""
    return descriptors_on(path, (server.process.pid, *children(server.process.pid)))


def stored_and_held(server: Server, tmp_path: Path, rel: str, body: bytes) -> Path:
    """Upload `body` to `rel`, then GET it until a worker holds it open (once it has been
    unchanged for HELD_SETTLED seconds)."""
    source = tmp_path / "body"
    source.write_bytes(body)
    assert put(server.url(rel) + f"?v={mac_v1(rel, len(body))}", source) == 201
    path = server.storage / rel
    deadline = time.monotonic() + HELD_SETTLED + 15
    while holders(server, path) == 0:
        assert time.monotonic() < deadline, "no worker held the file open"
        status, _, got = get(server.url(rel))
        assert (status, got) == (200, body)
    return path


def test_a_removed_file_is_let_go_by_the_timer_and_not_found(
    server: Server, tmp_path: Path
) -> None:
    path = stored_and_held(server, tmp_path, "held-removed/f.txt", b"removed behind its back")
    os.unlink(path)  # (as an admin, worker 0's sweeper or another node does)
    deadline = time.monotonic() + 2 * RELEASE_INTERVAL + 10
    while holders(server, path):
        assert time.monotonic() < deadline, "the removed file is still held open"
        time.sleep(0.2)
    for _ in range(6):
        assert get(server.url("held-removed/f.txt"))[0] == 404


def test_a_replaced_file_is_answered_with_its_new_body(server: Server, tmp_path: Path) -> None:
    path = stored_and_held(server, tmp_path, "held-replaced/f.txt", b"the first body")
    other = path.with_name("next")
    other.write_bytes(b"the second body, longer")
    os.replace(other, path)
    for _ in range(6):
        status, headers, body = get(server.url("held-replaced/f.txt"))
        assert (status, body) == (200, b"the second body, longer")
        assert headers["content-length"] == str(len(body))
