"""The splicer on real sockets, pipes and files, without a reactor: each test plays the
reactor's part by calling the transport's `doRead` as a readable socket would have it called.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, main
from twisted.web import http

from hmacfs.core.auth import Grant
from hmacfs.core.refusals import Refusal, StorageFailure, TooLarge
from hmacfs.http.fast import splice
from hmacfs.http.fast.splice import BodySplicer, SpliceSupport
from hmacfs.http.upload import Upload
from hmacfs.storage.local import LocalStorage


class Transport:
    """The part of a Twisted socket transport the splicer uses: its descriptor, and `doRead`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> object:
        return "twisted read"


class Channel:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.timeouts_reset = 0

    def resetTimeout(self) -> None:
        self.timeouts_reset += 1


class Metrics:
    def __init__(self) -> None:
        self.received = 0

    def upload_started(self) -> None:
        pass

    def upload_finished(self, *args: object) -> None:
        pass

    def bytes_received(self, n: int) -> None:
        self.received += n


class Request:
    """The part of an UploadRequest the splicer uses: its upload, and `body_failed`."""

    def __init__(self, partial: Any) -> None:
        self.metrics = Metrics()
        grant = Grant(partial.rel, partial.size, "application/octet-stream", "v", None, None)
        self.upload = Upload(
            grant,
            partial,
            compare=False,
            metrics=self.metrics,  # type: ignore[arg-type]
            run_blocking=defer.maybeDeferred,
            clock=lambda: 0.0,
            ended=lambda upload: None,
        )
        self.failed: list[Refusal] = []
        self.chunks: list[bytes] = []
        self.finished: list[bytes] = []

    def handleContentChunk(self, data: bytes) -> None:
        self.chunks.append(data)

    def body_failed(self, e: Refusal) -> None:
        self.failed.append(e)
        self.upload.abort(e.status)


