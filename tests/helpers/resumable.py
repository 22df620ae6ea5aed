"""A raw HTTP/1.1 client for resumable uploads (draft-ietf-httpbis-resumable-upload, interop
versions 3 to 8), written on plain sockets so that it sees every `104` informational response,
sends its header fields in the order it is told and can cut a connection in the middle of a
body.

It sends what Apple's URLSession sends: the creation is the app's own request (`PUT` or `POST`
to the slot URL, its header fields) with `Content-Length`, `Upload-Draft-Interop-Version: N`,
the completeness field of that version (`Upload-Incomplete: ?0` for 3, `Upload-Complete: ?1`
for 4 and later) and, from 6 on, `Upload-Length` added after them; a resumption is a `HEAD` of
the upload resource (its `Location`) and then a `PATCH` from the offset it reported
(`Content-Type: application/partial-upload` from 6 on).

Cutting a connection (`Transfer.cut`) resets it (SO_LINGER 0, so the server sees a reset, as
when a phone loses its network), after waiting, on loopback, until the server has read
everything sent (`Transfer.settle`: the TCP queues of both ends in /proc/net/tcp), so that the
offset the server reports afterwards is known.

Nothing here imports pytest or hmacfs: the benchmarks use it too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

from tests.helpers.tcp import TcpEntry, tcp_entries

#: The media type of PATCH bodies from interop version 6 on.
PARTIAL_UPLOAD = "application/partial-upload"
#: `content_type` of `patch`: what URLSession sends for the version (PARTIAL_UPLOAD from 6 on,
#: none before).
AUTO = "auto"
#: The reason phrase of the 104 in every draft's examples.
RESUMPTION_SUPPORTED = "Upload Resumption Supported"
PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
DEFAULT_TIMEOUT = 30.0
#: Bytes sent per send call; responses that arrived are looked at between two of them.
CHUNK = 16 * 1024

Headers = Sequence[tuple[str, str]]


class ProtocolError(AssertionError):
    """The server sent something that is not HTTP/1.1 (or closed in the middle of a response)."""


class Response(NamedTuple):
    """One response: `pairs` as received (order and case kept), `headers` by lower-case name
    (a field sent more than once joined with ", ")."""

    status: int
    pairs: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    reason: str = ""

    def json(self) -> object:
        return json.loads(self.body)

    def problem(self) -> dict[str, object]:
        """The application/problem+json body (AssertionError if it is not one)."""
        media = self.headers.get("content-type", "").split(";")[0].strip().lower()
        assert media == "application/problem+json", (self.status, self.pairs, self.body)
        value = self.json()
        assert isinstance(value, dict), value
        return value

    def names(self) -> list[str]:
        """The field names in the order they came."""
        return [name for name, _ in self.pairs]


class Exchange(NamedTuple):
    """A request with a body: the informational responses, then the final one (None when the
    connection was cut or ended first), and how many body bytes were sent."""

    informational: list[Response]
    final: Response | None
    sent: int

    @property
    def location(self) -> str | None:
        """The Location of the first 104 (the upload resource), if one came."""
        for response in self.informational:
            if response.status == 104 and "location" in response.headers:
                return response.headers["location"]
        return None


# -- the wire form of the draft's header fields ----------------------------------------------


def completeness_name(version: int | str) -> str:
    """The completeness field of `version`: Upload-Incomplete up to 3, then Upload-Complete."""
    return "Upload-Incomplete" if _number(version) <= 3 else "Upload-Complete"


def completeness_field(version: int | str, complete: bool) -> tuple[str, str]:
    """The completeness field saying `complete`, as `version` spells it."""
    name = completeness_name(version)
    if name == "Upload-Incomplete":
        return name, "?0" if complete else "?1"
    return name, "?1" if complete else "?0"


def says_complete(version: int | str, headers: dict[str, str]) -> bool | None:
    """What the completeness field of `version` in `headers` says (None when it is absent or
    not an sf-boolean)."""
    value = headers.get(completeness_name(version).lower())
    if value not in ("?0", "?1"):
        return None
    flag = value == "?1"
    return not flag if completeness_name(version) == "Upload-Incomplete" else flag


def parse_limit(value: str) -> dict[str, str]:
    """An Upload-Limit value (an sf-dictionary of integers) as key -> value text."""
    limits = {}
    for member in value.split(","):
        key, _, number = member.strip().partition("=")
        if key:
            limits[key.strip()] = number.strip()
    return limits


def _number(version: int | str) -> int:
    try:
        return int(version)
    except ValueError:
        return 0


# -- the connection --------------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 connection (plain or TLS) with a buffer of what was received."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        raw = socket.create_connection((host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = raw
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(raw, server_hostname=server_hostname or host)
            except BaseException:
                raw.close()
                raise
        self._buffer = bytearray()
        #: The server closed (or reset) the connection.
        self.eof = False
        self.reset = False
        self.closed = False

    @classmethod
    def to(
        cls, url: str, *, tls: ssl.SSLContext | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Connection:
        """A connection to the origin of `url` (https: with `tls`, or the system's trust)."""
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        if parts.scheme == "https":
            context = tls if tls is not None else ssl.create_default_context()
            return cls(host, parts.port or 443, tls=context, timeout=timeout)
        return cls(host, parts.port or 80, timeout=timeout)

    @property
    def local_port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def peer_port(self) -> int:
        return int(self.sock.getpeername()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_some(self, data: memoryview) -> int:
        """One send call (what fitted, at least one byte, waiting at most `timeout`)."""
        return self.sock.send(data)

    def readable(self, timeout: float) -> bool:
        """Whether something (or the end) can be read within `timeout` seconds."""
        if self.eof:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        poller = select.poll()  # (not select(): descriptors past 1023 are fine)
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))

    def receive(self, timeout: float | None = None) -> bool:
        """Read what is there into the buffer, waiting up to `timeout` (default: the
        connection's). False at the end of the connection (or a reset)."""
        if self.eof:
            return False
        if not self.readable(self.timeout if timeout is None else timeout):
            raise TimeoutError(f"nothing received within {timeout or self.timeout}s")
        tls = isinstance(self.sock, ssl.SSLSocket)
        if tls:
            # Readable may mean a TLS record with nothing for us (a session ticket), or half a
            # record: never wait inside recv for more.
            self.sock.settimeout(0.0)
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except (ConnectionResetError, BrokenPipeError):
            self.eof = self.reset = True
            return False
        except ssl.SSLError:
            self.eof = True
            return False
        finally:
            if tls:
                self.sock.settimeout(self.timeout)
        if not data:
            self.eof = True
            return False
        self._buffer += data
        return True

    def poll(self, method: str) -> list[Response]:
        """The complete responses received by now, without waiting."""
        while not self.eof and self.readable(0):
            if not self.receive(0):
                break
        found: list[Response] = []
        while True:
            try:
                response = self._take(method)
            except ProtocolError:
                if found:
                    break  # (left in the buffer: the next read reports it)
                raise
            if response is None:
                return found
            found.append(response)
        return found

    def leftover(self, timeout: float | None = None) -> bytes:
        """What the server sent after the responses read, when it says it closes the
        connection: everything up to its end."""
        return self.wait_closed(timeout)

    def read_response(self, method: str, timeout: float | None = None) -> Response:
        """The next response (informational ones included), waiting for it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            response = self._take(method)
            if response is not None:
                return response
            if self.eof:
                raise ProtocolError(
                    f"connection ended before a complete response ({bytes(self._buffer)!r})"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete response; got {bytes(self._buffer)!r}")
            self.receive(remaining)

    def read_final(
        self, method: str, timeout: float | None = None
    ) -> tuple[list[Response], Response]:
        """The informational responses and the final one after them."""
        informational: list[Response] = []
        while True:
            response = self.read_response(method, timeout)
            if response.status >= 200:
                return informational, response
            informational.append(response)

    def wait_closed(self, timeout: float | None = None) -> bytes:
        """Wait until the server ends the connection; what it sent meanwhile (AssertionError
        if it is still open after `timeout`)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("the server did not close the connection")
            with contextlib.suppress(TimeoutError):
                self.receive(remaining)
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def cut(self) -> None:
        """Reset the connection (an RST, not a FIN), as a lost network does."""
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                # Not SSLSocket.unwrap: no close_notify, as when an app is killed.
                self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self, method: str) -> Response | None:
        """Parse one complete response off the front of the buffer, if there is one."""
        parsed = parse_response(bytes(self._buffer), method, eof=self.eof)
        if parsed is None:
            return None
        response, used = parsed
        del self._buffer[:used]
        return response


