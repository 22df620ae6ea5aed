#!/usr/bin/env python3
"""Resumable uploads (IETF draft, interop version 6) against the plain XEP-0363 PUT.

For ``workers = 1`` and ``workers = 2`` (and each requested ``fsync`` setting) this script
starts ``python -m hmacfs`` on port 0 of 127.0.0.1 (see bench/harness) and uploads the same
test file three ways, each to a fresh slot, over raw sockets of its own:

- a plain PUT (v1 HMAC over "path size", ``?v=``), time to 201;
- a resumable creation of the whole file that is not cut (``Upload-Draft-Interop-Version: 6``,
  ``Upload-Complete: ?1``, ``Upload-Length``), time to 201;
- the same creation cut N times at evenly spread offsets: the connection is reset (SO_LINGER 0,
  then close) after the planned number of body bytes, a new connection asks the upload
  resource for its offset (HEAD) and PATCHes the rest from there, which is cut again at the
  next offset, until the last PATCH completes with 201.

Every answer is checked against the server's contract, and a request about to be cut must not
have been answered yet. Each stored file is downloaded once more (untimed) and its sha256
compared with the test file's. The server's resident memory is sampled while the uploads
run: it must not grow with the file size, so a smaller size is measured in the same run (16M
beside 256M by default).

Units: MB = 10^6 bytes (throughput), MiB = 2^20 bytes (memory, bytes resent); sizes given on
the command line (``16M``, ``256M``) are binary (MiB, GiB).

See bench/README.md for how to run it and what the columns mean.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from io import BufferedReader
from pathlib import Path
from urllib.parse import urlsplit

# bench/ is not a package: running `python bench/resumable.py` puts this directory on sys.path.
from harness import REPO_ROOT
from harness.common import (
    BASE_TIMEOUT_S,
    CURL,
    HOST,
    MIB,
    UPLOAD_PREFIX,
    BenchError,
    mb_per_s,
    run_driver,
    settle,
    size_label,
)
from harness.curl import sha256_of_download
from harness.files import check_free_space, create_test_file
from harness.report import text_table, write_json
from harness.sampling import (
    BUSY_MACHINE_CORES,
    OtherLoad,
    RssSampler,
    kib_to_mib,
    read_tree_max_kib,
)
from harness.servers import running_ours
from large_transfer import parse_size

from tests.helpers.signing import mac_v1

DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "resumable.json"
DEFAULT_SIZE = "256M"
DEFAULT_COMPARE_SIZE = "16M"
QUICK_SIZE = "32M"
QUICK_COMPARE_SIZE = "8M"

#: The interop version every resumable request of this benchmark carries.
INTEROP_VERSION = 6
PARTIAL_UPLOAD = "application/partial-upload"
#: Body bytes are read from the test file and sent in chunks of this size.
CHUNK = MIB
#: Every single send or receive on a socket must make progress within this time.
IO_TIMEOUT_S = BASE_TIMEOUT_S
#: How often the last PATCH is tried again (HEAD + PATCH) after a 409.
LAST_PATCH_RETRIES = 3
#: Limits for what this client accepts from the server (heads and the small bodies it sends).
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = MIB


# --------------------------------------------------------------------------- the client


class Misbehaviour(Exception):
    """The server answered something the contract does not allow (or nothing at all)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    head: str
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def brief(self) -> str:
        """The status line, the fields that matter here and the body, for an error text."""
        keep = [f"{k}: {v}" for k, v in self.headers.items()
                if k.startswith("upload-") or k in ("location", "content-type")]
        body = f" body {self.body[:300]!r}" if self.body else ""
        return " | ".join([self.head.split(" | ", 1)[0], *keep]) + body


@dataclass
class Transcript:
    """What one upload sent and got, head by head, for an error report."""

    lines: list[str] = field(default_factory=list)

    def sent(self, head: str) -> None:
        self.lines.append(f">>> {head.strip()}")

    def got(self, response: Response) -> None:
        self.lines.append(f"<<< {response.head.strip()}")

    def event(self, text: str) -> None:
        self.lines.append(f"--- {text}")


