"""Fuzz target: sizes and durations as admins write them (`hmacfs.core.units`).

Contract: `parse_size` returns an int in 0..MAX_SIZE and `parse_duration` a float in
0..MAX_DURATION (None only where "never" is allowed), each written back by `format_size` /
`format_duration` as text that parses to the same value; for anything else both raise
ValueError with a one-line message. Any other exception is a crash, and so is an input that
takes more than -timeout seconds (digits are bounded before any arithmetic).

The input is the text as written in the file (the seed corpus); inputs that start with "#"
are the integer or float a TOML file would give instead, read from the rest of the text.
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
    from hmacfs.core.units import (
        MAX_DURATION,
        MAX_SIZE,
        format_duration,
        format_size,
        parse_duration,
        parse_size,
    )


def check_size(value: float | str) -> None:
    try:
        size = parse_size(value)
    except ValueError as e:
        assert "\n" not in str(e), (value, e)
        return
    assert type(size) is int and 0 <= size <= MAX_SIZE, (value, size)
    assert parse_size(format_size(size)) == size, (value, size)


def check_duration(value: int | float | str, allow_never: bool) -> None:
    try:
        seconds = parse_duration(value, allow_never=allow_never)
    except ValueError as e:
        assert "\n" not in str(e), (value, e)
        return
    if seconds is None:
        assert allow_never, value
        return
    assert type(seconds) is float and 0 <= seconds <= MAX_DURATION, (value, seconds)
    assert not (allow_never and seconds == 0), value
    assert parse_duration(format_duration(seconds), allow_never=allow_never) == seconds, value


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)  # NaN and infinities too: TOML has them
    except ValueError:
        return None


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    values: list[int | float | str] = [text]
    if text.startswith("#") and len(text) < 400:
        number = _number(text[1:])
        if number is not None:
            values = [number]
    for value in values:
        check_size(value)  # a float is documented to be refused
        check_duration(value, allow_never=False)
        check_duration(value, allow_never=True)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
