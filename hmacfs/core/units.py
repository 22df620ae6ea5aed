"""Sizes and durations as admins write them in the configuration file, and back.

Sizes
    An integer is a number of bytes. A string is a number (decimals allowed) with an optional
    unit ``K``, ``M``, ``G`` or ``T``, optionally followed by ``B`` or ``iB``, in any case and
    with optional space before the unit: ``"100M"``, ``"1.5G"``, ``"10MB"``, ``"2 GiB"``,
    ``"1024"``. **Every unit is binary**: K is 1024 bytes, M is 1024 K, and so on, whether it is
    written ``M``, ``MB`` or ``MiB`` (an upload limit of "10MB" is meant as 10 MiB far more often
    than as 10,000,000 bytes, and one meaning per letter is easier to remember). A fractional
    result is rounded down to whole bytes.

Durations
    A number (integer or float) is seconds. A string is either a plain number of seconds
    (``"90"``, ``"0.5"``) or one or more number-unit pairs with the units ``w`` (weeks),
    ``d``, ``h``, ``m`` (minutes) and ``s``, largest first and each at most once: ``"30s"``,
    ``"5m"``, ``"12h"``, ``"7d"``, ``"2w"``, ``"1h30m"``, ``"1.5h"``. Where a setting allows it
    (``allow_never``), ``"never"``, ``"off"`` and any zero duration mean "never" and are
    returned as ``None``. Units are case-insensitive too.

Every parser raises only `ValueError` for bad input, with a message that shows the value and
what a valid one looks like, so the config loader can prefix it with the file and key.
"""

from __future__ import annotations

import math
import re

#: The largest size accepted: the largest file offset a 64-bit system can express.
MAX_SIZE = 2**63 - 1

#: The longest duration accepted (100 years); longer is "never" where that is allowed.
MAX_DURATION = 36525 * 86400.0

_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE_RE = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?:(?P<unit>[kmgt])(?:i?b)?|b)?", re.ASCII
)
_SIZE_EXAMPLES = '(examples: "100M", "1G", 1048576)'

_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_PLAIN_SECONDS_RE = re.compile(_NUMBER, re.ASCII)
_DURATION_RE = re.compile(rf"(?:{_NUMBER}\s*[wdhms]\s*)+", re.ASCII)
_DURATION_PART_RE = re.compile(rf"({_NUMBER})\s*([wdhms])", re.ASCII)
_NEVER = frozenset({"never", "off"})

# Long digit strings are refused before any arithmetic (and before Python's limit on int
# conversion, whose message would not say what a size looks like). A float's exact decimal
# expansion needs up to 1074 digits after the point, so fractions may be that long.
_MAX_DIGITS = 40
_MAX_FRACTION_DIGITS = 1100


def _too_many_digits(number: str) -> bool:
    whole, _, fraction = number.partition(".")
    return len(whole) > _MAX_DIGITS or len(fraction) > _MAX_FRACTION_DIGITS


# Exact arithmetic on what an admin writes, as (numerator, denominator) pairs of ints: the
# fractions and decimal modules would do, at half a MiB more in every process that reads the
# configuration. A float is reached only at the end, by int division, which Python rounds
# correctly, so "1.5h" or "0.1" read as the float nearest to the exact value.
_Ratio = tuple[int, int]


def _ratio(number: str) -> _Ratio:
    """The exact value of `number` (digits, optionally with a fractional part)."""
    whole, _, fraction = number.partition(".")
    return int(whole + fraction), 10 ** len(fraction)


def show(value: object) -> str:
    """Render `value` the way it would be written in TOML, for one-line error messages.

    Strings get double quotes and escapes (so a message never spans lines), long values are
    shortened. Used by this module and by `hmacfs.core.config`; raises nothing.
    """
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = toml_string(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    else:
        text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return text


def toml_string(text: str) -> str:
    """Quote `text` as a TOML basic string (escaping quotes, backslashes and control
    characters), so that `tomllib` reads it back as `text`. Raises nothing."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_size(value: int | str) -> int:
    """Turn a size as written in the configuration (see the module docstring) into bytes.

    Raises ValueError for negative, empty or unrecognised values ("-1M", "", "NaN", "100Q",
    -1), for sizes above `MAX_SIZE`, and for anything that is neither an int nor a str
    (True, 1.5, None, ...).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{show(value)} is not a size {_SIZE_EXAMPLES}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{show(value)} is not a size: it is negative")
        if value > MAX_SIZE:
            raise ValueError(f"{show(value)} is too large a size (at most {MAX_SIZE} bytes)")
        return value
    text = value.strip().lower()
    if text.startswith("-"):
        raise ValueError(f"{show(value)} is not a size: it is negative")
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"{show(value)} is not a size {_SIZE_EXAMPLES}")
    number = match["number"]
    if _too_many_digits(number):
        raise ValueError(f"{show(value)} is not a size: too many digits")
    numerator, denominator = _ratio(number)
    size = numerator * _SIZE_UNITS[match["unit"] or ""] // denominator
    if size > MAX_SIZE:
        raise ValueError(f"{show(value)} is too large a size (at most {MAX_SIZE} bytes)")
    return size


