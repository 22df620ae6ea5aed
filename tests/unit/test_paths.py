"""Decoding request paths into signed paths."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmacfs.core import paths
from hmacfs.core.paths import decode_path, file_name, parse_query, split_target
from hmacfs.core.refusals import BadRequest, NotFound, Reason, Refusal, UriTooLong

PREFIX = "/upload/"


def test_prosody_lowercase_and_ejabberd_uppercase_decode_alike() -> None:
    lower = b"/upload/4a77/tr%c3%a8s%20cool.jpg"
    upper = b"/upload/4a77/tr%C3%A8s%20cool.jpg"
    raw = "/upload/4a77/très cool.jpg".encode()
    assert decode_path(lower, PREFIX) == "4a77/très cool.jpg"
    assert decode_path(upper, PREFIX) == decode_path(lower, PREFIX) == decode_path(raw, PREFIX)


def test_plus_stays_plus_and_decoding_happens_once() -> None:
    assert decode_path(b"/upload/a/1+1.txt", PREFIX) == "a/1+1.txt"
    assert decode_path(b"/upload/a/%2541.txt", PREFIX) == "a/%41.txt"


def test_split_target() -> None:
    assert split_target(b"/upload/a/b?v=1&x=2") == (b"/upload/a/b", b"v=1&x=2")
    assert split_target(b"/upload/a/b") == (b"/upload/a/b", b"")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"/upload/a%2Fb/c", BadRequest),
        (b"/upload/a/%2e%2e/b", BadRequest),
        (b"/upload/../b", BadRequest),
        (b"/upload/a/./b", BadRequest),
        (b"/upload/a//b", BadRequest),
        (b"/upload/a/b%00", BadRequest),
        (b"/upload/a/b%0a", BadRequest),
        (b"/upload/a/%ff", BadRequest),
        (b"upload/a", BadRequest),
        (b"/other/a/b", NotFound),
        (b"/upload/.hmacfs/meta/x", NotFound),
        (b"/upload/a/" + b"x" * 256, UriTooLong),
        (b"/upload/" + b"/".join([b"a" * 200] * 6), UriTooLong),
    ],
)
def test_refused(raw: bytes, error: type[Refusal]) -> None:
    with pytest.raises(error) as info:
        decode_path(raw, PREFIX)
    # Every path refusal, a PUT outside the prefix included, counts as a bad path.
    assert info.value.reason is Reason.BAD_PATH


def test_root_prefix() -> None:
    assert decode_path(b"/a/b.txt", "/") == "a/b.txt"
    assert decode_path(b"/", "/") == ""
    assert decode_path(b"/upload", PREFIX) == ""


def test_file_name() -> None:
    assert file_name("a/b/c.txt") == "c.txt"
    assert file_name("c.txt") == "c.txt"


segment = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
    min_size=1,
    max_size=40,
).filter(lambda s: s not in (".", "..") and s != ".hmacfs")


@given(st.lists(segment, min_size=1, max_size=4))
def test_any_encoding_of_a_path_decodes_to_it(segments: list[str]) -> None:
    rel = "/".join(segments)
    for safe in ("", "+&;=", "+&;=@!$'()*,"):
        encoded = "/".join(quote(s, safe=safe) for s in segments)
        assert decode_path(("/upload/" + encoded).encode(), PREFIX) == rel
        assert decode_path(("/upload/" + encoded.lower()).encode(), PREFIX).lower() == rel.lower()


@pytest.mark.parametrize(
    "raw",
    [b"/upload/a/b.txt", b"/upload/x+y/~!$&'()*,;=:@.bin", b"/upload/%41/b", b"/upload/a b/c",
     b"/upload/caf\xc3\xa9/x", b"/upload/a/%2e%2e/b", b"/upload/a/\x7f", b"/upload/.hmacfs/x",
     b"/upload/a/../b", b"/upload//b", b"/upload/", b"/other/a"],
)
def test_plain_paths_take_a_shortcut_to_the_same_result(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def outcome() -> object:
        try:
            return decode_path(raw, "/upload/")
        except Refusal as e:
            return (type(e), e.reason, e.text)

    shortcut = outcome()
    monkeypatch.setattr(paths, "_PLAIN", re.compile(rb"(?!)"))  # every path decoded in full
    assert outcome() == shortcut


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"v=abc",
        b"v2=ab&expires=1&",
        b"&&a&=b&c==d&a=2",
        b"v=a%20b+c",
        b"v=%FF%fe&x=\xc3\xa9",
        b"token=%E2%82%AC&v3=1",
        b"a=1;b=2",
    ],
)
def test_parse_query_is_parse_qs_with_blank_values_kept(raw: bytes) -> None:
    expected = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    assert parse_query(raw) == expected


@given(st.lists(st.sampled_from(list(b"ab=&;x1-_.~!$'()*,:@/?%+\xc3\xa9\xff"))))
def test_parse_query_agrees_with_parse_qs_on_any_query(chars: list[int]) -> None:
    raw = bytes(chars)
    assert parse_query(raw) == parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