def parse_response(data: bytes, method: str, *, eof: bool) -> tuple[Response, int] | None:
    """The response at the start of `data` and its length in bytes, or None if `data` does not
    hold all of it yet (`eof`: nothing more will come)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if eof and data:
            raise ProtocolError(f"incomplete response head: {data!r}")
        return None
    head = data[:end].decode("latin-1").split("\r\n")
    status_line = head[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not (
        status_line[1].isdigit() and len(status_line[1]) == 3
    ):
        raise ProtocolError(f"not a status line: {head[0]!r}")
    status = int(status_line[1])
    reason = status_line[2] if len(status_line) > 2 else ""
    pairs: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ProtocolError(f"not a header field: {line!r}")
        value = value.strip(" \t")
        pairs.append((name, value))
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    start = end + 4
    if 100 <= status < 200 or method == "HEAD" or status in (204, 304):
        return Response(status, pairs, headers, b"", reason), start
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunked = _dechunk(data, start)
        if chunked is None:
            if eof:
                raise ProtocolError("connection ended in a chunked body")
            return None
        body, used = chunked
        return Response(status, pairs, headers, body, reason), used
    if "content-length" in headers:
        lengths = {v.strip() for v in headers["content-length"].split(",")}
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise ProtocolError(f"bad Content-Length: {headers['content-length']!r}")
        length = int(lengths.pop())
        if len(data) - start < length:
            if eof:
                raise ProtocolError(f"connection ended after {len(data) - start}/{length} bytes")
            return None
        return Response(status, pairs, headers, data[start : start + length], reason), (
            start + length
        )
    if not eof:
        return None  # delimited by the end of the connection
    return Response(status, pairs, headers, data[start:], reason), len(data)


def _dechunk(data: bytes, at: int) -> tuple[bytes, int] | None:
    body = bytearray()
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size_text = data[at:line_end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_text!r}") from None
        at = line_end + 2
        if size == 0:
            # Trailer fields, then an empty line.
            while True:
                line_end = data.find(b"\r\n", at)
                if line_end < 0:
                    return None
                if line_end == at:
                    return bytes(body), at + 2
                at = line_end + 2
        if len(data) < at + size + 2:
            return None
        body += data[at : at + size]
        at += size + 2


# -- a request with a body, under way --------------------------------------------------------


class Transfer:
    """A request whose body is sent a piece at a time: the responses that arrive meanwhile are
    collected; the connection can be left stalled, cut, or the request finished."""

    def __init__(self, connection: Connection, method: str, head: bytes, body: bytes) -> None:
        self.connection = connection
        self.method = method
        self.body = body
        self.sent = 0
        self.informational: list[Response] = []
        self.final: Response | None = None
        #: Why sending stopped early (the server closed or reset the connection), if it did.
        self.send_error: OSError | None = None
        connection.send(head)
        self._collect()

    @property
    def remaining(self) -> int:
        return len(self.body) - self.sent

    @property
    def location(self) -> str | None:
        return Exchange(self.informational, self.final, self.sent).location

    def send(self, count: int | None = None) -> int:
        """Send the next `count` body bytes (all that are left when None); stops early when a
        final response came or the server ended the connection. The bytes sent now."""
        stop = len(self.body) if count is None else min(len(self.body), self.sent + count)
        view = memoryview(self.body)
        started = self.sent
        while self.sent < stop and self.final is None and self.send_error is None:
            try:
                piece = view[self.sent : min(stop, self.sent + CHUNK)]
                self.sent += self.connection.send_some(piece)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError) as e:
                self.send_error = e
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                self.send_error = e
            self._collect()
        return self.sent - started

    def wait_informational(self, timeout: float = 10.0) -> Response | None:
        """The first informational response, waiting for it up to `timeout` (None when the
        final response, or the end of the connection, or nothing came first)."""
        deadline = time.monotonic() + timeout
        while not self.informational and self.final is None and not self.connection.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                self.connection.receive(remaining)
            self._collect()
        return self.informational[0] if self.informational else None

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the server has read every byte sent (loopback only: False, at once, when
        the queues cannot be seen)."""
        return wait_read_by_peer(self.connection.sock, timeout)

    def cut(self) -> None:
        """Reset the connection now."""
        self._collect()
        self.connection.cut()

    def finish(self, timeout: float | None = None) -> Response:
        """Send what is left and wait for the final response."""
        self.send()
        if self.final is None:
            informational, self.final = self.connection.read_final(self.method, timeout)
            self.informational += informational
        return self.final

    def exchange(self) -> Exchange:
        return Exchange(list(self.informational), self.final, self.sent)

    def _collect(self) -> None:
        if self.final is not None or self.connection.closed:
            return
        try:
            responses = self.connection.poll(self.method)
        except ProtocolError:
            if not self.connection.eof:
                raise
            responses = []
        for response in responses:
            if response.status < 200:
                self.informational.append(response)
            elif self.final is None:
                self.final = response


