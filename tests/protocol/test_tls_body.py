"""TLS a buffer at a time (`hmacfs.http.fast.tls`), driven in memory: a real TLS client (a
pyOpenSSL connection on memory BIOs) talks to the server's wrapper over a StringTransport.

`BatchingTLS` must hand the channel exactly the bytes Twisted's own wrapper does, in fewer and
larger pieces, and end a connection (the peer's TLS close, a broken record) the same way; it
does so through pyOpenSSL's private bindings (`hmacfs.http.fast._pyopenssl`) or, without
them, its public methods. The canaries at the end fail by name if a Twisted or pyOpenSSL
release changes the state this relies on (each use has a way out, so nothing else would fail).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols import tls as twisted_tls
from twisted.python.failure import Failure

from hmacfs.core.settings import TlsSettings
from hmacfs.http.fast import _pyopenssl
from hmacfs.http.fast import tls as fast_tls
from hmacfs.http.fast._pyopenssl import Buffer, RawTls
from hmacfs.http.fast.tls import (
    BatchingTLS,
    BatchingTLSFactory,
    TlsBodyProducer,
    tls_connection,
    tls_factory,
)
from hmacfs.process.tls import ReloadableTls
from tests.certs import TestCA
from tests.helpers.config import make_config
from tests.helpers.signing import mac_v1
from tests.protocol.test_upload_protocol import Harness, put_head, status_of

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def creator(tmp_path_factory: pytest.TempPathFactory) -> ReloadableTls:
    leaf = TestCA(tmp_path_factory.mktemp("pki")).issue("localhost")
    return ReloadableTls(TlsSettings(certificate=leaf.certificate, key=leaf.key))


class Recorder(Protocol):
    """What the channel would see: each piece handed on, and how the connection ended."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason


