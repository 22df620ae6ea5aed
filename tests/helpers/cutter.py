"""A loopback TCP proxy that breaks connections at planned points, for tests of uploads that
must survive a lost connection (resumable uploads) and for benchmarks of the same.

A `Cutter` listens on 127.0.0.1, port 0, and forwards every connection it accepts to its
target (host, port), both ways, unchanged. It counts the bytes going from clients to the
server, over all its connections together (request heads included), and holds a plan: a
sorted list of offsets in that count. When a connection's bytes reach the next offset, the
cutter forwards them up to the offset exactly and then cuts that connection: the client gets
a reset (SO_LINGER 0, no FIN) and the server's side is closed after the last byte forwarded,
so the server sees its connection end in the middle of a request. The count stops at the
offset (the bytes after it were never forwarded), so the next offset applies to the bytes
sent from then on, by whichever connection carries them. Offsets beyond what the clients
ever send are never reached (`pending` lists them).

    with Cutter.random(server_address, times=3, total=size, seed=7) as cutter:
        run_client(cutter.url("/upload/..."))
    assert cutter.cuts_done == 3

The target can be changed while it runs (`target`); connections accepted from then on go to
the new one, which lets a test restart the server on another port behind a stable address.
A connection whose target refuses it is reset at once.

With `after_answer`, a connection is cut only once the server has sent it something (for a
resumable upload, the 104 that tells the client where to resume) and the client has read all
of that. For a server that answers a request head at once (the 104 comes before any body
byte is read), the proxy forwards nothing more of a connection after its first request head
(and the bytes read with it) until the server has answered, 5 s at most: on loopback the
kernel's buffers would otherwise take megabytes of body before the server has looked at the
head, and every cut planned in them would wait. An offset reached on a connection before
its answer waits, and the cut falls at the next bytes up of a connection that has had one.
The cut itself waits (5 s at most) until the client's socket holds nothing unread, as the
kernel's TCP table shows (/proc/net/tcp: loopback only): a reset throws away what the client
had not read, and a client that writes before it reads never sees it.

The proxy runs an asyncio loop on a thread of its own, so that the caller may block (waiting
for a client process, say). Nothing here imports pytest or hmacfs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import re
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from tests.helpers.tcp import tcp_queues

#: How long `start` waits for the listener, and `close` for the thread to end.
THREAD_TIMEOUT = 10.0
#: How long a cut waits for the client to read what it was sent (`after_answer`), at most,
#: and how often it looks.
READ_WAIT = 5.0
_READ_POLL = 0.002
_READ_SIZE = 1 << 16
#: The longest request head followed (a longer one leaves the rest of the connection untracked).
_HEAD_LIMIT = 1 << 16
_CONTENT_LENGTH = re.compile(
    rb"^content-length:[ \t]*([0-9]+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)
_CHUNKED = re.compile(rb"^transfer-encoding:.*chunked", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Cut:
    """One connection cut: where, and what it was carrying."""

    #: Where it fell in the client->server bytes of all connections: the planned offset, or
    #: later when that had to wait for an answer (`after_answer`).
    offset: int
    #: The connection, counted from 1 in the order accepted.
    connection: int
    #: The client->server bytes this connection carried, the cut included.
    connection_bytes: int
    #: The request line of the request under way ("PATCH /upload/... HTTP/1.1"), "" before
    #: one was complete.
    request: str
    #: How much of that request's body reached the server, when its framing was followed
    #: (Content-Length); None otherwise (cut in the head, chunked body, unusual head).
    body_bytes: int | None
    #: That request's Content-Length, when known as above.
    content_length: int | None
    #: The server->client bytes this connection had carried (forwarded to the client).
    answered_bytes: int = 0


class _Framing:
    """Follows the requests of one connection (Content-Length bodies) to say which request a
    byte belongs to; stops following at anything it does not understand."""

    def __init__(self) -> None:
        self.request = ""
        self.body_bytes: int | None = None
        self.content_length: int | None = None
        self._head = b""
        self._remaining = 0
        self._lost = False

    def feed(self, data: bytes) -> None:
        while data and not self._lost:
            if self._remaining:
                taken = min(self._remaining, len(data))
                self._remaining -= taken
                assert self.body_bytes is not None
                self.body_bytes += taken
                data = data[taken:]
                continue
            if not self._head:  # a new request begins
                self.request, self.body_bytes, self.content_length = "", None, None
            self._head += data
            data = b""
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _HEAD_LIMIT:
                    self._give_up()
                continue
            head, data = self._head[: end + 4], self._head[end + 4 :]
            self._head = b""
            self._start(head)

    def _start(self, head: bytes) -> None:
        head = head.lstrip(b"\r\n")
        self.request = head.split(b"\r\n", 1)[0].decode("latin-1")
        if _CHUNKED.search(head):
            self._give_up()
            return
        match = _CONTENT_LENGTH.search(head)
        self._remaining = int(match.group(1)) if match else 0
        self.content_length = self._remaining
        self.body_bytes = 0

    def _give_up(self) -> None:
        self._lost = True
        self.body_bytes = self.content_length = None


class _Link:
    """One proxied connection: the client's side and the server's."""

    def __init__(self, number: int, client: asyncio.StreamWriter) -> None:
        self.number = number
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.sent = 0
        self.received = 0
        self.answered = asyncio.Event()
        self.framing = _Framing()
        self.cut = False

    def reset_client(self) -> None:
        """Close the client's side with a reset: no FIN, unsent data dropped."""
        sock = self.client.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.transport.abort()

    def close(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None and not writer.is_closing():
                writer.close()


class Cutter:
    """A proxy in front of `target` that cuts connections at the planned `cuts` (offsets in
    the client->server bytes of all its connections; see the module's description)."""

    def __init__(
        self, target: tuple[str, int], cuts: Iterable[int] = (), *, after_answer: bool = False
    ) -> None:
        plan = sorted(cuts)
        if plan and plan[0] < 0:
            raise ValueError("offsets must not be negative")
        self._target = target
        self._after_answer = after_answer
        self._lock = threading.Lock()
        self._plan = collections.deque(plan)
        self._cuts: list[Cut] = []
        self._bytes_up = 0
        self._connections = 0
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @staticmethod
    def random_plan(times: int, total: int, seed: int, low: int = 0) -> list[int]:
        """`times` offsets in [low, total), reproducible from `seed`, far enough apart that
        each falls in a connection of its own when the client resumes after every cut: the
        range is split into `times` equal parts and each offset is drawn from the middle
        four fifths of one."""
        if times < 0 or not 0 <= low < total:
            raise ValueError("need times >= 0 and 0 <= low < total")
        rng = random.Random(seed)
        width = (total - low) / max(times, 1)
        return [int(low + width * (i + 0.1) + rng.random() * width * 0.8) for i in range(times)]

    @classmethod
    def random(
        cls,
        target: tuple[str, int],
        *,
        times: int,
        total: int,
        seed: int,
        low: int = 0,
        after_answer: bool = False,
    ) -> Cutter:
        """A cutter with a `random_plan` of `times` cuts below `total` (and from `low` on)."""
        return cls(target, cls.random_plan(times, total, seed, low), after_answer=after_answer)

    # -- what the caller reads and sets -------------------------------------------------------

    @property
    def target(self) -> tuple[str, int]:
        """Where connections accepted from now on are forwarded."""
        with self._lock:
            return self._target

    @target.setter
    def target(self, target: tuple[str, int]) -> None:
        with self._lock:
            self._target = target

    @property
    def port(self) -> int:
        """The port the proxy listens on (127.0.0.1); 0 before `start`."""
        return self._port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def url(self, path: str) -> str:
        """The URL of `path` ("/upload/...", with its query if any) through the proxy."""
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        return self.base + path

    @property
    def cuts_done(self) -> int:
        with self._lock:
            return len(self._cuts)

    @property
    def cuts(self) -> list[Cut]:
        """The cuts made so far, in order."""
        with self._lock:
            return list(self._cuts)

    @property
    def pending(self) -> list[int]:
        """The planned offsets not reached yet."""
        with self._lock:
            return list(self._plan)

    @property
    def bytes_up(self) -> int:
        """Client->server bytes forwarded so far, over all connections."""
        with self._lock:
            return self._bytes_up

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._connections

    def describe(self) -> str:
        """What happened, for an assertion message."""
        lines = [
            f"{self.connections} connections, {self.bytes_up} bytes up, "
            f"cuts pending at {self.pending}"
        ]
        lines += [
            f"cut at {c.offset}: connection {c.connection} after {c.connection_bytes} bytes up "
            f"({c.body_bytes} of {c.content_length} body bytes of {c.request!r}) and "
            f"{c.answered_bytes} down"
            for c in self.cuts
        ]
        return "\n".join(lines)

    # -- running ------------------------------------------------------------------------------

    def start(self) -> Cutter:
        """Listen and serve on a thread of its own; returns once the port is known."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="cutter", daemon=True)
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT):
            raise RuntimeError("the cutter did not start listening")
        if self._failure is not None:
            raise RuntimeError("the cutter could not listen") from self._failure
        return self

    def close(self) -> None:
        """Stop listening and drop every connection (with a reset); wait for the thread."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                loop.call_soon_threadsafe(_settle, stop)
        if thread is not None:
            thread.join(THREAD_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError("the cutter's thread did not end")

    def __enter__(self) -> Cutter:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by start (before ready) or lost with the thread
            self._failure = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop
        finally:
            server.close()
            for link in list(self._links):
                link.cut = True
                link.reset_client()
                link.close()
            # With both sides closed, every connection's task ends by itself; one still
            # connecting to the target is cancelled.
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=THREAD_TIMEOUT / 2)
            for task in self._tasks:
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._proxy(reader, writer)
        except asyncio.CancelledError:
            pass  # only `close` cancels (a cancelled task here would be logged as an error)
        finally:
            self._tasks.discard(task)

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
            link = _Link(self._connections, writer)
            host, port = self._target
        self._links.add(link)
        try:
            try:
                upstream_reader, link.server = await asyncio.open_connection(host, port)
            except OSError:
                link.reset_client()
                return
            await asyncio.gather(
                self._upstream(link, reader),
                self._downstream(link, upstream_reader),
            )
        finally:
            self._links.discard(link)
            if not link.cut:
                link.close()

    async def _upstream(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Client to server, cutting where the plan says."""
        assert link.server is not None
        try:
            while not link.cut:
                if self._after_answer and link.framing.request and not link.received:
                    # A request head is through and the server has not answered yet.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(link.answered.wait(), READ_WAIT)
                data = await reader.read(_READ_SIZE)
                if link.cut:
                    return
                if not data:
                    if link.server.can_write_eof() and not link.server.is_closing():
                        link.server.write_eof()
                    return
                cut = self._advance(len(data), may_cut=link.received > 0 or not self._after_answer)
                if cut is not None:
                    offset, kept = cut
                    data = data[:kept]
                    if self._after_answer:
                        await _until_read(link)
                        if link.cut:
                            return
                link.framing.feed(data)
                link.sent += len(data)
                link.server.write(data)
                if cut is not None:
                    self._cut(link, offset)
                    return
                await link.server.drain()
        except (ConnectionError, OSError):
            self._drop(link)

    async def _downstream(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Server to client, unchanged."""
        try:
            while not link.cut:
                data = await reader.read(_READ_SIZE)
                if link.cut:
                    return
                if not data:
                    if link.client.can_write_eof() and not link.client.is_closing():
                        link.client.write_eof()
                    return
                link.received += len(data)
                link.answered.set()
                link.client.write(data)
                await link.client.drain()
        except (ConnectionError, OSError):
            self._drop(link)

    def _advance(self, count: int, *, may_cut: bool) -> tuple[int, int] | None:
        """Count `count` more bytes up. When they reach the next planned offset and the
        connection `may_cut`: where the cut is (the offset, or the start of these bytes when
        the offset was passed on a connection that could not be cut) and how many of them to
        forward before it. The count then stops there; the offset leaves the plan, and so do
        the ones it passed."""
        with self._lock:
            start = self._bytes_up
            if not self._plan or self._plan[0] > start + count or not may_cut:
                self._bytes_up = start + count
                return None
            offset = max(self._plan.popleft(), start)
            while self._plan and self._plan[0] <= offset:
                self._plan.popleft()
            self._bytes_up = offset
            return offset, offset - start

    def _cut(self, link: _Link, offset: int) -> None:
        """Reset the client's side; close the server's once what was written has gone."""
        link.cut = True
        framing = link.framing
        cut = Cut(
            offset,
            link.number,
            link.sent,
            framing.request,
            framing.body_bytes,
            framing.content_length,
            link.received,
        )
        with self._lock:
            self._cuts.append(cut)
        link.reset_client()
        if link.server is not None:
            link.server.close()

    def _drop(self, link: _Link) -> None:
        """One side failed: reset the client's side, close the server's."""
        if link.cut:
            return
        link.cut = True
        link.reset_client()
        if link.server is not None:
            link.server.close()


async def _until_read(link: _Link) -> None:
    """Wait until the client has read everything sent to it on `link` (READ_WAIT at most)."""
    ours = link.client.get_extra_info("sockname")
    theirs = link.client.get_extra_info("peername")
    if not ours or not theirs:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_WAIT
    while loop.time() < deadline and not link.cut:
        if link.client.transport.get_write_buffer_size() == 0:
            sending = tcp_queues(ours[1], theirs[1])
            receiving = tcp_queues(theirs[1], ours[1])
            if sending is None or receiving is None:
                return  # (not in this machine's tables: nothing to wait for)
            if sending[0] == 0 and receiving[1] == 0:
                return
        await asyncio.sleep(_READ_POLL)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
