"""One upload, from its admission to its answer: the only owner of its state.

An `Upload` holds the grant, the storage partial, the byte count and the metrics of one PUT,
and moves through named states along one table of transitions::

    admitted ──▶ receiving ──▶ committing ──▶ answered
        │            │
        ├────────────┼──────▶ aborted
        └────────────┴──────▶ kept

A resumable upload (its partial is reopenable) whose request ends before the whole upload is
in, because the request said it is one part or because its connection broke, ends as kept:
its partial stays in storage for a later request to append to (`hmacfs.http.resumable`).

The channel, the request and the splicer only feed it (`receive`, `received_directly`) and
tell it what happened (`commit`, `abort`); whether the upload is over, how it is counted and
what becomes of its partial is decided here, in `_end`, and nowhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hmacfs.core.auth import Grant
from hmacfs.core.printable import printable
from hmacfs.core.refusals import Conflict, Refusal, StorageFailure
from hmacfs.metrics import Metrics
from hmacfs.storage.backend import CompareOnThread, Partial

_log = Logger(namespace="hmacfs.http")

BlockingRunner = Callable[..., "defer.Deferred[Any]"]


class State(enum.Enum):
    ADMITTED = "admitted"  # the headers were accepted; no body byte yet
    RECEIVING = "receiving"  # body bytes are arriving
    COMMITTING = "committing"  # the whole body is in; it is being made visible
    ANSWERED = "answered"  # the commit ended (201, or 409/507/...) and the client was told
    ABORTED = "aborted"  # ended without a commit (disconnect, cut off, bad body)
    KEPT = "kept"  # a resumable upload's request ended first: its partial is kept to resume

    # Each state is one object: hashed by identity in C, not by name in Python (Enum's own
    # hash), for the lookups in TRANSITIONS each move makes.
    __hash__ = object.__hash__


#: The only moves an upload can make.
TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.ADMITTED: frozenset({State.RECEIVING, State.COMMITTING, State.ABORTED, State.KEPT}),
    State.RECEIVING: frozenset({State.COMMITTING, State.ABORTED, State.KEPT}),
    State.COMMITTING: frozenset({State.ANSWERED, State.KEPT}),
    State.ANSWERED: frozenset(),
    State.ABORTED: frozenset(),
    State.KEPT: frozenset(),
}

#: Told the outcome of a commit (201 with the file, or the refusal) before the upload ends.
Answer = Callable[[int, Refusal | None], None]


class Upload:
    """One PUT body (or one part of a resumable upload) on its way into storage."""

    def __init__(  # noqa: PLR0917 (one per upload: a class called with keywords builds a dict)
        self,
        grant: Grant,
        partial: Partial,
        compare: bool,
        metrics: Metrics,
        run_blocking: BlockingRunner,
        clock: Callable[[], float],
        ended: Callable[[Upload], None],
        completes: bool = True,
        resumed: bool = False,
    ) -> None:
        """`compare`: a file of the same size is stored at the path already, so the body is
        compared with it (an identical one is a retry that gets its 201). `ended` is called
        once, when the upload is over, whichever way. `completes`: whether this request's
        body completes the upload (a resumable upload may come in parts); `resumed`: the
        request appends to a partial an earlier request left."""
        self.grant = grant
        self.partial = partial
        self.compare = compare
        self.completes = completes
        self.resumed = resumed
        #: Where the partial stood when this request began.
        self.offset = partial.received
        self.state = State.ADMITTED
        self.status: int | None = None
        self._metrics = metrics
        self._run_blocking = run_blocking
        self._clock = clock
        self._ended = ended
        self.started = clock()
        metrics.upload_started()

    def __repr__(self) -> str:
        return f"<Upload {self.id} {self.rel} {self.state.value} {self.received}/{self.size}>"

    @property
    def id(self) -> str:
        return self.partial.id

    @property
    def name(self) -> str:
        """The partial's name, for the sweeper's list of live partials."""
        return self.partial.name

    @property
    def rel(self) -> str:
        return self.partial.rel

    @property
    def size(self) -> int:
        return self.partial.size

    @property
    def received(self) -> int:
        return self.partial.received

    @property
    def resumable(self) -> bool:
        return self.partial.reopenable

    @property
    def over(self) -> bool:
        return not TRANSITIONS[self.state]

    @property
    def interruptible(self) -> bool:
        """Whether cutting the connection now would abort it (its body is still coming)."""
        return self.state in (State.ADMITTED, State.RECEIVING)

    def _move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise RuntimeError(f"upload {self.id}: no move from {self.state.value} to {to.value}")
        self.state = to

    # -- the body ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Append body bytes. Raises a Refusal (too long, storage failure): the caller then
        refuses the request and aborts the upload."""
        self._receiving()
        self.partial.write(data)
        self._metrics.bytes_received(len(data))
        if self.resumed:
            self._metrics.bytes_resumed(len(data))

    def fileno(self) -> int:
        """The descriptor the body may be appended to directly (splice)."""
        self._receiving()
        return self.partial.fileno()

    def failed(self, error: OSError) -> StorageFailure:
        """The refusal for an append to `fileno()` that failed with `error`."""
        return self.partial.failed(error)

    def received_directly(self, count: int) -> None:
        """Count `count` body bytes appended to `fileno()`. Raises TooLarge past the size."""
        self._receiving()
        self.partial.wrote(count)
        self._metrics.bytes_received(count)
        if self.resumed:
            self._metrics.bytes_resumed(count)

    def _receiving(self) -> None:
        if self.state is State.ADMITTED:
            self._move(State.RECEIVING)
        elif self.state is not State.RECEIVING:
            raise StorageFailure("upload already closed")

    # -- the end ----------------------------------------------------------------------------

    def commit(self, answer: Answer) -> None:
        """The whole body is in: make it visible (inline when that waits for no disk, else on
        a thread), tell `answer` the outcome, then end as answered."""
        self._move(State.COMMITTING)
        partial, compare = self.partial, self.compare
        if partial.can_commit_inline(compare):
            # Fast mode: creating names waits for no disk, so the reactor does it at once
            # (without a Deferred: this is most of what a small upload costs).
            try:
                partial.commit(compare, inline=True)
            except CompareOnThread:
                # A concurrent upload linked the path first: compare the bodies, on a thread.
                d = self._run_blocking(partial.commit, True)
            except Exception:
                self._failed(Failure(), answer)
                return
            else:
                self._answer(answer, 201, None)
                return
        else:
            d = self._run_blocking(partial.commit, compare)
        d.addCallbacks(
            lambda _: self._answer(answer, 201, None), self._failed, errbackArgs=(answer,)
        )

    def _failed(self, failure: Failure, answer: Answer) -> None:
        error = failure.value
        if isinstance(error, Refusal):
            if isinstance(error, StorageFailure):
                _log.error(
                    "storing {path} failed: {reason}",
                    path=printable(self.rel),
                    reason=printable(error.text),
                )
            elif isinstance(error, Conflict):
                # What is at the path, found by the commit (a small upload read whole is not
                # looked up first: `UploadSite.admit_put`): a refusal, as when found before.
                self._metrics.refused(error.status, error.reason, self.grant.scheme)
            self._answer(answer, error.status, error)
            return
        _log.failure("storing {path} failed", failure, path=printable(self.rel))
        self._answer(answer, 500, None)

    def _answer(self, answer: Answer, status: int, refusal: Refusal | None) -> None:
        # Answer before ending: a shutdown waiting for this upload closes the connection only
        # after the answer is written.
        try:
            answer(status, refusal)
        except Exception:  # the upload still ends, and is counted
            _log.failure("answering the upload of {path} failed", path=printable(self.rel))
        self._end(State.ANSWERED, status)

    def finish(self, answer: Answer, part_status: int) -> None:
        """The request's body is in: commit the upload if it is complete, which a resumable
        upload also is once it has all of its (signed) size even if no request said so
        (some clients never do); else keep the part (`part_status`)."""
        if not self.completes and self.received == self.size:
            self.completes = True
            self.partial.by_size = True
        if self.completes:
            self.commit(answer)
        else:
            self.keep(answer, part_status)

    def keep(self, answer: Answer, status: int) -> None:
        """This request's part of a resumable upload is in, and the upload is not complete:
        keep the partial for the next part, tell `answer` (`status`), end as kept."""
        self._move(State.COMMITTING)
        closed = self.partial.close()
        if isinstance(closed, defer.Deferred):
            # (an object store answers once what arrived is stored and the upload let go of;
            # it fires with a Refusal when not all of it could be)
            closed.addBoth(lambda outcome: self._kept(answer, status, outcome))
            return
        self._kept(answer, status)

    def _kept(self, answer: Answer, status: int, outcome: object = None) -> None:
        if isinstance(outcome, Refusal):
            self._answer(answer, outcome.status, outcome)  # (what is stored stays kept)
            return
        self._metrics.partial_kept()
        try:
            answer(status, None)
        except Exception:
            _log.failure("answering the upload of {path} failed", path=printable(self.rel))
        self._end(State.KEPT, status)

    def abort(self, status: int) -> None:
        """The body will not complete (disconnect, cut off, refused mid-body, shutdown): drop
        the partial and end as aborted, or, for a resumable upload, keep what arrived and end
        as kept. Nothing happens once the body is in (a commit under way finishes on its own)
        or the upload is over."""
        if not self.interruptible:
            return
        if self.resumable:
            closed = self.partial.close()
            if isinstance(closed, defer.Deferred):
                # (an object store stores what arrived first: the upload is over, and a
                # shutdown may go on, once it has)
                self._move(State.COMMITTING)
                closed.addBoth(lambda _: self._abandoned(status))
                return
            self._abandoned(status)
            return
        self.partial.abort()
        self._end(State.ABORTED, status)

    def _abandoned(self, status: int) -> None:
        self._metrics.partial_kept()
        self._end(State.KEPT, status)

    def _end(self, state: State, status: int) -> None:
        self._move(state)
        self.status = status
        self._metrics.upload_finished(
            status, self.grant.scheme, self.received, self._clock() - self.started
        )
        self._ended(self)
