"""A download streamed from an object store whose object is gone by the time its body is
asked for (expired, deleted, or removed by a quota between the lookup and the GET): with
nothing sent yet, the client gets a whole 404; once bytes went out, the connection is cut
rather than a short body sent."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from hmacfs.http.remote_body import RemoteBody


class Response:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.phrase = b""
        self.headers = Headers()
        self.length = len(body)
        self._body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


class Streams:
    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.asked: list[dict[str, str]] = []

    def request(self, method: str, key: str, query: Any, headers: dict[str, str]) -> Any:
        self.asked.append(headers)
        return defer.succeed(self.answers.pop(0))


class Reader:
    def __init__(self, streams: Streams) -> None:
        self.streams = streams
        self.key = "files/a.bin"
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Channel:
    def __init__(self) -> None:
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class Request:
    def __init__(self) -> None:
        self._disconnected = False
        self.startedWriting = False
        self.written: list[bytes] = []
        self.finished = False
        self.channel = Channel()

    def notifyFinish(self) -> defer.Deferred[None]:
        return defer.Deferred()

    def write(self, data: bytes) -> None:
        self.startedWriting = True
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def test_gone_before_a_byte_was_sent_is_a_whole_404() -> None:
    request, reader = Request(), Reader(Streams(Response(404, b"<Error>NoSuchKey</Error>")))
    RemoteBody(request, ((0, 10),), reader, lambda: b"not found\n").start()
    assert request.written == [b"not found\n"] and request.finished
    assert not request.channel.lost and reader.closed


def test_gone_after_bytes_were_sent_cuts_the_connection() -> None:
    streams = Streams(Response(206, b"abcde"), Response(404, b""))
    request, reader = Request(), Reader(streams)
    RemoteBody(request, (b"--part\r\n", (0, 5), b"--part\r\n", (5, 5)), reader,
               lambda: b"not found\n").start()
    assert request.written == [b"--part\r\n", b"abcde", b"--part\r\n"]
    assert request.channel.lost and not request.finished
    assert [h["range"] for h in streams.asked] == ["bytes=0-4", "bytes=5-9"]


def test_another_failure_of_the_store_cuts_the_connection() -> None:
    request, reader = Request(), Reader(Streams(Response(503, b"")))
    RemoteBody(request, ((0, 10),), reader, lambda: b"not found\n").start()
    assert request.written == [] and request.channel.lost and not request.finished
