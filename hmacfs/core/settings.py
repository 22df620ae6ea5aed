"""The typed, validated settings the server runs with, and the configuration keys behind them.

Every key of the configuration file is declared once, as a field of the settings class of its
section: the field's name is the key's, its annotation the type, and
`setting(default, kind, doc)` gives the default, how the value is written (a `Kind`: which
TOML values it takes, how they are checked and converted, how check-config shows the result)
and a one-line doc. `HmacSettings.secrets` is the one field made of several keys (secret,
secret_file, previous_secrets), declared with `read_together`. `hmacfs.core.config` derives
from these the keys it accepts, builds the settings from a TOML file (adding the rules that
involve more than one key) and writes them back for check-config; everything else only reads
the settings.

Durations are seconds (float), sizes are bytes (int). A value of ``None`` for a duration means
"never". A `Kind` raises ValueError with a message about the value alone; the configuration
loader adds the file, the section and the key.
"""

from __future__ import annotations

import ipaddress
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Final, Generic, TypeVar
from urllib.parse import urlsplit

from hmacfs.core.listen import LISTEN_EXAMPLES, parse_listen, valid_host
from hmacfs.core.listener import Listener
from hmacfs.core.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    show,
    toml_string,
)

__all__ = [
    "ALGORITHMS",
    "HEADER_SCHEMES",
    "LOG_LEVELS",
    "MAX_WORKERS",
    "QUERY_SCHEMES",
    "TLS_VERSIONS",
    "Config",
    "HmacSettings",
    "HttpSettings",
    "Key",
    "Kind",
    "Listener",
    "MetricsSettings",
    "ServerSettings",
    "TlsSettings",
    "Where",
    "keys_of",
    "read_together",
    "setting",
    "suggest",
    "toml_type",
]

T = TypeVar("T")

#: The HMAC algorithms `[hmac] algorithm` may name (Prosody, ejabberd and Metronome use sha256).
ALGORITHMS: Final = ("sha256", "sha384", "sha512")

#: Every signing scheme the server knows, in the order a query string is examined.
QUERY_SCHEMES: Final = ("v3", "v2", "token", "v")
HEADER_SCHEMES: Final = ("jwt", "basic", "cookie", "x-hmac")

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
MAX_WORKERS: Final = 256
TLS_VERSIONS: Final = ("1.2", "1.3")

# RFC 3986 path characters other than "%": percent-encoded prefixes are not supported, since
# the prefix is compared with the request path before it is percent-decoded.
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*", re.ASCII)
# RFC 9110 token (method names, header field names).
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)


# --- how values are written ---------------------------------------------------------------


def toml_type(value: object) -> str:  # noqa: PLR0911 (one return per TOML type)
    """What kind of TOML value `value` is, with its article ("an integer"), for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return "a date/time" if hasattr(value, "isoformat") else type(value).__name__


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The one of `choices` that `word` is most likely a misspelling of, if any."""
    import difflib  # (only a file with a mistake needs it, not every server process)

    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


@dataclass(frozen=True)
class Where:
    """What reading a value may depend on besides the value: the file it comes from (relative
    paths are taken relative to its directory; None: none, and relative paths are errors) and
    whether it is a secret (a message then names its type, never the value)."""

    source: Path | None = None
    secret: bool = False

    def got(self, value: object) -> str:
        """The end of a message about a value of the wrong type: "got an integer 5"."""
        if self.secret:
            return f"got {toml_type(value)}"
        return f"got {toml_type(value)} {show(value)}"


class Kind(ABC, Generic[T]):
    """How the value of a key is written in the file."""

    #: The type as hmac-file-server.toml(5) names it.
    TYPE: ClassVar[str]

    @property
    def type_name(self) -> str:
        """The type as hmac-file-server.toml(5) names it ("array of strings")."""
        return self.TYPE

    @abstractmethod
    def read(self, value: object, where: Where) -> T:
        """The setting written as `value` (what TOML gave). Raises ValueError saying what is
        wrong with the value."""

    @abstractmethod
    def show(self, value: T) -> str | None:
        """`value` as TOML, the way check-config prints it; None for "not set"."""


