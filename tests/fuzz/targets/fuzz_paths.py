"""Fuzz target: request targets to signed paths (`hmacfs.core.paths`).

Contract: `split_target` cuts a target into a path without "?" or "#" and the query after the
first "?". `decode_path` either returns a relative path that stays inside the storage
directory (no empty, "." or ".." segment, no leading "/", no NUL or other control character,
no reserved first segment, within the length limits, the same path when encoded again) or
raises BadRequest, NotFound or UriTooLong, always with the reason "bad_path".
"""

from __future__ import annotations

import contextlib
import posixpath
import sys
from urllib.parse import quote

import atheris

# Coverage guidance needs the code under test instrumented as it is imported; the corpus
# replay in pytest imports this module without that.
with atheris.instrument_imports(include=["hmacfs"]) if __name__ == "__main__" else (
    contextlib.nullcontext()
):
    from hmacfs.core.paths import (
        MAX_PATH_BYTES,
        MAX_SEGMENT_BYTES,
        RESERVED_SEGMENT,
        decode_path,
        file_name,
        split_target,
    )
    from hmacfs.core.refusals import BadRequest, NotFound, Reason, UriTooLong

PREFIXES = ("/upload/", "/", "/xmpp/upload/")
ROOT = "/srv/files"


def check_split(target: bytes) -> bytes:
    path, query = split_target(target)
    assert b"?" not in path and b"#" not in path, (target, path)
    assert target.startswith(path), (target, path)
    if b"?" in target:
        assert target.endswith(b"?" + query), (target, query)
    else:
        assert query == b"", (target, query)
    return path


def check_decoded(raw: bytes, prefix: str, rel: str) -> None:
    if rel == "":
        return
    segments = rel.split("/")
    assert not rel.startswith("/"), (raw, rel)
    assert all(s not in ("", ".", "..") for s in segments), (raw, rel)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel), (raw, rel)
    assert segments[0] != RESERVED_SEGMENT, (raw, rel)
    encoded = rel.encode("utf-8")  # strict: no lone surrogate can reach the filesystem
    assert len(encoded) <= MAX_PATH_BYTES, (raw, rel)
    assert all(len(s.encode()) <= MAX_SEGMENT_BYTES for s in segments), (raw, rel)
    joined = posixpath.normpath(posixpath.join(ROOT, rel))
    assert joined == f"{ROOT}/{rel}", (raw, rel)  # nothing for normpath to fold: no escape
    name = file_name(rel)
    assert name == segments[-1] and name and "/" not in name, (raw, rel)
    # Decoding happens once: the path encoded again decodes to itself.
    again = prefix + "/".join(quote(s, safe="") for s in segments)
    assert decode_path(again.encode("ascii"), prefix) == rel, (raw, rel)


def TestOneInput(data: bytes) -> None:
    path = check_split(data)
    for prefix in PREFIXES:
        try:
            rel = decode_path(path, prefix)
        except (BadRequest, NotFound, UriTooLong) as e:
            assert e.reason is Reason.BAD_PATH, (path, e)
            continue
        check_decoded(path, prefix, rel)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
