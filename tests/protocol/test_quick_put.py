"""PUTs the channel takes whole from one read (`hmacfs.http.fast.quick_put`).

What it answers must be the full path's answer, header for header, with the same file stored,
the same metrics and the same log line; whatever it declines must be left untouched (nothing
written, nothing stored, nothing counted) for the full path, which then answers it as always.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from hmacfs.core.settings import HttpSettings
from hmacfs.http.fast.quick_put import take_put
from hmacfs.http.upload import Upload
from tests.helpers.config import make_config
from tests.helpers.files import partial_files, visible_files
from tests.helpers.signing import mac_v1, mac_v2
from tests.protocol.test_quick_get import parse
from tests.protocol.test_upload_protocol import Harness, put_head, status_of


def signed(path: str, body: bytes, *extra: str) -> bytes:
    return put_head(path, len(body), f"v={mac_v1(path, len(body))}", *extra) + body


def counts(harness: Harness, prefix: str = "hmacfs_upload") -> dict[str, float]:
    """The upload metrics (those whose name begins with `prefix`), by sample name and
    labels."""
    out: dict[str, float] = {}
    registry: Any = harness.site.metrics.registry
    for family in registry.collect():
        if family.name.startswith(prefix):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # (when each series began)
                out[f"{sample.name}{sorted(sample.labels.items())}"] = sample.value
    return out


def quick(harness: Harness, data: bytes) -> bytes:
    channel, transport = harness.connect()
    assert take_put(channel, data), "the quick path declined"
    assert channel.requests == []
    return transport.value()


def full(harness: Harness, data: bytes) -> bytes:
    harness.site.fast.enabled = False
    try:
        channel, transport = harness.connect()
        channel.dataReceived(data)
        return transport.value()
    finally:
        harness.site.fast.enabled = True


def same_answer(quick_answer: bytes, full_answer: bytes) -> tuple[int, dict[str, str], bytes]:
    got = parse(quick_answer)
    assert got == parse(full_answer)
    return got


@pytest.fixture
def twins(storage_dir: Path) -> tuple[Harness, Harness]:
    """Two sites, each on a storage directory of its own: one for each path."""
    (storage_dir / "q").mkdir(parents=True)
    (storage_dir / "f").mkdir(parents=True)
    return (
        Harness(make_config(storage_dir / "q", max_upload_size=1000)),
        Harness(make_config(storage_dir / "f", max_upload_size=1000)),
    )


@pytest.mark.parametrize(
    "extra",
    [(), ("Origin: https://web.example",), ("Content-Type: image/png", "Accept: */*")],
)
def test_a_stored_upload_is_answered_as_the_full_path_answers(
    twins: tuple[Harness, Harness], extra: tuple[str, ...]
) -> None:
    fast, plain = twins
    body = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    data = signed("a1/photo.png", body, *extra)
    status, headers, answer_body = same_answer(quick(fast, data), full(plain, data))
    assert (status, answer_body) == (201, b"")
    assert headers["content-length"] == "0"
    for harness in twins:
        assert (harness.storage.root / "a1" / "photo.png").read_bytes() == body
        assert partial_files(harness.storage) == []
        assert harness.site.uploads == set()
    stored = [h.storage.lookup("a1/photo.png") for h in twins]
    assert stored[0].content_type == stored[1].content_type
    assert counts(fast) == counts(plain)


def test_a_retry_and_a_conflict_are_answered_as_the_full_path_answers(
    twins: tuple[Harness, Harness],
) -> None:
    fast, plain = twins
    first = signed("r1/a.txt", b"same")
    for harness in twins:
        channel, transport = harness.connect()
        channel.dataReceived(first)
        assert status_of(transport.value()) == 201
    status, _, _ = same_answer(quick(fast, first), full(plain, first))
    assert status == 201  # an identical retry (compared on a thread)
    other = signed("r1/a.txt", b"diff")
    status, headers, answer_body = same_answer(quick(fast, other), full(plain, other))
    assert (status, answer_body) == (409, b"file already exists\n")
    assert "connection" not in headers  # the connection stays open, as on the full path
    for harness in twins:
        assert (harness.storage.root / "r1" / "a.txt").read_bytes() == b"same"
        assert partial_files(harness.storage) == []
    assert counts(fast) == counts(plain)


def occupy(harness: Harness, what: str) -> None:
    """Put `what` at r2/a.txt of `harness`'s storage, as the storage itself would."""
    storage = harness.storage
    if what == "a file of another size":
        partial = storage.begin("r2/a.txt", 5, "text/plain")
        partial.write(b"other")
        partial.commit()
    elif what == "an expired file":  # (the very body uploaded again: no retry of it either)
        partial = storage.begin("r2/a.txt", 4, "text/plain", expires=harness.clock.seconds() - 1)
        partial.write(b"same")
        partial.commit()
    elif what == "a directory":
        (storage.root / "r2" / "a.txt").mkdir(parents=True)
    else:
        (storage.root / "r2").mkdir()
        (storage.root / "r2" / "a.txt").symlink_to(storage.root.parent)