@dataclass(frozen=True)
class Flag(Kind[bool]):
    """true or false."""

    TYPE: ClassVar[str] = "boolean"

    def read(self, value: object, where: Where) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected a boolean (true or false), {where.got(value)}")
        return value

    def show(self, value: bool) -> str:
        return "true" if value else "false"


@dataclass(frozen=True)
class Text(Kind[str]):
    """A string, which `check` (if given) validates and normalises or refuses with
    ValueError."""

    check: Callable[[str], str] | None = None
    TYPE: ClassVar[str] = "string"

    def read(self, value: object, where: Where) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, {where.got(value)}")
        return value if self.check is None else self.check(value)

    def show(self, value: str) -> str:
        return toml_string(value)


@dataclass(frozen=True)
class Choice(Kind[str]):
    """One of a few words, in any case (read in lower case)."""

    choices: tuple[str, ...]
    TYPE: ClassVar[str] = "string"

    def read(self, value: object, where: Where) -> str:
        text = Text().read(value, where)
        if text.lower() in self.choices:
            return text.lower()
        suggestion = suggest(text.lower(), self.choices)
        hint = f' (did you mean "{suggestion}"?)' if suggestion else ""
        raise ValueError(f"{show(text)} is not one of {', '.join(self.choices)}{hint}")

    def show(self, value: str) -> str:
        return toml_string(value)


@dataclass(frozen=True)
class Texts(Kind[tuple[str, ...]]):
    """An array of strings. With `single`, one string stands for an array of one; `each`
    validates and normalises every item, then `check` the whole (both raise ValueError)."""

    single: bool = False
    each: Callable[[str], str] | None = None
    check: Callable[[tuple[str, ...]], None] | None = None
    TYPE: ClassVar[str] = "array of strings"

    def read(self, value: object, where: Where) -> tuple[str, ...]:
        if self.single and isinstance(value, str):
            items: tuple[str, ...] = (value,)
        elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            items = tuple(str(item) for item in value)
        else:
            hint = (
                f" (write [{show(value)}])" if isinstance(value, str) and not where.secret else ""
            )
            raise ValueError(f"expected an array of strings, {where.got(value)}{hint}")
        if self.each is not None:
            items = tuple(self.each(item) for item in items)
        if self.check is not None:
            self.check(items)
        return items

    def show(self, value: tuple[str, ...]) -> str:
        return "[" + ", ".join(toml_string(item) for item in value) + "]"


@dataclass(frozen=True)
class Size(Kind[int]):
    """A number of bytes, or a string with a binary unit ("100M"): see hmacfs.core.units."""

    TYPE: ClassVar[str] = "size"

    def read(self, value: object, where: Where) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(
                'expected a size (an integer number of bytes or a string such as "100M"), '
                + where.got(value)
            )
        return parse_size(value)

    def show(self, value: int) -> str:
        text = format_size(value)
        return text if text.isdigit() else toml_string(text)


def _seconds(value: object, where: Where, *, never: bool, positive: bool) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            'expected a duration (a number of seconds or a string such as "5m"), '
            + where.got(value)
        )
    seconds = parse_duration(value, allow_never=never)
    if positive and seconds == 0:
        raise ValueError(f"{show(value)} is too short: it must be more than 0 seconds")
    return seconds


@dataclass(frozen=True)
class Duration(Kind[float | None]):
    """A duration where "never" (or any zero duration) means no limit, read as None."""

    TYPE: ClassVar[str] = "duration"

    def read(self, value: object, where: Where) -> float | None:
        return _seconds(value, where, never=True, positive=False)

    def show(self, value: float | None) -> str:
        return toml_string(format_duration(value))


