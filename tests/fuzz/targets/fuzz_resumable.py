"""Fuzz target: the resumable-upload request headers (`hmacfs.core.resumable`).

Contract: `version_of` returns None or a served Version; `parse_boolean` None or a bool;
`parse_integer` a non-negative int or BadRequest; `creation_in` None or a Creation of a served
version, or BadRequest; `total_size` a non-negative int consistent with the headers, or
BadRequest (the inconsistent-length refusal is one); `id_of` None or the token's first 32
hex digits; `token_matches` a bool, true for the token made for the upload and false for any
other text. Any other exception is a crash.

The input is a request's header block ("Name: value" lines, as in the seed corpus), the
values read as the web layer reads them (UTF-8 with surrogateescape). The whole input read as
UTF-16 is one more field value: that reaches any character quickly, where single byte flips in
UTF-8 rarely make a valid one.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

# Coverage guidance needs the code under test instrumented as it is imported; the corpus
# replay in pytest imports this module without that.
with atheris.instrument_imports(include=["hmacfs"]) if __name__ == "__main__" else (
    contextlib.nullcontext()
):
    from hmacfs.core.refusals import BadRequest
    from hmacfs.core.resumable import (
        VERSIONS,
        Creation,
        creation_in,
        id_of,
        make_token,
        parse_boolean,
        parse_integer,
        token_matches,
        total_size,
        version_of,
    )

SECRETS = (b"current resumable secret", b"previous resumable secret")
UPLOAD_ID = "0123456789abcdef0123456789abcdef"
REL = "ab12/holiday.mp4"


def check_fields(value: str) -> None:
    version = version_of(value)
    assert version is None or version.number in VERSIONS, (value, version)
    assert parse_boolean(value) in (None, True, False), value
    try:
        number = parse_integer(value, "Upload-Offset")
    except BadRequest:
        pass
    else:
        assert type(number) is int and number >= 0, (value, number)
    upload_id = id_of(value)
    assert upload_id is None or (upload_id == value[:32] and len(value) == 64), value


def check_creation(headers: dict[str, str]) -> None:
    try:
        creation = creation_in(headers)
    except BadRequest:
        return
    if creation is None:
        return
    assert isinstance(creation, Creation) and creation.version.number in VERSIONS, creation
    assert creation.length is None or creation.length >= 0, creation
    length_text = headers.get("content-length", "").strip()
    content_length = int(length_text) if length_text.isascii() and length_text.isdigit() else None
    try:
        size = total_size(creation, content_length)
    except BadRequest:
        return
    assert size >= 0 and size in (creation.length, content_length), (creation, size)
    if content_length is not None:
        assert content_length <= size, (creation, content_length, size)


def check_token(token: str, size: int) -> None:
    made = make_token(SECRETS[1], UPLOAD_ID, REL, size)
    assert token_matches(made, SECRETS, UPLOAD_ID, REL, size)
    assert id_of(made) == UPLOAD_ID
    matched = token_matches(token, SECRETS, UPLOAD_ID, REL, size)
    assert matched is (token == made or token == make_token(SECRETS[0], UPLOAD_ID, REL, size))
    assert token_matches(token, SECRETS, token[:32], REL, size) in (True, False)


def TestOneInput(data: bytes) -> None:
    headers: dict[str, str] = {}
    for line in data.split(b"\n"):
        name, _, value = line.removesuffix(b"\r").partition(b":")
        key = name.decode("latin-1").strip().lower()
        headers.setdefault(key, value.strip().decode("utf-8", "surrogateescape"))
    for value in headers.values():
        check_fields(value)
    check_fields(data.decode("utf-16-le", "replace"))
    check_creation(headers)
    token = headers.get("upload-token", data.decode("latin-1"))
    check_token(token, len(data))


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