@pytest.mark.parametrize(
    "what", ["a file of another size", "an expired file", "a directory", "a link out"]
)
def test_what_is_at_the_path_is_refused_as_the_full_path_refuses(
    twins: tuple[Harness, Harness], what: str
) -> None:
    # The quick path leaves finding it to the commit; the full path looks before the body.
    fast, plain = twins
    for harness in twins:
        occupy(harness, what)
    before = [visible_files(h.storage.root) for h in twins]
    data = signed("r2/a.txt", b"same")
    status, headers, answer_body = parse(quick(fast, data))
    full_status, full_headers, full_body = parse(full(plain, data))
    reason = b"path is in use\n" if what in ("a directory", "a link out") else None
    assert (status, answer_body) == (full_status, full_body) == (
        409,
        reason or b"file already exists\n",
    )
    # Refused before its body was read, the full path's answer closes the connection; here
    # the body is in, and the connection stays open for the client's next request.
    assert full_headers.pop("connection") == "close"
    assert headers == full_headers
    assert [visible_files(h.storage.root) for h in twins] == before
    for harness in twins:
        assert partial_files(harness.storage) == []
        assert harness.site.uploads == set()
    # Counted as a refusal either way; here also as an upload (its body was read) that
    # ended in a 409.
    assert counts(fast, "hmacfs_refusals") == counts(plain, "hmacfs_refusals") == {
        "hmacfs_refusals_total[('reason', 'conflict'), ('status', '409')]": 1.0
    }
    assert counts(fast)["hmacfs_uploads_total[('scheme', 'v'), ('status', '409')]"] == 1


def test_a_retry_is_looked_up_first_when_the_quotas_need_to_know(storage_dir: Path) -> None:
    # A retry of a stored upload adds nothing: a free-space limit must not refuse it.
    settings = replace(make_config(storage_dir, max_upload_size=1000).quota, min_free_space=1)
    harness = Harness(replace(make_config(storage_dir, max_upload_size=1000), quota=settings))
    data = signed("q1/a.txt", b"same")
    assert status_of(quick(harness, data)) == 201
    full_disk = replace(settings, min_free_space=1 << 62)
    harness.site.config = replace(harness.site.config, quota=full_disk)
    channel, transport = harness.connect()
    channel.dataReceived(signed("q2/a.txt", b"same"))  # (refused: the quick path declines)
    assert status_of(transport.value()) == 507
    assert status_of(quick(harness, data)) == 201  # (the quick path took it: looked up)
    assert (storage_dir / "q1" / "a.txt").read_bytes() == b"same"


def test_the_cors_settings_apply_to_its_answers(storage_dir: Path) -> None:
    config = make_config(storage_dir, max_upload_size=1000)
    settings = HttpSettings(cors_origins=("https://web.example",), cors_credentials=True)
    harness = Harness(replace(config, http=settings))
    for n, origin in enumerate(("https://web.example", "https://evil.example")):
        data = signed(f"c{n}/a.txt", b"a", f"Origin: {origin}")
        _, headers, _ = parse(quick(harness, data))
        slow = full(harness, signed(f"c{n}/b.txt", b"a", f"Origin: {origin}"))
        assert parse(slow)[1] == headers
        assert headers["vary"] == "Origin"
    assert headers.get("access-control-allow-origin") is None  # the last one was not allowed


def test_its_answers_follow_a_reload_of_the_cors_settings(storage_dir: Path) -> None:
    """A success head made once is not sent again under other [http] settings."""
    config = make_config(storage_dir, max_upload_size=1000)
    harness = Harness(config)
    origin = "Origin: https://web.example"
    for n in range(2):
        _, headers, _ = parse(quick(harness, signed(f"r{n}/a.txt", b"a", origin)))
        assert headers["access-control-allow-origin"] == "*"
    only = HttpSettings(cors_origins=("https://app.example",))
    harness.site.reconfigure(replace(config, http=only))
    _, headers, _ = parse(quick(harness, signed("r2/a.txt", b"a", origin)))
    assert "access-control-allow-origin" not in headers
    assert headers == parse(full(harness, signed("r3/a.txt", b"a", origin)))[1]


