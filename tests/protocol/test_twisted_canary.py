"""Canaries: the Twisted internals the HTTP layer relies on, all reached through
`hmacfs.http._twisted` (which is all this file imports of ours).

`hmacfs.http.channel.UploadChannel` decides on a request between its headers and its body. That
needs the request line while the body has not arrived (`HTTPChannel._command`/`_path`), the order of
calls in `allHeadersReceived` (gotLength, then the automatic "100 Continue"), and body chunks
reaching `Request.handleContentChunk`. `hmacfs.http.fast.splice` takes the rest of a large body past
Twisted: it needs the channel's transfer decoder (`_transferDecoder`, counting the bytes still
to come) to finish the body as the last bytes would have, and the reactor to read through the
transport's `doRead` attribute. If a Twisted release changes any of this, these tests fail by
name instead of uploads failing in a subtle way.
"""

from __future__ import annotations

import inspect

import twisted
from twisted.internet import abstract, main, posixbase, tcp
from twisted.internet.interfaces import ISystemHandle
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.web import http

from hmacfs.http import _twisted
from hmacfs.http._twisted import body_decoder


class Recorder(http.Request):
    seen: list[tuple[str, object]]

    def gotLength(self, length: int | None) -> None:
        self.seen.append(("gotLength", length))
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self.seen.append(("chunk", data))
        super().handleContentChunk(data)

    def process(self) -> None:
        self.seen.append(("process", self.method))
        self.setResponseCode(204)
        self.finish()


class Channel(http.HTTPChannel):
    def allHeadersReceived(self) -> None:
        seen = self.requests[-1].seen
        seen.append(("request-line", (self._command, self._path, self._version)))
        seen.append(("length", self.length))
        super().allHeadersReceived()


def connect() -> tuple[Channel, StringTransport, list[tuple[str, object]]]:
    seen: list[tuple[str, object]] = []

    def factory(channel: http.HTTPChannel, queued: bool = False) -> Recorder:
        request = Recorder(channel, queued)
        request.seen = seen
        return request

    channel = Channel()
    channel.requestFactory = factory
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, seen


def drive(data: bytes) -> tuple[list[tuple[str, object]], bytes]:
    channel, transport, seen = connect()
    for byte in data:
        channel.dataReceived(bytes([byte]))
    return seen, transport.value()


