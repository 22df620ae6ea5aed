"""Inputs the fuzzers found, each pinned as a plain test of the contract it broke.

The same inputs are in the targets' corpora (tests/fuzz/corpus), so the quick corpus replay
runs them through the whole target too.
"""

from __future__ import annotations

import time

import pytest

from hmacfs.core.download import etag_matches
from hmacfs.core.refusals import BadRequest
from hmacfs.core.resumable import creation_in, version_of

pytestmark = pytest.mark.fuzz


# superscript 0 and 2, circled 1, Arabic-Indic 3, extended Arabic-Indic 6
@pytest.mark.parametrize(
    "value", ["\u2070", "\u00b2", "6\u00b2", "\u2460", "\u0663", " \u06f6 ", "1" * 5000]
)
def test_interop_version_of_other_digits_is_no_version(value: str) -> None:
    # str.isdigit() took these, then int() raised ValueError (a 500 for any resumable PUT,
    # POST or HEAD naming such a version); 5000 digits is past int()'s limit.
    assert version_of(value) is None


def test_a_creation_naming_a_superscript_version_is_a_plain_upload() -> None:
    headers = {"upload-draft-interop-version": "\u00b2", "upload-complete": "?1"}
    assert creation_in(headers) is None


@pytest.mark.parametrize("value", ["3", " 8 ", "06"])
def test_interop_versions_in_ascii_digits_still_count(value: str) -> None:
    version = version_of(value)
    assert version is not None and version.number == int(value)


def test_an_upload_length_in_other_digits_is_refused() -> None:
    headers = {
        "upload-draft-interop-version": "8",
        "upload-complete": "?0",
        "upload-length": "\u0661\u0660",
    }
    with pytest.raises(BadRequest):
        creation_in(headers)


@pytest.mark.parametrize(
    "header", ["," * 16_000 + "x", "," * 16_000, ", \t" * 5_000 + '"b', "x" + "," * 16_000]
)
def test_a_long_run_of_commas_in_an_entity_tag_list_is_read_in_one_pass(header: str) -> None:
    # The item's pattern began with the separators, so a failed match at each comma of the
    # run rescanned the rest of it: 16 KB of commas in If-None-Match took 5 s.
    start = time.perf_counter()
    assert not etag_matches(header, '"10-5f3a"', weak=True)
    assert time.perf_counter() - start < 0.5


def test_entity_tags_after_a_run_of_separators_still_match() -> None:
    assert etag_matches(", ,\t," * 1000 + '"10-5f3a"', '"10-5f3a"', weak=False)
    assert etag_matches(', , x, "b"', '"b"', weak=False)