class Transport(StringTransport):
    """A StringTransport with what the HTTP channel asks of a TCP transport."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Pair:
    """A server wrapper and a TLS client, bytes carried between them by hand."""

    def __init__(self, factory: twisted_tls.TLSMemoryBIOFactory) -> None:
        self.wrapper: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        self.transport = Transport()
        self.wrapper.makeConnection(self.transport)
        #: (the wrapper lets go of it once the connection is lost)
        self.app: Any = self.wrapper.wrappedProtocol
        self.client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        self.client.set_connect_state()
        self.handshake()

    def to_client(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        if data:
            self.client.bio_write(data)

    def client_out(self) -> bytes:
        out = []
        while True:
            try:
                out.append(self.client.bio_read(1 << 20))
            except SSL.WantReadError:
                return b"".join(out)

    def handshake(self) -> None:
        for _ in range(10):
            with contextlib.suppress(SSL.WantReadError):
                self.client.do_handshake()
            data = self.client_out()
            if data:
                self.wrapper.dataReceived(data)
            self.to_client()
        assert self.wrapper._handshakeDone
        self.read_all()  # (TLS 1.3 session tickets)

    def send(self, plain: bytes, piece: int) -> None:
        """The client sends `plain`; its ciphertext reaches the server `piece` bytes a read."""
        view = memoryview(plain)
        while view:
            view = view[self.client.send(view[: 16 * 1024]) :]
        cipher = self.client_out()
        for start in range(0, len(cipher), piece):
            self.wrapper.dataReceived(cipher[start : start + piece])

    def read_all(self, *, next_turn: bool = True) -> bytes:
        """What the client reads of what the server sent (after the reactor's next turn,
        which flushes the wrapper's small writes aggregator, unless `next_turn` is False)."""
        aggregator = getattr(self.wrapper, "_aggregator", None)
        if aggregator is not None and next_turn:
            aggregator.flush()
        self.to_client()
        out = []
        while True:
            try:
                out.append(self.client.recv(1 << 16))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return b"".join(out)

    def lose(self) -> None:
        """The transport goes away (after a loseConnection, as the reactor does)."""
        self.wrapper.connectionLost(Failure(ConnectionDone()))


def stock(creator: ReloadableTls) -> twisted_tls.TLSMemoryBIOFactory:
    return twisted_tls.TLSMemoryBIOFactory(creator, False, Factory.forProtocol(Recorder))


def batching(creator: ReloadableTls) -> BatchingTLSFactory:
    return BatchingTLSFactory(creator, Factory.forProtocol(Recorder))


@pytest.fixture(params=["raw", "public"])
def reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """`BatchingTLS` with pyOpenSSL's bindings, and with its public methods only."""
    if request.param == "public":
        monkeypatch.setattr(RawTls, "of", classmethod(lambda cls, connection: None))
    return str(request.param)


def test_batching_hands_on_the_same_bytes_in_fewer_pieces(
    creator: ReloadableTls, reads: str
) -> None:
    plain = os.urandom(3 * MIB + 12345)
    seen = {}
    for name, factory in (("stock", stock(creator)), ("batching", batching(creator))):
        pair = Pair(factory)
        pair.send(plain, 256 * 1024 + 17)
        assert b"".join(pair.app.pieces) == plain
        seen[name] = len(pair.app.pieces)
    assert seen["stock"] >= 3 * MIB // (16 * 1024)  # a record at a time
    assert seen["batching"] <= 3 * MIB // (256 * 1024) + 2  # a read at a time


def test_batching_reads_larger_pieces_of_the_socket(creator: ReloadableTls) -> None:
    class Tcp(StringTransport):
        bufferSize = 2**16

    wrapper: Any = batching(creator).buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
    transport = Tcp()
    wrapper.makeConnection(transport)
    assert transport.bufferSize == fast_tls.READ_SIZE
    assert Tcp.bufferSize == 2**16  # (this connection only)


@pytest.mark.parametrize("piece", [1, 5, 16 * 1024 + 29, 1 << 20])
def test_any_split_of_the_ciphertext_arrives_whole(
    creator: ReloadableTls, reads: str, piece: int
) -> None:
    plain = os.urandom(200_000 if piece > 1 else 20_000)
    pair = Pair(batching(creator))
    pair.send(plain, piece)
    assert b"".join(pair.app.pieces) == plain


def test_what_the_server_writes_reaches_the_client(creator: ReloadableTls, reads: str) -> None:
    pair = Pair(batching(creator))
    answer = os.urandom(300_000)
    pair.wrapper.write(answer[:10])
    pair.wrapper.writeSequence([answer[10:100], answer[100:]])
    assert pair.read_all() == answer


def test_a_tls_close_ends_the_connection_as_twisteds_wrapper_does(
    creator: ReloadableTls, reads: str
) -> None:
    ends = []
    for factory in (stock(creator), batching(creator)):
        pair = Pair(factory)
        # The last data and the close in one read: the data is handed on first.
        view = memoryview(b"last words")
        pair.client.send(view)
        pair.client.shutdown()
        pair.wrapper.dataReceived(pair.client_out())
        assert pair.transport.disconnecting
        pair.to_client()
        pair.lose()
        ends.append((b"".join(pair.app.pieces), pair.app.reason.type, pair.read_all()))
    assert ends[0] == ends[1]
    assert ends[1][:2] == (b"last words", ConnectionDone)


def test_a_broken_record_ends_the_connection_as_twisteds_wrapper_does(
    creator: ReloadableTls, reads: str
) -> None:
    ends = []
    for factory in (stock(creator), batching(creator)):
        pair = Pair(factory)
        pair.client.send(b"good")
        good = pair.client_out()
        pair.client.send(b"x" * 100)
        bad = bytearray(pair.client_out())
        bad[-1] ^= 1  # (the record's tag no longer matches)
        pair.wrapper.dataReceived(good + bytes(bad))
        assert pair.transport.disconnecting
        alert = pair.transport.value()
        pair.lose()
        assert pair.app.reason is not None
        ends.append((b"".join(pair.app.pieces), pair.app.reason.type, len(alert) > 0))
    assert ends[0] == ends[1]
    assert ends[1][0] == b"good" and issubclass(ends[1][1], SSL.Error)


def test_an_eof_without_a_tls_close_is_a_lost_connection_as_with_twisteds_wrapper(
    creator: ReloadableTls, reads: str
) -> None:
    ends = []
    for factory in (stock(creator), batching(creator)):
        pair = Pair(factory)
        pair.client.send(b"half")
        cipher = pair.client_out()
        pair.wrapper.dataReceived(cipher[:-3])  # a record cut short, then the socket ends
        pair.wrapper.connectionLost(Failure(ConnectionDone()))
        ends.append((b"".join(pair.app.pieces), pair.app.reason.type))
    assert ends[0] == ends[1]
    assert ends[1] == (b"", ConnectionLost)


def test_tls_factory_follows_the_fast_paths_switch(creator: ReloadableTls) -> None:
    class Site(Factory):
        def __init__(self, enabled: bool) -> None:
            self.fast = type("Fast", (), {"enabled": enabled})()

    assert type(tls_factory(creator, Site(True))) is BatchingTLSFactory
    assert type(tls_factory(creator, Site(False))) is twisted_tls.TLSMemoryBIOFactory
    assert type(tls_factory(creator, Factory())) is twisted_tls.TLSMemoryBIOFactory


# -- the whole HTTP layer over BatchingTLS ----------------------------------------------------


@pytest.fixture
def site_pair(storage_dir: Path, creator: ReloadableTls) -> Iterator[tuple[Harness, Pair]]:
    harness = Harness(make_config(storage_dir, max_upload_size=64 * MIB))
    factory = tls_factory(creator, harness.site)
    assert isinstance(factory, BatchingTLSFactory)
    yield harness, Pair(factory)


def test_a_large_upload_over_tls_is_stored_a_read_at_a_time(
    site_pair: tuple[Harness, Pair], reads: str
) -> None:
    harness, pair = site_pair
    body = os.urandom(5 * MIB + 3)
    path = "a1b2/big.bin"
    pair.send(put_head(path, len(body), f"v={mac_v1(path, len(body))}") + body, 256 * 1024)
    assert status_of(pair.read_all()) == 201
    assert (harness.storage.root / "a1b2" / "big.bin").read_bytes() == body


def test_a_refused_upload_over_tls_is_answered_before_its_body(
    site_pair: tuple[Harness, Pair], reads: str
) -> None:
    harness, pair = site_pair
    path = "a1b2/no.bin"
    pair.send(put_head(path, 3 * MIB, "v=" + "0" * 64) + os.urandom(3 * MIB), 256 * 1024)
    assert status_of(pair.read_all()) == 403
    assert not (harness.storage.root / "a1b2" / "no.bin").exists()


def _small_file(pair: Pair, size: int, *, next_turn: bool) -> bytes:
    """Upload a small file (taken whole: hmacfs.http.fast.quick_put), check its 201 and ask
    for it (answered from the head: hmacfs.http.fast.quick); its body."""
    body = os.urandom(size)
    path = "a1b2/small.bin"
    pair.send(put_head(path, len(body), f"v={mac_v1(path, len(body))}") + body, 256 * 1024)
    assert status_of(pair.read_all(next_turn=next_turn)) == 201
    return body


_SMALL_GET = b"GET /upload/a1b2/small.bin HTTP/1.1\r\nHost: x\r\n\r\n"


def test_quick_answers_over_tls_are_written_before_the_reactors_next_turn(
    site_pair: tuple[Harness, Pair],
) -> None:
    _, pair = site_pair
    body = _small_file(pair, 4096, next_turn=False)
    pair.send(_SMALL_GET, 256 * 1024)
    answer = pair.read_all(next_turn=False)
    assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\n" + body)
    assert pair.read_all() == b""  # (nothing was left waiting)


def test_a_quick_answer_over_tls_follows_what_waits_to_be_gathered(
    site_pair: tuple[Harness, Pair],
) -> None:
    _, pair = site_pair
    body = _small_file(pair, 100, next_turn=True)
    pair.wrapper.write(b"written earlier, still waiting\r\n")
    pair.send(_SMALL_GET, 256 * 1024)
    answer = pair.read_all()
    assert answer.startswith(b"written earlier, still waiting\r\nHTTP/1.1 200 ")
    assert answer.endswith(body)


# -- TlsBodyProducer handing a body over to the wrapper ---------------------------------------


class FakeConnection:
    """Takes `records` TLS records, then wants to read (a renegotiation)."""

    def __init__(self, records: int) -> None:
        self.records = records
        self.taken = 0

    def send(self, data: memoryview) -> int:
        if self.records == 0:
            raise SSL.WantReadError()
        self.records -= 1
        count = min(len(data), 16 * 1024)
        self.taken += count
        return count

    def bio_read(self, size: int) -> bytes:
        raise SSL.WantReadError()


def test_a_body_goes_on_through_the_wrapper_when_openssl_wants_to_read(
    tmp_path: Path,
) -> None:
    """OpenSSL stops taking the body (it must read first, a renegotiation): the rest of the
    body, from exactly where OpenSSL stopped, is handed to the ordinary pull producer, which
    writes through the wrapper (that knows how to wait for the read)."""
    source = tmp_path / "f"
    source.write_bytes(os.urandom(MIB))
    registered: list[Any] = []

    class Tcp:
        connected, disconnecting = True, False
        producer: Any = "the wrapper's producer"
        socket = None

        def unregisterProducer(self) -> None:
            self.producer = None

        def registerProducer(self, producer: Any, streaming: bool) -> None:
            self.producer = producer
            if not streaming:
                producer.resumeProducing()

        def startWriting(self) -> None:
            pass

    class Request:
        sentLength = 0
        _disconnected = False

        def __init__(self) -> None:
            self.channel = type("Channel", (), {})()
            self.channel.transport = type("Wrapper", (), {})()
            self.channel.transport.transport = Tcp()
            self.channel.transport.disconnecting = False

        def notifyFinish(self) -> Any:
            from twisted.internet import defer

            return defer.Deferred()

        def registerProducer(self, producer: Any, streaming: bool) -> None:
            registered.append(producer)

    class Reader:
        def __init__(self) -> None:
            self.fd = os.open(source, os.O_RDONLY)

        def fileno(self) -> int:
            return self.fd

        def close(self) -> None:
            os.close(self.fd)

    request = Request()
    connection = FakeConnection(records=5)
    producer = TlsBodyProducer(request, Reader(), 1000, MIB - 1000, connection)  # type: ignore[arg-type]
    producer.start()
    producer.resumeProducing()  # (the transport's buffer is empty)
    assert connection.taken == 5 * 16 * 1024
    assert request.channel.transport.transport.producer == "the wrapper's producer"
    (rest,) = registered
    assert rest.pieces == [(1000 + 5 * 16 * 1024, MIB - 1000 - 5 * 16 * 1024)]
    assert request.sentLength == 5 * 16 * 1024


# -- canaries ---------------------------------------------------------------------------------


def test_pyopenssl_has_what_raw_reads_use(creator: ReloadableTls) -> None:
    """Without these the TLS paths still work, through pyOpenSSL's public methods (a copy
    more): this fails so that it is noticed."""
    assert _pyopenssl._USABLE
    connection = SSL.Connection(creator.context, None)
    connection.set_accept_state()
    raw = RawTls.of(connection)
    assert raw is not None
    assert raw.cipher_into(Buffer(1024)) == 0  # an empty memory BIO
    assert raw.plain_into(Buffer(1024)) == (0, None)  # (wants to read: no handshake yet)


def test_twisteds_tls_wrapper_has_the_state_read_here(creator: ReloadableTls) -> None:
    for name in ("_flushReceiveBIO", "_flushSendBIO", "_shutdownTLS", "_tlsShutdownFinished"):
        assert callable(getattr(twisted_tls.TLSMemoryBIOProtocol, name))
    pair = Pair(stock(creator))
    wrapper = pair.wrapper
    assert isinstance(wrapper._tlsConnection, SSL.Connection)
    assert wrapper.getHandle() is wrapper._tlsConnection
    assert (wrapper._lostTLSConnection, wrapper._aborted, wrapper._appSendBuffer) == (
        False,
        False,
        [],
    )
    if fast_tls._BUFFERING is not None and isinstance(wrapper, fast_tls._BUFFERING):
        # Small writes wait in the aggregator until flushed.
        wrapper.write(b"small")
        assert pair.transport.value() == b""
        assert callable(wrapper._aggregator.flush)


def test_the_wrappers_pending_writes_are_flushed_before_a_body(creator: ReloadableTls) -> None:
    class Tcp(StringTransport):
        socket = object()
        connected, disconnecting = True, False
        streamingProducer = True

        def startWriting(self) -> None:
            pass

    for factory in (stock(creator), batching(creator)):
        wrapper: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = Tcp()
        wrapper.makeConnection(transport)
        pair = Pair.__new__(Pair)
        pair.wrapper, pair.transport, pair.app = wrapper, transport, wrapper.wrappedProtocol
        pair.client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        pair.client.set_connect_state()
        pair.handshake()
        transport.producer = "the channel's"
        wrapper.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert tls_connection(wrapper) is wrapper.getHandle()
        assert transport.value()  # (the ciphertext of the head, out of any aggregator)
        assert pair.read_all() == b"HTTP/1.1 200 OK\r\n\r\n"  # (out of the aggregator)
        wrapper._appSendBuffer.append(b"waits for a renegotiation")
        assert tls_connection(wrapper) is None
        wrapper._appSendBuffer.clear()
        wrapper.loseConnection()
        assert tls_connection(wrapper) is None


def test_batching_tls_is_the_wrapper_of_this_twisted() -> None:
    assert issubclass(BatchingTLS, fast_tls._WRAPPER)
    assert BatchingTLSFactory.protocol is BatchingTLS


def test_an_https_listeners_connections_are_wrapped_in_batching_tls(
    creator: ReloadableTls,
) -> None:
    """The port a worker makes of an https listener (`Listeners`, on a socket it was handed)
    wraps its connections in `BatchingTLS` when the fast paths are on, in Twisted's own
    wrapper when they are off."""
    from hmacfs.process.listeners import activated_listener
    from hmacfs.process.listening import Listeners
    from hmacfs.process.systemd import ActivatedSockets
    from tests.process.fakes import FakeReactor

    class Site(Factory):
        def __init__(self, enabled: bool) -> None:
            self.fast = type("Fast", (), {"enabled": enabled})()

    for enabled, expected in ((True, BatchingTLSFactory), (False, twisted_tls.TLSMemoryBIOFactory)):
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.bind(("127.0.0.1", 0))
        listening.listen(4)
        inherited = os.dup(listening.fileno())  # (closed by Listeners)
        reactor = FakeReactor()
        listeners = Listeners(
            reactor,
            [activated_listener("L0", tls=True)],
            Site(enabled),
            lambda: creator,
            ActivatedSockets(fds=[inherited], names={"L0": inherited}),
        )
        listeners.startService()
        try:
            (port,) = reactor.ports
            assert type(port.factory) is expected
            assert port.factory.wrappedFactory.fast.enabled is enabled
        finally:
            listeners.stopService()
            reactor.advance(0)
            listening.close()