@dataclass(frozen=True)
class Seconds(Kind[float]):
    """A duration that cannot be "never"; with `positive`, not 0 either."""

    positive: bool = False
    TYPE: ClassVar[str] = "duration"

    def read(self, value: object, where: Where) -> float:
        seconds = _seconds(value, where, never=False, positive=self.positive)
        assert seconds is not None  # (only "never" is None)
        return seconds

    def show(self, value: float) -> str:
        return toml_string(format_duration(value))


@dataclass(frozen=True)
class Count(Kind[int]):
    """An integer from 0, which means `zero`, to `maximum`."""

    maximum: int
    zero: str
    TYPE: ClassVar[str] = "integer"

    def read(self, value: object, where: Where) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer (0 for {self.zero}), {where.got(value)}")
        if not 0 <= value <= self.maximum:
            raise ValueError(f"{value} is out of range: 0 ({self.zero}) to {self.maximum}")
        return value

    def show(self, value: int) -> str:
        return str(value)


@dataclass(frozen=True)
class FilePath(Kind[Path]):
    """A filesystem path; a relative one is taken relative to the configuration file."""

    TYPE: ClassVar[str] = "path"

    def read(self, value: object, where: Where) -> Path:
        text = Text().read(value, where)
        if not text:
            raise ValueError("must not be empty")
        if "\x00" in text:
            raise ValueError(f"{show(text)} is not a path (it contains a NUL character)")
        path = Path(text)
        if path.is_absolute():
            return path
        if where.source is None:
            raise ValueError(
                f"{show(text)} must be an absolute path "
                "(there is no configuration file to resolve it against)"
            )
        return where.source.absolute().parent / path

    def show(self, value: Path) -> str:
        return toml_string(str(value))


@dataclass(frozen=True)
class Maybe(Kind[T | None], Generic[T]):
    """`kind`, for a key that is not set unless the file sets it (None)."""

    kind: Kind[T]

    @property
    def type_name(self) -> str:
        return self.kind.type_name

    def read(self, value: object, where: Where) -> T:
        return self.kind.read(value, where)

    def show(self, value: T | None) -> str | None:
        return None if value is None else self.kind.show(value)


# --- what single keys must look like --------------------------------------------------------


def _listen_entry(entry: str) -> str:
    parse_listen(entry)
    return entry


def _listed_once(entries: tuple[str, ...]) -> None:
    duplicates = sorted({entry for entry in entries if entries.count(entry) > 1})
    if duplicates:
        raise ValueError(f"{show(duplicates[0])} is listed twice")


def _some_listeners(entries: tuple[str, ...]) -> None:
    if not entries:
        raise ValueError("give at least one address to listen on " + LISTEN_EXAMPLES)
    _listed_once(entries)


def _upload_prefix(value: str) -> str:
    """Normalise `value` to start and end with "/"; raises ValueError if it cannot be a
    plain URL path prefix."""
    prefix = value if value.startswith("/") else "/" + value
    if not prefix.endswith("/"):
        prefix += "/"
    for char in "?#%":
        if char in prefix:
            raise ValueError(f'{show(value)} must not contain "{char}" (a path prefix only)')
    if "//" in prefix:
        raise ValueError(f'{show(value)} must not contain "//"')
    if any(segment in (".", "..") for segment in prefix.split("/")):
        raise ValueError(f'{show(value)} must not contain "." or ".." segments')
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f'{show(value)} may contain only letters, digits, "/" and -._~!$&\'()*+,;=:@'
        )
    return prefix


def _public_url(value: str) -> str:
    """Validate a base URL ("https://host[:port][/path]") and strip trailing slashes; raises
    ValueError otherwise."""
    examples = '(examples: "https://upload.example.org", "http://127.0.0.1:5050")'
    if "?" in value or "#" in value:
        raise ValueError(f"{show(value)} must not have a query or fragment")
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ValueError(f"{show(value)} must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{show(value)} is not an http(s) URL {examples}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{show(value)} is not an http(s) URL {examples}")
    if "@" in parts.netloc:
        raise ValueError(f"{show(value)} must not contain a user name or password")
    if port == 0:
        raise ValueError(f"{show(value)} has port 0")
    if not (valid_host(parts.hostname) or parts.netloc.startswith("[")):
        raise ValueError(f"{show(value)} has an invalid host name")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(parts.hostname)
        except ValueError:
            raise ValueError(f"{show(value)} has an invalid IPv6 address") from None
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path}".rstrip("/")


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f'{show(value)} is not an IP address or network (examples: "127.0.0.1", '
            '"10.0.0.0/8", "::1")'
        ) from None
    return value


