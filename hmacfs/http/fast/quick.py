"""Small GETs and HEADs answered from the request head, without a Request object.

Going through Twisted's Request and the resource tree costs several times what the answer to
a small file does. A GET or HEAD that arrives in one piece, asks for a stored file of
`QUICK_MAX_SIZE` or less and carries nothing that changes the answer (no Range, no If-*, no
body, no ``Connection: close``) is answered here with the download plan's own headers; anything
else, every error included, returns False before anything is written and takes the full path.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

from hmacfs.core import download
from hmacfs.core.headers import BASE_HEADERS, cors_fields, http_date_now
from hmacfs.core.paths import decode_path, split_target
from hmacfs.core.refusals import Refusal
from hmacfs.http.fast.direct import send_answer
from hmacfs.storage.backend import StoredFile

if TYPE_CHECKING:
    from hmacfs.http.channel import UploadChannel

#: Files up to this size may be answered quickly (the same as where sendfile starts).
QUICK_MAX_SIZE = 64 * 1024
#: A request head answered here: GET or HEAD of an ASCII target, HTTP/1.1, well-formed header
#: lines, nothing after the blank line.
_QUICK_HEAD = re.compile(
    rb"(GET|HEAD) (/[\x21-\x7e]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
#: Headers that make the answer depend on more than the file (a body, conditions, ranges,
#: connection handling): a request with one of them takes the full path.
_DECLINED = frozenset(
    {b"content-length", b"transfer-encoding", b"expect", b"upgrade", *download.PLAN_HEADERS}
)


#: The signed path of each of the request paths asked for lately (decoding and checking one,
#: 2 µs, is a fifth of what a quick answer from a held file costs); as many as are held.
_decoded = functools.lru_cache(maxsize=512)(decode_path)


#: How many answers `_Answers` keeps.
ANSWERS_KEPT = 1024


class _Answers:
    """The answers to unconditional GETs and HEADs of files that do not expire (so the time
    changes nothing in them), worked out once for the files asked for most.

    Kept by method, path and Origin, which hash at the cost of a lookup (their hashes are
    cached), and each valid only for the file and [http] settings it was worked out for: the
    same StoredFile (a held file hands out the same one while it stays unchanged) or an
    equal one, and the same settings object (a reload makes new ones).
    """

    def __init__(self) -> None:
        self._kept: dict[
            tuple[bytes, str, bytes | None], tuple[StoredFile, object, int, bool, bytes]
        ] = {}

    def get(
        self, method: bytes, rel: str, origin: bytes | None, stored: StoredFile, http: Any
    ) -> tuple[int, bool, bytes]:
        """(status, whether the body goes with it, every header line after the Date)."""
        key = (method, rel, origin)
        kept = self._kept.get(key)
        if kept is not None and (kept[0] is stored or kept[0] == stored) and kept[1] is http:
            return kept[2], kept[3], kept[4]
        plan = download.plan(method, {}, stored, 0.0)
        cors = cors_fields(http, origin.decode("latin-1") if origin is not None else None)
        answer = (plan.status, bool(plan.body), head_after_date(cors, plan.headers))
        if len(self._kept) >= ANSWERS_KEPT:
            del self._kept[next(iter(self._kept))]  # (the oldest kept)
        self._kept[key] = (stored, http, *answer)
        return answer


_answers = _Answers()


@functools.lru_cache(maxsize=1024)
def head_after_date(
    cors: tuple[tuple[bytes, bytes], ...], headers: tuple[tuple[bytes, bytes], ...]
) -> bytes:
    """Every header line of a quick answer after its Date (the security headers, `cors`, then
    `headers`), and the blank line ending them."""
    lines = [name + b": " + value for name, value in (*BASE_HEADERS, *cors, *headers)]
    return b"".join(b"\r\n" + line for line in lines) + b"\r\n\r\n"


def _parse(head: bytes, limit: int) -> tuple[bytes, bytes, dict[bytes, bytes]] | None:
    match = _QUICK_HEAD.fullmatch(head)
    if match is None or len(head) > limit:
        return None
    method, target, lines = match.groups()
    headers: dict[bytes, bytes] = {}
    for line in lines.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in headers or name in _DECLINED:
            return None
        headers[name] = value.strip(b" \t")
    if headers.get(b"connection", b"keep-alive").lower() != b"keep-alive":
        return None
    return method, target, headers


def answer_quickly(channel: UploadChannel, head: bytes) -> bool:
    """Answer `head` (a whole request head, nothing after it) if it is a plain GET or HEAD of
    a small stored file; False, with nothing written, for anything else."""
    site = channel.site
    started = site.now()
    parsed = _parse(head, channel.MAX_LENGTH)
    if parsed is None or site.stopping:
        return False
    method, target, headers = parsed
    config = site.config
    raw_path, _ = split_target(target)
    health_path = config.metrics.health_path
    if health_path and raw_path == health_path.encode():
        return False
    storage: Any = site.storage  # (local: the fast paths are off for a remote store)
    try:
        rel = _decoded(raw_path, config.server.upload_prefix)
        stored, content = storage.read_small(rel, QUICK_MAX_SIZE) if rel else (None, None)
    except Refusal:
        return False
    if stored is None or content is None:
        if stored is not None and stored.size > QUICK_MAX_SIZE:
            channel.looked_up = (rel, stored)  # the full path answers it in this same call
        return False
    origin = headers.get(b"origin")
    if stored.expires is None:
        status, with_body, after_date = _answers.get(method, rel, origin, stored, config.http)
    else:
        answer = download.plan(method, {}, stored, site.wall())
        cors = cors_fields(config.http, origin.decode("latin-1") if origin is not None else None)
        status, with_body = answer.status, bool(answer.body)
        after_date = head_after_date(cors, answer.headers)
    body = content if with_body else b""
    head_out = b"HTTP/1.1 200 OK\r\nDate: " + http_date_now() + after_date
    channel.resetTimeout()
    transport: Any = channel.transport
    send_answer(transport, head_out + body)  # at once: see DirectWrites
    answered_quickly(
        channel, headers, method=method, rel=rel, status=status, size=len(body),
        scheme=None, started=started,
    )
    return True


def answered_quickly(
    channel: UploadChannel,
    headers: dict[bytes, bytes],
    *,
    method: bytes,
    rel: str,
    status: int,
    size: int,
    scheme: str | None,
    started: float,
) -> None:
    """Count and log an answer written without a Request object, as `UploadSite.log` does
    for the others (the client's address and scheme worked out only if it is logged)."""
    site = channel.site
    client, secure = "", False
    if site.logs_answers:
        transport: Any = channel.transport
        peer = getattr(transport.getPeer(), "host", None)
        proto, forwarded = headers.get(b"x-forwarded-proto"), headers.get(b"x-forwarded-for")
        client = site.proxies.client_address(peer, [forwarded] if forwarded is not None else [])
        secure = site.proxies.secure(channel.isSecure(), peer, [proto] if proto is not None else [])
    site.answered(
        client=client, secure=secure, method=method, rel=rel, status=status, size=size,
        scheme=scheme, started=started,
    )