def test_a_commit_error_is_answered_as_the_full_path_answers(
    twins: tuple[Harness, Harness],
) -> None:
    fast, plain = twins
    # Admitted while the path is free; by the commit, a directory has taken it.
    def taken_by_a_directory(self: Any, upload: Any) -> None:
        (self.root / "e2" / "a.txt").mkdir(parents=True)
        original(self, upload)

    original = type(fast.storage)._link_into_place
    for harness in twins:
        harness.storage._link_into_place = (  # type: ignore[method-assign]
            lambda upload, s=harness.storage: taken_by_a_directory(s, upload)
        )
    data = signed("e2/a.txt", b"a")
    status, _, answer_body = same_answer(quick(fast, data), full(plain, data))
    assert (status, answer_body) == (409, b"path is in use\n")  # (as found at admission)
    assert counts(fast) == counts(plain)
    assert counts(fast, "hmacfs_refusals") == counts(plain, "hmacfs_refusals") == {
        "hmacfs_refusals_total[('reason', 'conflict'), ('status', '409')]": 1.0
    }
    for harness in twins:
        assert partial_files(harness.storage) == []


BAD_SIGNATURE = put_head("d1/a.bin", 3, "v=" + "0" * 64) + b"abc"
DECLINED = {
    "a bad signature": BAD_SIGNATURE,
    "no signature": put_head("d1/a.bin", 3, "x=1") + b"abc",
    "too large": put_head("d1/a.bin", 2000, f"v={mac_v1('d1/a.bin', 2000)}") + b"a" * 2000,
    "a short body": signed("d1/a.bin", b"abcdef")[:-2],
    "a pipelined request": signed("d1/a.bin", b"abc") + signed("d1/b.bin", b"abc"),
    "Expect": signed("d1/a.bin", b"abc", "Expect: 100-continue"),
    "Transfer-Encoding": put_head("d1/a.bin", 3, f"v={mac_v1('d1/a.bin', 3)}")
    .replace(b"Content-Length: 3", b"Transfer-Encoding: chunked")
    + b"3\r\nabc\r\n0\r\n\r\n",
    "Connection: close": signed("d1/a.bin", b"abc", "Connection: close"),
    "a repeated header": signed("d1/a.bin", b"abc", "Content-Length: 3"),
    "a resumable creation": signed(
        "d1/a.bin", b"abc", "Upload-Draft-Interop-Version: 6", "Upload-Complete: ?1"
    ),
    "HTTP/1.0": signed("d1/a.bin", b"abc").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "a non-ASCII target": signed("d1/a.bin", b"abc").replace(b"a.bin", "é.bin".encode(), 1),
    "a bad Content-Length": signed("d1/a.bin", b"abc").replace(b"Length: 3", b"Length: +3"),
    "the resumable resources": put_head("x", 3, "v=1").replace(b"/upload/x", b"/upload-resumable/x")
    + b"abc",
    "a GET": b"GET /upload/d1/a.bin HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("data", list(DECLINED.values()), ids=list(DECLINED))
def test_what_it_does_not_take_is_left_untouched(storage_dir: Path, data: bytes) -> None:
    harness = Harness(make_config(storage_dir, max_upload_size=1000))
    before = counts(harness)
    channel, transport = harness.connect()
    assert not take_put(channel, data)
    assert transport.value() == b""
    assert not transport.disconnecting
    assert visible_files(harness.storage.root) == []
    assert partial_files(harness.storage) == []
    assert harness.site.uploads == set()
    assert counts(harness) == before
    assert channel.requests == []


def test_a_refusal_it_declines_is_answered_by_the_full_path(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, max_upload_size=1000))
    channel, transport = harness.connect()
    channel.dataReceived(BAD_SIGNATURE)
    assert status_of(transport.value()) == 403
    assert visible_files(harness.storage.root) == []


def test_a_stopping_site_leaves_it_to_the_full_path(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, max_upload_size=1000))
    harness.site.stopping = True
    channel, transport = harness.connect()
    assert not take_put(channel, signed("s1/a.txt", b"a"))
    channel.dataReceived(signed("s1/a.txt", b"a"))
    assert status_of(transport.value()) == 201
    assert transport.disconnecting  # (the full path closes it after its answer)


class SlowCommits(Harness):
    """Commits go to a "thread" that finishes only when the test says so."""

    def __init__(self, storage_dir: Path) -> None:
        super().__init__(make_config(storage_dir, max_upload_size=1000), fsync=True)
        self.pending: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

        def run_blocking(f: Any, *args: Any) -> defer.Deferred[Any]:
            if f.__name__ != "commit":
                return defer.maybeDeferred(f, *args)
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append((d, f, args))
            return d

        self.site.run_blocking = run_blocking

    def finish_one(self) -> None:
        d, f, args = self.pending.pop(0)
        d.callback(f(*args))