# -- requests --------------------------------------------------------------------------------


def request_head(
    method: str, url: str, headers: Iterable[tuple[str, str]], target: str | None = None
) -> bytes:
    """The request line, Host (from `url`), then `headers` in their order."""
    parts = urlsplit(url)
    if target is None:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def creation_headers(
    version: int | str,
    content_length: int,
    *,
    complete: bool = True,
    upload_length: int | None = None,
) -> list[tuple[str, str]]:
    """What URLSession adds to the app's request, in its order: Content-Length, the version,
    the completeness field, and Upload-Length (from 6 on, or when `upload_length` is given)."""
    fields = [
        ("Content-Length", str(content_length)),
        ("Upload-Draft-Interop-Version", str(version)),
        completeness_field(version, complete),
    ]
    if upload_length is None and _number(version) >= 6 and complete:
        upload_length = content_length
    if upload_length is not None:
        fields.append(("Upload-Length", str(upload_length)))
    return fields


def start_request(
    method: str,
    url: str,
    headers: Headers,
    body: bytes = b"",
    *,
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    target: str | None = None,
) -> Transfer:
    """Send the head of a request (exactly `headers`, after Host) and start a Transfer of
    `body` (nothing of it sent yet)."""
    conn = connection if connection is not None else Connection.to(url, tls=tls, timeout=timeout)
    try:
        return Transfer(conn, method, request_head(method, url, headers, target), body)
    except BaseException:
        if connection is None:
            conn.close()
        raise