def _origin(value: str) -> str:
    """Validate one CORS origin ("*" or "scheme://host[:port]") and write it the way browsers
    serialise the Origin header (lower case, no default port), so that it can be compared
    with that header as a string; raises ValueError otherwise."""
    if value == "*":
        return value
    examples = '(examples: "*", "https://chat.example.org", "http://localhost:8080")'
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{show(value)} is not an origin {examples}") from None
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or any(char.isspace() for char in value)
        or port == 0
    ):
        raise ValueError(f"{show(value)} is not an origin {examples}")
    if parts.path or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(
            f"{show(value)} is not an origin: an origin is scheme://host[:port], "
            "with no path, not even a trailing slash"
        )
    if not (valid_host(parts.hostname) or parts.netloc.startswith("[")):
        raise ValueError(f"{show(value)} is not an origin {examples}")
    scheme = parts.scheme.lower()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    # Browsers leave out the scheme's default port, so "https://x:443" arrives as "https://x".
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _any_origin_alone(origins: tuple[str, ...]) -> None:
    if "*" in origins and len(origins) > 1:
        raise ValueError('"*" already allows every origin; list it alone or leave it out')


def _method(value: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{show(value)} is not an HTTP method")
    return value.upper()


def _header_name(value: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{show(value)} is not an HTTP header name")
    return value


def _health_path(value: str) -> str:
    if value and (not value.startswith("/") or not _PREFIX_RE.fullmatch(value) or "//" in value):
        raise ValueError(f'{show(value)} is not a path like "/health"')
    return value


# --- declaring keys -------------------------------------------------------------------------

# Where a field's declaration keeps its key (or keys) in `dataclasses.Field.metadata`.
_KEY: Final = "hmacfs.core.settings.key"
_KEYS: Final = "hmacfs.core.settings.keys"


@dataclass(frozen=True)
class Key(Generic[T]):
    """One key of the configuration file, as `keys_of` lists them."""

    name: str
    kind: Kind[T]
    default: T
    #: What the key is for, in one line.
    doc: str
    #: The settings field whose value the key is, or None for a key that a rule of
    #: hmacfs.core.config reads together with others (`read_together`).
    field: str | None
    #: Its value is never shown, not even in a message.
    secret: bool = False


def setting(default: T, kind: Kind[T], doc: str) -> T:
    """Declare a settings field read from the key of the same name: its `default`, how its
    value is written (`kind`) and what it is for (`doc`, one line)."""
    return field(default=default, metadata={_KEY: (kind, doc)})


def read_together(default: T, *keys: Key[Any]) -> T:
    """Declare a settings field that a rule of hmacfs.core.config makes out of several keys
    (each declared with `field=None`), with its `default` when the settings are built in code."""
    assert all(k.field is None for k in keys)
    return field(default=default, metadata={_KEYS: keys})


def keys_of(settings: type) -> tuple[Key[Any], ...]:
    """The keys of the section read into `settings` (a settings class), in the order of its
    fields. Raises TypeError for a field declared without `setting` or `read_together`."""
    keys: list[Key[Any]] = []
    for f in fields(settings):
        if _KEYS in f.metadata:
            keys.extend(f.metadata[_KEYS])
        elif _KEY in f.metadata:
            kind, doc = f.metadata[_KEY]
            keys.append(Key(f.name, kind, f.default, doc, field=f.name))
        else:
            raise TypeError(f"{settings.__name__}.{f.name} is not declared as a key")
    return tuple(keys)


# --- the sections ---------------------------------------------------------------------------


class _ListensOn:
    """A section with a `listen` key: its entries, parsed once per settings object."""

    listen: tuple[str, ...]

    @cached_property
    def listeners(self) -> tuple[Listener, ...]:
        """`listen`, parsed. Raises ValueError for an entry that is not a listen address
        (never for settings `hmacfs.core.config` built)."""
        return tuple(parse_listen(entry) for entry in self.listen)


@dataclass(frozen=True)
class ServerSettings(_ListensOn):
    """`[server]`: where to listen, where to store, how large."""

    listen: tuple[str, ...] = setting(
        ("127.0.0.1:5050",),
        Texts(single=True, each=_listen_entry, check=_some_listeners),
        "where to accept connections: addresses, unix: socket paths or systemd: sockets",
    )
    upload_prefix: str = setting(
        "/upload/",
        Text(check=_upload_prefix),
        "the URL path under which uploads live; the signed path is what follows it",
    )
    storage_dir: Path = setting(  # noqa: RUF009 (a Field, as from field())
        Path("/var/lib/hmac-file-server/files"),
        FilePath(),
        "the directory that holds the uploaded files and the partial uploads",
    )
    max_upload_size: int = setting(
        100 * 1024 * 1024,
        Size(),
        "the largest file accepted; a larger upload is refused (413) before its body is read",
    )
    public_url: str | None = setting(
        None,
        Maybe(Text(check=_public_url)),
        "the base URL (scheme://host[:port]) clients reach us at, for complete URLs in `sign`",
    )
    file_ttl: float | None = setting(
        None,
        Duration(),
        "stored files are deleted this long after their upload (never: kept until they expire)",
    )
    sweep_interval: float = setting(
        600.0,
        Seconds(positive=True),
        "how often expired files and abandoned partial uploads are removed",
    )
    idle_timeout: float = setting(
        120.0,
        Seconds(positive=True),
        "a connection that sends nothing for this long is closed, also in the middle of a body",
    )
    head_timeout: float = setting(
        30.0,
        Seconds(positive=True),
        "a request's head (request line and headers) must be in this long after its first "
        "byte (408 otherwise), however steadily it trickles",
    )
    min_body_rate: int = setting(
        1024,
        Size(),
        "bytes per second an upload's body must average over each minute (408 otherwise; "
        "what arrived of a resumable upload is kept); 0 for no minimum",
    )
    send_timeout: float = setting(
        120.0,
        Seconds(positive=True),
        "an answer the client reads nothing of for this long is cut off",
    )
    max_connections: int = setting(
        16384,
        Count(1 << 20, zero="no cap"),
        "connections a process keeps open at most; one more is answered 503 and closed",
    )
    max_connections_per_address: int = setting(
        1024,
        Count(1 << 20, zero="no cap"),
        "connections a process keeps open from one client address at most (trusted_proxies "
        "are exempt); one more is answered 503 and closed",
    )
    fsync: bool = setting(
        True,
        Flag(),
        "flush each upload and its directory entry to disk before answering 201 Created",
    )
    log_level: str = setting("info", Choice(LOG_LEVELS), "how much to log")
    shutdown_timeout: float = setting(
        30.0,
        Seconds(),
        "on SIGTERM, uploads in flight get this long to finish before they are cut off",
    )
    workers: int = setting(
        0,
        Count(MAX_WORKERS, zero="one per core"),
        "worker processes sharing the listening sockets: 0 for one per core, 1 for a single "
        "process (no supervisor)",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        Texts(each=_network),
        "peers (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed",
    )
    resumable: bool = setting(
        True,
        Flag(),
        "offer resumable uploads (the IETF draft that Apple's URLSession speaks) to clients "
        "that ask for them; false treats their requests as plain uploads",
    )
    resumable_ttl: float = setting(
        24 * 3600.0,
        Seconds(positive=True),
        "how long the part of a resumable upload that arrived is kept for the client to "
        "resume after its last byte (and a completed upload's record after its end)",
    )
    fast_paths: bool = setting(
        True,
        Flag(),
        "answer small GETs from the request head, send files with sendfile(2), splice large "
        "bodies and write answers straight to idle sockets; false serves everything through "
        "the plain Twisted path, for debugging",
    )


@dataclass(frozen=True)
class HmacSettings:
    """`[hmac]`: the shared secrets and which signing schemes are accepted."""

    #: The current secret first, then older ones still accepted during a rotation.
    secrets: tuple[bytes, ...] = read_together(
        (),
        Key(
            "secret",
            Maybe(Text()),
            None,
            "the secret shared with the XMPP server, which signs every upload URL with it",
            field=None,
            secret=True,
        ),
        Key(
            "secret_file",
            Maybe(FilePath()),
            None,
            "a file holding the secret, then older secrets still accepted, one a line",
            field=None,
        ),
        Key(
            "previous_secrets",
            Texts(),
            (),
            "more old secrets still accepted while the XMPP server moves to a new one",
            field=None,
            secret=True,
        ),
    )
    algorithm: str = setting("sha256", Choice(ALGORITHMS), "the hash of the HMAC")
    v1_support: bool = setting(True, Flag(), "accept scheme v (?v=)")
    v2_support: bool = setting(
        True,
        Flag(),
        "accept scheme v2 (?v2=); its MAC also passes as ?token= and, with no Expires header,"
        " as Cookie: auth= or Basic auth: to refuse it, switch off those three schemes too",
    )
    token_support: bool = setting(
        True, Flag(), "accept scheme token (?token=), which signs the same message as v2"
    )
    v3_support: bool = setting(True, Flag(), "accept scheme v3 (?v3=...&expires=...)")
    jwt_support: bool = setting(True, Flag(), "accept scheme jwt (Authorization: Bearer)")
    basic_support: bool = setting(
        True,
        Flag(),
        "accept scheme basic (Authorization: Basic): the password is the v2 MAC, or with an"
        " Expires header the MAC of the v2 message followed by that header",
    )
    cookie_support: bool = setting(
        True,
        Flag(),
        "accept scheme cookie (Cookie: auth=): the v2 MAC, or with an Expires header the MAC"
        " of the v2 message followed by that header",
    )
    x_hmac_support: bool = setting(True, Flag(), "accept scheme x-hmac (X-HMAC-Signature)")
    clock_skew: float = setting(
        30.0,
        Seconds(),
        "allowance for clock differences when checking v3 expiry, JWT exp and Expires",
    )
    x_hmac_window: float = setting(
        300.0, Seconds(positive=True), "how far X-HMAC-Timestamp may be from now, either way"
    )

    def enabled(self, scheme: str) -> bool:
        """Whether `scheme` (one of QUERY_SCHEMES or HEADER_SCHEMES) is switched on."""
        flag = _SCHEME_FLAGS.get(scheme)
        if flag is None:
            raise ValueError(f"unknown scheme {scheme!r}")
        return getattr(self, flag)  # type: ignore[no-any-return]


#: The `[hmac]` setting that switches each scheme on.
_SCHEME_FLAGS: Final = {
    "v": "v1_support",
    "v2": "v2_support",
    "token": "token_support",
    "v3": "v3_support",
    "jwt": "jwt_support",
    "basic": "basic_support",
    "cookie": "cookie_support",
    "x-hmac": "x_hmac_support",
}


@dataclass(frozen=True)
class HttpSettings:
    """`[http]`: CORS for browser clients."""

    cors_enabled: bool = setting(True, Flag(), "send CORS headers and answer preflight requests")
    cors_origins: tuple[str, ...] = setting(
        ("*",),
        Texts(each=_origin, check=_any_origin_alone),
        'the origins allowed: "*" for any, or scheme://host[:port] each',
    )
    cors_methods: tuple[str, ...] = setting(
        ("OPTIONS", "HEAD", "GET", "PUT", "POST", "PATCH", "DELETE"),
        Texts(each=_method),
        "the methods allowed in cross-origin requests (Access-Control-Allow-Methods)",
    )
    cors_headers: tuple[str, ...] = setting(
        (
            "Authorization",
            "Content-Type",
            "Cookie",
            "Expires",
            "Upload-Draft-Interop-Version",
            "Upload-Complete",
            "Upload-Incomplete",
            "Upload-Offset",
            "Upload-Length",
        ),
        Texts(each=_header_name),
        "the request headers allowed in cross-origin requests (Access-Control-Allow-Headers)",
    )
    cors_credentials: bool = setting(
        False,
        Flag(),
        "allow requests with credentials (Access-Control-Allow-Credentials: true)",
    )
    cors_max_age: float = setting(
        86400.0,
        Seconds(),
        "how long browsers may cache the answer to a preflight (Access-Control-Max-Age)",
    )


@dataclass(frozen=True)
class TlsSettings:
    """`[tls]`: the certificate for `https://` listeners (re-read on SIGHUP)."""

    certificate: Path | None = setting(  # noqa: RUF009 (a Field, as from field())
        None,
        Maybe(FilePath()),
        "PEM certificate, optionally followed by its chain (Let's Encrypt's fullchain.pem)",
    )
    key: Path | None = setting(  # noqa: RUF009 (a Field, as from field())
        None, Maybe(FilePath()), "PEM private key (Let's Encrypt's privkey.pem)"
    )
    chain: Path | None = setting(  # noqa: RUF009 (a Field, as from field())
        None,
        Maybe(FilePath()),
        "extra PEM chain file, when the certificate file holds only the leaf (chain.pem)",
    )
    min_version: str = setting("1.2", Choice(TLS_VERSIONS), "the oldest TLS version accepted")
    ciphers: str = setting(
        "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20",
        Text(),
        "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults)",
    )


@dataclass(frozen=True)
class MetricsSettings(_ListensOn):
    """`[metrics]`: Prometheus metrics and health checks."""

    listen: tuple[str, ...] = setting(
        (),
        Texts(single=True, each=_listen_entry, check=_listed_once),
        "listeners serving /metrics and /health only (keep them private, e.g. on localhost)",
    )
    health_path: str = setting(
        "/health",
        Text(check=_health_path),
        'path of the health check on the upload listeners ("" turns it off there)',
    )


@dataclass(frozen=True)
class QuotaSettings:
    """`[quota]`: limits on stored bytes, per uploader and in all, and the free space kept."""

    uploader_limit: int = setting(
        0,
        Size(),
        "bytes one uploader may have stored; an upload past it is refused (413) before its "
        "body; 0 for no limit",
    )
    uploader_soft_limit: int = setting(
        0,
        Size(),
        "bytes one uploader keeps: after an upload past it, the uploader's oldest files are "
        "deleted until it is met again (as ejabberd's mod_http_upload_quota does); 0 for none",
    )
    uploader_daily_limit: int = setting(
        0,
        Size(),
        "bytes one uploader may upload in any 24 hours (as Prosody's "
        "http_file_share_daily_quota); past it, 413 before the body; 0 for no limit",
    )
    total_limit: int = setting(
        0,
        Size(),
        "bytes of stored files in all; an upload past it gets 507 before its body; 0 for no "
        "limit",
    )
    min_free_space: int = setting(
        0,
        Size(),
        "free space the storage keeps: an upload whose declared size would cut into it gets "
        "507 before its body; 0 for none",
    )
    uploader_from_path: bool = setting(
        True,
        Flag(),
        "take a first path segment of 40 hex digits for the uploader (ejabberd's "
        "sha1(user@host) directory) when the slot names none (a JWT's sub does)",
    )

    @property
    def counts(self) -> bool:
        """Whether any limit needs the stored bytes accounted."""
        return bool(
            self.uploader_limit
            or self.uploader_soft_limit
            or self.uploader_daily_limit
            or self.total_limit
        )


def _endpoint(value: str) -> str:
    """An object store's endpoint: an http(s) URL, kept as given without trailing slashes."""
    url = _public_url(value)
    if urlsplit(url).path not in ("", "/"):
        raise ValueError(f"{show(value)} must be scheme://host[:port] without a path")
    return url


def _bucket_name(value: str) -> str:
    if not _BUCKET_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{show(value)} is not a bucket name (3 to 63 lower-case letters, digits, "
            '"." and "-", starting and ending with a letter or digit)'
        )
    return value


def _key_prefix(value: str) -> str:
    if value.startswith("/") or "//" in value or any(
        segment in (".", "..") for segment in value.split("/")[:-1]
    ):
        raise ValueError(f'{show(value)} must not start with "/" nor contain "//", "." or ".."')
    if value and not value.endswith("/"):
        value += "/"
    return value


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class StorageSettings:
    """`[storage]`: where the files are kept: the local directory, or an S3 bucket."""

    backend: str = setting(
        "local",
        Choice(("local", "s3")),
        'where files are kept: "local" ([server] storage_dir) or "s3" (an S3 bucket: AWS S3, '
        "Ceph's radosgw, ...; every node behind a load balancer may share it)",
    )
    endpoint: str | None = setting(
        None,
        Maybe(Text(check=_endpoint)),
        'the object store\'s URL (e.g. "https://s3.eu-west-1.amazonaws.com", '
        '"http://127.0.0.1:7480" for a Ceph gateway)',
    )
    bucket: str | None = setting(
        None, Maybe(Text(check=_bucket_name)), "the bucket that holds the files (it must exist)"
    )
    region: str = setting(
        "us-east-1", Text(), "the region requests are signed for (Ceph accepts any)"
    )
    prefix: str = setting(
        "", Text(check=_key_prefix), 'a key prefix for every object, e.g. "upload/" ("": none)'
    )
    addressing: str = setting(
        "path",
        Choice(("path", "virtual")),
        '"path" (endpoint/bucket/key, what Ceph and most S3 servers want) or "virtual" '
        "(bucket.endpoint/key)",
    )
    credentials_file: Path | None = setting(  # noqa: RUF009 (a Field, as from field())
        None,
        Maybe(FilePath()),
        "an AWS credentials file (aws_access_key_id, aws_secret_access_key; mode 0640); "
        "unset: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment",
    )
    credentials_profile: str = setting(
        "default", Text(), "the section of credentials_file to read"
    )
    ca_file: Path | None = setting(  # noqa: RUF009 (a Field, as from field())
        None,
        Maybe(FilePath()),
        "PEM certificates trusted for an https endpoint (unset: the system's)",
    )
    part_size: int = setting(
        16 * 1024 * 1024,
        Size(),
        "uploads up to this size are one PUT; larger ones go up as a multipart upload of "
        "parts this size (5M to 5G)",
    )
    parts_in_flight: int = setting(
        4,
        Count(64, zero="(not allowed)"),
        "parts of one upload whose answers may be awaited at once before its client waits",
    )
    redirect_downloads: bool = setting(
        False,
        Flag(),
        "answer a GET of a stored file with a 302 to a presigned URL of the store, which then "
        "serves the body (uploads are never redirected)",
    )
    redirect_lifetime: float = setting(
        300.0,
        Seconds(positive=True),
        "how long a presigned download URL stays valid (up to 7 days)",
    )


@dataclass(frozen=True)
class Config:
    """Everything the server needs; `source` is the file it came from (None if built in)."""

    server: ServerSettings = field(default_factory=ServerSettings)
    hmac: HmacSettings = field(default_factory=HmacSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    source: Path | None = None
    #: Non-fatal remarks found while loading (e.g. a short secret), for the log.
    warnings: tuple[str, ...] = ()

    @property
    def counts_stored_files(self) -> bool:
        """Whether the stored files are counted again for the quotas (at start, and when a
        reload sets the first limit on stored bytes): limits on stored bytes, on a storage
        directory (an object store's ledger is kept always: nothing to count)."""
        return self.quota.counts and self.storage.backend != "s3"
