"""Clients that would hold a connection for ever: a request head or a body trickled a byte at a
time (which the idle timeout alone never catches), and a download nobody reads (the idle
timeout is off while an answer is written). On a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmacfs.http.deadlines import RATE_WINDOW, TICK
from tests.helpers.config import make_config
from tests.helpers.files import partial_files, visible_files
from tests.helpers.signing import mac_v1
from tests.protocol.test_upload_protocol import Harness, put_head, status_of

HEAD_TIMEOUT = 30.0
SEND_TIMEOUT = 120.0


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def harness(storage_dir: Path, request: pytest.FixtureRequest) -> Harness:
    config = make_config(
        storage_dir,
        max_upload_size=10 * 1024 * 1024,
        head_timeout=HEAD_TIMEOUT,
        send_timeout=SEND_TIMEOUT,
        min_body_rate=1024,
    )
    return Harness(config, fast=request.param)


def test_a_trickled_request_head_is_answered_408(harness: Harness) -> None:
    channel, transport = harness.connect()
    head = put_head("t/h", 10, f"v={mac_v1('t/h', 10)}")
    sent = 0
    for byte in head[:-1]:  # a byte every 5 s: never idle for long
        channel.dataReceived(bytes([byte]))
        sent += 1
        harness.clock.advance(5)
        if transport.value():
            break
    assert status_of(transport.value()) == 408
    assert sent * 5 <= HEAD_TIMEOUT + 5
    assert transport.disconnecting
    assert partial_files(harness.storage) == []


def test_a_head_in_pieces_within_the_deadline_is_served(harness: Harness) -> None:
    channel, transport = harness.connect()
    body = b"0123456789"
    head = put_head("t/ok", 10, f"v={mac_v1('t/ok', 10)}")
    for piece in (head[:10], head[10:30], head[30:]):
        channel.dataReceived(piece)
        harness.clock.advance(HEAD_TIMEOUT / 4)
    channel.dataReceived(body)
    assert status_of(transport.value()) == 201
    harness.clock.advance(HEAD_TIMEOUT)  # the head's deadline is gone with the head
    assert not transport.disconnecting


def test_a_trickled_body_is_cut_off_with_408_and_nothing_is_stored(harness: Harness) -> None:
    channel, transport = harness.connect()
    size = 100_000
    channel.dataReceived(put_head("t/b", size, f"v={mac_v1('t/b', size)}") + b"x" * 100)
    waited = 0.0
    while not transport.value().startswith(b"HTTP/1.1 408"):
        assert waited <= 2 * RATE_WINDOW + 2 * TICK, transport.value()
        channel.dataReceived(b"x")  # a byte a second: far under 1 KiB/s
        harness.clock.advance(TICK)
        waited += TICK
    assert waited >= RATE_WINDOW
    assert b"too slowly" in transport.value()
    assert visible_files(harness.storage.root) == []
    assert partial_files(harness.storage) == []


def test_a_slow_but_steady_body_is_not_cut_off(harness: Harness) -> None:
    channel, transport = harness.connect()
    size = 3 * 1500 * int(RATE_WINDOW)
    channel.dataReceived(put_head("t/s", size, f"v={mac_v1('t/s', size)}"))
    for _ in range(3 * int(RATE_WINDOW)):
        channel.dataReceived(b"y" * 1500)  # 1.5 KiB/s, over the minimum
        harness.clock.advance(TICK)
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / "t" / "s").stat().st_size == size


def test_a_download_nobody_reads_is_cut_off(harness: Harness) -> None:
    stored = harness.storage.begin("t/big", 200_000, "application/octet-stream")
    stored.write(b"z" * 200_000)
    stored.commit()
    channel, transport = harness.connect()
    channel.dataReceived(b"GET /upload/t/big HTTP/1.1\r\nHost: up.example\r\n\r\n")
    assert len(harness.site.active) == 1  # being answered, and nothing is pulled from it
    harness.clock.advance(SEND_TIMEOUT - 2 * TICK)
    assert not transport.disconnecting
    for _ in range(3):
        harness.clock.advance(TICK)
    assert transport.disconnecting  # (the client never read: nothing was pulled)