def exchange(
    method: str,
    url: str,
    headers: Headers = (),
    body: bytes = b"",
    *,
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    target: str | None = None,
) -> Exchange:
    """One whole request (its headers exactly as given, Content-Length among them if wanted)
    and every response to it. The connection is closed after, unless it was given."""
    transfer = start_request(
        method, url, headers, body, connection=connection, tls=tls, timeout=timeout, target=target
    )
    try:
        final = transfer.finish()
        if connection is None and "close" in final.headers.get("connection", "").lower():
            # Nothing may follow a response the server ends the connection after (a body on
            # an answer to HEAD, say, which a client keeping the connection would misread).
            extra = transfer.connection.leftover()
            if extra:
                raise ProtocolError(
                    f"{len(extra)} bytes after the {final.status} answer to {method}: "
                    f"{extra[:200]!r}"
                )
        return transfer.exchange()
    finally:
        if connection is None:
            transfer.connection.close()


def request(
    method: str,
    url: str,
    headers: Headers = (),
    body: bytes | None = None,
    *,
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    target: str | None = None,
) -> Response:
    """One request (Content-Length added when there is a body), its final response."""
    fields = list(headers)
    if body is not None:
        fields.append(("Content-Length", str(len(body))))
    final = exchange(
        method,
        url,
        fields,
        body or b"",
        connection=connection,
        tls=tls,
        timeout=timeout,
        target=target,
    ).final
    assert final is not None
    return final


