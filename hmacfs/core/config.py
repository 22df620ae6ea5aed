"""Reading and validating the configuration file (`/etc/hmac-file-server/config.toml`).

`load` reads a TOML file, `parse` validates a mapping that is already parsed; both return the
frozen `hmacfs.core.settings.Config` or raise `ConfigError`, whose message is one line naming the
file and the key. `describe` writes a `Config` back as TOML for `check-config`,
`parse_listen` (from `hmacfs.core.listen`) reads one `listen` entry, and
`development_config` is the built-in default for running from a checkout.

The keys are declared in `hmacfs.core.settings`, one settings field each (`KEYS` lists them by
section); this module adds what involves more than one key: the secrets, at least one signing
scheme, the metrics listeners apart from the upload ones, the health check outside the upload
prefix and the certificate that https listeners need.

The file has five sections, `[server]`, `[hmac]`, `[http]`, `[tls]` and `[metrics]`; every key
is optional except that `[hmac]` needs exactly one of `secret` and `secret_file`. Unknown
sections and keys are errors (a typo would otherwise silently leave a default in place).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from hmacfs.core.files import FileTooLarge, NotRegularFile, read_regular
from hmacfs.core.listen import parse_listen
from hmacfs.core.listener import Listener
from hmacfs.core.settings import (
    LOG_LEVELS,
    MAX_WORKERS,
    Config,
    HmacSettings,
    HttpSettings,
    Key,
    MetricsSettings,
    QuotaSettings,
    ServerSettings,
    StorageSettings,
    TlsSettings,
    Where,
    keys_of,
    suggest,
    toml_type,
)
from hmacfs.core.units import format_size, show, toml_string

__all__ = [
    "KEYS",
    "LOG_LEVELS",
    "MASK",
    "MAX_WORKERS",
    "MIN_SECRET_LENGTH",
    "SCHEMA",
    "SCHEME_KEYS",
    "SECTIONS",
    "ConfigError",
    "describe",
    "development_config",
    "load",
    "parse",
    "parse_listen",
]

#: The sections of the file and the settings each is read into, in the order `describe`
#: writes them.
SECTIONS: Final[Mapping[str, type]] = MappingProxyType(
    {
        "server": ServerSettings,
        "hmac": HmacSettings,
        "http": HttpSettings,
        "tls": TlsSettings,
        "metrics": MetricsSettings,
        "quota": QuotaSettings,
        "storage": StorageSettings,
    }
)

#: Every key the file may contain, by section, in the order `describe` writes them.
KEYS: Final[Mapping[str, tuple[Key[Any], ...]]] = MappingProxyType(
    {name: keys_of(settings) for name, settings in SECTIONS.items()}
)

#: The names of the keys, by section.
SCHEMA: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {name: tuple(key.name for key in keys) for name, keys in KEYS.items()}
)

#: The `[hmac]` switches, one per signing scheme.
SCHEME_KEYS: Final = tuple(name for name in SCHEMA["hmac"] if name.endswith("_support"))

#: How `describe` shows a secret.
MASK: Final = "********"

#: Secrets shorter than this are accepted with a warning.
MIN_SECRET_LENGTH: Final = 16

# A secret file larger than this is not a secret file (and is not read whole into memory).
_MAX_SECRET_FILE = 64 * 1024


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


class _File:
    """The configuration being read: its tables, the file it came from, the warnings so far."""

    def __init__(self, tables: Mapping[str, Mapping[str, object]], source: Path | None) -> None:
        self.tables = tables
        self.source = source
        self.warnings: list[str] = []

    def error(self, section: str, key: str | None, message: str) -> ConfigError:
        return ConfigError(message, self.source, section, key)

    def remark(self, section: str, key: str | None, message: str) -> None:
        self.warnings.append(_locate(message, self.source, section, key))

    def has(self, section: str, key: str) -> bool:
        return key in self.tables[section]

    def values(self, section: str) -> dict[str, Any]:
        """The settings fields of `section` that the file sets, read key by key in the order
        of `KEYS` (the keys read together by a rule left out). Raises ConfigError."""
        return {
            key.field: self.read(section, key.name)
            for key in KEYS[section]
            if key.field is not None and self.has(section, key.name)
        }

    def read(self, section: str, name: str) -> Any:
        """The value of key `name`, which the file sets. Raises ConfigError naming the key."""
        key = next(key for key in KEYS[section] if key.name == name)
        where = Where(self.source, secret=key.secret)
        try:
            return key.kind.read(self.tables[section][name], where)
        except ValueError as e:
            raise self.error(section, name, str(e)) from None


def parse(
    data: Mapping[str, object], source: Path | None = None, *, check_certificate: bool = True
) -> Config:
    """Validate an already-parsed configuration (as `tomllib` returns it) into a `Config`.

    `source` is the file it came from: it names the file in messages, and relative paths are
    taken relative to its directory (with no `source`, relative paths are errors). Reads the
    `[hmac] secret_file` if one is named. Raises ConfigError for any unknown section or key,
    wrong type or invalid value, and for a secret file that cannot be read or holds no secret.
    With https listeners, the certificate and key are read and checked too, unless
    `check_certificate` is false (see `check_certificate`).
    """
    return _build(data, source, secret=None, check_certificate=check_certificate)


def _tables(data: Mapping[str, object], source: Path | None) -> dict[str, Mapping[str, object]]:
    """Every section's table (empty where the file has none). Raises ConfigError for an
    unknown section or key, a key outside any section and a section that is not a table."""
    for name, value in data.items():
        if name in SCHEMA:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"expected a table (a section), got {toml_type(value)}", source, name
                )
            continue
        if isinstance(value, Mapping):
            suggestion = suggest(name, list(SCHEMA))
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
    tables: dict[str, Mapping[str, object]] = {}
    for name, keys in SCHEMA.items():
        table = data.get(name, {})
        assert isinstance(table, Mapping)
        for key in table:
            if key not in keys:
                suggestion = suggest(key, keys)
                hint = (
                    f'did you mean "{suggestion}"?'
                    if suggestion
                    else "known keys: " + ", ".join(keys)
                )
                raise ConfigError(f"unknown key [{name}] {key} ({hint})", source)
        tables[name] = table
    return tables


def _build(
    data: Mapping[str, object],
    source: Path | None,
    *,
    secret: bytes | None,
    check_certificate: bool = True,
) -> Config:
    """`parse`, except that a given `secret` stands in for `[hmac] secret`/`secret_file`."""
    file = _File(_tables(data, source), source)
    # Section by section, each one's rules after its keys; the secrets come first in [hmac]
    # ("no secret" is what a new configuration file is told first).
    server = ServerSettings(**file.values("server"))
    hmac = HmacSettings(secrets=_secrets(file, secret), **file.values("hmac"))
    _some_scheme(file, hmac)
    http = HttpSettings(**file.values("http"))
    metrics = MetricsSettings(**file.values("metrics"))
    metrics = _health_path(file, server, _apart(file, server, metrics))
    tls = _tls(
        file,
        TlsSettings(**file.values("tls")),
        (*server.listeners, *metrics.listeners),
        check=check_certificate,
    )
    quota = _quota(file, server, QuotaSettings(**file.values("quota")))
    storage = _storage(file, server, quota, StorageSettings(**file.values("storage")))
    return Config(
        server=server,
        hmac=hmac,
        http=http,
        tls=tls,
        metrics=metrics,
        quota=quota,
        storage=storage,
        source=source,
        warnings=tuple(file.warnings),
    )


# --- the rules that involve more than one key -------------------------------------------------


def _secrets(file: _File, override: bytes | None) -> tuple[bytes, ...]:
    """`[hmac] secrets`: `override`, else `secret` or the lines of `secret_file` (exactly one
    of the two), then `previous_secrets`; each once. Raises ConfigError for none, both, an
    empty one or an unusable secret file; warns of short ones and of repeats."""
    secrets: list[bytes] = []
    if override is not None:
        if not override:
            raise file.error("hmac", "secret", "must not be empty")
        secrets.append(override)
        _check_length(file, "secret", override, "the secret")
    elif file.has("hmac", "secret") and file.has("hmac", "secret_file"):
        raise file.error("hmac", "secret_file", "give either secret or secret_file, not both")
    elif file.has("hmac", "secret"):
        secret = file.read("hmac", "secret").encode()
        if not secret:
            raise file.error("hmac", "secret", "must not be empty")
        secrets.append(secret)
        _check_length(file, "secret", secret, "the secret")
    elif file.has("hmac", "secret_file"):
        secrets.extend(_read_secret_file(file, file.read("hmac", "secret_file")))
    else:
        raise file.error(
            "hmac",
            None,
            "no secret: set secret (the shared secret itself) or secret_file "
            "(a file holding it), the same secret the XMPP server signs upload URLs with",
        )
    previous = file.read("hmac", "previous_secrets") if file.has("hmac", "previous_secrets") else ()
    for index, text in enumerate(previous, start=1):
        old = text.encode()
        if not old:
            raise file.error("hmac", "previous_secrets", f"item {index} is empty")
        secrets.append(old)
        _check_length(file, "previous_secrets", old, f"item {index}")
    unique = tuple(dict.fromkeys(secrets))
    if len(unique) < len(secrets):
        file.remark("hmac", None, "the same secret is given more than once; it is used once")
    return unique


def _check_length(file: _File, key: str, secret: bytes, what: str) -> None:
    if len(secret) < MIN_SECRET_LENGTH:
        file.remark(
            "hmac",
            key,
            f"{what} is only {len(secret)} bytes long; use at least {MIN_SECRET_LENGTH} "
            "random bytes (e.g. the output of `openssl rand -hex 32`)",
        )


def _read_secret_file(file: _File, path: Path) -> list[bytes]:
    """The secrets in `[hmac] secret_file`: one a line, current first; blank lines and lines
    starting with "#" skipped. Raises ConfigError if the file cannot be read, is not UTF-8
    text, is too large or holds no secret; warns if every user may read it."""
    try:
        content, st = read_regular(path, _MAX_SECRET_FILE)
    except OSError as e:
        raise file.error("hmac", "secret_file", f"cannot read {path}: {e.strerror}") from None
    except FileTooLarge as e:
        raise file.error("hmac", "secret_file", f"{e}; is it a secret file?") from None
    except NotRegularFile as e:
        raise file.error("hmac", "secret_file", str(e)) from None
    mode = st.st_mode
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise file.error(
            "hmac", "secret_file", f"{path} is not UTF-8 text (byte {e.start})"
        ) from None
    if mode & stat.S_IROTH:
        file.remark(
            "hmac",
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
        _check_length(file, "secret_file", secret, f"the secret on line {number} of {path}")
    if not secrets:
        raise file.error(
            "hmac",
            "secret_file",
            f'{path} holds no secret (blank lines and lines starting with "#" are skipped)',
        )
    return secrets


def _some_scheme(file: _File, hmac: HmacSettings) -> None:
    """Raises ConfigError if every signing scheme is switched off."""
    if not any(getattr(hmac, key) for key in SCHEME_KEYS):
        raise file.error(
            "hmac",
            None,
            "every signing scheme is switched off: set at least one of "
            + ", ".join(SCHEME_KEYS)
            + " to true",
        )


def _quota(file: _File, server: ServerSettings, quota: QuotaSettings) -> QuotaSettings:
    """A limit smaller than `max_upload_size` (no upload of the largest allowed size could
    ever be stored) and a soft limit not below the hard one are errors."""
    for key in ("uploader_limit", "uploader_soft_limit", "uploader_daily_limit", "total_limit"):
        limit = getattr(quota, key)
        if limit and limit < server.max_upload_size:
            raise file.error(
                "quota",
                key,
                f"{format_size(limit)} is smaller than [server] max_upload_size "
                f"({format_size(server.max_upload_size)}): uploads that size could never be "
                "stored",
            )
    if quota.uploader_soft_limit and quota.uploader_limit and (
        quota.uploader_soft_limit >= quota.uploader_limit
    ):
        raise file.error(
            "quota",
            "uploader_soft_limit",
            f"{format_size(quota.uploader_soft_limit)} is not below uploader_limit "
            f"({format_size(quota.uploader_limit)}): the soft limit would never act",
        )
    return quota


def _storage(
    file: _File, server: ServerSettings, quota: QuotaSettings, storage: StorageSettings
) -> StorageSettings:
    """An s3 backend needs an endpoint, a bucket and credentials; its part sizes are S3's.
    What it cannot keep (free space) is said."""
    if storage.backend != "s3":
        if storage.redirect_downloads:
            raise file.error(
                "storage", "redirect_downloads", 'needs backend = "s3" (a store to redirect to)'
            )
        return storage
    if storage.redirect_lifetime > 7 * 24 * 3600:
        raise file.error(
            "storage", "redirect_lifetime", "a presigned URL lasts at most 7 days"
        )
    for key in ("endpoint", "bucket"):
        if getattr(storage, key) is None:
            raise file.error("storage", key, f'backend "s3" needs {key}')
    if not 5 * 2**20 <= storage.part_size <= 5 * 2**30:
        raise file.error(
            "storage",
            "part_size",
            f"{format_size(storage.part_size)} is out of range: 5M to 5G (S3's part sizes)",
        )
    if storage.parts_in_flight < 1:
        raise file.error("storage", "parts_in_flight", "must be at least 1")
    from hmacfs.core.credentials import CredentialsError, load_credentials

    try:
        load_credentials(storage.credentials_file, storage.credentials_profile)
    except CredentialsError as e:
        raise file.error("storage", e.key, e.message) from None
    if quota.min_free_space:
        file.remark(
            "quota", "min_free_space", "an object store reports no free space: ignored"
        )
    return storage


def _apart(file: _File, server: ServerSettings, metrics: MetricsSettings) -> MetricsSettings:
    """`metrics`, if none of its listeners is also a `[server]` listener; raises ConfigError
    otherwise."""
    # (port 0 picks a free port each time, so it never clashes)
    clash = sorted(e for e in set(metrics.listen) & set(server.listen) if not e.endswith(":0"))
    if clash:
        raise file.error(
            "metrics",
            "listen",
            f"{show(clash[0])} is also a [server] listen address; use another port",
        )
    return metrics


def _health_path(file: _File, server: ServerSettings, metrics: MetricsSettings) -> MetricsSettings:
    """`metrics`, with no health check on the upload listeners if the file does not set one
    and every path is under the upload prefix. Raises ConfigError for a health check under
    the upload prefix, where it could be a stored file."""
    health = metrics.health_path
    if not file.has("metrics", "health_path") and server.upload_prefix == "/":
        health = ""  # every path may be a stored file: no health check on the upload listeners
    if health and (health.rstrip("/") + "/").startswith(server.upload_prefix):
        raise file.error(
            "metrics",
            "health_path",
            f"{show(health)} is under upload_prefix {show(server.upload_prefix)}, "
            'where it could be a stored file; choose another path or ""',
        )
    return dataclasses.replace(metrics, health_path=health)


def _tls(
    file: _File, settings: TlsSettings, listeners: tuple[Listener, ...], *, check: bool
) -> TlsSettings:
    """`settings`; if one of `listeners` serves TLS, also checks that the certificate and key
    are given and, with `check`, usable (reading them). Raises ConfigError naming the `[tls]`
    key at fault."""
    if not any(listener.tls for listener in listeners):
        return settings
    if settings.certificate is None:
        raise file.error("tls", "certificate", "an https:// listener needs a certificate file")
    if settings.key is None:
        raise file.error("tls", "key", "an https:// listener needs a private key file")
    if check:
        _check_certificate(settings, file.source)
    return settings


def _check_certificate(settings: TlsSettings, source: Path | None) -> None:
    from hmacfs.process import tls  # late: only configurations with TLS need pyOpenSSL loaded

    try:
        tls.build_context(settings)
    except tls.TlsError as e:
        raise ConfigError(e.message, source, "tls", e.key) from None


def check_certificate(config: Config) -> None:
    """Check that the certificate and key of `config`'s https listeners, if any, load and go
    together: what `load` does unless told not to. A supervisor, which serves nothing, leaves
    this to its workers, so that it never loads pyOpenSSL. Raises ConfigError naming the
    `[tls]` key at fault."""
    if any(listener.tls for listener in (*config.server.listeners, *config.metrics.listeners)):
        _check_certificate(config.tls, config.source)


# --- files ----------------------------------------------------------------------------------


def load(path: Path, *, check_certificate: bool = True) -> Config:
    """Read and validate the configuration file at `path` (`check_certificate`: as `parse`).

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
    config = parse(data, path, check_certificate=check_certificate)
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
    origin = f"read from {config.source}" if config.source else "built in"
    lines = [
        f"# Effective settings of hmac-file-server ({origin}).",
        "# Every key is shown, defaults included; secrets are masked.",
    ]
    lines += [f"# warning: {warning}" for warning in config.warnings]
    for name, keys in KEYS.items():
        settings = getattr(config, name)
        lines += ["", f"[{name}]"]
        for key in keys:
            if key.field is None:
                lines += _describe_secret_key(key, config.hmac)
                continue
            shown = key.kind.show(getattr(settings, key.field))
            lines.append(f"# {key.name} is not set" if shown is None else f"{key.name} = {shown}")
    return "\n".join(lines) + "\n"


def _describe_secret_key(key: Key[Any], hmac: HmacSettings) -> list[str]:
    """How `describe` shows a key the secrets are read from: the current secret as `secret`,
    the older ones (from the secret file too) as `previous_secrets`, all masked."""
    if key.name == "secret":
        return [f"secret = {toml_string(MASK)}"]
    if key.name == "previous_secrets":
        older = len(hmac.secrets) - 1
        masks = key.kind.show((MASK,) * older)
        note = f"{max(older, 0)} previous secret(s), still accepted"
        return [f"previous_secrets = {masks}  # {note}"]
    return []