def test_request_line_is_known_when_the_headers_are_complete() -> None:
    seen, _ = drive(b"PUT /up/a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    assert ("request-line", (b"PUT", b"/up/a?x=1", b"HTTP/1.1")) in seen
    assert ("length", 3) in seen


def test_order_of_events_for_a_body() -> None:
    seen, _ = drive(b"PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab")
    names = [name for name, _ in seen]
    assert names.index("request-line") < names.index("gotLength") < names.index("chunk")
    assert names[-1] == "process"
    assert b"".join(v for n, v in seen if n == "chunk") == b"ab"  # type: ignore[misc]


def test_continue_is_sent_by_all_headers_received() -> None:
    # Our channel refuses by *not* calling super().allHeadersReceived(); that only keeps
    # "100 Continue" from going out while Twisted sends it from there.
    source = inspect.getsource(http.HTTPChannel.allHeadersReceived)
    assert "_send100Continue" in source
    assert "gotLength" in source
    _, out = drive(
        b"PUT /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz"
    )
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")


def test_chunked_bodies_report_no_length() -> None:
    seen, _ = drive(
        b"PUT /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"
    )
    assert ("length", None) in seen


def test_twisted_version_is_in_the_tested_range() -> None:
    major = int(twisted.__version__.split(".")[0])
    assert 22 <= major < 27, twisted.__version__


def test_a_body_can_be_finished_past_the_channel() -> None:
    # What hmacfs.http.fast.splice does: find the decoder mid-body, count the bytes it took
    # itself, then let the decoder end the body; the request is processed and a pipelined one
    # follows.
    channel, _, seen = connect()
    channel.dataReceived(b"PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    request = channel.requests[-1]
    decoder = body_decoder(channel, request)
    assert decoder is not None, "HTTPChannel's body decoder changed shape: splicing is off"
    assert decoder is channel._transferDecoder
    assert isinstance(decoder, http._IdentityTransferDecoder)
    assert decoder.contentLength == 7
    decoder.contentLength -= 7  # "defghij" went past the channel
    decoder.dataReceived(b"")
    assert seen[-1] == ("process", b"PUT")
    assert channel._transferDecoder is None
    assert body_decoder(channel, request) is None
    channel.dataReceived(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert seen[-1] == ("process", b"GET")


def test_no_decoder_is_offered_while_the_channel_holds_bytes_or_has_no_length() -> None:
    channel, _, _ = connect()
    channel.dataReceived(b"PUT /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert body_decoder(channel, channel.requests[-1]) is None
    channel, _, _ = connect()
    channel.dataReceived(b"PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
    channel._buffer = b"x"  # as while LineReceiver is still handing bytes over
    assert body_decoder(channel, channel.requests[-1]) is None


def test_reactors_read_through_the_transports_do_read_attribute() -> None:
    # An instance attribute `doRead` on the transport takes its reads; returning
    # CONNECTION_DONE from it is how the transport itself reports the peer's end of file.
    assert "selectable.doRead()" in inspect.getsource(posixbase._PollLikeMixin._doReadOrWrite)
    assert "self._dataReceived(" in inspect.getsource(tcp.Connection.doRead)
    source = inspect.getsource(tcp.Connection._dataReceived)
    assert "return main.CONNECTION_DONE" in source
    assert main.CONNECTION_DONE is not None


def test_between_requests_state_has_the_names_the_quick_path_reads() -> None:
    # UploadChannel._between_requests reads these to know that Twisted holds nothing of a
    # request: no request object, no buffered bytes, line mode, not paused or pipelining.
    channel = Channel()
    channel.makeConnection(StringTransport())
    state = (
        channel.requests,
        channel._buffer,
        channel.paused,
        channel.line_mode,
        channel._handlingRequest,
        channel._dataBuffer,
    )
    assert state == ([], b"", False, 1, False, [])
    assert _twisted.between_requests(channel)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost")
    assert channel.requests and channel._buffer == b"Host"
    assert not _twisted.between_requests(channel)


def test_an_idle_transport_has_the_write_state_direct_writes_read() -> None:
    # DirectWrites sends straight to the socket only when both of a FileDescriptor's write
    # buffers are empty; anything Twisted queued must show up in one of them.
    transport = abstract.FileDescriptor(MemoryReactor())
    transport.connected = True
    assert (transport.dataBuffer, transport._tempDataBuffer) == (b"", [])
    assert (transport._writeDisconnecting, transport._writeDisconnected) == (False, False)
    assert _twisted.transport_idle(transport, None)
    transport.write(b"queued")
    assert transport.dataBuffer or transport._tempDataBuffer
    assert not _twisted.transport_idle(transport, None)
    idle = abstract.FileDescriptor(MemoryReactor())
    idle.connected = True
    idle.loseWriteConnection()
    assert idle._writeDisconnecting and not _twisted.transport_idle(idle, None)


def test_a_transports_writes_can_be_stood_in_for_and_given_back() -> None:
    # The reactor's transports look `write` and `writeSequence` up on the instance.
    transport = abstract.FileDescriptor(MemoryReactor())
    transport.connected = True
    seen: list[bytes] = []
    queue = _twisted.take_writes(transport, seen.append, seen.extend)
    transport.write(b"a")
    transport.writeSequence([b"b", b"c"])
    assert seen == [b"a", b"b", b"c"]
    queue(b"queued")
    assert transport.dataBuffer or transport._tempDataBuffer  # Twisted's own write
    _twisted.give_back_writes(transport)
    transport.write(b"d")
    assert seen == [b"a", b"b", b"c"]


def test_a_transports_reads_can_be_taken_and_given_back() -> None:
    transport = abstract.FileDescriptor(MemoryReactor())
    assert _twisted.reads_taken(transport) is None

    def do_read() -> object:
        return "taken"

    _twisted.take_reads(transport, do_read)
    assert transport.doRead() == "taken" and _twisted.reads_taken(transport) is do_read
    _twisted.give_back_reads(transport)
    assert _twisted.reads_taken(transport) is None


def test_a_request_knows_its_connection_is_gone() -> None:
    channel, _, _ = connect()
    channel.dataReceived(b"PUT /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
    request = channel.requests[-1]
    assert _twisted.request_line(channel) == (b"PUT", b"/a")
    assert not _twisted.request_disconnected(request)
    channel.connectionLost(main.CONNECTION_LOST)
    assert _twisted.request_disconnected(request)


def test_a_listening_port_accepts_as_many_as_number_accepts_says() -> None:
    # accept_one_at_a_time sets `numberAccepts` before each of the port's reads.
    source = inspect.getsource(tcp.Port.doRead)
    assert "numberAccepts" in source and "self.numberAccepts" in source


def test_the_request_version_is_known_when_the_headers_are_complete() -> None:
    channel, _, _ = connect()
    channel.dataReceived(b"PATCH /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n")
    assert _twisted.request_version(channel) == b"HTTP/1.1"
    channel, _, _ = connect()
    channel.dataReceived(b"PUT /a HTTP/1.0\r\nContent-Length: 2\r\n\r\n")
    assert _twisted.request_version(channel) == b"HTTP/1.0"


class Holding(Channel):
    """A channel that decides later, as UploadChannel does while an admission waits."""

    held: list[bytes]
    ended = False

    def allHeadersReceived(self) -> None:
        self.held = []  # (and nothing of HTTPChannel's: no gotLength, no 100 Continue yet)

    def rawDataReceived(self, data: bytes) -> None:
        self.held.append(data)

    def allContentReceived(self) -> None:
        self.ended = True


def test_what_follows_the_headers_can_be_held_back_until_a_decision() -> None:
    channel = Holding()
    channel.makeConnection(StringTransport())
    # The headers and the start of the body in one read: the body goes to rawDataReceived
    # in the same call, and the transport can be paused so that no more is read.
    channel.dataReceived(b"PATCH /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    assert channel.held == [b"ab"] and not channel.ended
    # An empty body ends at once: allContentReceived follows the headers directly.
    channel = Holding()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"HEAD /a HTTP/1.1\r\n\r\n")
    assert channel.held == [] and channel.ended


def test_a_tcp_transport_keeps_its_socket_where_peer_gone_looks() -> None:
    # `_twisted.peer_gone` asks `transport.getHandle()` (through a TLS wrapper's `transport`).
    assert ISystemHandle.implementedBy(tcp.Connection)
    assert _twisted.peer_socket(StringTransport()) is None
