"""How a request of a resumable upload on the object store is cut into pieces (whole object,
parts, tail), what a cut keeps, and the facts that record it: against a store that answers
what the test tells it to."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from hmacfs.http.objectstore import Flow, Piece, PieceStream
from hmacfs.storage.s3.resumable import MIN_PART, Facts, Part

MIB = 1024 * 1024


class Sink:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


class Response:
    def __init__(self, code: int, etag: str = "", body: bytes = b"") -> None:
        self.code = code
        self.phrase = b"OK"
        self.headers = Headers({b"etag": [etag.encode()]} if etag else {})
        self._body = body
        self.length = len(body)

    def deliverBody(self, protocol: Any) -> None:
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


class Store:
    """Requests as they are made; each waits for the test to answer it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def request(
        self, method: str, key: str, query: Any = (), headers: Any = None, body: Any = None
    ) -> defer.Deferred[Any]:
        sink = Sink()
        d: defer.Deferred[Any] = defer.Deferred()
        self.requests.append(
            {"method": method, "key": key, "query": dict(query), "headers": dict(headers or {}),
             "sink": sink, "d": d, "body": body}
        )
        if body is not None:
            body.startProducing(sink)
        return d

    def answer(self, index: int, code: int = 200, *, etag: str = "", body: bytes = b"") -> None:
        request = self.requests[index]
        if not etag and request["body"] is not None:
            etag = '"' + hashlib.md5(b"".join(request["sink"].data)).hexdigest() + '"'
        request["d"].callback(Response(code, etag, body))


def stream(store: Store, *, size: int, start: int = 0, prefix: bytes = b"", end: int | None = None,
           upload_id: str | None = None, next_number: int = 1) -> tuple[PieceStream, list[Piece]]:
    stored: list[Piece] = []
    pieces = PieceStream(
        store,  # type: ignore[arg-type]
        key="files/f.bin",
        tail_key=lambda at: f"tail-{at}",
        headers={"content-type": "text/plain"},
        size=size,
        part_size=5 * MIB,
        min_part=MIN_PART,
        start=start,
        prefix=prefix,
        end=size if end is None else end,
        upload_id=upload_id,
        next_number=next_number,
        flow=Flow(),
        in_flight=4,
        stored=stored.append,
        created=lambda _: None,
    )
    return pieces, stored


def sent(request: dict[str, Any]) -> bytes:
    return b"".join(request["sink"].data)


def test_a_whole_small_upload_is_one_create_only_put() -> None:
    store = Store()
    pieces, stored = stream(store, size=1000)
    pieces.write(b"x" * 1000)
    [put] = store.requests
    assert (put["method"], put["key"]) == ("PUT", "files/f.bin")
    assert put["headers"]["if-none-match"] == "*"
    store.answer(0)
    assert [(p.kind, p.start, p.length) for p in stored] == [("single", 0, 1000)]
    assert stored[0].md5 == hashlib.md5(b"x" * 1000).hexdigest()


def test_a_short_request_short_of_the_end_is_a_tail() -> None:
    store = Store()
    pieces, stored = stream(store, size=12 * MIB, end=3 * MIB)
    pieces.write(b"a" * (3 * MIB))
    [put] = store.requests
    assert put["key"] == "tail-0" and "if-none-match" not in put["headers"]
    store.answer(0)
    assert [(p.kind, p.start, p.length) for p in stored] == [("tail", 0, 3 * MIB)]


def test_the_tail_goes_first_into_the_next_part() -> None:
    store = Store()
    tail = b"t" * (3 * MIB)
    pieces, stored = stream(store, size=12 * MIB, prefix=tail, end=6 * MIB + 5, upload_id="U")
    pieces.write(b"n" * (3 * MIB + 5))
    part, new_tail = store.requests
    assert part["query"] == {"partNumber": "1", "uploadId": "U"}
    assert sent(part) == tail + b"n" * (2 * MIB)
    assert new_tail["key"] == f"tail-{5 * MIB}" and sent(new_tail) == b"n" * (MIB + 5)
    store.answer(1)
    store.answer(0)
    assert [(p.kind, p.start, p.length, p.number) for p in stored] == [
        ("tail", 5 * MIB, MIB + 5, 0),
        ("part", 0, 5 * MIB, 1),
    ]


def test_a_multipart_upload_is_created_once_for_the_first_part() -> None:
    store = Store()
    created: list[str] = []
    pieces, stored = stream(store, size=11 * MIB)
    pieces._created = created.append
    pieces.write(b"p" * (11 * MIB))
    post = store.requests[0]
    assert (post["method"], post["query"]) == ("POST", {"uploads": ""})
    assert len(store.requests) == 1  # (parts wait for the upload's id)
    store.answer(0, body=b"<InitiateMultipartUploadResult><UploadId>ID</UploadId>"
                 b"</InitiateMultipartUploadResult>")
    assert created == ["ID"]
    numbers = [r["query"].get("partNumber") for r in store.requests[1:]]
    assert numbers == ["1", "2", "3"]
    assert [len(sent(r)) for r in store.requests[1:]] == [5 * MIB, 5 * MIB, MIB]
    for index in (1, 2, 3):
        store.answer(index)
    assert [(p.number, p.start, p.length) for p in stored] == [
        (1, 0, 5 * MIB), (2, 5 * MIB, 5 * MIB), (3, 10 * MIB, MIB)
    ]


def test_a_cut_keeps_the_pieces_whose_bytes_were_all_sent() -> None:
    store = Store()
    pieces, stored = stream(store, size=13 * MIB, upload_id="U")
    pieces.write(b"c" * (7 * MIB))
    _, second = store.requests
    settled = pieces.cut()
    assert not settled.called  # the first part is still to be answered
    assert second["d"].called  # the second, waiting for bytes, was dropped
    store.answer(0)
    assert settled.called
    assert [(p.number, p.length) for p in stored] == [(1, 5 * MIB)]
    with pytest.raises(Exception, match="cancelled"):
        pieces.write(b"more")


def test_facts_round_trip_and_what_they_say_arrived() -> None:
    facts = Facts("a/b.txt", 12 * MIB, "text/plain", None, "v", "u", 1.0, 2.0, "ID",
                  [Part(1, 0, 5 * MIB, '"e"', "m")], (5 * MIB, 100))
    again = Facts.decode(facts.encode())
    assert again == facts
    assert again.parts_end == 5 * MIB and again.received == 5 * MIB + 100
    again.complete = True
    assert again.received == 12 * MIB
    with pytest.raises(ValueError):
        Facts.decode(b'{"rel": 1}')
    with pytest.raises(ValueError):
        Facts.decode(b"not json")
