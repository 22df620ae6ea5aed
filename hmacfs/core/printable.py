"""Making text from a client safe to put into a log line.

A value that a client chose (a path, a method, a forwarded address, a refusal that quotes
the request) may contain characters that a terminal, a log viewer or a line-oriented log
reader acts on: ESC sequences, carriage returns, C1 controls such as NEL (U+0085), the line
and paragraph separators U+2028/U+2029, bidirectional overrides. Signed names may contain
such characters and are stored as they are; only their log text is escaped.
"""

from __future__ import annotations

__all__ = ["printable", "printable_line"]


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    return _escape_unprintable(char)


def _escape_unprintable(char: str) -> str:
    # str.isprintable is false for every character of the categories Cc, Cf, Cs, Co, Cn, Zl,
    # Zp and Zs except the ASCII space: exactly the ones a log line must not carry raw.
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` with every non-printable character escaped, Python style, for a log line.

    A character that is not printable (str.isprintable: the categories Cc, Cf, Zl, Zp, Cs,
    Co, Cn and all spaces but " ") becomes ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, and a
    backslash becomes ``\\\\``, so the escaping is unambiguous: different texts never give
    the same log text. Printable text without a backslash, the common case, is returned as
    it is, after one cheap check.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(map(_escape, text))


def printable_line(line: str) -> str:
    """`line` with its non-printable characters escaped like `printable`'s, but its
    backslashes left alone.

    The last line of defence, for whole log lines: the values in them are escaped with
    `printable` already, and escaping their backslashes again would only double them. This
    escaping is not unambiguous; it only keeps raw control characters out of the log.
    """
    if line.isprintable():
        return line
    return "".join(map(_escape_unprintable, line))