class Connection:
    """One HTTP/1.1 connection to the server: request heads, a body streamed from a file,
    responses read and parsed here (bodies only as large as the server's small answers)."""

    def __init__(self, port: int, transcript: Transcript) -> None:
        self.port = port
        self.transcript = transcript
        self.sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""
        #: body bytes of the current request handed to the kernel (whole chunks, so far)
        self.body_sent = 0

    def request_head(self, method: str, target: str, fields: Sequence[tuple[str, str]]) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in fields]
        head = "\r\n".join(lines) + "\r\n\r\n"
        self.transcript.sent(head.replace("\r\n", " | ").rstrip(" |"))
        self.sock.sendall(head.encode("latin-1"))

    def send_body(self, fh: BufferedReader, offset: int, count: int) -> int:
        """Send ``count`` bytes of ``fh`` from ``offset`` in 1 MiB chunks; the bytes sent.

        Raises OSError if the connection fails before all are handed to the kernel.
        """
        fh.seek(offset)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        self.body_sent = 0
        while self.body_sent < count:
            want = min(CHUNK, count - self.body_sent)
            got = fh.readinto(view[:want])
            if not got:
                raise BenchError(f"test file ended at {offset + self.body_sent}")
            self.sock.sendall(view[:got])
            self.body_sent += got
        return self.body_sent

    def response(self, method: str) -> Response:
        """The next response (a 1xx too). Raises Misbehaviour if the connection ends first."""
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise Misbehaviour(f"response head longer than {MAX_HEAD_BYTES} bytes")
            data = self.sock.recv(65536)
            if not data:
                raise Misbehaviour("connection closed before (the rest of) a response head"
                                   + (f"; got {self._buf[:200]!r}" if self._buf else ""))
            self._buf += data
        raw, self._buf = self._buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise Misbehaviour(f"bad status line {lines[0]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise Misbehaviour(f"bad header line {line!r}")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        response = Response(int(parts[1]), headers, " | ".join(lines))
        if not (100 <= response.status < 200 or response.status in (204, 304)
                or method == "HEAD"):
            response.body = self._body(headers)
        self.transcript.got(response)
        return response

    def final_response(self, method: str) -> Response:
        """The next final (non-1xx) response; the 1xx ones before it go to the transcript."""
        while True:
            response = self.response(method)
            if response.status >= 200:
                return response

    def _body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._chunked()
        length = headers.get("content-length")
        if length is None:
            return self._until_closed()
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            raise Misbehaviour(f"unexpected Content-Length {length!r} in a response")
        return self._exactly(int(length))

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise Misbehaviour(f"connection closed {n - len(self._buf)} bytes into a body")
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise Misbehaviour("chunk size line too long")
            data = self.sock.recv(65536)
            if not data:
                raise Misbehaviour("connection closed inside a chunked body")
            self._buf += data
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _chunked(self) -> bytes:
        out = b""
        while True:
            size = int(self._line().split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while self._line():  # trailer fields, up to the empty line
                    pass
                return out
            if len(out) + size > MAX_BODY_BYTES:
                raise Misbehaviour("chunked response body too large")
            out += self._exactly(size)
            self._exactly(2)

    def _until_closed(self) -> bytes:
        while len(self._buf) <= MAX_BODY_BYTES:
            data = self.sock.recv(65536)
            if not data:
                out, self._buf = self._buf, b""
                return out
            self._buf += data
        raise Misbehaviour("response body without a length is too large")

    def answer_after_failure(self) -> str:
        """What the server said, if anything, after sending failed (for the error text)."""
        try:
            self.sock.settimeout(2.0)
            return self.final_response("PUT").brief()
        except (OSError, Misbehaviour) as exc:
            return f"(no answer: {exc})"

    def early_answer(self, method: str) -> Response | None:
        """An answer the server has already sent (to a request whose body is not all sent);
        None if there is nothing to read. Looks without waiting."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return None
        try:
            self.sock.settimeout(2.0)
            return self.final_response(method)
        except (OSError, Misbehaviour) as exc:
            self.transcript.event(f"readable before the cut, but no answer ({exc})")
            return None

    def reset(self) -> None:
        """Cut the connection abruptly: SO_LINGER 0, then close, so the kernel sends RST
        (and drops what is still unsent in this side's buffer)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.transcript.event(f"connection reset (SO_LINGER 0 + close) after {self.body_sent} "
                              "body bytes")

    def close(self) -> None:
        self.sock.close()


def _expect(cond: bool, what: str, response: Response) -> None:
    if not cond:
        raise Misbehaviour(f"{what}; got {response.brief()!r}")


def _offset_of(response: Response) -> int:
    value = response.header("Upload-Offset")
    _expect(value is not None and value.isdigit(), "no valid Upload-Offset", response)
    assert value is not None
    return int(value)


def _creation_fields(size: int) -> list[tuple[str, str]]:
    return [
        ("Upload-Draft-Interop-Version", str(INTEROP_VERSION)),
        ("Upload-Complete", "?1"),
        ("Upload-Length", str(size)),
        ("Content-Length", str(size)),
    ]


def _check_completed(response: Response, size: int, what: str) -> None:
    _expect(response.status == 201, f"{what}: expected 201", response)
    _expect(response.header("Upload-Offset") == str(size),
            f"{what}: expected Upload-Offset {size}", response)
    _expect(response.header("Upload-Complete") == "?1",
            f"{what}: expected Upload-Complete ?1", response)


def _send_body(conn: Connection, fh: BufferedReader, offset: int, count: int, what: str) -> int:
    try:
        return conn.send_body(fh, offset, count)
    except OSError as exc:
        raise Misbehaviour(f"{what}: sending the body failed after {conn.body_sent} of "
                           f"{count} bytes from offset {offset} ({exc}); "
                           f"the server said: {conn.answer_after_failure()}") from None


def plain_put(port: int, rel: str, fh: BufferedReader, size: int, transcript: Transcript) -> float:
    """XEP-0363 PUT of the whole file; seconds from connecting to the 201."""
    target = f"{UPLOAD_PREFIX}{rel}?v={mac_v1(rel, size)}"
    start = time.perf_counter()
    conn = Connection(port, transcript)
    try:
        conn.request_head("PUT", target, [("Content-Length", str(size))])
        _send_body(conn, fh, 0, size, "PUT")
        response = conn.final_response("PUT")
        seconds = time.perf_counter() - start
        _expect(response.status == 201, "PUT: expected 201", response)
        return seconds
    finally:
        conn.close()


def create(conn: Connection, rel: str, size: int) -> str:
    """Send a resumable creation's head and read its 104; the upload resource's path."""
    target = f"{UPLOAD_PREFIX}{rel}?v={mac_v1(rel, size)}"
    conn.request_head("PUT", target, _creation_fields(size))
    response = conn.response("PUT")
    _expect(response.status == 104, "creation: expected 104 before the body", response)
    _expect(response.header("Upload-Draft-Interop-Version") == str(INTEROP_VERSION),
            f"104: expected Upload-Draft-Interop-Version {INTEROP_VERSION}", response)
    location = response.header("Location")
    _expect(bool(location), "104 without Location", response)
    assert location is not None
    url = urlsplit(location)
    _expect(url.netloc == f"{HOST}:{conn.port}" and url.path.startswith(UPLOAD_PREFIX),
            f"104: Location {location!r} is not an upload resource of this server", response)
    return url.path


def uncut_resumable(port: int, rel: str, fh: BufferedReader, size: int,
                    transcript: Transcript) -> float:
    """A resumable creation of the whole file, not cut; seconds from connecting to the 201."""
    start = time.perf_counter()
    conn = Connection(port, transcript)
    try:
        create(conn, rel, size)
        _send_body(conn, fh, 0, size, "creation")
        response = conn.final_response("PUT")
        seconds = time.perf_counter() - start
        _check_completed(response, size, "creation")
        return seconds
    finally:
        conn.close()


@dataclass
class Segment:
    """One request of a cut upload: the creation or a PATCH."""

    method: str
    start_offset: int  # where this request's body starts (the server's offset)
    planned_end: int  # the body is cut there (or, for the last one, completes there)
    sent: int = 0  # body bytes handed to the kernel
    stored: int | None = None  # how many of them the server kept (from the next HEAD)
    seconds: float | None = None  # from connecting (or the HEAD's answer) to the cut / 201
    head_ms: float | None = None  # the HEAD before this PATCH: connect + round trip
    early_answer: str | None = None  # an answer that came before the cut (never expected)


def cut_offsets(size: int, cuts: int) -> list[int]:
    """Where the body is cut: evenly spread, ``size * k / (cuts + 1)`` for k = 1..cuts."""
    return [size * k // (cuts + 1) for k in range(1, cuts + 1)]


def head_offset(conn: Connection, path: str, size: int, low: int, high: int) -> int:
    """HEAD the upload resource; its Upload-Offset, which must lie in [low, high]."""
    conn.request_head("HEAD", path, [("Upload-Draft-Interop-Version", str(INTEROP_VERSION))])
    response = conn.final_response("HEAD")
    _expect(response.status == 204, "HEAD: expected 204", response)
    _expect(response.header("Upload-Complete") == "?0", "HEAD: expected Upload-Complete ?0",
            response)
    _expect(response.header("Upload-Length") == str(size),
            f"HEAD: expected Upload-Length {size}", response)
    offset = _offset_of(response)
    _expect(low <= offset <= high,
            f"HEAD: Upload-Offset {offset} outside [{low}, {high}] (the offset before, the "
            "most that was ever sent)", response)
    return offset


def _send_and_cut(conn: Connection, fh: BufferedReader, seg: Segment, anomalies: list[str]) -> None:
    """Send ``seg``'s body up to its planned end, then reset the connection.

    A request that is to be cut must not have been answered yet: an answer already there
    (or a connection the server closed under the body) goes to ``anomalies``, and the upload
    goes on (the next HEAD says where it stands).
    """
    count = seg.planned_end - seg.start_offset
    what = f"{seg.method} from offset {seg.start_offset}"
    try:
        seg.sent = conn.send_body(fh, seg.start_offset, count)
    except OSError as exc:
        seg.sent = conn.body_sent
        seg.early_answer = conn.answer_after_failure()
        anomalies.append(f"{what}: sending failed after {seg.sent} of {count} body bytes "
                         f"({exc}); the server said: {seg.early_answer}")
        conn.close()
        return
    answer = conn.early_answer(seg.method)
    if answer is not None:
        seg.early_answer = answer.brief()
        anomalies.append(f"{what} was answered before its body was complete (after "
                         f"{seg.sent} bytes, just before the cut): {seg.early_answer}")
    conn.reset()


def cut_resumable(port: int, rel: str, fh: BufferedReader, size: int, cuts: int,
                  transcript: Transcript, segments: list[Segment], anomalies: list[str]
                  ) -> float:
    """The resumable upload cut ``cuts`` times (see the module's docstring); seconds from the
    first connection to the last PATCH's 201. ``segments`` is filled in as it goes, and
    ``anomalies`` gets what the server did wrong without stopping the upload."""
    ends = [*cut_offsets(size, cuts), size]
    start = time.perf_counter()
    conn = Connection(port, transcript)
    try:
        path = create(conn, rel, size)
        seg = Segment("PUT", 0, ends[0])
        segments.append(seg)
        _send_and_cut(conn, fh, seg, anomalies)
        seg.seconds = time.perf_counter() - start
    finally:
        conn.close()  # (a no-op after reset)
    offset = 0
    sent_up_to = seg.sent  # the server cannot have more than this
    plan = iter(ends[1:])
    end = next(plan)
    retries = 0
    while True:
        t0 = time.perf_counter()
        conn = Connection(port, transcript)
        try:
            new_offset = head_offset(conn, path, size, offset, sent_up_to)
            seg.stored = new_offset - offset
            offset = new_offset
            seg = Segment("PATCH", offset, end, head_ms=(time.perf_counter() - t0) * 1e3)
            segments.append(seg)
            t1 = time.perf_counter()
            conn.request_head("PATCH", path, [
                ("Upload-Draft-Interop-Version", str(INTEROP_VERSION)),
                ("Upload-Offset", str(offset)),
                ("Upload-Complete", "?1"),
                ("Content-Type", PARTIAL_UPLOAD),
                ("Content-Length", str(size - offset)),
            ])
            if end < size:
                _send_and_cut(conn, fh, seg, anomalies)
                seg.seconds = time.perf_counter() - t1
                sent_up_to = max(sent_up_to, offset + seg.sent)
                end = next(plan)
                continue
            response = _send_last(conn, fh, seg)
            seg.seconds = time.perf_counter() - t1
            sent_up_to = max(sent_up_to, offset + seg.sent)
            if response.status == 409 and retries < LAST_PATCH_RETRIES:
                # Not expected after a HEAD that gave this offset: noted, then HEAD + PATCH
                # again, as a client would.
                retries += 1
                seg.early_answer = response.brief()
                anomalies.append(f"last PATCH from offset {offset} (the offset the HEAD just "
                                 f"gave) was refused: {seg.early_answer}; HEAD and PATCH again")
                continue
            seconds = time.perf_counter() - start
            _check_completed(response, size, "last PATCH")
            seg.stored = seg.sent
            return seconds
        finally:
            conn.close()  # (a no-op after reset)


def _send_last(conn: Connection, fh: BufferedReader, seg: Segment) -> Response:
    """Send the last PATCH's body and read its answer (also one that came early and cut the
    body short). Raises Misbehaviour if there is none."""
    try:
        seg.sent = conn.send_body(fh, seg.start_offset, seg.planned_end - seg.start_offset)
    except OSError as exc:
        seg.sent = conn.body_sent
        try:
            conn.sock.settimeout(2.0)
            return conn.final_response("PATCH")
        except (OSError, Misbehaviour) as exc2:
            raise Misbehaviour(f"last PATCH: sending failed after {seg.sent} body bytes "
                               f"({exc}), and no answer came ({exc2})") from None
    return conn.final_response("PATCH")


# --------------------------------------------------------------------------- measurement


@dataclass
class Row:
    size_bytes: int
    size: str
    workers: int
    fsync: bool
    run: int
    cuts: int
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    failed_uploads: list[str] = field(default_factory=list)  # "put", "uncut", "cut"
    rss_idle_mib: float | None = None
    put_seconds: float | None = None
    put_mb_s: float | None = None
    put_rss_peak_mib: float | None = None
    put_verified: bool | None = None
    uncut_seconds: float | None = None
    uncut_mb_s: float | None = None
    uncut_rss_peak_mib: float | None = None
    uncut_verified: bool | None = None
    cut_seconds: float | None = None
    cut_mb_s: float | None = None
    cut_rss_peak_mib: float | None = None
    cut_verified: bool | None = None
    #: cut vs uncut resumable upload, and uncut resumable vs plain PUT (time, in %)
    overhead_pct: float | None = None
    uncut_vs_put_pct: float | None = None
    sent_bytes: int | None = None
    resent_bytes: int | None = None
    sent_mib: float | None = None
    resent_mib: float | None = None
    rss_peak_a_mib: float | None = None  # the plain PUT and the uncut resumable upload
    rss_peak_b_mib: float | None = None  # the cut upload
    vmhwm_mib: float | None = None
    rss_samples: int = 0
    other_load_cores: float | None = None
    cut_offsets_planned: list[int] = field(default_factory=list)
    segments: list[dict[str, object]] = field(default_factory=list)
    transcripts: dict[str, list[str]] = field(default_factory=dict)


def _pct(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return (value / base - 1) * 100


def _verify(port: int, rel: str, size: int, sha: str, what: str, row: Row) -> bool:
    got = sha256_of_download(f"http://{HOST}:{port}{UPLOAD_PREFIX}{rel}", size)
    if got != sha:
        row.errors.append(f"{what}: the stored file differs from the test file (GET: {got})")
    return got == sha


def measure_row(row: Row, pid: int, port: int, test_file: Path, sha: str) -> None:
    """The three uploads of one size on a running server, filling ``row`` in place."""
    size = row.size_bytes
    base = (f"bench-{os.urandom(6).hex()}/resumable-{row.size}-w{row.workers}"
            f"-fsync{int(row.fsync)}-r{row.run}")
    row.rss_idle_mib = kib_to_mib(read_tree_max_kib(pid, "VmRSS"))
    row.cut_offsets_planned = cut_offsets(size, row.cuts)
    kinds = ("put", "uncut", "cut")
    transcripts = {kind: Transcript() for kind in kinds}
    segments: list[Segment] = []
    anomalies: list[str] = []
    with open(test_file, "rb") as fh, OtherLoad() as other:
        for kind in kinds:
            rel = f"{base}-{kind}.bin"
            settle()  # earlier dirty pages must not slow this transfer
            seconds: float | None = None
            with RssSampler(pid) as sampler:
                try:
                    if kind == "put":
                        seconds = plain_put(port, rel, fh, size, transcripts[kind])
                    elif kind == "uncut":
                        seconds = uncut_resumable(port, rel, fh, size, transcripts[kind])
                    else:
                        seconds = cut_resumable(port, rel, fh, size, row.cuts,
                                                transcripts[kind], segments, anomalies)
                except (OSError, Misbehaviour) as exc:
                    what = {"put": "PUT", "uncut": "uncut resumable", "cut": "cut resumable"}
                    row.errors.append(f"{what[kind]}: {type(exc).__name__}: {exc}")
                    row.failed_uploads.append(kind)
                    transcripts[kind].event(f"error: {exc}")
            row.rss_samples += sampler.samples
            setattr(row, f"{kind}_rss_peak_mib", kib_to_mib(sampler.peak_kib))
            if seconds is None:
                continue
            setattr(row, f"{kind}_seconds", seconds)
            setattr(row, f"{kind}_mb_s", mb_per_s(size, seconds))
            verified = _verify(port, rel, size, sha, kind, row)
            setattr(row, f"{kind}_verified", verified)
            if not verified:
                row.failed_uploads.append(kind)
    row.other_load_cores = other.cores
    row.errors += [f"cut resumable: {a}" for a in anomalies]
    if anomalies and "cut" not in row.failed_uploads:
        row.failed_uploads.append("cut")
    row.vmhwm_mib = kib_to_mib(read_tree_max_kib(pid, "VmHWM"))
    peaks_a = [v for v in (row.put_rss_peak_mib, row.uncut_rss_peak_mib) if v is not None]
    row.rss_peak_a_mib = max(peaks_a) if peaks_a else None
    row.rss_peak_b_mib = row.cut_rss_peak_mib
    row.segments = [asdict(s) for s in segments]
    if row.cut_seconds is not None:
        row.sent_bytes = sum(s.sent for s in segments)
        row.resent_bytes = row.sent_bytes - size
        row.sent_mib, row.resent_mib = row.sent_bytes / MIB, row.resent_bytes / MIB
    row.overhead_pct = _pct(row.cut_seconds, row.uncut_seconds)
    row.uncut_vs_put_pct = _pct(row.uncut_seconds, row.put_seconds)
    row.ok = not row.errors
    # Heads sent and got: of the cut upload (they show its offsets) and of any that failed.
    row.transcripts = {k: t.lines for k, t in transcripts.items()
                       if k == "cut" or k in row.failed_uploads}


# --------------------------------------------------------------------------- output


COLUMNS: list[tuple[str, str]] = [
    ("size", "size"),
    ("workers", "workers"),
    ("fsync", "fsync"),
    ("run", "run"),
    ("PUT s", "put_seconds"),
    ("PUT MB/s", "put_mb_s"),
    ("uncut s", "uncut_seconds"),
    ("uncut MB/s", "uncut_mb_s"),
    ("cut s", "cut_seconds"),
    ("cut MB/s", "cut_mb_s"),
    ("overhead %", "overhead_pct"),
    ("sent MiB", "sent_mib"),
    ("resent MiB", "resent_mib"),
    ("peak RSS a MiB", "rss_peak_a_mib"),
    ("peak RSS b MiB", "rss_peak_b_mib"),
    ("VmHWM MiB", "vmhwm_mib"),
    ("status", "ok"),
]
_LEFT = 4  # columns left-aligned (the keys)


def _cell(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key == "ok":
        return "ok" if value else "FAIL"
    if key == "fsync":
        return "true" if value else "false"
    if key.endswith("_seconds") and isinstance(value, float):
        return f"{value:.2f}"
    if key.endswith("_pct") and isinstance(value, float):
        return f"{value:+.1f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[dict[str, object]]) -> str:
    return text_table(COLUMNS, rows, _cell, left=_LEFT)


_MEDIAN_KEYS = ("put_seconds", "put_mb_s", "uncut_seconds", "uncut_mb_s", "cut_seconds",
                "cut_mb_s", "overhead_pct", "uncut_vs_put_pct", "sent_mib", "resent_mib",
                "rss_idle_mib")
_MAX_KEYS = ("rss_peak_a_mib", "rss_peak_b_mib", "vmhwm_mib")


def summary_rows(rows: Sequence[Row]) -> list[dict[str, object]]:
    """Per (size, workers, fsync): medians over the successful runs (memory: maxima)."""
    groups: dict[tuple[int, int, bool], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.size_bytes, r.workers, r.fsync), []).append(r)
    out: list[dict[str, object]] = []
    for (size_bytes, workers, fsync), members in groups.items():
        good = [r for r in members if r.ok]
        entry: dict[str, object] = {
            "size_bytes": size_bytes, "size": members[0].size, "workers": workers,
            "fsync": fsync, "run": f"med{len(good)}", "runs_ok": len(good),
            "runs": len(members), "ok": len(good) == len(members),
        }
        for key in (*_MEDIAN_KEYS, *_MAX_KEYS):
            vals = [v for r in good if isinstance(v := getattr(r, key), float)]
            pick = statistics.median if key in _MEDIAN_KEYS else max
            entry[key] = pick(vals) if vals else None
        out.append(entry)
    return out


def rss_growth_notes(summary: Sequence[dict[str, object]]) -> list[str]:
    """Peak RSS of the smallest and the largest size, per server (the figure that matters)."""
    notes: list[str] = []
    sizes = sorted({int(str(s["size_bytes"])) for s in summary})
    if len(sizes) < 2:
        return notes
    lo, hi = sizes[0], sizes[-1]
    servers = dict.fromkeys((s["workers"], s["fsync"]) for s in summary)
    for workers, fsync in servers:
        def pick(size: int, workers: object = workers, fsync: object = fsync
                 ) -> dict[str, object] | None:
            return next((s for s in summary if s["size_bytes"] == size
                         and s["workers"] == workers and s["fsync"] == fsync), None)

        small, big = pick(lo), pick(hi)
        if small is None or big is None:
            continue
        parts = []
        for key, what in (("rss_peak_a_mib", "uncut (a)"), ("rss_peak_b_mib", "cut (b)")):
            a, b = small.get(key), big.get(key)
            if isinstance(a, float) and isinstance(b, float):
                parts.append(f"{what} {a:.1f} -> {b:.1f} MiB ({b - a:+.1f})")
        if parts:
            notes.append(f"peak RSS {size_label(lo)} -> {size_label(hi)}, workers={workers}, "
                         f"fsync={str(fsync).lower()}: " + ", ".join(parts))
    return notes


def busy_notes(rows: Sequence[Row]) -> list[str]:
    return [f"{r.size} workers={r.workers} fsync={str(r.fsync).lower()} run {r.run}: other "
            f"processes used {r.other_load_cores} cores (figures suspect)"
            for r in rows if (r.other_load_cores or 0.0) > BUSY_MACHINE_CORES]


# --------------------------------------------------------------------------- main


def _workers_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad worker counts {text!r} (e.g. 1,2)") from None
    if not values or any(not 1 <= v <= 64 for v in values):
        raise argparse.ArgumentTypeError(f"worker counts must be 1..64: {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Resumable uploads (interop 6), uncut and cut, beside a plain PUT: time, "
        "bytes resent and server memory (MB = 10^6 bytes, MiB = 2^20 bytes; size suffixes "
        "K/M/G are binary).",
    )
    p.add_argument("--size", type=parse_size, default=None,
                   help=f"file size (default: {DEFAULT_SIZE}; with --quick {QUICK_SIZE})")
    p.add_argument("--compare-size", type=str, default=None,
                   help="a smaller size measured first in the same run, so the peak RSS of "
                   f"both can be compared (default: {DEFAULT_COMPARE_SIZE}; with --quick "
                   f"{QUICK_COMPARE_SIZE}; 0: none)")
    p.add_argument("--cuts", type=int, default=5, help="cuts of the resumable upload")
    p.add_argument("--workers", type=_workers_list, default=[1, 2],
                   help="worker counts, each a server of its own (default: 1,2)")
    p.add_argument("--fsync", choices=("true", "false", "both"), default="true",
                   help="the server's fsync setting (default: true, the durable default)")
    p.add_argument("--runs", type=int, default=1, help="repetitions per size and server")
    p.add_argument("--quick", action="store_true",
                   help=f"a fast check: {QUICK_SIZE} beside {QUICK_COMPARE_SIZE}")
    p.add_argument("--python", default=sys.executable,
                   help="interpreter that runs `-m hmacfs` (default: this one)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="parent dir for the test files and the server's storage "
                   "(default: system temp dir, usually /tmp)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"JSON results file (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 100:
        p.error("--runs must be between 1 and 100")
    if not 1 <= args.cuts <= 1000:
        p.error("--cuts must be between 1 and 1000")
    size = args.size or parse_size(QUICK_SIZE if args.quick else DEFAULT_SIZE)
    compare_text = args.compare_size or (QUICK_COMPARE_SIZE if args.quick
                                         else DEFAULT_COMPARE_SIZE)
    compare = 0 if compare_text.strip() == "0" else parse_size(compare_text)
    if size <= args.cuts + 1:
        p.error(f"--size must be more than {args.cuts + 1} bytes for {args.cuts} cuts")
    args.size_list = [compare, size] if 0 < compare < size else [size]
    args.fsync_list = {"true": [True], "false": [False], "both": [True, False]}[args.fsync]
    return args


def server_commit() -> str | None:
    """The repository's commit (with "+dirty" if hmacfs/ has changes), for the report."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "hmacfs"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def measure_all(args: argparse.Namespace, workdir: Path, rows: list[Row]) -> None:
    sizes: list[int] = args.size_list
    # the test files + three stored copies of each per run (storage is wiped per server)
    check_free_space(workdir, sum(sizes) * (1 + 3 * args.runs) + 64 * MIB)
    files: dict[int, tuple[Path, str]] = {}
    for size in sizes:
        label = size_label(size)
        path = workdir / f"test-{label}.bin"
        print(f"[{label}] creating test file ({size} bytes) ...", flush=True)
        files[size] = (path, create_test_file(path, size))
    for workers in args.workers:
        for fsync in args.fsync_list:
            storage = Path(tempfile.mkdtemp(prefix="files-", dir=workdir))
            try:
                measure_server(args, workdir, storage, workers, fsync, files, rows)
            finally:
                shutil.rmtree(storage, ignore_errors=True)


def measure_server(args: argparse.Namespace, workdir: Path, storage: Path, workers: int,
                   fsync: bool, files: dict[int, tuple[Path, str]], rows: list[Row]) -> None:
    """Every size and run on one server (started here, fresh storage); appends to ``rows``."""
    tag = f"workers={workers} fsync={str(fsync).lower()}"
    with running_ours(args.python, workdir, storage, label=f"resumable-w{workers}-f{fsync}",
                      fsync=fsync, workers=workers, log_level="info") as server:
        pid, port = server.process.pid, server.port
        print(f"{tag}: server pid {pid} on {HOST}:{port}", flush=True)
        for size, (test_file, sha) in files.items():
            label = size_label(size)
            for n in range(1, args.runs + 1):
                row = Row(size_bytes=size, size=label, workers=workers, fsync=fsync, run=n,
                          cuts=args.cuts)
                rows.append(row)
                measure_row(row, pid, port, test_file, sha)
                status = "ok" if row.ok else "FAIL: " + "; ".join(row.errors)
                print(f"[{label}] {tag} run {n}: PUT {_cell('put_seconds', row.put_seconds)} s"
                      f", uncut {_cell('uncut_seconds', row.uncut_seconds)} s"
                      f", cut x{row.cuts} {_cell('cut_seconds', row.cut_seconds)} s"
                      f" (resent {_cell('x', row.resent_mib)} MiB)"
                      f", peak RSS a/b {_cell('x', row.rss_peak_a_mib)}/"
                      f"{_cell('x', row.rss_peak_b_mib)} MiB - {status}", flush=True)
                if not row.ok:
                    for kind in row.failed_uploads:
                        lines = row.transcripts.get(kind, [])
                        print(f"  {kind} upload, heads sent and got:", file=sys.stderr)
                        for line in lines:
                            print(f"    {line}", file=sys.stderr)
                    print(f"  server log tail:\n{server.log_tail(15)}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hmacfs-bench-", dir=args.tmpdir)).resolve()
    rows: list[Row] = []
    fatal: str | None = None
    load_before = os.getloadavg()
    commit = server_commit()
    print(f"work dir: {workdir}  (server: {args.python} -m hmacfs, cwd {REPO_ROOT}, "
          f"commit {commit})")
    print("load average before: " + ", ".join(f"{x:.2f}" for x in load_before), flush=True)
    try:
        measure_all(args, workdir, rows)
    except BenchError as exc:
        fatal = str(exc)
        print(f"error: {fatal}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    row_dicts = [asdict(r) for r in rows]
    summary = summary_rows(rows)
    if rows:
        print()
        print(format_table(row_dicts))
        if args.runs > 1:
            print("\nmedian over runs (memory columns: maximum over runs):\n"
                  + format_table(summary))
    notes = rss_growth_notes(summary) + busy_notes(rows)
    for note in notes:
        print(note)
    print("load average after: " + ", ".join(f"{x:.2f}" for x in load_after))
    if rows:
        print(
            "\nMB = 10^6 bytes, MiB = 2^20 bytes. s = seconds from connecting to the 201;"
            " MB/s = size / s."
            "\nPUT = plain XEP-0363 PUT; uncut = resumable creation (interop 6) not cut;"
            f" cut = the same cut {args.cuts} times, each time HEAD + PATCH on a new"
            " connection (the seconds include all of that)."
            "\noverhead % = cut s / uncut s - 1. sent = body bytes sent in all;"
            " resent = sent - size (in flight at a cut but not stored)."
            "\npeak RSS a = max VmRSS sampled every 50 ms during PUT and uncut; b = during"
            " cut; VmHWM = kernel's lifetime peak after the row; all of the largest single"
            " server process."
        )

    all_ok = fatal is None and bool(rows) and all(r.ok for r in rows)
    report = {
        "benchmark": "resumable",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "units": {"MB": "10^6 bytes", "MiB": "2^20 bytes",
                  "size suffixes": "binary (K=2^10, M=2^20, G=2^30)"},
        "host": {"platform": platform.platform(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
        "load_average_before": list(load_before),
        "load_average_after": list(load_after),
        "bench_python": sys.version.split()[0],
        "server_python": args.python,
        "server_commit": commit,
        "tmpdir": str(workdir.parent),
        "sizes": [size_label(s) for s in args.size_list],
        "cuts": args.cuts,
        "interop_version": INTEROP_VERSION,
        "workers": args.workers,
        "fsync": args.fsync_list,
        "runs": args.runs,
        "ok": all_ok,
        "error": fatal,
        "results": row_dicts,
        "summary": summary,
        "notes": notes,
    }
    output: Path = args.output
    write_json(output, report)
    print(f"\nresults written to {output}")
    if fatal is not None:
        return 2
    if not all_ok:
        failed = sum(not r.ok for r in rows)
        print(f"FAILED: {failed} of {len(rows)} rows had a failed upload", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which(CURL) is None:
        print(f"error: {CURL} not found (the content check downloads with it)", file=sys.stderr)
        return 2
    return run_driver(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