class FdUpload:
    """An upload writing to a descriptor the test chose (O_APPEND, /dev/full)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.received = 0
        self.rel = "a/b.bin"
        self.done = False
        self.reopenable = False
        self.id = self.name = "fd-upload"

    def fileno(self) -> int:
        return self.fd

    def wrote(self, count: int) -> None:
        self.received += count

    def failed(self, error: OSError) -> StorageFailure:
        return StorageFailure(f"cannot store: {os.strerror(error.errno or 0)}")

    def abort(self) -> None:
        self.done = True


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: (client, server), the server's end non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    with client, server:
        yield client, server


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files", fsync=False)


def splicer_for(
    fd: int, upload: Any, left: int, support: SpliceSupport | None = None
) -> tuple[BodySplicer, Request, Transport, Channel]:
    transport = Transport(fd)
    channel = Channel(transport)
    request = Request(upload)
    decoder = http._IdentityTransferDecoder(
        left, request.handleContentChunk, request.finished.append
    )
    splicer = BodySplicer(support or SpliceSupport(), channel, request, decoder)
    assert splicer._start()
    assert "doRead" in vars(transport)
    return splicer, request, transport, channel


def read_all(transport: Transport, calls: int = 1000) -> list[object]:
    results = []
    for _ in range(calls):
        if "doRead" not in vars(transport):
            break
        results.append(transport.doRead())
    return results


def test_exactly_the_rest_of_the_body_reaches_the_file(
    pair: tuple[socket.socket, socket.socket], storage: LocalStorage
) -> None:
    client, server = pair
    body = os.urandom(700_000)
    upload = storage.begin("a/b.bin", len(body), "application/octet-stream")
    upload.write(body[:1000])  # what Twisted had already handed over
    splicer, request, transport, channel = splicer_for(server.fileno(), upload, len(body) - 1000)
    sender = threading.Thread(target=client.sendall, args=(body[1000:] + b"GET / HTTP/1.1",))
    sender.start()
    while "doRead" in vars(transport):
        assert transport.doRead() is None
    sender.join()
    # The decoder ended the body (an empty last chunk), the next request is still unread.
    assert request.finished == [b""]
    assert request.chunks == [b""]
    assert server.recv(100) == b"GET / HTTP/1.1"
    assert upload.received == len(body)
    assert request.metrics.received == len(body) - 1000
    assert channel.timeouts_reset > 0
    assert splicer._pipe is None
    stored = upload.commit()
    assert Path(stored.location).read_bytes() == body


def test_each_read_moves_a_bounded_amount(
    pair: tuple[socket.socket, socket.socket],
    storage: LocalStorage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(splice, "CHUNK", 64 * 1024)
    client, server = pair
    body = os.urandom(2 * 1024 * 1024)
    upload = storage.begin("a/b.bin", len(body), "application/octet-stream")
    splicer, _, transport, _ = splicer_for(server.fileno(), upload, len(body))
    sender = threading.Thread(target=client.sendall, args=(body,))
    sender.start()
    before = 0
    while "doRead" in vars(transport):
        transport.doRead()
        assert splicer.spliced - before <= 64 * 1024
        before = splicer.spliced
    sender.join()
    assert Path(upload.commit().location).read_bytes() == body


def test_nothing_to_read_waits(
    pair: tuple[socket.socket, socket.socket], storage: LocalStorage
) -> None:
    _, server = pair
    upload = storage.begin("a/b.bin", 10, "application/octet-stream")
    splicer, request, transport, _ = splicer_for(server.fileno(), upload, 10)
    assert transport.doRead() is None
    assert "doRead" in vars(transport) and splicer.spliced == 0 and request.finished == []


def test_end_of_file_mid_body_is_the_end_of_the_connection(
    pair: tuple[socket.socket, socket.socket], storage: LocalStorage
) -> None:
    client, server = pair
    upload = storage.begin("a/b.bin", 1000, "application/octet-stream")
    splicer, request, transport, _ = splicer_for(server.fileno(), upload, 1000)
    client.sendall(b"x" * 300)
    client.shutdown(socket.SHUT_WR)
    assert read_all(transport)[-1] is main.CONNECTION_DONE
    assert "doRead" not in vars(transport) and splicer._pipe is None
    assert upload.received == 300 and request.finished == []


def test_a_reset_connection_is_lost(
    pair: tuple[socket.socket, socket.socket], storage: LocalStorage
) -> None:
    client, server = pair
    upload = storage.begin("a/b.bin", 1000, "application/octet-stream")
    _, _, transport, _ = splicer_for(server.fileno(), upload, 1000)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # linger 0: RST
    assert transport.doRead() is main.CONNECTION_LOST
    assert "doRead" not in vars(transport)


def test_a_socket_that_cannot_be_spliced_goes_back_to_twisted(storage: LocalStorage) -> None:
    # An eventfd has no splice support: EINVAL, as a socket type without it would give.
    fd = os.eventfd(1)
    try:
        support = SpliceSupport()
        upload = storage.begin("a/b.bin", 10, "application/octet-stream")
        splicer, _, transport, _ = splicer_for(fd, upload, 10, support)
        assert transport.doRead() is None
        assert not support.usable
        assert "doRead" not in vars(transport) and splicer._pipe is None
        assert splicer.spliced == 0 and splicer.decoder.contentLength == 10
    finally:
        os.close(fd)


def test_a_file_that_cannot_be_spliced_to_gets_a_copy(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    # splice(2) refuses O_APPEND files (EINVAL): the bytes already in the pipe are copied, and
    # the rest of the body is left to Twisted.
    client, server = pair
    fd = os.open(tmp_path / "append", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        support = SpliceSupport()
        upload = FdUpload(fd, 1000)
        splicer, request, transport, _ = splicer_for(server.fileno(), upload, 1000, support)
        client.sendall(b"y" * 400)
        assert transport.doRead() is None
        assert not support.usable
        assert "doRead" not in vars(transport)
        assert (tmp_path / "append").read_bytes() == b"y" * 400
        assert upload.received == 400 and splicer.decoder.contentLength == 600
        assert request.failed == []
    finally:
        os.close(fd)


def test_a_full_disk_refuses_the_upload(
    pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = pair
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        upload = FdUpload(fd, 1000)
        _, request, transport, _ = splicer_for(server.fileno(), upload, 1000)
        client.sendall(b"z" * 400)
        assert transport.doRead() is None
        assert [type(e) for e in request.failed] == [StorageFailure]
        assert "No space left" in request.failed[0].text
        assert "doRead" not in vars(transport)
    finally:
        os.close(fd)


def test_a_dropped_upload_ends_the_splice(
    pair: tuple[socket.socket, socket.socket], storage: LocalStorage
) -> None:
    client, server = pair
    upload = storage.begin("a/b.bin", 1000, "application/octet-stream")
    splicer, _, transport, _ = splicer_for(server.fileno(), upload, 1000)
    upload.abort()  # a shutdown's cut-off, a refusal: its descriptor is closed
    client.sendall(b"w" * 100)
    assert transport.doRead() is None
    assert "doRead" not in vars(transport) and splicer.spliced == 0
    assert server.recv(1000) == b"w" * 100  # left for Twisted


def test_stop_is_idempotent_and_gives_reads_back(
    pair: tuple[socket.socket, socket.socket], storage: LocalStorage
) -> None:
    _, server = pair
    upload = storage.begin("a/b.bin", 1000, "application/octet-stream")
    splicer, _, transport, _ = splicer_for(server.fileno(), upload, 1000)
    splicer.stop()
    splicer.stop()
    assert transport.doRead() == "twisted read"


def test_wrote_counts_and_refuses_past_the_declared_size(storage: LocalStorage) -> None:
    upload = storage.begin("a/b.bin", 10, "application/octet-stream")
    os.write(upload.fileno(), b"0123456789")
    upload.wrote(10)
    with pytest.raises(TooLarge):
        upload.wrote(1)
    assert upload.received == 10
    upload.abort()
    with pytest.raises(StorageFailure):
        upload.fileno()


def test_support_wants_large_bodies_on_socket_transports_only() -> None:
    support = SpliceSupport()
    assert not support.wanted(splice.SPLICE_MIN, object())
    assert not support.wanted(None, object())