def format_size(n: int) -> str:
    """Write a number of bytes the way `parse_size` reads it: in the largest unit that
    divides it exactly ("100M", "1536K"), or as a plain number of bytes ("1000").

    ``parse_size(format_size(n)) == n`` for every valid size. Raises ValueError for a
    negative or non-integer `n`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{show(n)} is not a size in bytes")
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_UNITS[unit.lower()]
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _duration_examples(allow_never: bool) -> str:
    never = ', "never"' if allow_never else ""
    return f'(examples: "30s", "5m", "12h", "7d", "1h30m", 90{never})'


def parse_duration(value: int | float | str, *, allow_never: bool = False) -> float | None:
    """Turn a duration as written in the configuration (see the module docstring) into
    seconds.

    With `allow_never`, "never", "off" and zero give None ("no limit"); without it, "never"
    and "off" are refused and zero gives 0.0 (callers that need more than zero check that).
    Raises ValueError for negative, NaN, infinite, empty or unrecognised values, for units
    out of order or repeated ("30m1h", "1m1m"), for durations above `MAX_DURATION`, and for
    any value that is neither a number nor a str.
    """
    examples = _duration_examples(allow_never)
    seconds: _Ratio
    if _is_number(value):
        assert isinstance(value, int | float)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{show(value)} is not a duration {examples}")
        if value < 0:
            raise ValueError(f"{show(value)} is not a duration: it is negative")
        if value > MAX_DURATION:
            raise ValueError(_too_long(value, allow_never))
        seconds = value.as_integer_ratio()
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in _NEVER:
            if allow_never:
                return None
            raise ValueError(f"{show(value)} is not allowed here: give a duration {examples}")
        if text.startswith("-"):
            raise ValueError(f"{show(value)} is not a duration: it is negative")
        seconds = _parse_duration_text(value, text, examples)
        if seconds[0] > int(MAX_DURATION) * seconds[1]:
            raise ValueError(_too_long(value, allow_never))
    else:
        raise ValueError(f"{show(value)} is not a duration {examples}")
    if seconds[0] == 0 and allow_never:
        return None
    return seconds[0] / seconds[1]


def _parse_duration_text(value: str, text: str, examples: str) -> _Ratio:
    if _PLAIN_SECONDS_RE.fullmatch(text):
        if _too_many_digits(text):
            raise ValueError(f"{show(value)} is not a duration: too many digits")
        return _ratio(text)
    if not _DURATION_RE.fullmatch(text):
        raise ValueError(f"{show(value)} is not a duration {examples}")
    total, scale = 0, 1  # (every part's denominator is a power of ten: the largest serves)
    previous = math.inf
    for number, unit in _DURATION_PART_RE.findall(text):
        factor = _DURATION_UNITS[unit]
        if factor >= previous:
            raise ValueError(
                f"{show(value)} is not a duration: write each unit once, largest first "
                '(like "1h30m")'
            )
        if _too_many_digits(number):
            raise ValueError(f"{show(value)} is not a duration: too many digits")
        previous = factor
        numerator, denominator = _ratio(number)
        if denominator > scale:
            total, scale = total * (denominator // scale), denominator
        total += numerator * factor * (scale // denominator)
    return total, scale


def _too_long(value: object, allow_never: bool) -> str:
    hint = '; use "never" for no limit' if allow_never else ""
    return f"{show(value)} is too long a duration (at most 36525d, 100 years{hint})"


def format_duration(s: float | None) -> str:
    """Write a duration in seconds the way `parse_duration` reads it: "never" for None,
    otherwise units from weeks down to (possibly fractional) seconds: "1h30m", "1d", "2.5s",
    "0s".

    ``parse_duration(format_duration(s)) == s`` for every valid duration (for zero only
    without `allow_never`, where zero means "never"). Raises ValueError for negative, NaN or
    infinite values and for anything that is not a number or None.
    """
    if s is None:
        return "never"
    if not _is_number(s) or not math.isfinite(s) or s < 0:
        raise ValueError(f"{show(s)} is not a duration in seconds")
    whole = math.floor(s)
    parts: list[str] = []
    rest = whole
    for unit, factor in _DURATION_UNITS.items():
        if unit == "s":
            break
        count, rest = divmod(rest, factor)
        if count:
            parts.append(f"{count}{unit}")
    seconds_whole = rest
    if whole == s:
        if seconds_whole or not parts:
            parts.append(f"{seconds_whole}s")
        return "".join(parts)
    # The fractional digits of the shortest decimal that reads back as `s` (repr's promise):
    # the parser sums the same decimal exactly, so it rounds back to `s`.
    return "".join([*parts, f"{seconds_whole}.{_fraction_digits(repr(float(s)))}s"])


def _fraction_digits(text: str) -> str:
    """The digits after the point of the decimal `text` (a float's repr, which may have an
    exponent: "1e-05", "2.5e-07"), written out without one."""
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits, point = whole + fraction, len(whole) + int(exponent or 0)
    if point < 0:
        digits, point = "0" * -point + digits, 0
    return digits[point:].rstrip("0") or "0"
