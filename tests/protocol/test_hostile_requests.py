"""Requests made to hurt, on the wire: what is refused before any body byte is read, and
numbers Twisted itself would choke on."""

from __future__ import annotations

import pytest

from hmacfs.http.site import HEALTH_CACHE
from tests.helpers.files import partial_files
from tests.helpers.signing import mac_v1
from tests.protocol.test_upload_protocol import Harness, harness, put_head, status_of

__all__ = ("harness",)  # (the fixture, used by name)


def test_a_put_below_a_stored_file_is_refused_before_its_body(harness: Harness) -> None:
    channel, transport = harness.connect()
    channel.dataReceived(put_head("f/b", 1, f"v={mac_v1('f/b', 1)}") + b"x")
    assert status_of(transport.value()) == 201
    channel, transport = harness.connect()
    head = put_head("f/b/c", 10, f"v={mac_v1('f/b/c', 10)}", "Expect: 100-continue")
    channel.dataReceived(head)
    answer = transport.value()
    assert status_of(answer) == 409
    assert b"100 Continue" not in answer
    assert partial_files(harness.storage) == []


def test_a_content_length_too_long_for_a_number_is_refused(harness: Harness) -> None:
    for target in (f"/upload/f/x?v={mac_v1('f/x', 5)}", "/upload/f/y"):
        channel, transport = harness.connect()
        head = (
            f"PUT {target} HTTP/1.1\r\nHost: up.example\r\n"
            f"Content-Length: {'5' * 5000}\r\nX-After: 1\r\n\r\n"
        )
        channel.dataReceived(head.encode() + b"body")  # (int() of it would raise)
        answer = transport.value()
        assert status_of(answer) == 413
        assert answer.count(b"HTTP/1.1 ") == 1  # one answer, and nothing admitted after it
        assert b"Content-Length too large" in answer
    assert partial_files(harness.storage) == []


def health(harness: Harness) -> bytes:
    channel, transport = harness.connect()
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: up.example\r\n\r\n")
    return transport.value()


def test_health_on_the_upload_listener_checks_the_storage_at_most_every_few_seconds(
    harness: Harness,
) -> None:
    for _ in range(20):
        assert status_of(health(harness)) == 200
    assert harness.on_thread.count("check") == 1  # (a file written and removed per check)
    harness.clock.advance(HEALTH_CACHE)
    assert status_of(health(harness)) == 200
    assert harness.on_thread.count("check") == 2


def test_health_on_the_upload_listener_tells_no_reasons(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.storage, "check", lambda: "low disk space: 12 MiB free")
    public = health(harness)
    assert status_of(public) == 503
    assert public.endswith(b'{"checks": {"storage": "fail"}, "status": "fail"}\n')
    assert b"MiB" not in public
    # The private metrics listener says why.
    report = harness.site.health().result
    assert report.checks == {"storage": "low disk space: 12 MiB free"}
