"""What the interop matrix runs and what it expects: modes, schemes, clients, files, limits.

Pure data and functions (no processes), shared by the test module and conftest's summary.

Schemes: every mode x client x file cell runs twice, with the XMPP server handing out
`http://127.0.0.1:PORT/upload/...` URLs (hmacfs's plain listener) and
`https://localhost:PORT/upload/...` URLs (hmacfs's built-in TLS listener, a certificate for
`localhost` only, issued by a CA made for this session). Clients and the test's downloads
verify that certificate against that CA, hostname included; nothing disables verification.
`https-wrong-ca` cells prove it: the same HTTPS slots, but the client trusts only a
different CA, so the PUT must fail on the certificate and nothing may be stored.

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
SCHEMES = ("http", "https")
WRONG_CA = "https-wrong-ca"
SCHEME_DESCRIPTIONS = {
    "http": "hmacfs plain listener, http://127.0.0.1:PORT/upload",
    "https": "hmacfs built-in TLS, https://localhost:PORT/upload, certificate from the test CA",
    WRONG_CA: "the https slots, but the client trusts only a different CA: the PUT must fail",
}


def url_scheme(scheme: str) -> str:
    """The scheme of the slot URLs a cell's XMPP server hands out ("http" or "https")."""
    return "https" if scheme.startswith("https") else "http"


class Expect(enum.Enum):
    """How a cell ends when everything behaves as it should."""

    STORED = "stored and served back identically"
    SLOT_REFUSED = "slot refused by the XMPP server"
    PUT_TOO_LARGE = "slot granted, PUT refused by hmacfs with 413"
    CLIENT_REFUSED = "refused by the client before any slot request"
    CERTIFICATE_REFUSED = "slot granted, PUT refused by the client: certificate not trusted"


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


def expected(mode: str, scheme: str, file: FileCase) -> Expect:
    """The outcome a correct upload server gives for `file` uploaded through `mode`.

    The same over http and https; only a client that does not trust the certificate
    (`WRONG_CA`) stops at the PUT, before hmacfs can say anything.
    """
    if file.size > XMPP_LIMIT:
        return Expect.CLIENT_REFUSED
    if file.size == 0 and mode == "ejabberd":
        return Expect.SLOT_REFUSED
    if scheme == WRONG_CA:
        return Expect.CERTIFICATE_REFUSED
    if file.size > OUR_LIMIT:
        return Expect.PUT_TOO_LARGE
    return Expect.STORED


@dataclass(frozen=True)
class CellResult:
    """One line of the summary table."""

    mode: str
    scheme: str
    client: str
    file: str
    passed: bool
    reason: str


def format_table(results: list[CellResult]) -> list[str]:
    """The summary table, one line per cell, columns aligned."""
    header = ("mode", "scheme", "client", "file", "result", "reason")
    rows = [
        (r.mode, r.scheme, r.client, r.file, "PASS" if r.passed else "FAIL", r.reason)
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]

    def line(row: tuple[str, ...]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
        return "  ".join([*cells, row[5]])

    return [line(header), line(tuple("-" * w for w in [*widths, 6])), *map(line, rows)]
