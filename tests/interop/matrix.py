"""What the interop matrix runs and what it expects: modes, clients, files, size limits.

Pure data and functions (no processes), shared by the test module and conftest's summary.

Size limits, and where each over-limit file is refused:
- hmacfs `max_upload_size` is `OUR_LIMIT` (8 MiB); every XMPP server announces and enforces
  `XMPP_LIMIT` (16 MiB).
- `over-hmacfs-limit` (9 MiB) fits the XMPP server's limit, so the slot is granted and hmacfs
  answers the PUT with 413 before reading the body; the client must see that 413.
- `over-xmpp-limit` (17 MiB) exceeds the limit the XMPP server advertises in disco
  (max-file-size). slixmpp (`FileTooBig`) and Gajim ("File is too large") refuse it themselves
  before asking for a slot, so no slot request and no PUT happen; an XMPP server would answer
  a slot request anyway with not-acceptable/file-too-large.
- `empty`: Prosody grants slots for 0 bytes (both modules) and hmacfs stores the empty file;
  ejabberd refuses the slot (its slot request size is a positive integer): bad-request.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

MIB = 1024 * 1024
OUR_LIMIT = 8 * MIB
XMPP_LIMIT = 16 * MIB

MODES = ("prosody-v1", "prosody-v2", "prosody-jwt", "ejabberd")
MODE_DESCRIPTIONS = {
    "prosody-v1": "Prosody 0.12 mod_http_upload_external, protocol v1 (?v=)",
    "prosody-v2": "Prosody 0.12 mod_http_upload_external, protocol v2 (?v2=)",
    "prosody-jwt": "Prosody 0.12 mod_http_file_share, external (Authorization: Bearer JWT)",
    "ejabberd": "ejabberd 23.01 mod_http_upload, external_secret (?v=)",
}
CLIENTS = ("slixmpp", "nbxmpp")


class Expect(enum.Enum):
    """How a cell ends when everything behaves as it should."""

    STORED = "stored and served back identically"
    SLOT_REFUSED = "slot refused by the XMPP server"
    PUT_TOO_LARGE = "slot granted, PUT refused by hmacfs with 413"
    CLIENT_REFUSED = "refused by the client before any slot request"


@dataclass(frozen=True)
class FileCase:
    """One file every client uploads through every mode."""

    key: str
    name: str
    size: int
    note: str

    def content(self) -> bytes:
        """The file's bytes; deterministic, so a failure can be reproduced."""
        if self.key == "special-name":
            return _TEXT
        if self.key == "binary":
            # Every byte value, then bytes that include NUL, CR/LF and invalid UTF-8.
            return bytes(range(256)) * 64 + random.Random(363).randbytes(self.size - 256 * 64)
        return random.Random(self.key).randbytes(self.size)


_TEXT = "Ünïcödé text, in a file whose name needs percent-encoding.\n".encode()

FILES = (
    FileCase(
        "special-name",
        "très cool +1 & 100% ;=#?.txt",
        len(_TEXT),
        "space, non-ASCII, + & % ; = # ? in the name",
    ),
    FileCase("binary", "random-bytes.bin", 256 * 1024, "all byte values, 256 KiB"),
    FileCase("empty", "empty.txt", 0, "0 bytes"),
    FileCase("5MiB", "five-mib.mp4", 5 * MIB, "5 MiB, typed video/mp4"),
    FileCase("over-hmacfs-limit", "over-hmacfs-limit.bin", 9 * MIB, "above hmacfs's 8 MiB"),
    FileCase("over-xmpp-limit", "over-xmpp-limit.bin", 17 * MIB, "above the XMPP 16 MiB"),
)


def expected(mode: str, file: FileCase) -> Expect:
    """The outcome a correct upload server gives for `file` uploaded through `mode`."""
    if file.size > XMPP_LIMIT:
        return Expect.CLIENT_REFUSED
    if file.size > OUR_LIMIT:
        return Expect.PUT_TOO_LARGE
    if file.size == 0 and mode == "ejabberd":
        return Expect.SLOT_REFUSED
    return Expect.STORED


@dataclass(frozen=True)
class CellResult:
    """One line of the summary table."""

    mode: str
    client: str
    file: str
    passed: bool
    reason: str


def format_table(results: list[CellResult]) -> list[str]:
    """The summary table, one line per cell, columns aligned."""
    header = ("mode", "client", "file", "result", "reason")
    rows = [(r.mode, r.client, r.file, "PASS" if r.passed else "FAIL", r.reason) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        return "  ".join([*cells, row[4]])

    return [line(header), line(tuple("-" * w for w in [*widths, 6])), *map(line, rows)]