def test_while_committed_on_a_thread_the_next_request_waits_its_turn(storage_dir: Path) -> None:
    harness = SlowCommits(storage_dir)
    channel, transport = harness.connect()
    channel.dataReceived(signed("t1/a.txt", b"first"))
    assert [f.__name__ for _, f, _ in harness.pending] == ["commit"]
    assert transport.value() == b""
    assert transport.producerState == "paused"
    # A client that sends the next request before the answer: it waits, unread.
    channel.dataReceived(b"GET /upload/t1/a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value() == b""
    harness.finish_one()
    assert transport.producerState == "producing"
    assert status_of(transport.value()) == 201
    assert transport.value().count(b"HTTP/1.1 ") == 1
    harness.clock.advance(0)
    answers = transport.value().split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"201", b"200"]
    assert answers[1].endswith(b"\r\n\r\nfirst")


def test_a_connection_gone_while_committed_on_a_thread(storage_dir: Path) -> None:
    harness = SlowCommits(storage_dir)
    channel, transport = harness.connect()
    channel.dataReceived(signed("t2/a.txt", b"kept"))
    channel.connectionLost(Exception("gone"))  # type: ignore[arg-type]
    harness.finish_one()
    assert transport.value() == b""
    assert (harness.storage.root / "t2" / "a.txt").read_bytes() == b"kept"
    assert harness.site.uploads == set()


def test_a_storage_failure_mid_body_is_refused_and_logged_as_a_put(
    storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(make_config(storage_dir, max_upload_size=1000))
    refused: list[bytes] = []
    original = harness.site.refused

    def counted(request: Any, method: bytes, refusal: Any) -> None:
        refused.append(method)
        original(request, method, refusal)

    monkeypatch.setattr(harness.site, "refused", counted)

    def no_space(self: Any, data: bytes) -> None:
        raise self.storage.failed(OSError(28, "No space left on device"))

    monkeypatch.setattr("hmacfs.storage.local.LocalPartial.write", no_space)
    channel, transport = harness.connect()
    assert take_put(channel, signed("f1/a.txt", b"abc"))
    assert status_of(transport.value()) == 507
    assert b"Connection: close" in transport.value()
    assert refused == [b"PUT"]
    assert partial_files(harness.storage) == []
    assert harness.site.uploads == set()


def test_an_upload_it_takes_is_one_upload_in_flight_until_answered(storage_dir: Path) -> None:
    harness = SlowCommits(storage_dir)
    channel, _ = harness.connect()
    channel.dataReceived(signed("t3/a.txt", b"x"))
    uploads = harness.site.uploads
    assert len(uploads) == 1
    (upload,) = uploads
    assert isinstance(upload, Upload)
    drained = harness.site.drain(60)
    assert not drained.called
    harness.finish_one()
    assert drained.called
    assert upload.status == 201


def test_a_v2_upload_without_content_type_stores_the_implied_type(
    twins: tuple[Harness, Harness],
) -> None:
    fast, plain = twins
    body = b"\xff\xd8\xff"
    data = put_head("v1/p.jpg", 3, f"v2={mac_v2('v1/p.jpg', 3, 'image/jpeg')}") + body
    same_answer(quick(fast, data), full(plain, data))
    assert fast.storage.lookup("v1/p.jpg").content_type == "image/jpeg"
    assert plain.storage.lookup("v1/p.jpg").content_type == "image/jpeg"


def test_its_transport_is_the_channel_s(storage_dir: Path) -> None:
    harness = Harness(make_config(storage_dir, max_upload_size=1000))
    channel, transport = harness.connect()
    assert isinstance(transport, StringTransport)
    channel.dataReceived(signed("t4/a.txt", b"a"))
    channel.dataReceived(signed("t4/b.txt", b"b"))
    assert transport.value().count(b"201 Created") == 2


def test_no_idle_timeout_while_committed_on_a_thread(storage_dir: Path) -> None:
    harness = SlowCommits(storage_dir)
    harness.site.timeOut = 30
    channel, transport = harness.connect()
    channel.dataReceived(signed("t5/a.txt", b"slow disk"))
    harness.clock.advance(120)
    assert not transport.disconnecting
    harness.finish_one()
    assert status_of(transport.value()) == 201
    harness.clock.advance(29)
    assert not transport.disconnecting
    harness.clock.advance(2)
    assert transport.disconnecting  # idle again after the answer: the timeout is back
