"""The resumable-upload wire rules of each interop version (hmacfs.core.resumable), without
a server."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hmacfs.core import resumable as wire
from hmacfs.core.refusals import BadRequest


def _headers(**fields: str) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in fields.items()}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # What URLSession sends on iOS 17 (3), 18.0 (5), 18.1 (6), and the newest drafts.
        ({"upload_draft_interop_version": "3", "upload_incomplete": "?0"}, (3, True)),
        ({"upload_draft_interop_version": "3", "upload_incomplete": "?1"}, (3, False)),
        ({"upload_draft_interop_version": "5", "upload_complete": "?1"}, (5, True)),
        ({"upload_draft_interop_version": "6", "upload_complete": "?0"}, (6, False)),
        ({"upload_draft_interop_version": "8", "upload_complete": "?1"}, (8, True)),
    ],
)
def test_a_creation_is_recognised_with_its_version_and_completeness(
    fields: dict[str, str], expected: tuple[int, bool]
) -> None:
    creation = wire.creation_in(_headers(**fields))
    assert creation is not None
    assert (creation.version.number, creation.complete) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"upload_complete": "?1"},  # no version
        {"upload_draft_interop_version": "2", "upload_complete": "?1"},  # too old
        {"upload_draft_interop_version": "99", "upload_complete": "?1"},  # unknown
        {"upload_draft_interop_version": "3", "upload_complete": "?1"},  # 3 says Incomplete
        {"upload_draft_interop_version": "6", "upload_incomplete": "?0"},  # 6 says Complete
        {"upload_draft_interop_version": "6", "upload_complete": "true"},  # not an sf-boolean
        {"upload_draft_interop_version": "six", "upload_complete": "?1"},
    ],
)
def test_anything_less_than_a_whole_ask_is_a_plain_upload(fields: dict[str, str]) -> None:
    assert wire.creation_in(_headers(**fields)) is None


def test_a_creation_at_another_offset_than_0_is_refused() -> None:
    fields = {"upload_draft_interop_version": "6", "upload_complete": "?1"}
    assert wire.creation_in(_headers(upload_offset="0", **fields)) is not None
    with pytest.raises(BadRequest):
        wire.creation_in(_headers(upload_offset="5", **fields))
    with pytest.raises(BadRequest):
        wire.creation_in(_headers(upload_length="-1", **fields))


@pytest.mark.parametrize(
    ("complete", "length", "content_length", "size"),
    [
        (True, None, 100, 100),  # the whole body: its length is the size
        (True, 100, 100, 100),
        (False, 100, 40, 100),  # a first part of 40 of 100 bytes
        (False, 100, 0, 100),  # an empty creation
    ],
)
def test_the_total_size_is_upload_length_or_the_whole_body(
    complete: bool, length: int | None, content_length: int, size: int
) -> None:
    creation = wire.Creation(wire.Version(8), complete, length)
    assert wire.total_size(creation, content_length) == size


@pytest.mark.parametrize(
    ("complete", "length", "content_length"),
    [
        (True, 100, 99),  # says complete, but the body is not all of it
        (False, 100, 101),  # a part larger than the whole
        (False, None, 10),  # incomplete without the size: no signature can be checked
    ],
)
def test_inconsistent_or_missing_sizes_are_refused(
    complete: bool, length: int | None, content_length: int
) -> None:
    creation = wire.Creation(wire.Version(7), complete, length)
    with pytest.raises(BadRequest):
        wire.total_size(creation, content_length)


def test_each_version_names_completeness_its_own_way() -> None:
    assert wire.Version(3).completeness(True) == ("Upload-Incomplete", "?0")
    assert wire.Version(3).completeness(False) == ("Upload-Incomplete", "?1")
    for number in range(4, 9):
        assert wire.Version(number).completeness(True) == ("Upload-Complete", "?1")
        assert wire.Version(number).completeness(False) == ("Upload-Complete", "?0")


def test_the_versions_differ_where_the_drafts_do() -> None:
    media = {n: wire.Version(n).patch_media_type for n in wire.VERSIONS}
    assert media == {3: None, 4: None, 5: None, 6: wire.PARTIAL_UPLOAD, 7: wire.PARTIAL_UPLOAD,
                     8: wire.PARTIAL_UPLOAD}  # fmt: skip
    assert [wire.Version(n).intermediate_status() for n in wire.VERSIONS] == [201] * 4 + [204] * 2
    assert wire.Version(5).limit(10, 60) == "max-size=10, max-age=60"  # (not sent before 6)
    assert wire.Version(6).limit(10, 60.7) == "max-size=10, expires=60"
    assert wire.Version(7).limit(10, 60) == "max-size=10, max-age=60"
    assert wire.Version(8).limit(10, None) == "max-size=10"


def test_a_wrong_offset_is_described_as_a_problem_from_version_6() -> None:
    old = wire.offset_mismatch(wire.Version(5), 10, 20)
    assert old.status == 409 and wire.problem_body(old) is None
    assert ("Upload-Offset", "10") in old.headers
    new = wire.offset_mismatch(wire.Version(6), 10, 20)
    problem = json.loads(wire.problem_body(new) or b"")
    assert problem["type"].endswith("#mismatching-upload-offset")
    assert (problem["expected-offset"], problem["provided-offset"]) == (10, 20)


def test_an_append_to_a_completed_upload_is_refused_as_each_version_says() -> None:
    assert wire.completed_upload(wire.Version(5), body_empty=True).status == 400
    six = wire.completed_upload(wire.Version(6), body_empty=False)
    assert six.status == 400 and b"#completed-upload" in (wire.problem_body(six) or b"")
    assert wire.completed_upload(wire.Version(8), body_empty=True).status == 410
    eight = wire.completed_upload(wire.Version(8), body_empty=False)
    assert eight.status == 400
    assert b"#inconsistent-upload-length" in (wire.problem_body(eight) or b"")


SECRET = b"s" * 32


def test_a_token_is_bound_to_its_upload_path_and_size() -> None:
    upload_id = wire.new_id()
    token = wire.make_token(SECRET, upload_id, "a/b.png", 10)
    assert len(token) == 64 and wire.id_of(token) == upload_id
    assert wire.token_matches(token, [SECRET], upload_id, "a/b.png", 10)
    assert wire.token_matches(token, [b"new" * 10, SECRET], upload_id, "a/b.png", 10)  # rotation
    assert not wire.token_matches(token, [b"other"], upload_id, "a/b.png", 10)
    assert not wire.token_matches(token, [SECRET], upload_id, "a/b.png", 11)
    assert not wire.token_matches(token, [SECRET], upload_id, "a/c.png", 10)
    other_id = wire.new_id()
    assert not wire.token_matches(other_id + token[32:], [SECRET], other_id, "a/b.png", 10)


@given(st.text(max_size=80))
def test_any_text_is_either_a_token_or_refused(text: str) -> None:
    upload_id = wire.id_of(text)
    if upload_id is None:
        return
    assert not wire.token_matches(text, [SECRET], upload_id, "p", 1) or text == wire.make_token(
        SECRET, upload_id, "p", 1
    )
