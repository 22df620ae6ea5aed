"""Binding listeners when systemd passed sockets: a configured address systemd already bound
(a .socket unit's ListenStream=) is adopted, not bound a second time."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hmacfs.core.listen import parse_listen
from hmacfs.process.listeners import bind
from hmacfs.process.systemd import ActivatedSockets


@pytest.fixture
def passed() -> Iterator[socket.socket]:
    """A listening socket as systemd passes it (bound before the service starts)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    with sock:
        yield sock


def activated(*socks: socket.socket) -> ActivatedSockets:
    fds = [s.fileno() for s in socks]
    return ActivatedSockets(fds=fds, names={"http": fds[0]} if fds else {})


def test_a_configured_address_that_systemd_bound_is_adopted(passed: socket.socket) -> None:
    port = passed.getsockname()[1]
    sock = bind(parse_listen(f"127.0.0.1:{port}"), activated(passed))
    with sock:
        assert sock.fileno() != passed.fileno()
        assert sock.getsockname() == passed.getsockname()
        # The same listening socket: a connection queued on systemd's is accepted on ours.
        client = socket.create_connection(("127.0.0.1", port))
        with client:
            sock.setblocking(True)
            accepted, _ = sock.accept()
            accepted.close()


def test_a_host_name_is_compared_by_its_address(passed: socket.socket) -> None:
    port = passed.getsockname()[1]
    with bind(parse_listen(f"localhost:{port}"), activated(passed)) as sock:
        assert sock.getsockname() == passed.getsockname()


def test_a_unix_socket_that_systemd_bound_is_adopted(tmp_path: Path) -> None:
    path = str(tmp_path / "upload.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(path)
        unix.listen(8)
        with bind(parse_listen(f"unix:{path}"), activated(unix)) as sock:
            assert sock.getsockname() == path
        assert os.path.exists(path)  # never unlinked as if it were stale


def test_another_address_in_use_names_the_passed_sockets(passed: socket.socket) -> None:
    port = passed.getsockname()[1]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        with pytest.raises(OSError) as error:
            bind(parse_listen(f"127.0.0.1:{busy}"), activated(passed))
    assert str(error.value) == (
        f"[Errno 98] 127.0.0.1:{busy}: Address already in use (systemd passed sockets on "
        f'127.0.0.1:{port}: name one with "systemd:NAME", or give the same address as its '
        "ListenStream=)"
    )


def test_without_passed_sockets_an_address_is_bound() -> None:
    with bind(parse_listen("127.0.0.1:0"), ActivatedSockets()) as sock:
        assert sock.getsockname()[0] == "127.0.0.1"
