"""Sizes and durations as written in the configuration file (hmacfs.core.units)."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hmacfs.core.units import (
    MAX_DURATION,
    MAX_SIZE,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    show,
    toml_string,
)

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (1048576, MIB),
        ("0", 0),
        ("1024", 1024),
        ("1b", 1),
        ("1B", 1),
        ("512K", 512 * KIB),
        ("512k", 512 * KIB),
        ("512KB", 512 * KIB),
        ("512kib", 512 * KIB),
        ("100M", 100 * MIB),
        ("10MB", 10 * MIB),
        ("10MiB", 10 * MIB),
        ("10mb", 10 * MIB),
        ("1.5G", 3 * GIB // 2),
        ("2 GiB", 2 * GIB),
        ("  3g  ", 3 * GIB),
        ("2T", 2 * TIB),
        ("0.5K", 512),
        # Fractions of a byte are rounded down.
        ("0.1K", 102),
        ("7", 7),
    ],
)
def test_parse_size(text: int | str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   ",
        "100Q",
        "M",
        "MB",
        "1.5.5M",
        "1,5M",
        "1e9",
        "nan",
        "NaN",
        "inf",
        "0x10",
        "1 000",
        "10 M B",
        "1iB",
        ".5M",
        "5.M",
        "+5M",
        "\u0661\u0660",  # Arabic-Indic digits
        "5M5",
        True,
        False,
        1.5,
        math.nan,
        None,
        [1],
    ],
)
def test_parse_size_junk(junk: object) -> None:
    with pytest.raises(ValueError, match=r"is not a size \(examples: \"100M\", \"1G\", 1048576\)"):
        parse_size(junk)  # type: ignore[arg-type]


@pytest.mark.parametrize("negative", [-1, "-1", "-1M", " -0.5G"])
def test_parse_size_negative(negative: int | str) -> None:
    with pytest.raises(ValueError, match="is not a size: it is negative"):
        parse_size(negative)


@pytest.mark.parametrize("huge", [MAX_SIZE + 1, "8388608T", "9" * 41, "9" * 5000])
def test_parse_size_too_large(huge: int | str) -> None:
    with pytest.raises(ValueError, match=r"too large a size|too many digits"):
        parse_size(huge)


def test_parse_size_largest() -> None:
    assert parse_size(MAX_SIZE) == MAX_SIZE
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE


def test_parse_size_message_shows_value_as_toml() -> None:
    with pytest.raises(ValueError) as info:
        parse_size('1"0\nQ')
    assert str(info.value) == r'"1\"0\nQ" is not a size (examples: "100M", "1G", 1048576)'


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (1, "1"),
        (1000, "1000"),
        (1024, "1K"),
        (1536, "1536"),
        (3 * GIB // 2, "1536M"),
        (100 * MIB, "100M"),
        (GIB, "1G"),
        (5 * TIB, "5T"),
        (1024 * TIB, "1024T"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("bad", [-1, True, 1.0, "1K", None])
def test_format_size_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a size in bytes"):
        format_size(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_SIZE))
@example(0)
@example(MAX_SIZE)
@example(TIB)
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "b", "k", "K", "kb", "KiB", "m", "MB", "g", "GiB", "t", "T"]),
    st.sampled_from(["", " "]),
)
def test_size_units(number: int, unit: str, space: str) -> None:
    factor = {"": 1, "b": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}[unit[:1].lower()]
    assert parse_size(f"{number}{space}{unit}") == number * factor


@given(st.text())
@example("9" * 5000)
@example("1." + "0" * 5000)
def test_parse_size_text_raises_only_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError as e:
        assert "\n" not in str(e)
    else:
        assert 0 <= size <= MAX_SIZE


@given(st.text(alphabet="0123456789.kmgtibKMGTIB -+ne", max_size=12))
def test_parse_size_near_misses_raise_only_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert 0 <= size <= MAX_SIZE


@given(st.one_of(st.none(), st.booleans(), st.floats(), st.lists(st.integers()), st.binary()))
def test_parse_size_other_types_raise_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        ("0", 0.0),
        ("0s", 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("0.5", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("2w", 1209600.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1H30M", 5400.0),
        (" 2m ", 120.0),
        ("1.5h", 5400.0),
        ("1w2d3h4m5s", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("0.1s", 0.1),
        ("36525d", MAX_DURATION),
    ],
)
def test_parse_duration(value: int | float | str, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("never", ["never", "off", "Never", " OFF ", 0, 0.0, "0", "0s", "0h0m"])
def test_parse_duration_never(never: int | float | str) -> None:
    assert parse_duration(never, allow_never=True) is None


def test_parse_duration_allow_never_keeps_other_values() -> None:
    assert parse_duration("1d", allow_never=True) == 86400.0
    assert parse_duration(0.25, allow_never=True) == 0.25


@pytest.mark.parametrize("never", ["never", "off"])
def test_parse_duration_never_refused(never: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(never)
    assert str(info.value) == (
        f'"{never}" is not allowed here: give a duration '
        '(examples: "30s", "5m", "12h", "7d", "1h30m", 90)'
    )


@pytest.mark.parametrize(
    "junk",
    [
        "",
        " ",
        "5x",
        "5 minutes",
        "m",
        "1e3",
        "nan",
        "inf",
        "1.5.5s",
        "1h-30m",
        "5ms",
        "\u0665s",
        "1:30",
        "h1",
        True,
        None,
        math.nan,
        math.inf,
        [1],
    ],
)
def test_parse_duration_junk(junk: object) -> None:
    with pytest.raises(ValueError, match=r"is not a duration \(examples: \"30s\""):
        parse_duration(junk)  # type: ignore[arg-type]


def test_parse_duration_junk_mentions_never_where_allowed() -> None:
    with pytest.raises(ValueError, match=r', "never"\)$'):
        parse_duration("soon", allow_never=True)


@pytest.mark.parametrize("negative", [-1, -0.5, "-1s", "-5m"])
def test_parse_duration_negative(negative: int | float | str) -> None:
    with pytest.raises(ValueError, match="is not a duration: it is negative"):
        parse_duration(negative)


@pytest.mark.parametrize("disordered", ["30m1h", "1m1m", "5s1s", "1s1m"])
def test_parse_duration_unit_order(disordered: str) -> None:
    with pytest.raises(ValueError, match="write each unit once, largest first"):
        parse_duration(disordered)


@pytest.mark.parametrize("huge", [MAX_DURATION + 1, "36526d", "5300w", 10**400, "9" * 41])
def test_parse_duration_too_long(huge: int | float | str) -> None:
    with pytest.raises(ValueError, match=r"too long a duration|too many digits"):
        parse_duration(huge)


def test_parse_duration_too_long_suggests_never() -> None:
    with pytest.raises(ValueError, match='use "never" for no limit'):
        parse_duration("200000d", allow_never=True)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (0, "0s"),
        (0.0, "0s"),
        (0.5, "0.5s"),
        (30, "30s"),
        (90.0, "1m30s"),
        (90.1, "1m30.1s"),
        (120.0, "2m"),
        (300.0, "5m"),
        (3600.25, "1h0.25s"),
        (5400.0, "1h30m"),
        (86400.0, "1d"),
        (604800.0, "1w"),
        (691200.0, "1w1d"),
        (1e-05, "0.00001s"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1, -0.0001, math.nan, math.inf, True, "5m"])
def test_format_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a duration in seconds"):
        format_duration(bad)  # type: ignore[arg-type]


@given(st.floats(min_value=0, max_value=MAX_DURATION))
@example(0.0)
@example(5e-324)
@example(90.1)
@example(MAX_DURATION)
@example(2.0**31 + 0.5)
def test_duration_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=int(MAX_DURATION)))
def test_duration_round_trip_integers(seconds: int) -> None:
    text = format_duration(seconds)
    assert "." not in text
    assert parse_duration(text) == seconds


@given(st.one_of(st.none(), st.floats(min_value=0, max_value=MAX_DURATION, exclude_min=True)))
def test_duration_round_trip_allow_never(seconds: float | None) -> None:
    assert parse_duration(format_duration(seconds), allow_never=True) == seconds


@given(st.text(), st.booleans())
@example("9" * 5000 + "s", False)
@example("0." + "0" * 5000 + "1s", False)
def test_parse_duration_text_raises_only_value_error(text: str, allow_never: bool) -> None:
    try:
        seconds = parse_duration(text, allow_never=allow_never)
    except ValueError as e:
        assert "\n" not in str(e)
    else:
        assert seconds is None or 0 <= seconds <= MAX_DURATION


@given(st.text(alphabet="0123456789.wdhmsWDHMS -+neovrf", max_size=12), st.booleans())
def test_parse_duration_near_misses_raise_only_value_error(text: str, allow_never: bool) -> None:
    try:
        seconds = parse_duration(text, allow_never=allow_never)
    except ValueError:
        return
    assert seconds is None or 0 <= seconds <= MAX_DURATION


@given(st.one_of(st.integers(), st.floats()), st.booleans())
def test_parse_duration_numbers(value: float, allow_never: bool) -> None:
    try:
        seconds = parse_duration(value, allow_never=allow_never)
    except ValueError:
        assert not 0 <= value <= MAX_DURATION
    else:
        assert seconds == (None if allow_never and value == 0 else value)


# --- quoting for messages --------------------------------------------------------------------


@given(st.text())
def test_toml_string_round_trip(text: str) -> None:
    assert tomllib.loads(f"x = {toml_string(text)}") == {"x": text}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("abc", '"abc"'),
        ("a\nb", r'"a\nb"'),
        (True, "true"),
        (5, "5"),
        (1.5, "1.5"),
        (["a", 1], '["a", 1]'),
        ("x" * 100, '"' + "x" * 76 + "..."),
    ],
)
def test_show(value: object, shown: str) -> None:
    assert show(value) == shown
