"""Reading and validating the configuration file (`/etc/hmac-file-server/config.toml`).

`load` reads a TOML file, `parse` validates a mapping that is already parsed; both return the
frozen `hmacfs.core.settings.Config` or raise `ConfigError`, whose message is one line naming the
file and the key. `describe` writes a `Config` back as TOML for `check-config`,
`parse_listen` (from `hmacfs.core.listen`) reads one `listen` entry, and
`development_config` is the built-in default for running from a checkout.

The file has five sections, `[server]`, `[hmac]`, `[http]`, `[tls]` and `[metrics]`; every key
is optional except
that `[hmac]` needs exactly one of `secret` and `secret_file`. Unknown sections and keys are
errors (a typo would otherwise silently leave a default in place).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

from hmacfs.core.listen import LISTEN_EXAMPLES
from hmacfs.core.listen import parse_listen as parse_listen  # noqa: PLC0414 (re-exported)
from hmacfs.core.listen import valid_host as _valid_host
from hmacfs.core.settings import (
    ALGORITHMS,
    Config,
    HmacSettings,
    HttpSettings,
    MetricsSettings,
    ServerSettings,
    TlsSettings,
)
from hmacfs.core.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    show,
    toml_string,
)

#: The `[hmac]` switches, one per signing scheme.
SCHEME_KEYS: Final = (
    "v1_support",
    "v2_support",
    "token_support",
    "v3_support",
    "jwt_support",
    "basic_support",
    "cookie_support",
    "x_hmac_support",
)

#: Every section and key the file may contain, in the order `describe` writes them.
SCHEMA: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "server": (
            "listen",
            "upload_prefix",
            "storage_dir",
            "max_upload_size",
            "public_url",
            "file_ttl",
            "sweep_interval",
            "idle_timeout",
            "fsync",
            "log_level",
            "shutdown_timeout",
            "workers",
            "trusted_proxies",
        ),
        "hmac": (
            "secret",
            "secret_file",
            "previous_secrets",
            "algorithm",
            *SCHEME_KEYS,
            "clock_skew",
            "x_hmac_window",
        ),
        "http": (
            "cors_enabled",
            "cors_origins",
            "cors_methods",
            "cors_headers",
            "cors_credentials",
            "cors_max_age",
        ),
        "tls": ("certificate", "key", "chain", "min_version", "ciphers"),
        "metrics": ("listen", "health_path"),
    }
)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")


#: How `describe` shows a secret.
MASK: Final = "********"

#: Secrets shorter than this are accepted with a warning.
MIN_SECRET_LENGTH: Final = 16

# Keys whose values must never appear in a message.
_SENSITIVE = frozenset({"secret", "previous_secrets"})

# A secret file larger than this is not a secret file (and is not read whole into memory).
_MAX_SECRET_FILE = 64 * 1024

# RFC 3986 path characters other than "%": percent-encoded prefixes are not supported, since
# the prefix is compared with the request path before it is percent-decoded.
_PREFIX_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*", re.ASCII)
# RFC 9110 token (method names, header field names).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)


class ConfigError(Exception):
    """The configuration cannot be used. `str()` is one line: the file, the section and key
    (where there is one) and what is wrong, e.g.
    ``/etc/hmac-file-server/config.toml: [server] max_upload_size: "100Q" is not a size ...``.
    """

    def __init__(
        self,
        message: str,
        path: Path | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message, path, section, key)
        self.message = message
        self.path = path
        self.section = section
        self.key = key

    def __str__(self) -> str:
        return _locate(self.message, self.path, self.section, self.key)


def _locate(message: str, path: Path | None, section: str | None, key: str | None) -> str:
    parts: list[str] = []
    if path is not None:
        parts.append(str(path))
    if section is not None:
        parts.append(f"[{section}] {key}" if key is not None else f"[{section}]")
    parts.append(message)
    text = ": ".join(parts)
    # One line, whatever a path or a library message contains.
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _type_name(value: object) -> str:
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


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


class _Section:
    """One section of the file being validated: typed getters that raise a ConfigError
    naming the file and key, and `remark` for warnings."""

    def __init__(
        self, name: str, table: Mapping[str, object], source: Path | None, warnings: list[str]
    ) -> None:
        self.name = name
        self.table = table
        self.source = source
        self.warnings = warnings

    def error(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, self.source, self.name, key)

    def remark(self, key: str | None, message: str) -> None:
        self.warnings.append(_locate(message, self.source, self.name, key))

    def has(self, key: str) -> bool:
        return key in self.table

    def _got(self, key: str, value: object) -> str:
        if key in _SENSITIVE:
            return f"got {_type_name(value)}"
        return f"got {_type_name(value)} {show(value)}"

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected a boolean (true or false), {self._got(key, value)}")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, {self._got(key, value)}")
        return value

    def strings(self, key: str, default: Sequence[str], *, single: bool = False) -> list[str]:
        """A list of strings; with `single`, one string stands for a one-element list."""
        value = self.table.get(key, default)
        if single and isinstance(value, str):
            return [value]
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return [str(item) for item in value]
        hint = (
            f" (write [{show(value)}])" if isinstance(value, str) and key not in _SENSITIVE else ""
        )
        raise self.error(key, f"expected an array of strings, {self._got(key, value)}{hint}")

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.string(key, default)
        if value.lower() in choices:
            return value.lower()
        suggestion = _suggest(value.lower(), choices)
        hint = f' (did you mean "{suggestion}"?)' if suggestion else ""
        raise self.error(key, f"{show(value)} is not one of {', '.join(choices)}{hint}")

    def size(self, key: str, default: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.error(
                key,
                'expected a size (an integer number of bytes or a string such as "100M"), '
                + self._got(key, value),
            )
        try:
            return parse_size(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def duration(
        self, key: str, default: float | None, *, allow_never: bool = False, positive: bool = False
    ) -> float | None:
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.error(
                key,
                'expected a duration (a number of seconds or a string such as "5m"), '
                + self._got(key, value),
            )
        try:
            seconds = parse_duration(value, allow_never=allow_never)
        except ValueError as e:
            raise self.error(key, str(e)) from None
        if positive and seconds == 0:
            raise self.error(key, f"{show(value)} is too short: it must be more than 0 seconds")
        return seconds

    def seconds(self, key: str, default: float, *, positive: bool = False) -> float:
        """A duration that cannot be "never"."""
        seconds = self.duration(key, default, positive=positive)
        assert seconds is not None
        return seconds

    def path(self, key: str, default: Path) -> Path:
        """A filesystem path; a relative one is taken relative to the configuration file."""
        if key not in self.table:
            return default
        value = self.string(key, "")
        if not value:
            raise self.error(key, "must not be empty")
        if "\x00" in value:
            raise self.error(key, f"{show(value)} is not a path (it contains a NUL character)")
        path = Path(value)
        if path.is_absolute():
            return path
        if self.source is None:
            raise self.error(
                key,
                f"{show(value)} must be an absolute path "
                "(there is no configuration file to resolve it against)",
            )
        return self.source.absolute().parent / path


def parse(data: Mapping[str, object], source: Path | None = None) -> Config:
    """Validate an already-parsed configuration (as `tomllib` returns it) into a `Config`.

    `source` is the file it came from: it names the file in messages, and relative paths are
    taken relative to its directory (with no `source`, relative paths are errors). Reads the
    `[hmac] secret_file` if one is named. Raises ConfigError for any unknown section or key,
    wrong type or invalid value, and for a secret file that cannot be read or holds no secret.
    """
    return _build(data, source, secret=None)


def _build(data: Mapping[str, object], source: Path | None, *, secret: bytes | None) -> Config:
    """`parse`, except that a given `secret` stands in for `[hmac] secret`/`secret_file`."""
    for name, value in data.items():
        if name in SCHEMA:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"expected a table (a section), got {_type_name(value)}", source, name
                )
            continue
        if isinstance(value, Mapping):
            suggestion = _suggest(name, list(SCHEMA))
            hint = (
                f"did you mean [{suggestion}]?"
                if suggestion
                else "known sections: " + ", ".join(f"[{s}]" for s in SCHEMA)
            )
            raise ConfigError(f"unknown section [{name}] ({hint})", source)
        owners = [section for section, keys in SCHEMA.items() if name in keys]
        hint = f"; did you mean [{owners[0]}] {name}?" if owners else ""
        raise ConfigError(
            f"unknown key {name} at the top level (every key belongs in a section{hint})", source
        )
    warnings: list[str] = []
    sections: dict[str, _Section] = {}
    for name, keys in SCHEMA.items():
        table = data.get(name, {})
        assert isinstance(table, Mapping)
        for key in table:
            if key not in keys:
                suggestion = _suggest(key, keys)
                hint = (
                    f'did you mean "{suggestion}"?'
                    if suggestion
                    else "known keys: " + ", ".join(keys)
                )
                raise ConfigError(f"unknown key [{name}] {key} ({hint})", source)
        sections[name] = _Section(name, table, source, warnings)
    server = _server(sections["server"])
    hmac = _hmac(sections["hmac"], secret)
    http = _http(sections["http"])
    metrics = _metrics(sections["metrics"], server)
    needs_tls = any(listener.tls for listener in (*server.listeners, *metrics.listeners))
    tls = _tls(sections["tls"], needs_tls)
    return Config(
        server=server,
        hmac=hmac,
        http=http,
        tls=tls,
        metrics=metrics,
        source=source,
        warnings=tuple(warnings),
    )


def _server(section: _Section) -> ServerSettings:
    default = ServerSettings()
    listen = section.strings("listen", default.listen, single=True)
    if not listen:
        raise section.error("listen", "give at least one address to listen on " + LISTEN_EXAMPLES)
    _check_listeners(section, "listen", listen)

    prefix = section.string("upload_prefix", default.upload_prefix)
    try:
        prefix = _upload_prefix(prefix)
    except ValueError as e:
        raise section.error("upload_prefix", str(e)) from None

    public_url = None
    if section.has("public_url"):
        try:
            public_url = _public_url(section.string("public_url", ""))
        except ValueError as e:
            raise section.error("public_url", str(e)) from None

    return ServerSettings(
        listen=tuple(listen),
        upload_prefix=prefix,
        storage_dir=section.path("storage_dir", default.storage_dir),
        max_upload_size=section.size("max_upload_size", default.max_upload_size),
        public_url=public_url,
        file_ttl=section.duration("file_ttl", default.file_ttl, allow_never=True),
        sweep_interval=section.seconds("sweep_interval", default.sweep_interval, positive=True),
        idle_timeout=section.seconds("idle_timeout", default.idle_timeout, positive=True),
        fsync=section.boolean("fsync", default.fsync),
        log_level=section.choice("log_level", default.log_level, LOG_LEVELS),
        shutdown_timeout=section.seconds("shutdown_timeout", default.shutdown_timeout),
        workers=_workers(section, default.workers),
        trusted_proxies=_trusted_proxies(section),
    )


def _check_listeners(section: _Section, key: str, listen: Sequence[str]) -> None:
    for entry in listen:
        try:
            parse_listen(entry)
        except ValueError as e:
            raise section.error(key, str(e)) from None
    duplicates = sorted({entry for entry in listen if listen.count(entry) > 1})
    if duplicates:
        raise section.error(key, f"{show(duplicates[0])} is listed twice")


MAX_WORKERS: Final = 256


def _workers(section: _Section, default: int) -> int:
    value = section.table.get("workers", default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise section.error(
            "workers", f"expected an integer (0 for one per core), {section._got('workers', value)}"
        )
    if not 0 <= value <= MAX_WORKERS:
        raise section.error(
            "workers", f"{value} is out of range: 0 (one per core) to {MAX_WORKERS}"
        )
    return value


def _trusted_proxies(section: _Section) -> tuple[str, ...]:
    proxies = section.strings("trusted_proxies", ())
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise section.error(
                "trusted_proxies",
                f'{show(proxy)} is not an IP address or network (examples: "127.0.0.1", '
                '"10.0.0.0/8", "::1")',
            ) from None
    return tuple(proxies)


def _metrics(section: _Section, server: ServerSettings) -> MetricsSettings:
    default = MetricsSettings()
    listen = section.strings("listen", default.listen, single=True)
    _check_listeners(section, "listen", listen)
    # (port 0 picks a free port each time, so it never clashes)
    clash = sorted(e for e in set(listen) & set(server.listen) if not e.endswith(":0"))
    if clash:
        raise section.error(
            "listen", f"{show(clash[0])} is also a [server] listen address; use another port"
        )
    health = section.string("health_path", default.health_path)
    if not section.has("health_path") and server.upload_prefix == "/":
        health = ""  # every path may be a stored file: no health check on the upload listeners
    if health:
        if not health.startswith("/") or not _PREFIX_RE.fullmatch(health) or "//" in health:
            raise section.error("health_path", f'{show(health)} is not a path like "/health"')
        if (health.rstrip("/") + "/").startswith(server.upload_prefix):
            raise section.error(
                "health_path",
                f"{show(health)} is under upload_prefix {show(server.upload_prefix)}, "
                'where it could be a stored file; choose another path or ""',
            )
    return MetricsSettings(listen=tuple(listen), health_path=health)


_TLS_VERSIONS = ("1.2", "1.3")


def _tls(section: _Section, needed: bool) -> TlsSettings:
    default = TlsSettings()
    certificate = section.path("certificate", Path()) if section.has("certificate") else None
    key = section.path("key", Path()) if section.has("key") else None
    chain = section.path("chain", Path()) if section.has("chain") else None
    settings = TlsSettings(
        certificate=certificate,
        key=key,
        chain=chain,
        min_version=section.choice("min_version", default.min_version, _TLS_VERSIONS),
        ciphers=section.string("ciphers", default.ciphers),
    )
    if not needed:
        return settings
    if certificate is None:
        raise section.error("certificate", "an https:// listener needs a certificate file")
    if key is None:
        raise section.error("key", "an https:// listener needs a private key file")
    from hmacfs.process import tls  # late: only configurations with TLS need pyOpenSSL loaded

    try:
        tls.build_context(settings)
    except tls.TlsError as e:
        raise section.error(e.key, e.message) from None
    return settings


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
    if not (_valid_host(parts.hostname) or parts.netloc.startswith("[")):
        raise ValueError(f"{show(value)} has an invalid host name")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(parts.hostname)
        except ValueError:
            raise ValueError(f"{show(value)} has an invalid IPv6 address") from None
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path}".rstrip("/")


def _hmac(section: _Section, override: bytes | None) -> HmacSettings:
    default = HmacSettings()
    secrets: list[bytes] = []
    if override is not None:
        if not override:
            raise section.error("secret", "must not be empty")
        secrets.append(override)
        _check_length(section, "secret", override, "the secret")
    elif section.has("secret") and section.has("secret_file"):
        raise section.error("secret_file", "give either secret or secret_file, not both")
    elif section.has("secret"):
        secret = section.string("secret", "").encode()
        if not secret:
            raise section.error("secret", "must not be empty")
        secrets.append(secret)
        _check_length(section, "secret", secret, "the secret")
    elif section.has("secret_file"):
        secrets.extend(_read_secret_file(section))
    else:
        raise section.error(
            None,
            "no secret: set secret (the shared secret itself) or secret_file "
            "(a file holding it), the same secret the XMPP server signs upload URLs with",
        )
    for index, text in enumerate(section.strings("previous_secrets", ()), start=1):
        old = text.encode()
        if not old:
            raise section.error("previous_secrets", f"item {index} is empty")
        secrets.append(old)
        _check_length(section, "previous_secrets", old, f"item {index}")
    unique = tuple(dict.fromkeys(secrets))
    if len(unique) < len(secrets):
        section.remark(None, "the same secret is given more than once; it is used once")

    switches = {key: section.boolean(key, getattr(default, key)) for key in SCHEME_KEYS}
    if not any(switches.values()):
        raise section.error(
            None,
            "every signing scheme is switched off: set at least one of "
            + ", ".join(SCHEME_KEYS)
            + " to true",
        )
    return HmacSettings(
        secrets=unique,
        algorithm=section.choice("algorithm", default.algorithm, ALGORITHMS),
        v1_support=switches["v1_support"],
        v2_support=switches["v2_support"],
        token_support=switches["token_support"],
        v3_support=switches["v3_support"],
        jwt_support=switches["jwt_support"],
        basic_support=switches["basic_support"],
        cookie_support=switches["cookie_support"],
        x_hmac_support=switches["x_hmac_support"],
        clock_skew=section.seconds("clock_skew", default.clock_skew),
        x_hmac_window=section.seconds("x_hmac_window", default.x_hmac_window, positive=True),
    )


def _check_length(section: _Section, key: str, secret: bytes, what: str) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        section.remark(
            key,
            f"{what} is only {len(secret)} bytes long; use at least {MIN_SECRET_LENGTH} "
            "random bytes (e.g. the output of `openssl rand -hex 32`)",
        )


def _read_secret_file(section: _Section) -> list[bytes]:
    """The secrets in `[hmac] secret_file`: one a line, current first; blank lines and lines
    starting with "#" skipped. Raises ConfigError if the file cannot be read, is not UTF-8
    text, is too large or holds no secret; warns if every user may read it."""
    path = section.path("secret_file", Path())
    try:
        # O_NONBLOCK: a FIFO must not make the server wait for a writer at start-up.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise section.error("secret_file", f"{path} is not a regular file")
            with os.fdopen(os.dup(fd), "rb") as f:
                content = f.read(_MAX_SECRET_FILE + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise section.error("secret_file", f"cannot read {path}: {e.strerror}") from None
    if len(content) > _MAX_SECRET_FILE:
        raise section.error(
            "secret_file", f"{path} is larger than {_MAX_SECRET_FILE} bytes; is it a secret file?"
        )
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise section.error("secret_file", f"{path} is not UTF-8 text (byte {e.start})") from None
    if mode & stat.S_IROTH:
        section.remark(
            "secret_file",
            f"{path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
            f"run chmod o-r {path}",
        )
    secrets: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        secret = stripped.encode()
        secrets.append(secret)
        what = f"the secret on line {number} of {path}"
        _check_length(section, "secret_file", secret, what)
    if not secrets:
        raise section.error(
            "secret_file",
            f'{path} holds no secret (blank lines and lines starting with "#" are skipped)',
        )
    return secrets


def _http(section: _Section) -> HttpSettings:
    default = HttpSettings()
    origins = []
    for origin in section.strings("cors_origins", default.cors_origins):
        try:
            origins.append(_origin(origin))
        except ValueError as e:
            raise section.error("cors_origins", str(e)) from None
    if "*" in origins and len(origins) > 1:
        raise section.error(
            "cors_origins", '"*" already allows every origin; list it alone or leave it out'
        )
    methods = section.strings("cors_methods", default.cors_methods)
    headers = section.strings("cors_headers", default.cors_headers)
    for key, tokens, what in (
        ("cors_methods", methods, "an HTTP method"),
        ("cors_headers", headers, "an HTTP header name"),
    ):
        for token in tokens:
            if not _TOKEN_RE.fullmatch(token):
                raise section.error(key, f"{show(token)} is not {what}")
    return HttpSettings(
        cors_enabled=section.boolean("cors_enabled", default.cors_enabled),
        cors_origins=tuple(origins),
        cors_methods=tuple(method.upper() for method in methods),
        cors_headers=tuple(headers),
        cors_credentials=section.boolean("cors_credentials", default.cors_credentials),
        cors_max_age=section.seconds("cors_max_age", default.cors_max_age),
    )


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
    if not (_valid_host(parts.hostname) or parts.netloc.startswith("[")):
        raise ValueError(f"{show(value)} is not an origin {examples}")
    scheme = parts.scheme.lower()
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    # Browsers leave out the scheme's default port, so "https://x:443" arrives as "https://x".
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def load(path: Path) -> Config:
    """Read and validate the configuration file at `path`.

    Raises ConfigError naming `path` if the file is missing or unreadable, not UTF-8, not
    valid TOML (with tomllib's line and column), or not a valid configuration (see `parse`).
    Warns (in `Config.warnings`) if `[hmac] secret` is written in a file every user may read.
    """
    try:
        with path.open("rb") as f:
            content = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file: {e.strerror}", path) from None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"not UTF-8 text (line {line}, byte {e.start})", path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", path) from None
    config = parse(data, path)
    hmac_table = data.get("hmac", {})
    if mode & stat.S_IROTH and isinstance(hmac_table, Mapping) and "secret" in hmac_table:
        warning = _locate(
            f"{path} holds the secret and is readable by every user "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod o-r {path}, or use secret_file",
            path,
            "hmac",
            "secret",
        )
        config = dataclasses.replace(config, warnings=(*config.warnings, warning))
    return config


def development_config(base_dir: Path, secret: bytes) -> Config:
    """The built-in configuration for running from a checkout: listen on 127.0.0.1:5050,
    store under `base_dir`/var/files, sign with `secret`, everything else default.

    Raises ConfigError if `secret` is empty.
    """
    data: dict[str, object] = {
        "server": {
            "listen": ["127.0.0.1:5050"],
            "storage_dir": str(base_dir.absolute() / "var" / "files"),
            "public_url": "http://127.0.0.1:5050",
            "log_level": "info",
        },
    }
    return _build(data, None, secret=secret)


def describe(config: Config) -> str:
    """The effective settings of `config` as TOML, every key included and secrets masked,
    for `hmac-file-server check-config`. With the real secrets put back in place of the
    masks, `parse` reads it back as the same settings. Raises nothing."""
    server, hmac, http = config.server, config.hmac, config.http
    origin = f"read from {config.source}" if config.source else "built in"
    lines = [
        f"# Effective settings of hmac-file-server ({origin}).",
        "# Every key is shown, defaults included; secrets are masked.",
    ]
    lines += [f"# warning: {warning}" for warning in config.warnings]
    lines += [
        "",
        "[server]",
        f"listen = {_toml(server.listen)}",
        f"upload_prefix = {_toml(server.upload_prefix)}",
        f"storage_dir = {_toml(str(server.storage_dir))}",
        f"max_upload_size = {_toml_size(server.max_upload_size)}",
        (
            f"public_url = {_toml(server.public_url)}"
            if server.public_url is not None
            else "# public_url is not set"
        ),
        f"file_ttl = {_toml(format_duration(server.file_ttl))}",
        f"sweep_interval = {_toml(format_duration(server.sweep_interval))}",
        f"idle_timeout = {_toml(format_duration(server.idle_timeout))}",
        f"fsync = {_toml(server.fsync)}",
        f"log_level = {_toml(server.log_level)}",
        f"shutdown_timeout = {_toml(format_duration(server.shutdown_timeout))}",
        f"workers = {server.workers}",
        f"trusted_proxies = {_toml(server.trusted_proxies)}",
        "",
        "[hmac]",
        f"secret = {_toml(MASK)}",
        f"previous_secrets = {_toml((MASK,) * (len(hmac.secrets) - 1))}"
        f"  # {max(len(hmac.secrets) - 1, 0)} previous secret(s), still accepted",
        f"algorithm = {_toml(hmac.algorithm)}",
        *(f"{key} = {_toml(getattr(hmac, key))}" for key in SCHEME_KEYS),
        f"clock_skew = {_toml(format_duration(hmac.clock_skew))}",
        f"x_hmac_window = {_toml(format_duration(hmac.x_hmac_window))}",
        "",
        "[http]",
        f"cors_enabled = {_toml(http.cors_enabled)}",
        f"cors_origins = {_toml(http.cors_origins)}",
        f"cors_methods = {_toml(http.cors_methods)}",
        f"cors_headers = {_toml(http.cors_headers)}",
        f"cors_credentials = {_toml(http.cors_credentials)}",
        f"cors_max_age = {_toml(format_duration(http.cors_max_age))}",
        "",
        "[tls]",
        *(
            f"{name} = {_toml(str(value))}" if value is not None else f"# {name} is not set"
            for name, value in (
                ("certificate", config.tls.certificate),
                ("key", config.tls.key),
                ("chain", config.tls.chain),
            )
        ),
        f"min_version = {_toml(config.tls.min_version)}",
        f"ciphers = {_toml(config.tls.ciphers)}",
        "",
        "[metrics]",
        f"listen = {_toml(config.metrics.listen)}",
        f"health_path = {_toml(config.metrics.health_path)}",
    ]
    return "\n".join(lines) + "\n"


def _toml(value: str | bool | Sequence[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    return "[" + ", ".join(toml_string(item) for item in value) + "]"


def _toml_size(size: int) -> str:
    text = format_size(size)
    return text if text.isdigit() else toml_string(text)
