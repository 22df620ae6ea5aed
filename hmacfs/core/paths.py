"""Turning a request target into the path that the XMPP server signed.

The signed path is the request path with the configured prefix removed, percent-decoded exactly
once (a ``+`` stays a ``+``), without a leading slash. Each segment is decoded on its own, so an
encoded slash can never create a segment boundary that the signer did not see.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote_to_bytes

from hmacfs.core.refusals import BadRequest, NotFound, Reason, UriTooLong

#: Longest file or directory name, in UTF-8 bytes (NAME_MAX on Linux filesystems).
MAX_SEGMENT_BYTES = 255
#: Longest signed path, in UTF-8 bytes.
MAX_PATH_BYTES = 1024
#: First segment reserved for the server's own bookkeeping inside the storage directory.
RESERVED_SEGMENT = ".hmacfs"
#: A path with nothing to decode: printable ASCII without "%" decodes to itself.
_PLAIN = re.compile(rb"[\x21-\x24\x26-\x7e]*")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into its raw path and raw query (without the ``?``)."""
    path, _, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    return path, query


def parse_query(raw: bytes) -> dict[str, list[str]]:
    """The fields of a raw query string: ``parse_qs`` of its UTF-8 text (undecodable bytes
    replaced) with blank values kept. A query with nothing to decode (ASCII, no ``%`` and no
    ``+``, as signed URLs are) is split directly, to the same result."""
    # (find, not `in`: bytes' `in` tries its operand as an integer first, and makes and
    # clears a TypeError for a bytes one, which costs more than the search)
    if not raw.isascii() or raw.find(b"%") >= 0 or raw.find(b"+") >= 0:
        return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    fields: dict[str, list[str]] = {}
    for piece in raw.decode("ascii").split("&"):
        if piece:
            name, _, value = piece.partition("=")
            fields.setdefault(name, []).append(value)
    return fields


def _decode_segment(raw: bytes) -> str:
    try:
        text = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not valid UTF-8", Reason.BAD_PATH) from None
    if "/" in text:
        raise BadRequest("encoded slash in path", Reason.BAD_PATH)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise BadRequest("control character in path", Reason.BAD_PATH)
    return text


def decode_path(raw_path: bytes, prefix: str) -> str:
    """Return the signed path for `raw_path` (the request path, still percent-encoded).

    `prefix` is the normalised upload prefix ("/upload/" or "/"). Raises NotFound when the
    path is not under the prefix, BadRequest for anything that cannot be a stored file's path
    (dot segments, empty segments, NUL or other control characters, encoded slashes, invalid
    UTF-8) and UriTooLong for absurdly long names. The result may be "" (the prefix itself).
    """
    if not raw_path.startswith(b"/"):
        raise BadRequest("path must start with /", Reason.BAD_PATH)
    if len(raw_path) > 4 * MAX_PATH_BYTES:
        raise UriTooLong("path too long")
    if _PLAIN.fullmatch(raw_path):
        decoded = raw_path.decode("ascii")
    else:
        decoded = "/".join(_decode_segment(s) for s in raw_path.split(b"/"))
    if not decoded.startswith(prefix):
        if decoded + "/" == prefix:
            return ""
        raise NotFound("not found", Reason.BAD_PATH)
    rel = decoded[len(prefix) :]
    if rel == "":
        return ""
    if len(rel.encode("utf-8")) > MAX_PATH_BYTES:
        raise UriTooLong("path too long")
    segments = rel.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise BadRequest("empty or dot segment in path", Reason.BAD_PATH)
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise UriTooLong("file name too long")
    if segments[0] == RESERVED_SEGMENT:
        raise NotFound("not found", Reason.BAD_PATH)
    return rel


def file_name(rel: str) -> str:
    """The file name part (last segment) of a signed path."""
    return rel.rsplit("/", 1)[-1]
