"""Canaries: the Twisted internals the upload channel relies on.

`hmacfs.web.UploadChannel` decides on a request between its headers and its body. That needs
the request line while the body has not arrived (`HTTPChannel._command`/`_path`), the order of
calls in `allHeadersReceived` (gotLength, then the automatic "100 Continue"), and body chunks
reaching `Request.handleContentChunk`. If a Twisted release changes any of this, these tests
fail by name instead of uploads failing in a subtle way.
"""

from __future__ import annotations

import inspect

import twisted
from twisted.internet.testing import StringTransport
from twisted.web import http


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


def drive(data: bytes) -> tuple[list[tuple[str, object]], bytes]:
    seen: list[tuple[str, object]] = []

    def factory(channel: http.HTTPChannel, queued: bool = False) -> Recorder:
        request = Recorder(channel, queued)
        request.seen = seen
        return request

    channel = Channel()
    channel.requestFactory = factory
    transport = StringTransport()
    channel.makeConnection(transport)
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
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost")
    assert channel.requests and channel._buffer == b"Host"
