"""The Upload state machine: its table of moves, and that it alone ends an upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer

from hmacfs.core.auth import Grant
from hmacfs.core.refusals import Conflict, Refusal, StorageFailure, TooLarge
from hmacfs.http.upload import TRANSITIONS, State, Upload
from hmacfs.metrics import DISCONNECTED, Metrics
from hmacfs.storage.local import LocalStorage


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.storage = LocalStorage(tmp_path / "files", fsync=False)
        self.metrics = Metrics()
        self.ended: list[Upload] = []
        self.on_thread: list[str] = []
        self.answers: list[tuple[int, Refusal | None]] = []

    def run_blocking(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        self.on_thread.append(f.__name__)
        return defer.maybeDeferred(f, *args)

    def upload(self, rel: str = "a/b.txt", size: int = 5, *, compare: bool = False) -> Upload:
        partial = self.storage.begin(rel, size, "text/plain", scheme="v")
        grant = Grant(rel, size, "text/plain", "v", None, None)
        return Upload(
            grant,
            partial,
            compare=compare,
            metrics=self.metrics,
            run_blocking=self.run_blocking,
            clock=lambda: 100.0,
            ended=self.ended.append,
        )

    def answer(self, status: int, refusal: Refusal | None) -> None:
        self.answers.append((status, refusal))

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_every_state_is_in_the_table_and_only_the_ends_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(State)
    assert {state for state, moves in TRANSITIONS.items() if not moves} == {
        State.ANSWERED,
        State.ABORTED,
        State.KEPT,
    }
    # Once the body is in, nothing can abort it: the commit (or keeping a part) ends it.
    assert TRANSITIONS[State.COMMITTING] == {State.ANSWERED, State.KEPT}


def test_a_whole_upload_ends_answered_once(harness: Harness) -> None:
    upload = harness.upload()
    assert upload.state is State.ADMITTED and upload.interruptible
    assert harness.count("hmacfs_uploads_in_flight") == 1
    upload.receive(b"hel")
    assert upload.state is State.RECEIVING
    upload.receive(b"lo")
    upload.commit(harness.answer)
    assert upload.state is State.ANSWERED and upload.over
    assert harness.answers == [(201, None)]
    assert harness.ended == [upload]
    assert (harness.storage.root / "a" / "b.txt").read_bytes() == b"hello"
    assert harness.count("hmacfs_uploads_total", status="201", scheme="v") == 1
    assert harness.count("hmacfs_uploads_in_flight") == 0
    # In fast mode with nothing to compare, the commit made no thread hop.
    assert harness.on_thread == []


def test_an_abort_drops_the_partial_and_ends_once(harness: Harness) -> None:
    upload = harness.upload()
    upload.receive(b"he")
    upload.abort(DISCONNECTED)
    upload.abort(DISCONNECTED)  # a second word changes nothing
    assert upload.state is State.ABORTED and upload.status == DISCONNECTED
    assert harness.ended == [upload]
    assert harness.count("hmacfs_uploads_total", status="499", scheme="v") == 1
    with pytest.raises(StorageFailure):
        upload.receive(b"llo")  # nothing more goes to a dropped upload
    with pytest.raises(RuntimeError):
        upload.commit(harness.answer)  # and it cannot be committed
    assert harness.answers == []


def test_a_commit_under_way_is_not_aborted(harness: Harness) -> None:
    upload = harness.upload()
    upload.receive(b"hello")
    held: defer.Deferred[Any] = defer.Deferred()
    harness.storage.fsync = True  # a durable commit goes to a thread: hold it there
    upload._run_blocking = lambda f, *args: held.addCallback(lambda _: f(*args))
    upload.commit(harness.answer)
    assert upload.state is State.COMMITTING and not upload.interruptible
    upload.abort(DISCONNECTED)  # the client went away while the commit runs
    assert upload.state is State.COMMITTING
    held.callback(None)
    assert upload.state is State.ANSWERED and harness.answers == [(201, None)]
    assert harness.ended == [upload]


def test_a_body_past_its_size_is_refused_by_the_partial(harness: Harness) -> None:
    upload = harness.upload(size=3)
    with pytest.raises(TooLarge):
        upload.receive(b"four")
    upload.abort(TooLarge.status)
    assert harness.count("hmacfs_uploads_total", status="413", scheme="v") == 1


def test_a_conflicting_commit_is_answered_with_its_refusal(harness: Harness) -> None:
    first = harness.upload()
    first.receive(b"first")
    second = harness.upload()
    second.receive(b"other")
    first.commit(harness.answer)
    second.commit(harness.answer)  # linked first by the other: bodies compared on a thread
    assert harness.answers[0] == (201, None)
    status, refusal = harness.answers[1]
    assert status == 409 and isinstance(refusal, Conflict)
    assert second.state is State.ANSWERED and second.status == 409
    assert "commit" in harness.on_thread


def test_an_identical_retry_is_answered_201(harness: Harness) -> None:
    first = harness.upload()
    first.receive(b"hello")
    first.commit(harness.answer)
    retry = harness.upload(compare=True)
    retry.receive(b"hello")
    retry.commit(harness.answer)
    assert [status for status, _ in harness.answers] == [201, 201]


def test_an_answer_that_fails_still_ends_the_upload(harness: Harness) -> None:
    upload = harness.upload()
    upload.receive(b"hello")

    def broken(status: int, refusal: Refusal | None) -> None:
        raise RuntimeError("the connection went")

    upload.commit(broken)
    assert upload.over and harness.ended == [upload]
    assert harness.count("hmacfs_uploads_total", status="201", scheme="v") == 1


def test_an_upload_has_an_identity_of_its_own(harness: Harness) -> None:
    one, two = harness.upload("x/1"), harness.upload("x/2")
    assert len(one.id) == 32 and int(one.id, 16) >= 0
    assert one.id != two.id
