"""Connection caps: a process keeps so many connections open, in all and per address, and
answers one more 503 at once (reverse proxies are exempt from the per-address cap)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from hmacfs.http.channel import UploadChannel
from tests.helpers.config import make_config
from tests.protocol.test_upload_protocol import Harness

PEER = "192.168.1.1"  # (every StringTransport's peer)


def refused(transport: object) -> bool:
    value: bytes = transport.value()  # type: ignore[attr-defined]
    return value.startswith(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n")


def close(channel: UploadChannel) -> None:
    channel.connectionLost(Failure(ConnectionDone()))


def test_one_address_gets_so_many_connections(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, max_connections_per_address=2))
    first, _ = harness.connect()
    _, second = harness.connect()
    over_channel, over = harness.connect()
    assert not refused(second)
    assert refused(over) and over.disconnecting
    close(over_channel)
    close(first)  # one fewer: a new one may come
    _, again = harness.connect()
    assert not refused(again)
    assert harness.site.caps.per_address[PEER] == 2


def test_a_process_keeps_so_many_connections_in_all(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, max_connections=3, max_connections_per_address=0))
    transports = [harness.connect()[1] for _ in range(4)]
    assert [refused(t) for t in transports] == [False, False, False, True]


def test_a_reverse_proxy_is_exempt_from_the_per_address_cap(storage_dir: Path) -> None:
    config = make_config(
        storage_dir, max_connections_per_address=1, trusted_proxies=(f"{PEER}/32",)
    )
    harness = Harness(config)
    transports = [harness.connect()[1] for _ in range(5)]
    assert not any(refused(t) for t in transports)