def get(url: str, headers: Headers = (), **options: object) -> Response:
    return request("GET", url, headers, **options)  # type: ignore[arg-type]


def start_create(
    url: str,
    body: bytes,
    version: int | str,
    *,
    method: str = "PUT",
    headers: Headers = (),
    complete: bool = True,
    upload_length: int | None = None,
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Transfer:
    """Start an upload creation as URLSession sends it (see `creation_headers`); the body is
    left to the caller (`Transfer.send`, `.cut`, `.finish`)."""
    fields = [*headers, *creation_headers(
        version, len(body), complete=complete, upload_length=upload_length
    )]
    return start_request(
        method, url, fields, body, connection=connection, tls=tls, timeout=timeout
    )


def create(
    url: str,
    body: bytes,
    version: int | str,
    *,
    method: str = "PUT",
    headers: Headers = (),
    complete: bool = True,
    upload_length: int | None = None,
    cut_after: int | None = None,
    settle: bool = True,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Exchange:
    """An upload creation as URLSession sends it; with `cut_after`, the connection is reset
    after that many body bytes (once the 104 came, and with `settle` once the server has read
    them), and the final response is None."""
    transfer = start_create(
        url,
        body,
        version,
        method=method,
        headers=headers,
        complete=complete,
        upload_length=upload_length,
        tls=tls,
        timeout=timeout,
    )
    try:
        if cut_after is None:
            transfer.finish()
            return transfer.exchange()
        transfer.send(cut_after)
        if transfer.final is None:
            transfer.wait_informational()
        if settle and transfer.final is None:
            transfer.settle()
        transfer.cut()
        return transfer.exchange()
    finally:
        transfer.connection.close()


def patch_headers(
    version: int | str | None,
    offset: int,
    length: int | None,
    *,
    complete: bool | None = True,
    content_type: str | None = AUTO,
    upload_length: int | None = None,
) -> list[tuple[str, str]]:
    """The header fields of a PATCH appending `length` bytes at `offset`: the version, the
    offset, the completeness field (None: left out), Content-Length (None: left out),
    Content-Type (AUTO: application/partial-upload from 6 on), Upload-Length if given."""
    fields = []
    if version is not None:
        fields.append(("Upload-Draft-Interop-Version", str(version)))
    fields.append(("Upload-Offset", str(offset)))
    if complete is not None:
        fields.append(completeness_field(8 if version is None else version, complete))
    if length is not None:
        fields.append(("Content-Length", str(length)))
    if content_type == AUTO:
        content_type = PARTIAL_UPLOAD if version is None or _number(version) >= 6 else None
    if content_type is not None:
        fields.append(("Content-Type", content_type))
    if upload_length is not None:
        fields.append(("Upload-Length", str(upload_length)))
    return fields


def start_patch(
    location: str,
    version: int | str | None,
    offset: int,
    data: bytes,
    *,
    complete: bool | None = True,
    content_type: str | None = AUTO,
    upload_length: int | None = None,
    headers: Headers = (),
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Transfer:
    """Start a PATCH appending `data` at `offset`; the body is left to the caller."""
    fields = [*patch_headers(
        version,
        offset,
        len(data),
        complete=complete,
        content_type=content_type,
        upload_length=upload_length,
    ), *headers]
    return start_request(
        "PATCH", location, fields, data, connection=connection, tls=tls, timeout=timeout
    )


def patch(
    location: str,
    version: int | str | None,
    offset: int,
    data: bytes,
    *,
    complete: bool | None = True,
    content_type: str | None = AUTO,
    upload_length: int | None = None,
    headers: Headers = (),
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """Append `data` at `offset` (see `patch_headers`); the final response."""
    transfer = start_patch(
        location,
        version,
        offset,
        data,
        complete=complete,
        content_type=content_type,
        upload_length=upload_length,
        headers=headers,
        connection=connection,
        tls=tls,
        timeout=timeout,
    )
    try:
        return transfer.finish()
    finally:
        if connection is None:
            transfer.connection.close()


def _versioned(version: int | str | None, headers: Headers) -> list[tuple[str, str]]:
    fields = [] if version is None else [("Upload-Draft-Interop-Version", str(version))]
    return [*fields, *headers]


def head(
    location: str,
    version: int | str | None,
    *,
    headers: Headers = (),
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """Offset retrieval: HEAD of the upload resource (`version` None: the field left out)."""
    return request(
        "HEAD",
        location,
        _versioned(version, headers),
        connection=connection,
        tls=tls,
        timeout=timeout,
    )


def delete(
    location: str,
    version: int | str | None,
    *,
    headers: Headers = (),
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """Cancellation: DELETE of the upload resource."""
    return request(
        "DELETE",
        location,
        _versioned(version, headers),
        connection=connection,
        tls=tls,
        timeout=timeout,
    )


def options(
    url: str,
    version: int | str | None,
    *,
    target: str | None = None,
    headers: Headers = (),
    connection: Connection | None = None,
    tls: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """Limits discovery: OPTIONS of `url` (or of `target`, such as "*", on its origin)."""
    return request(
        "OPTIONS",
        url,
        _versioned(version, headers),
        connection=connection,
        tls=tls,
        timeout=timeout,
        target=target,
    )


# -- what the kernel shows of a loopback connection ------------------------------------------


def _ends(sock: socket.socket) -> tuple[TcpEntry | None, TcpEntry | None]:
    """This end and the peer's end of a loopback connection, as /proc/net/tcp shows them."""
    try:
        ours, theirs = int(sock.getsockname()[1]), int(sock.getpeername()[1])
    except OSError:
        return None, None
    mine = peer = None
    for entry in tcp_entries():
        if (entry.local_port, entry.remote_port) == (ours, theirs):
            mine = entry
        elif (entry.local_port, entry.remote_port) == (theirs, ours):
            peer = entry
    return mine, peer


def wait_read_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Wait until the peer (on this machine) has read everything sent on `sock`: nothing left
    in our send queue nor in its receive queue. False when that cannot be seen here;
    AssertionError when it does not happen within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        mine, peer = _ends(sock)
        if mine is None or peer is None:
            return False
        if mine.tx_queue == 0 and peer.rx_queue == 0:
            return True
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the peer left {peer.rx_queue} bytes unread ({mine.tx_queue} unsent) "
                f"for {timeout}s"
            )
        time.sleep(0.005)


def owner(connection: Connection, pids: Iterable[int]) -> int | None:
    """Which of the processes `pids` holds the server's end of `connection` (None while none
    has accepted it)."""
    _, peer = _ends(connection.sock)
    if peer is None or peer.inode == 0:
        return None
    wanted = f"socket:[{peer.inode}]"
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return pid
    return None


def connect_to_worker(
    url: str,
    workers: Sequence[int],
    wanted: int,
    *,
    tls: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> Connection:
    """A connection accepted by the worker process `wanted` (one of `workers`, which share the
    listening socket): the others are stopped (SIGSTOP) until `wanted` has accepted it."""
    others = [pid for pid in workers if pid != wanted]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        # A TLS handshake needs the accepting worker: only `wanted` runs now.
        connection = Connection.to(url, tls=tls)
        deadline = time.monotonic() + timeout
        while (held := owner(connection, workers)) is None:
            if time.monotonic() > deadline:
                connection.close()
                raise AssertionError(f"no worker accepted the connection within {timeout}s")
            time.sleep(0.005)
        assert held == wanted, (held, wanted)
        return connection
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
