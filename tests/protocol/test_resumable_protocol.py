"""Resumable uploads driven byte by byte through StringTransports on a fake clock: the 104
before the body, parts kept across broken connections, and one request at a time per upload,
also when the request under way belongs to another process."""

from __future__ import annotations

import re

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from hmacfs.http.channel import UploadChannel
from hmacfs.http.resumable import RELEASE_POLL, RELEASE_WAIT
from hmacfs.storage.local import LocalStorage
from tests.helpers.files import visible_files
from tests.helpers.signing import mac_v1
from tests.protocol.test_upload_protocol import Harness, harness, status_of

__all__ = ("harness",)  # (the fixture, used by name)

BODY = bytes(range(256)) * 3  # 768 bytes, under the harness's 1000-byte limit
PATH = "r3s/file.bin"


def creation_head(version: int = 6, *extra: str, size: int = len(BODY)) -> bytes:
    complete = "Upload-Incomplete: ?0" if version == 3 else "Upload-Complete: ?1"
    lines = [
        f"PUT /upload/{PATH}?v={mac_v1(PATH, size)} HTTP/1.1",
        "Host: up.example",
        f"Content-Length: {size}",
        f"Upload-Draft-Interop-Version: {version}",
        complete,
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def resource_of(response: bytes) -> str:
    match = re.search(rb"Location: http://up\.example(/\S+)\r\n", response)
    assert match is not None, response
    return match.group(1).decode()


def request(method: str, target: str, *extra: str, version: int = 6) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: up.example"]
    lines += [f"Upload-Draft-Interop-Version: {version}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def patch(target: str, offset: int, length: int, version: int = 6) -> bytes:
    return request(
        "PATCH",
        target,
        f"Upload-Offset: {offset}",
        "Upload-Complete: ?1",
        "Content-Type: application/partial-upload",
        f"Content-Length: {length}",
        version=version,
    )


def field(response: bytes, name: str) -> str:
    values = re.findall(rb"(?im)^" + name.encode() + rb": (.*?)\r$", response)
    assert values, (name, response)
    return values[-1].decode()


def cut(channel: UploadChannel) -> None:
    channel.connectionLost(Failure(ConnectionLost()))


def start_cut_upload(harness: Harness, sent: int) -> str:
    """A creation whose connection breaks after `sent` body bytes; its upload resource."""
    channel, transport = harness.connect()
    channel.dataReceived(creation_head() + BODY[:sent])
    target = resource_of(transport.value())
    cut(channel)
    return target


def test_the_104_goes_out_before_100_continue_and_the_body(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(creation_head(6, "Expect: 100-continue"))
    head = transport.value()
    assert head.startswith(b"HTTP/1.1 104 Upload Resumption Supported\r\n")
    assert head.index(b"104 Upload") < head.index(b"HTTP/1.1 100 Continue")
    assert b"Upload-Draft-Interop-Version: 6\r\n" in head
    assert b"Upload-Limit: max-size=768, expires=86400\r\n" in head
    token = resource_of(head).rsplit("/", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    channel.dataReceived(BODY)
    response = transport.value()
    assert status_of(response) == 201
    assert field(response, "Upload-Offset") == str(len(BODY))
    assert field(response, "Upload-Complete") == "?1"
    assert (harness.storage.root / PATH).read_bytes() == BODY


def test_a_plain_put_gets_no_104(harness: Harness) -> None:
    channel, transport = harness.connect()
    head = creation_head().replace(b"Upload-Draft-Interop-Version: 6\r\n", b"")
    channel.dataReceived(head + BODY)
    assert b" 104 " not in transport.value()
    assert b"\r\nUpload-Offset:" not in transport.value()
    assert status_of(transport.value()) == 201


def test_a_cut_creation_is_resumed_from_where_it_broke(harness: Harness) -> None:
    target = start_cut_upload(harness, 300)
    assert visible_files(harness.storage.root) == []  # never visible
    channel, transport = harness.connect()
    channel.dataReceived(request("HEAD", target))
    head = transport.value()
    assert status_of(head) == 204
    assert (field(head, "Upload-Offset"), field(head, "Upload-Complete")) == ("300", "?0")
    assert field(head, "Cache-Control") == "no-store"
    channel.dataReceived(patch(target, 300, len(BODY) - 300) + BODY[300:])
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / PATH).read_bytes() == BODY


def test_an_append_waits_for_another_process_to_let_go(harness: Harness) -> None:
    target = start_cut_upload(harness, 100)
    upload_id = target.rsplit("/", 1)[1][:32]
    # Another worker process still holds the upload (its client's old connection lingers).
    other = LocalStorage(harness.storage.root, fsync=False)
    held = other.reopen(upload_id)
    channel, transport = harness.connect()
    channel.dataReceived(patch(target, 100, len(BODY) - 100) + BODY[100:150])
    assert transport.value() == b""  # not decided yet ...
    assert transport.producerState == "paused"  # ... and nothing more is read meanwhile
    assert harness.storage.claimed() == {upload_id}
    harness.clock.advance(RELEASE_POLL)
    assert transport.value() == b""  # still held
    held.close()  # the other process lets go
    harness.clock.advance(RELEASE_POLL)
    assert transport.producerState == "producing"
    channel.dataReceived(BODY[150:])
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / PATH).read_bytes() == BODY


def test_an_upload_another_process_never_lets_go_of_gets_423(harness: Harness) -> None:
    target = start_cut_upload(harness, 100)
    other = LocalStorage(harness.storage.root, fsync=False)
    held = other.reopen(target.rsplit("/", 1)[1][:32])
    channel, transport = harness.connect()
    channel.dataReceived(request("DELETE", target))
    harness.clock.advance(RELEASE_WAIT + 2 * RELEASE_POLL)
    assert transport.value().startswith(b"HTTP/1.1 423 Locked\r\n")  # (tus clients retry)
    assert b"\r\nRetry-After: 1\r\n" in transport.value()
    assert transport.value().endswith(b"\r\n\r\nupload is in use by another request\n")
    held.close()
    assert harness.storage.describe(held.id).received == 100  # nothing was cancelled


def test_a_head_while_the_creation_still_sends_terminates_it(harness: Harness) -> None:
    first, first_transport = harness.connect()
    first.dataReceived(creation_head() + BODY[:200])  # stalled, not broken
    target = resource_of(first_transport.value())
    channel, transport = harness.connect()
    channel.dataReceived(request("HEAD", target))
    assert status_of(transport.value()) == 204
    assert field(transport.value(), "Upload-Offset") == "200"
    assert first_transport.disconnecting  # the old request was cut
    first.dataReceived(BODY[200:300])  # (anything it still delivers is not stored)
    cut(first)
    channel.dataReceived(patch(target, 200, len(BODY) - 200) + BODY[200:])
    assert status_of(transport.value()) == 201
    assert (harness.storage.root / PATH).read_bytes() == BODY


def test_of_two_appends_at_once_the_first_wins(harness: Harness) -> None:
    target = start_cut_upload(harness, 100)
    first, first_transport = harness.connect()
    first.dataReceived(patch(target, 100, len(BODY) - 100) + BODY[100:200])
    second, second_transport = harness.connect()
    second.dataReceived(patch(target, 100, len(BODY) - 100) + BODY[100:200])
    assert status_of(second_transport.value()) == 409
    first.dataReceived(BODY[200:])
    assert status_of(first_transport.value()) == 201
    assert (harness.storage.root / PATH).read_bytes() == BODY


def test_a_plain_retry_of_the_slot_drops_the_abandoned_upload(harness: Harness) -> None:
    target = start_cut_upload(harness, 100)
    channel, transport = harness.connect()
    plain = creation_head().replace(b"Upload-Draft-Interop-Version: 6\r\n", b"")
    channel.dataReceived(plain + BODY)
    assert status_of(transport.value()) == 201
    assert sorted(p.name for p in harness.storage.partial_dir.iterdir()) == []
    channel.dataReceived(request("HEAD", target))
    assert status_of(transport.value()) == 404


def test_resumable_false_ignores_the_draft(harness: Harness) -> None:
    server = harness.config.server
    object.__setattr__(server, "resumable", False)
    channel, transport = harness.connect()
    channel.dataReceived(creation_head() + BODY)
    assert b" 104 " not in transport.value()
    assert status_of(transport.value()) == 201


def test_a_request_still_waiting_gives_way_to_a_newer_one(harness: Harness) -> None:
    # A PATCH waits for another process to let go; its client gives up on it (its reset is
    # not seen: nothing is read while it waits) and asks how far the upload got. The old
    # PATCH must not append after that answer, or the offset the client got would be wrong.
    target = start_cut_upload(harness, 100)
    upload_id = target.rsplit("/", 1)[1][:32]
    other = LocalStorage(harness.storage.root, fsync=False)
    held = other.reopen(upload_id)
    old, old_transport = harness.connect()
    old.dataReceived(patch(target, 100, len(BODY) - 100) + BODY[100:400])
    new, new_transport = harness.connect()
    new.dataReceived(request("HEAD", target))
    harness.clock.advance(RELEASE_POLL)
    assert status_of(old_transport.value()) == 409
    assert b"newer request" in old_transport.value()
    assert new_transport.value() == b""  # still waiting for the other process
    held.close()
    harness.clock.advance(RELEASE_POLL)
    assert status_of(new_transport.value()) == 204
    assert field(new_transport.value(), "Upload-Offset") == "100"
    assert harness.storage.describe(upload_id).received == 100


def test_a_holder_lets_go_of_an_upload_another_process_claims(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(creation_head() + BODY[:250])  # stalled, as after a network switch
    upload_id = resource_of(transport.value()).rsplit("/", 1)[1][:32]
    other = LocalStorage(harness.storage.root, fsync=False)
    other.claim(upload_id)  # a HEAD reached another worker
    harness.clock.advance(RELEASE_POLL)
    assert transport.disconnecting  # the stalled request is cut ...
    taken = other.reopen(upload_id)  # ... and the other process holds the upload
    assert taken.received == 250
    taken.close()


def test_an_upload_that_has_all_of_its_size_is_stored_though_no_request_said_complete(
    harness: Harness,
) -> None:
    # tus-js-client with a Node stream says "Upload-Complete: ?0" on every request; the size
    # is signed, so nothing can follow once all of it is in.
    target = start_cut_upload(harness, 300)
    channel, transport = harness.connect()
    head = patch(target, 300, len(BODY) - 300).replace(
        b"Upload-Complete: ?1", b"Upload-Complete: ?0"
    )
    channel.dataReceived(head + BODY[300:])
    response = transport.value()
    assert status_of(response) == 201
    assert (field(response, "Upload-Offset"), field(response, "Upload-Complete")) == ("768", "?1")
    assert (harness.storage.root / PATH).read_bytes() == BODY
    # A client that then says so, with an empty last part, is told it is done ...
    channel, transport = harness.connect()
    channel.dataReceived(patch(target, len(BODY), 0))
    assert status_of(transport.value()) == 201
    # ... but nothing can be appended any more.
    channel, transport = harness.connect()
    channel.dataReceived(patch(target, len(BODY) - 1, 1) + b"x")
    assert status_of(transport.value()) == 400
    assert b"#completed-upload" in transport.value()


def test_an_append_while_the_creation_still_sends_terminates_it(harness: Harness) -> None:
    # The draft's rule: the request under way is terminated before the new one is handled.
    first, first_transport = harness.connect()
    first.dataReceived(creation_head() + BODY[:200])  # stalled after a network switch
    target = resource_of(first_transport.value())
    channel, transport = harness.connect()
    channel.dataReceived(patch(target, 200, len(BODY) - 200) + BODY[200:])
    assert first_transport.disconnecting
    assert status_of(transport.value()) == 201
    cut(first)
    assert (harness.storage.root / PATH).read_bytes() == BODY
