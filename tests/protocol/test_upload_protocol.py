"""The HTTP layer driven byte by byte through a StringTransport, on a fake clock.

These pin down what happens on the wire before and during a body: a refusal goes out before
any body byte is stored and without "100 Continue", bodies arrive in arbitrary pieces, a
disconnect leaves nothing behind, and never more than Content-Length bytes are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from hmacfs.core.settings import Config
from hmacfs.http.channel import UploadChannel
from hmacfs.http.fast import FastPaths
from hmacfs.http.site import UploadSite
from hmacfs.storage.local import LocalStorage
from tests.helpers.config import make_config
from tests.helpers.files import partial_files, visible_files
from tests.helpers.signing import mac_v1, mac_v2


class Harness:
    """One site on a fake clock; `connect()` gives a channel wired to a StringTransport."""

    def __init__(self, config: Config, *, fsync: bool = False, fast: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.config = config
        self.storage = LocalStorage(
            config.server.storage_dir, fsync=fsync, clock=self.clock.seconds
        )
        #: The blocking calls handed to the thread pool, by name.
        self.on_thread: list[str] = []

        def run_blocking(f: Any, *args: Any) -> defer.Deferred[Any]:
            self.on_thread.append(f.__name__)
            return defer.maybeDeferred(f, *args)

        self.site = UploadSite(
            config,
            self.storage,
            self.clock,
            run_blocking=run_blocking,
            fast=FastPaths(fast),
            wall=self.clock.seconds,
        )

    def connect(self) -> tuple[UploadChannel, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def harness(storage_dir: Path, request: pytest.FixtureRequest) -> Harness:
    """A site with the fast paths on, and one with them off: both answer the same."""
    return Harness(make_config(storage_dir, max_upload_size=1000), fast=request.param)


def put_head(path: str, size: int, query: str, *extra: str) -> bytes:
    lines = [f"PUT /upload/{path}?{query} HTTP/1.1", "Host: up.example", f"Content-Length: {size}"]
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def pump(channel: UploadChannel, transport: StringTransport) -> bytes:
    """Play the reactor's part for a pull producer (a static file): ask it for more.

    Twisted wraps a pull producer for the channel in a push adapter driven by the global
    cooperator, which does not run in these tests.
    """
    for _ in range(10_000):
        adapter = channel._requestProducer
        if adapter is None:
            break
        adapter._producer.resumeProducing()
    return transport.value()


def status_of(response: bytes) -> int:
    final = [line for line in response.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    return int(final[-1].split()[1])


def test_upload_fed_one_byte_at_a_time(harness: Harness) -> None:
    body = b"the quick brown fox\x00\xff"
    path = "a1b2/fox.bin"
    channel, transport = harness.connect()
    for byte in put_head(path, len(body), f"v={mac_v1(path, len(body))}") + body:
        channel.dataReceived(bytes([byte]))
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / "a1b2" / "fox.bin").read_bytes() == body
    assert partial_files(harness.storage) == []


def test_refusal_goes_out_before_the_body_and_without_100_continue(harness: Harness) -> None:
    path = "a1b2/x.bin"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 10, "v=" + "0" * 64, "Expect: 100-continue"))
    response = transport.value()
    assert status_of(response) == 403
    assert b"100 Continue" not in response
    assert b"Connection: close" in response
    # Whatever the client still sends is dropped, never stored.
    channel.dataReceived(b"0123456789")
    assert visible_files(harness.storage.root) == []
    assert partial_files(harness.storage) == []
    assert transport.disconnecting


def test_accepted_upload_gets_100_continue_then_201(harness: Harness) -> None:
    path = "a1b2/ok.txt"
    body = b"hello"
    channel, transport = harness.connect()
    head = put_head(path, 5, f"v2={mac_v2(path, 5, 'text/plain')}", "Content-Type: text/plain",
                    "Expect: 100-continue")
    channel.dataReceived(head)
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    # The partial file exists while the body is on its way; nothing is visible yet.
    assert len(partial_files(harness.storage)) == 1
    assert visible_files(harness.storage.root) == []
    channel.dataReceived(body)
    assert status_of(transport.value()) == 201
    assert visible_files(harness.storage.root) == ["a1b2/ok.txt"]


def test_missing_content_length_is_411_before_the_body(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(
        b"PUT /upload/a/b.txt?v=00 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert status_of(transport.value()) == 411
    channel.dataReceived(b"5\r\nhello\r\n0\r\n\r\n")
    assert visible_files(harness.storage.root) == []


def test_put_without_any_length_is_411(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(b"PUT /upload/a/b.txt?v=00 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(transport.value()) == 411


def test_size_limit_is_413_from_the_headers(harness: Harness) -> None:
    path = "a1b2/big.bin"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 1001, f"v={mac_v1(path, 1001)}"))
    assert status_of(transport.value()) == 413
    assert partial_files(harness.storage) == []


def test_length_other_than_signed_is_403(harness: Harness) -> None:
    path = "a1b2/c.bin"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 11, f"v={mac_v1(path, 10)}"))
    assert status_of(transport.value()) == 403


def test_never_more_than_content_length_is_written(harness: Harness) -> None:
    path = "a1b2/exact.bin"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 4, f"v={mac_v1(path, 4)}") + b"abcdEXTRA-BYTES")
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / "a1b2" / "exact.bin").read_bytes() == b"abcd"


def test_disconnect_mid_body_leaves_nothing_and_the_slot_still_works(harness: Harness) -> None:
    path = "a1b2/phone.jpg"
    body = b"x" * 100
    query = f"v={mac_v1(path, 100)}"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 100, query) + body[:60])
    assert len(partial_files(harness.storage)) == 1
    channel.connectionLost(Failure(ConnectionLost("network switch")))
    assert partial_files(harness.storage) == []
    assert visible_files(harness.storage.root) == []
    assert harness.site.uploads == set()
    # The client retries the same URL.
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 100, query) + body)
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / "a1b2" / "phone.jpg").read_bytes() == body


def test_existing_file_is_409_before_the_body_and_untouched(harness: Harness) -> None:
    path = "a1b2/taken.txt"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 3, f"v={mac_v1(path, 3)}") + b"one")
    assert status_of(transport.value()) == 201
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 5, f"v={mac_v1(path, 5)}"))
    assert status_of(transport.value()) == 409
    assert (harness.storage.root / "a1b2" / "taken.txt").read_bytes() == b"one"


def test_same_size_different_body_is_409_identical_body_is_201(harness: Harness) -> None:
    path = "a1b2/retry.txt"
    query = f"v={mac_v1(path, 3)}"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 3, query) + b"one")
    assert status_of(transport.value()) == 201
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 3, query) + b"two")
    assert status_of(transport.value()) == 409
    # A client that lost our 201 and sends the same bytes again succeeds.
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 3, query) + b"one")
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / "a1b2" / "retry.txt").read_bytes() == b"one"
    assert partial_files(harness.storage) == []


def test_other_methods_are_405_before_their_body(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(b"POST /upload/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n")
    response = transport.value()
    assert status_of(response) == 405
    assert b"Allow: OPTIONS, HEAD, GET, PUT" in response


def test_get_with_a_large_body_is_413(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(b"GET /upload/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    assert status_of(transport.value()) == 413


@pytest.mark.parametrize(
    "target",
    [
        "/upload/../etc/passwd",
        "/upload/a/%2e%2e/%2e%2e/etc/passwd",
        "/upload/a%2Fb/c",
        "/upload/a/b%00c",
        "/upload/.hmacfs/partial/x",
        "/upload/a//b",
        "/upload/" + "a" * 300 + "/b",
    ],
)
def test_hostile_put_paths_are_refused_from_the_headers(harness: Harness, target: str) -> None:
    channel, transport = harness.connect()
    head = f"PUT {target}?v=00 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"
    channel.dataReceived(head.encode())
    assert 400 <= status_of(transport.value()) < 500
    assert partial_files(harness.storage) == []


def test_put_outside_the_prefix_is_404(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(
        b"PUT /elsewhere/a/b?v=00 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"
    )
    assert status_of(transport.value()) == 404


def test_refusal_carries_cors_headers_for_browsers(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(put_head("a/b.txt", 1, "v=00", "Origin: https://web.example"))
    response = transport.value()
    assert status_of(response) == 403
    assert b"Access-Control-Allow-Origin: *" in response


def test_pipelined_get_after_upload(harness: Harness) -> None:
    path = "a1b2/pipe.txt"
    channel, transport = harness.connect()
    data = put_head(path, 2, f"v={mac_v1(path, 2)}") + b"hi"
    data += f"GET /upload/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    channel.dataReceived(data)
    response = pump(channel, transport)
    assert response.count(b"HTTP/1.1 ") == 2
    assert response.endswith(b"hi")


def test_jwt_expires_claim_becomes_the_file_expiry(harness: Harness) -> None:
    from hmacfs.core import auth

    rel = "slot-1/note.txt"
    now = harness.clock.seconds()
    signed = auth.sign(
        "jwt", rel, 4, "text/plain", harness.config.hmac.secrets[0], now=now, file_expiry=now + 60
    )
    channel, transport = harness.connect()
    head = put_head(rel, 4, "", f"Authorization: {signed.headers['Authorization']}")
    channel.dataReceived(head + b"note")
    assert status_of(transport.value()) == 201
    channel, transport = harness.connect()
    channel.dataReceived(f"GET /upload/{rel} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(pump(channel, transport)) == 200
    harness.clock.advance(61)
    channel, transport = harness.connect()
    channel.dataReceived(f"GET /upload/{rel} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(transport.value()) == 410
    assert harness.storage.sweep().expired == 1
    assert visible_files(harness.storage.root) == []


def test_disk_full_mid_body_is_507_and_leaves_nothing(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    path = "a1b2/full.bin"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 10, f"v={mac_v1(path, 10)}") + b"12345")

    def no_space(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("hmacfs.storage.local.os.write", no_space)
    channel.dataReceived(b"67890")
    response = transport.value()
    assert status_of(response) == 507
    assert b"No space left on device" in response
    assert partial_files(harness.storage) == []
    assert visible_files(harness.storage.root) == []
    assert harness.site.uploads == set()


def header_of(response: bytes, name: bytes) -> bytes | None:
    for line in response.split(b"\r\n"):
        key, _, value = line.partition(b": ")
        if key.lower() == name:
            return value
    return None


def test_a_file_stored_by_another_server_takes_an_identical_retry(harness: Harness) -> None:
    path = "a1b2/foreign.txt"
    (harness.storage.root / "a1b2").mkdir()
    (harness.storage.root / "a1b2" / "foreign.txt").write_bytes(b"old")
    query = f"v={mac_v1(path, 3)}"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 3, query) + b"new")
    assert status_of(transport.value()) == 409
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 3, query) + b"old")
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / "a1b2" / "foreign.txt").read_bytes() == b"old"
    assert partial_files(harness.storage) == []


def test_etag_is_size_and_mtime_and_survives_an_identical_retry(harness: Harness) -> None:
    import os

    path = "a1b2/tagged.txt"
    query = f"v={mac_v1(path, 6)}"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 6, query) + b"tagged")
    assert status_of(transport.value()) == 201
    st = os.stat(harness.storage.root / "a1b2" / "tagged.txt")

    def etag() -> bytes | None:
        channel, transport = harness.connect()
        channel.dataReceived(f"HEAD /upload/{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return header_of(pump(channel, transport), b"etag")

    expected = f'"{6:x}-{int(st.st_mtime * 1_000_000):x}"'.encode()
    assert etag() == expected
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 6, query) + b"tagged")
    assert status_of(transport.value()) == 201
    assert etag() == expected


def test_an_expired_file_of_the_same_size_is_409_before_the_body(harness: Harness) -> None:
    rel = "slot-2/brief.txt"
    now = harness.clock.seconds()
    secret = harness.config.hmac.secrets[0]
    from hmacfs.core import auth

    signed = auth.sign("jwt", rel, 4, "text/plain", secret, now=now, file_expiry=now + 60)
    channel, transport = harness.connect()
    channel.dataReceived(put_head(rel, 4, "", f"Authorization: {signed.headers['Authorization']}")
                         + b"note")
    assert status_of(transport.value()) == 201
    harness.clock.advance(61)
    channel, transport = harness.connect()
    channel.dataReceived(put_head(rel, 4, f"v={mac_v1(rel, 4)}"))
    assert status_of(transport.value()) == 409
    assert partial_files(harness.storage) == []


# -- where the commit runs: on the reactor in fast mode, else on a thread ---------------------


def upload(harness: Harness, path: str, body: bytes) -> int:
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, len(body), f"v={mac_v1(path, len(body))}") + body)
    return status_of(transport.value())


def test_fast_mode_commits_on_the_reactor(harness: Harness) -> None:
    assert upload(harness, "a1b2/fast.txt", b"fast") == 201
    assert "commit" not in harness.on_thread
    assert (harness.storage.root / "a1b2" / "fast.txt").read_bytes() == b"fast"
    assert partial_files(harness.storage) == []
    # A retry has a body to compare, which reads the disk: that is done on a thread.
    assert upload(harness, "a1b2/fast.txt", b"fast") == 201
    assert upload(harness, "a1b2/fast.txt", b"FAST") == 409
    assert harness.on_thread.count("commit") == 2
    assert partial_files(harness.storage) == []


def test_durable_mode_commits_on_a_thread(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, max_upload_size=1000), fsync=True)
    assert upload(harness, "a1b2/durable.txt", b"safe") == 201
    assert harness.on_thread.count("commit") == 1
    assert (harness.storage.root / "a1b2" / "durable.txt").read_bytes() == b"safe"


def test_fast_mode_errors_are_answered_as_on_a_thread(harness: Harness) -> None:
    assert upload(harness, "a1b2/dir", b"file") == 201
    channel, transport = harness.connect()
    channel.dataReceived(put_head("a1b2/dir/x", 1, f"v={mac_v1('a1b2/dir/x', 1)}") + b"x")
    response = transport.value()
    assert status_of(response) == 409
    assert response.endswith(b"\r\n\r\npath is in use\n")
    assert "commit" not in harness.on_thread
    assert partial_files(harness.storage) == []
    assert harness.site.uploads == set()


@pytest.mark.parametrize(("second", "status"), [(b"same", 201), (b"diff", 409)])
def test_fast_mode_race_for_a_path_is_judged_on_a_thread(
    harness: Harness, second: bytes, status: int
) -> None:
    path = "a1b2/race.txt"
    query = f"v={mac_v1(path, 4)}"
    # Both admitted while the path is free; the first to finish links it.
    channel_a, transport_a = harness.connect()
    channel_a.dataReceived(put_head(path, 4, query) + b"sa")
    channel_b, transport_b = harness.connect()
    channel_b.dataReceived(put_head(path, 4, query) + second[:2])
    channel_a.dataReceived(b"me")
    assert status_of(transport_a.value()) == 201
    assert "commit" not in harness.on_thread
    channel_b.dataReceived(second[2:])
    assert status_of(transport_b.value()) == status
    assert harness.on_thread.count("commit") == 1  # the comparison
    assert (harness.storage.root / "a1b2" / "race.txt").read_bytes() == b"same"
    assert partial_files(harness.storage) == []
    assert harness.site.uploads == set()


def test_an_idle_connection_is_closed_after_idle_timeout(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, idle_timeout=30.0))
    _, transport = harness.connect()
    harness.clock.advance(29)
    assert not transport.disconnecting
    harness.clock.advance(2)
    assert transport.disconnecting or transport.disconnected


def test_an_upload_that_stalls_mid_body_is_dropped_after_idle_timeout(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, idle_timeout=30.0))
    path = "idle1/slow.bin"
    channel, transport = harness.connect()
    channel.dataReceived(put_head(path, 10, f"v={mac_v1(path, 10)}") + b"01234")
    assert len(partial_files(harness.storage)) == 1
    harness.clock.advance(20)
    channel.dataReceived(b"5")  # a byte now and then keeps it alive
    harness.clock.advance(20)
    assert not (transport.disconnecting or transport.disconnected)
    harness.clock.advance(11)  # then nothing for longer than the timeout
    assert transport.disconnecting or transport.disconnected
    channel.connectionLost(Failure(ConnectionLost()))
    assert partial_files(harness.storage) == []
    assert visible_files(harness.storage.root) == []
    assert harness.site.uploads == frozenset()
