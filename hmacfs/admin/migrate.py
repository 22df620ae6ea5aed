"""`hmac-file-server migrate-config`: turn a Go HMAC File Server configuration into ours.

    hmac-file-server migrate-config GO_CONFIG [-o OUT [--force]]

Reads the `config.toml` of the Go "HMAC File Server" (3.2.1 to 3.4) and writes the
equivalent configuration of this server: to standard output, or to OUT (mode 0640, replaced
atomically; an existing OUT only with --force). Standard error names every key of GO_CONFIG
that is not carried over and why, warns of keys the Go server itself ignores (names from its
README and example configurations that its code does not read, and typos), and says what to
check by hand (the secret, which is better moved into a secret file). Before anything is
written, the result is read back with `hmacfs.core.config.parse`, so what is written loads.

The Go server reads its file with viper: section and key names in any case, and values
converted loosely (a port given as an integer, a boolean as "true"); this module reads them
the same way. Its URL paths have no prefix (it signs and stores the whole path), hence
`upload_prefix = "/"` in every migrated file.

Exit statuses: 0 the configuration was written (notes or not); 2 GO_CONFIG cannot be used
(missing, not a regular file, not UTF-8, not TOML, a section that is not a table; the message
names the file and, where there is one, the line); 1 any other failure (OUT exists without
--force, cannot be written, or the result does not load).
"""

# What the Go server reads was taken from its source, github.com/PlusOne/hmac-file-server:
# internal/config/types.go and internal/config/loader.go at commit
# b26959a8fe040341f6ae641611f96a4a519f8531 (3.4.0), the use of each key in cmd/server/main.go,
# helpers.go, config_funcs.go (parseSize, parseTTL), config_validator.go and
# request_handlers.go there, and the config structs of cmd/server/main.go at the tags
# 3.2-tremora, 3.2.1-tremora and 3.3-NexusInfinitum (the names changed in 3.2.1).

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from hmacfs.admin.parsers import add_migrate_parser
from hmacfs.core import config
from hmacfs.core.config import KEYS, ConfigError
from hmacfs.core.files import NotRegularFile, read_regular
from hmacfs.core.settings import Config, suggest, toml_type
from hmacfs.core.units import MAX_DURATION, format_duration, format_size, show, toml_string

__all__ = ["add_parser", "run"]

EXIT_OK, EXIT_FAILURE, EXIT_INPUT = 0, 1, 2

#: Where the package puts the secret file, written when the Go file has no secret.
PACKAGE_SECRET_FILE: Final = "/etc/hmac-file-server/secret"  # noqa: S105 (a path)
#: Where the Go server listens with `unixsocket = true` (fixed in its code).
GO_UNIX_SOCKET: Final = "/tmp/hmac-file-server.sock"  # noqa: S108 (the Go server's)
#: The upload limit written when the Go file sets none (the Go 3.3 default, and what its
#: -genconfig-advanced writes; 3.4 sets no limit at all).
UNSET_UPLOAD_LIMIT: Final = 10 * 1024**3

# --- what the Go server reads ---------------------------------------------------------------

_UNUSED: Final = "read but never used by the Go server"
_CHUNKED: Final = (
    "the Go server's own chunked-upload API has no counterpart here (clients resume with "
    "the IETF resumable-uploads draft, [server] resumable)"
)
_JWT: Final = (
    "the Go server's JWTs (any HMAC-signed token, with jwtsecret) are not what this server's "
    "jwt scheme checks (Prosody mod_http_file_share tokens signed with [hmac] secret)"
)
_STANDBY: Final = "the Go server's re-authentication on network changes has no counterpart here"
_LOGGING: Final = (
    "this server logs to standard error (the journal, under systemd), which rotates its logs"
)
_TIMEOUT: Final = (
    "a net/http timeout on the whole request or response, unlike this server's idle_timeout, "
    "head_timeout and send_timeout, whose defaults apply"
)
_WORKERS: Final = (
    "the Go server's pool of goroutines; [server] workers here counts processes "
    "(0, the default, starts one per core)"
)
_NETWORK: Final = (
    "the Go server's handling of clients that switch networks has no counterpart here "
    "(clients resume with [server] resumable)"
)
_PIDFILE: Final = "this server writes no PID file (systemd tracks it)"

#: Every key the Go server reads, by section (in lower case: viper ignores case), with why it
#: is not carried over; "" for the keys `_Migration` carries over (or judges by their value).
GO_KEYS: Final[Mapping[str, Mapping[str, str]]] = {
    "server": {
        "listen_address": "",
        "bind_ip": "",
        "unixsocket": "",
        "storage_path": "",
        "max_upload_size": "",
        "filettl": "",
        "filettlenabled": "",
        "max_file_age": "",
        "cleanup_interval": "",
        "metricsenabled": "",
        "metricsport": "",
        "file_naming": "",
        "metrics_path": "the Go server always serves /metrics, whatever this says (as does "
        "this server)",
        "pid_file": _PIDFILE,
        "pidfilepath": _PIDFILE,
        "clean_upon_exit": _PIDFILE,
        "max_header_bytes": _UNUSED,
        "pre_cache": _UNUSED,
        "pre_cache_workers": _UNUSED,
        "pre_cache_interval": _UNUSED,
        "precaching": "the Go server's pre-caching of the storage directory has no "
        "counterpart here",
        "global_extensions": _UNUSED,
        "deduplication_enabled": "this server does not deduplicate files",
        "min_free_bytes": "the Go server checks the free space once, at start-up; the nearest "
        "setting here refuses each upload that would cut into the free space ([quota] "
        "min_free_space): set it by hand if wanted",
        "force_protocol": "it concerns the Go server's outgoing connections",
        "enable_dynamic_workers": _UNUSED,
        "worker_scale_up_thresh": _UNUSED,
        "worker_scale_down_thresh": _UNUSED,
        "autoadjustworkers": _WORKERS,
        "networkevents": _NETWORK,
    },
    "security": {
        "secret": "",
        "enablejwt": _JWT,
        "jwtsecret": _JWT,
        "jwtalgorithm": _JWT,
        "jwtexpiration": _JWT,
        "enhanced_security": _STANDBY,
        "challenge_on_network_change": _STANDBY,
        "reauth_on_long_standby": _STANDBY,
        "standby_threshold_minutes": _STANDBY,
        "long_standby_threshold_hours": _STANDBY,
    },
    "logging": {
        "level": "",
        "file": _LOGGING,
        "max_size": _LOGGING,
        "max_backups": _LOGGING,
        "max_age": _LOGGING,
        "compress": _LOGGING,
    },
    "uploads": {
        "allowed_extensions": "this server has no file-type filter: it accepts every extension",
        "chunked_uploads_enabled": _CHUNKED,
        "chunk_size": _CHUNKED,
        "resumable_uploads_enabled": _CHUNKED,
        "sessiontimeout": _CHUNKED,
        "maxretries": _CHUNKED,
    },
    "downloads": dict.fromkeys(
        (
            "allowed_extensions",
            "chunked_downloads_enabled",
            "chunk_size",
            "resumable_downloads_enabled",
        ),
        _UNUSED + " (downloads here always allow ranges)",
    ),
    "timeouts": {
        "readtimeout": _TIMEOUT,
        "writetimeout": _TIMEOUT,
        "idletimeout": _TIMEOUT,
        "shutdown": _UNUSED + " (it always waits 30s, the default of shutdown_timeout here)",
    },
    "workers": dict.fromkeys(("numworkers", "uploadqueuesize"), _WORKERS),
    "deduplication": dict.fromkeys(
        ("enabled", "directory", "maxsize"), "this server does not deduplicate files"
    ),
    "iso": {
        "enabled": "",
        **dict.fromkeys(
            ("mountpoint", "size", "charset", "containerfile"),
            "this server stores files in storage_dir, not in an ISO container",
        ),
    },
    "versioning": dict.fromkeys(
        ("enableversioning", "backend", "maxversions"),
        "this server keeps no old versions of a file",
    ),
    "clamav": dict.fromkeys(
        ("clamavenabled", "clamavsocket", "numscanworkers", "scanfileextensions", "maxscansize"),
        "this server does not scan uploads for viruses",
    ),
    "redis": dict.fromkeys(
        (
            "redisenabled",
            "redisdbindex",
            "redisaddr",
            "redispassword",
            "redishealthcheckinterval",
        ),
        "this server keeps no state in Redis",
    ),
    "file": {},
    "build": {"version": "the version the Go server reports; not a setting"},
    "network_resilience": dict.fromkeys(
        (
            "fast_detection",
            "quality_monitoring",
            "predictive_switching",
            "mobile_optimizations",
            "detection_interval",
            "quality_check_interval",
            "max_detection_interval",
            "multi_interface_enabled",
            "interface_priority",
            "auto_switch_enabled",
            "switch_threshold_latency",
            "switch_threshold_packet_loss",
            "quality_degradation_threshold",
            "max_switch_attempts",
            "switch_detection_interval",
        ),
        _NETWORK,
    ),
    "client_network_support": dict.fromkeys(
        (
            "session_based_tracking",
            "allow_ip_changes",
            "session_migration_timeout",
            "max_ip_changes_per_session",
            "client_connection_detection",
            "adapt_to_client_network",
        ),
        _NETWORK,
    ),
    "audit": dict.fromkeys(
        ("enabled", "output", "path", "format", "events", "max_size", "max_age"),
        "this server has no audit log (each upload is logged to the journal)",
    ),
    "validation": dict.fromkeys(
        ("check_magic_bytes", "allowed_types", "blocked_types", "max_file_size", "strict_mode"),
        "this server does not check a file's content against its type",
    ),
    "quotas": dict.fromkeys(
        ("enabled", "default", "tracking", "custom"),
        "the Go server's quotas per JID have no direct counterpart here",
    ),
    "admin": dict.fromkeys(
        ("enabled", "bind", "path_prefix", "auth"), "this server has no admin API or dashboard"
    ),
    "rate_limit": dict.fromkeys(
        (
            "enabled",
            "requests_per_minute",
            "burst_size",
            "cleanup_interval",
            "by_jid",
            "by_ip",
            "whitelisted_ips",
            "whitelisted_jids",
        ),
        "this server has no rate limit (the nearest is [server] max_connections_per_address)",
    ),
    "key_rotation": dict.fromkeys(
        ("enabled", "rotation_interval", "grace_period", "key_storage"),
        "this server does not rotate its secret by itself (rotate by hand: the new secret "
        "first, the old ones in previous_secrets)",
    ),
    "metadata": dict.fromkeys(
        ("enabled", "db_path", "purge_age"), "this server keeps no metadata database"
    ),
    "compression": dict.fromkeys(
        (
            "enabled",
            "algorithm",
            "level",
            "threshold",
            "adaptive_compression",
            "compression_negotiation",
        ),
        "this server does not compress transfers",
    ),
}

#: Keys whose value is a secret: never shown, not even in a note.
SECRET_KEYS: Final = frozenset(
    {
        ("security", "secret"),
        ("security", "jwtsecret"),
        ("redis", "redispassword"),
        ("admin", "auth"),
    }
)

_README: Final = "its README names it"
_EXAMPLES: Final = "its example configurations name it"

#: Names the Go server's documentation uses that its code (3.2.1 and later) does not read:
#: (section, key) -> (where they are named, the key the code reads instead).
IGNORED_NAMES: Final[Mapping[tuple[str, str], tuple[str, str]]] = {
    ("server", "listenport"): (_README, "[server] listen_address"),
    ("server", "storagepath"): (_README, "[server] storage_path"),
    ("server", "file_ttl"): (_README, "[server] filettl"),
    ("server", "file_ttl_enabled"): (_README, "[server] filettlenabled"),
    ("server", "metrics_enabled"): (_EXAMPLES, "[server] metricsenabled"),
    ("server", "metrics_port"): (_EXAMPLES, "[server] metricsport"),
    ("server", "unix_socket"): (_EXAMPLES, "[server] unixsocket"),
    ("server", "network_events"): (_EXAMPLES, "[server] networkevents"),
    ("server", "auto_adjust_workers"): (_EXAMPLES, "[server] autoadjustworkers"),
    ("server", "log_level"): (_EXAMPLES, "[logging] level"),
    ("server", "log_file"): (_EXAMPLES, "[logging] file"),
    ("uploads", "allowedextensions"): (_EXAMPLES, "[uploads] allowed_extensions"),
    ("uploads", "chunkeduploadsenabled"): (_EXAMPLES, "[uploads] chunked_uploads_enabled"),
    ("uploads", "resumableuploadsenabled"): (_EXAMPLES, "[uploads] resumable_uploads_enabled"),
    ("uploads", "chunksize"): (_EXAMPLES, "[uploads] chunk_size"),
    ("uploads", "maxfilesize"): (_EXAMPLES, "[server] max_upload_size"),
    ("uploads", "max_file_size"): (_EXAMPLES, "[server] max_upload_size"),
    ("uploads", "ttl"): (_EXAMPLES, "[server] filettl"),
    ("uploads", "ttl_enabled"): (_EXAMPLES, "[server] filettlenabled"),
    ("downloads", "allowedextensions"): (_EXAMPLES, "[downloads] allowed_extensions"),
    ("downloads", "chunkeddownloadsenabled"): (_EXAMPLES, "[downloads] chunked_downloads_enabled"),
    ("downloads", "chunksize"): (_EXAMPLES, "[downloads] chunk_size"),
    ("timeouts", "read_timeout"): (_EXAMPLES, "[timeouts] readtimeout"),
    ("timeouts", "write_timeout"): (_EXAMPLES, "[timeouts] writetimeout"),
    ("timeouts", "idle_timeout"): (_EXAMPLES, "[timeouts] idletimeout"),
    ("timeouts", "shutdown_timeout"): (_EXAMPLES, "[timeouts] shutdown"),
    ("workers", "num_workers"): (_EXAMPLES, "[workers] numworkers"),
    ("workers", "upload_queue_size"): (_EXAMPLES, "[workers] uploadqueuesize"),
    ("security", "jwt_enabled"): (_EXAMPLES, "[security] enablejwt"),
    ("clamav", "enabled"): (_EXAMPLES, "[clamav] clamavenabled"),
    ("redis", "enabled"): (_EXAMPLES, "[redis] redisenabled"),
    ("redis", "address"): (_EXAMPLES, "[redis] redisaddr"),
    ("redis", "db"): (_EXAMPLES, "[redis] redisdbindex"),
}

# logrus level names (what the Go server accepts) -> ours.
_LEVELS: Final = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "fatal": "error",
    "panic": "error",
}
_TTL_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 365 * 86400}
_GO_SIZE_UNITS: Final = {"KB": 1024, "MB": 1024**2, "GB": 1024**3}
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


class MigrateError(Exception):
    """The migration cannot go on; `status` is the exit status, str() the message."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _name(key: str) -> str:
    """`key` as TOML writes it (quoted when it is not a bare key), for one-line messages."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def _where(section: str, key: str | None = None) -> str:
    return f"[{_name(section)}]" if key is None else f"[{_name(section)}] {_name(key)}"


# --- values the way viper converts them (mapstructure's weakly typed input) ------------------


def go_string(value: object) -> str | None:
    """`value` as the Go server reads it into a string field (numbers and booleans become
    their text), None for an array, a table or a date (on which it refuses to start)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return repr(value).removesuffix(".0")
    return None


def go_bool(value: object) -> bool | None:
    """`value` as the Go server reads it into a boolean field (Go's ParseBool for strings,
    non-zero for numbers), None where it refuses to start."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        if value in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if value in ("", "0", "f", "F", "FALSE", "false", "False"):
            return False
    return None


def go_size(text: str) -> int:
    """A size as the Go server's parseSize reads it: an integer followed by KB, MB or GB (in
    any case, binary units). Raises ValueError otherwise (the Go server refuses to start)."""
    text = text.strip()
    number, unit = text[:-2], text[-2:].upper()
    if unit not in _GO_SIZE_UNITS or not re.fullmatch(r"\+?[0-9]+", number, re.ASCII):
        raise ValueError(
            f"{show(text)} is not a size the Go server reads (an integer followed by KB, MB "
            "or GB); it refuses to start with it"
        )
    return int(number) * _GO_SIZE_UNITS[unit]


def go_ttl(text: str) -> tuple[int, str]:
    """A duration as the Go server's parseTTL reads it: digits, then one unit of s, m, h, d,
    w or y (365 days); it ignores whatever follows. Returns the seconds and the part it
    ignored. Raises ValueError for what it refuses."""
    lowered = text.strip().lower()
    match = re.match(r"([0-9]*)(.?)", lowered, re.ASCII | re.DOTALL)
    assert match is not None  # (the pattern matches any string)
    digits, unit = match.groups()
    if not digits or unit not in _TTL_UNITS:
        raise ValueError(
            f"{show(text)} is not a duration the Go server reads (a number followed by s, m, "
            "h, d, w or y)"
        )
    return int(digits) * _TTL_UNITS[unit], lowered[match.end() :]


def plain_duration(seconds: float) -> str:
    """`seconds` in the largest of the units d, h, m and s that divides it ("30d", "8760h"
    is "365d"), as admins write a TTL; `format_duration`'s weeks read less plainly."""
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return format_duration(seconds)


def _key_index(section: str, name: str) -> int:
    return next(i for i, key in enumerate(KEYS[section]) if key.name == name)


def _toml(section: str, name: str, value: object) -> str:
    """`value` written the way our key `[section] name` is (durations as `plain_duration`)."""
    if name in ("file_ttl", "sweep_interval") and isinstance(value, float):
        return toml_string(plain_duration(value))
    return KEYS[section][_key_index(section, name)].kind.show(value) or ""


# --- the migration ----------------------------------------------------------------------------


@dataclass
class _Setting:
    value: object
    origin: str


@dataclass
class _Migration:
    """One Go configuration being migrated: its tables (names in lower case, each with the
    name as written), our settings so far and the notes for standard error."""

    tables: dict[str, tuple[str, dict[str, tuple[str, object]]]]
    settings: dict[str, dict[str, _Setting]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: (section, reason) -> the keys not carried over for it, in the order of the file.
    dropped: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def has(self, section: str, key: str) -> bool:
        return key in self.tables.get(section, ("", {}))[1]

    def raw(self, section: str, key: str) -> object:
        return self.tables[section][1][key][1]

    def where(self, section: str, key: str) -> str:
        """The key as the file writes it: "[server] Listen_Address"."""
        written_section, keys = self.tables.get(section, (section, {}))
        return _where(written_section, keys[key][0] if key in keys else key)

    def set(self, section: str, key: str, value: object, origin: str) -> None:
        self.settings.setdefault(section, {})[key] = _Setting(value, origin)

    def note(self, section: str, key: str, message: str) -> None:
        self.notes.append(f"note: {self.where(section, key)}: {message}")

    def drop(self, section: str, key: str, reason: str) -> None:
        self.dropped.setdefault((section, reason), []).append(key)

    def string(self, section: str, key: str) -> str | None:
        """The key's value as a Go string field; None if it is absent or cannot be one (then
        noted)."""
        if not self.has(section, key):
            return None
        text = go_string(self.raw(section, key))
        if text is None:
            self.note(section, key, "not carried over: " + self._bad_type("a string"))
        return text

    def flag(self, section: str, key: str) -> bool:
        """The key's value as a Go boolean field (false when absent)."""
        if not self.has(section, key):
            return False
        value = go_bool(self.raw(section, key))
        if value is None:
            self.note(section, key, "not carried over: " + self._bad_type("a boolean"))
            return False
        return value

    @staticmethod
    def _bad_type(expected: str) -> str:
        return f"the Go server expects {expected} here and refuses to start with this value"


def _read(path: Path) -> dict[str, Any]:
    """The TOML document at `path`. Raises MigrateError (EXIT_INPUT) naming the file, and the
    line where there is one, if it cannot be read or parsed."""
    try:
        content, _ = read_regular(path)
    except NotRegularFile:
        raise MigrateError(f"{path}: not a regular file", EXIT_INPUT) from None
    except OSError as e:
        raise MigrateError(f"{path}: cannot read it: {e.strerror}", EXIT_INPUT) from None
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        raise MigrateError(f"{path}: line {line}: not UTF-8 text", EXIT_INPUT) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise MigrateError(f"{path}: invalid TOML: {e}", EXIT_INPUT) from None
    for name, value in data.items():
        if name.lower() in GO_KEYS and not isinstance(value, dict):
            number = _line_of(text, name)
            at = f"line {number}: " if number else ""
            raise MigrateError(
                f"{path}: {at}{_name(name)} must be a section (a table) for the Go server, "
                f"not {toml_type(value)}",
                EXIT_INPUT,
            )
    return data


def _line_of(text: str, key: str) -> int | None:
    """The line on which `key` is set at the top of the document, if it can be found."""
    pattern = re.compile(rf"\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def _tables(data: Mapping[str, Any], notes: list[str]) -> _Migration:
    """The sections the Go server reads, by lower-case name; warns of the rest."""
    tables: dict[str, tuple[str, dict[str, tuple[str, object]]]] = {}
    for name, value in data.items():
        section = name.lower()
        if section not in GO_KEYS:
            notes.append(_unknown_section(name, value))
            continue
        if section in tables:
            notes.append(
                f"warning: [{_name(name)}]: given twice (the Go server ignores the case of "
                "names); only the first is read"
            )
            continue
        keys: dict[str, tuple[str, object]] = {}
        for key, item in value.items():
            lowered = key.lower()
            if lowered in keys:
                notes.append(
                    f"warning: {_where(name, key)}: given twice (the Go server ignores the "
                    "case of names); only the first is read"
                )
                continue
            keys[lowered] = (key, item)
        tables[section] = (name, keys)
    return _Migration(tables=tables, notes=notes)


def _unknown_section(name: str, value: object) -> str:
    if not isinstance(value, dict):
        return (
            f"warning: {_name(name)}: a key outside any section, which the Go server "
            "ignores; not carried over"
        )
    guess = suggest(name.lower(), list(GO_KEYS))
    hint = f" (did you mean [{guess}]?)" if guess else ""
    return (
        f"warning: [{_name(name)}]: unknown section, which the Go server ignores{hint}; "
        "not carried over"
    )


def _check_names(m: _Migration) -> None:
    """Warn of every key the Go server does not read; report the keys it reads that have no
    counterpart here."""
    for section, (_written, keys) in m.tables.items():
        known = GO_KEYS[section]
        for key in keys:
            if key in known:
                if known[key]:
                    m.drop(section, key, known[key])
                continue
            ignored = IGNORED_NAMES.get((section, key))
            if ignored is not None:
                where, real = ignored
                m.notes.append(
                    f"warning: {m.where(section, key)}: the Go server ignores this key "
                    f"({where}, its code reads {real}); not carried over"
                )
                continue
            guess = suggest(key, list(known))
            hint = f"; did you mean {guess}?" if guess else ""
            m.notes.append(
                f"warning: {m.where(section, key)}: unknown key, which the Go server ignores"
                f"{hint}; not carried over"
            )


# --- [server] -------------------------------------------------------------------------------


def _listen(m: _Migration) -> None:
    """`[server] listen` from listen_address, bind_ip and unixsocket."""
    if m.flag("server", "unixsocket"):
        m.set("server", "listen", (f"unix:{GO_UNIX_SOCKET}",), "[server] unixsocket = true")
        m.note(
            "server",
            "unixsocket",
            f"carried over: the Go server listens on {GO_UNIX_SOCKET} (and no TCP port); "
            'a socket under /run (e.g. "unix:/run/hmac-file-server/http.sock") is safer',
        )
        for key in ("listen_address", "bind_ip"):
            if m.has("server", key):
                m.drop("server", key, "with unixsocket = true the Go server ignores it")
        return
    port = m.string("server", "listen_address")
    bind = m.string("server", "bind_ip") or ""
    host = _bind_host(m, bind)
    entry = _listen_entry(m, port or "8080", host)
    if port is None and not m.has("server", "listen_address"):
        m.notes.append(
            "note: [server] listen_address: not set: the Go server listens on its default, "
            f"port 8080; written as listen = [{toml_string(entry)}]"
        )
    origin = "[server] listen_address" + (", bind_ip" if m.has("server", "bind_ip") else "")
    m.set("server", "listen", (entry,), origin)


def _bind_host(m: _Migration, bind: str) -> str:
    """The host of the listen entry: "::" for every interface (Go's wildcard listens on IPv6
    and IPv4 alike), else `bind`."""
    if not bind:
        return "::"
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:
        m.note(
            "server",
            "bind_ip",
            f"not carried over: {show(bind)} is not an IP address (the Go server refuses "
            "to start with it); every interface is used",
        )
        return "::"
    if address.is_unspecified:
        return "::"
    if address.version == 6:
        m.note(
            "server",
            "bind_ip",
            "carried over, though the Go server cannot listen on an IPv6 address (it joins "
            "bind_ip and the port without brackets)",
        )
    return str(address)


def _listen_entry(m: _Migration, port: str, host: str) -> str:
    bracketed = f"[{host}]" if ":" in host else host
    if port.isascii() and port.isdigit() and 1 <= int(port) <= 65535:
        return f"{bracketed}:{int(port)}"
    # Not a port: the Go server refuses to start. Take what it names, if it is an address.
    candidate = f"[::]{port}" if port.startswith(":") else port
    try:
        config.parse_listen(candidate)
    except ValueError:
        m.note(
            "server",
            "listen_address",
            f"not carried over: {show(port)} is not a port number (the Go server refuses to "
            "start with it); port 8080 is used",
        )
        return f"{bracketed}:8080"
    m.note(
        "server",
        "listen_address",
        f"the Go server wants a port number here (and the address in bind_ip); carried over "
        f"as the address it names, {show(candidate)}",
    )
    return candidate


def _storage(m: _Migration) -> None:
    """`storage_dir` from storage_path (where [iso] enabled does not move the files)."""
    path = m.string("server", "storage_path")
    if path is None:
        if not m.has("server", "storage_path"):
            m.notes.append(
                "note: [server] storage_path: not set: the Go server stores files in "
                "./uploads under its working directory; set storage_dir to the absolute "
                "path of that directory"
            )
        return
    if not path or "\x00" in path:
        m.note("server", "storage_path", f"not carried over: {show(path)} is not a path")
    elif not Path(path).is_absolute():
        m.note(
            "server",
            "storage_path",
            f"not carried over: {show(path)} is relative to the Go server's working "
            "directory, which this file cannot tell; set storage_dir to its absolute path",
        )
    else:
        m.set("server", "storage_dir", path, "[server] storage_path")


def _upload_size(m: _Migration) -> None:
    text = m.string("server", "max_upload_size")
    if text is None:
        if not m.has("server", "max_upload_size"):
            m.set(
                "server",
                "max_upload_size",
                UNSET_UPLOAD_LIMIT,
                "the Go server sets no limit (3.3: 10GB); keep it in line with the XMPP server",
            )
            m.notes.append(
                "note: [server] max_upload_size: not set: the Go server 3.4 then accepts "
                f"uploads of any size (3.3: 10GB); written as {format_size(UNSET_UPLOAD_LIMIT)}, "
                "set the limit your XMPP server announces"
            )
        return
    try:
        size = go_size(text)
    except ValueError as e:
        m.note("server", "max_upload_size", f"not carried over: {e}")
        return
    m.set("server", "max_upload_size", size, f"[server] max_upload_size = {show(text)}")


def _ttl(m: _Migration) -> None:
    """`file_ttl` from filettlenabled, filettl and max_file_age; `sweep_interval` from
    cleanup_interval."""
    enabled = m.flag("server", "filettlenabled")
    sources = [key for key in ("filettl", "max_file_age") if m.has("server", key)]
    if not enabled:
        for key in sources:
            m.drop("server", key, "filettlenabled is not true, so the Go server keeps files")
    else:
        _file_ttl(m, sources)
    text = m.string("server", "cleanup_interval")
    if text is not None:
        seconds = _parse_ttl(m, "cleanup_interval", text)
        if seconds is not None and seconds > 0:
            m.set("server", "sweep_interval", float(seconds), "[server] cleanup_interval")
        elif seconds is not None:
            m.note("server", "cleanup_interval", "not carried over: it must be more than 0")


def _file_ttl(m: _Migration, sources: list[str]) -> None:
    if not sources:
        m.set("server", "file_ttl", 720 * 3600.0, "[server] filettlenabled (default 720h)")
        m.note(
            "server",
            "filettlenabled",
            'no filettl: the Go server deletes files after 720h; written as file_ttl = "30d"',
        )
        return
    key, *rest = sources
    for other in rest:
        m.drop("server", other, "filettl takes precedence")
    text = m.string("server", key)
    if text is None:
        return
    seconds = _parse_ttl(m, key, text)
    if seconds is None:
        return
    if seconds == 0:
        m.note(
            "server",
            key,
            "not carried over: the Go server deletes every file at each cleanup with a TTL "
            "of 0; 0 means never here",
        )
        return
    m.set("server", "file_ttl", float(seconds), f"[server] {key} = {show(text)}")


def _parse_ttl(m: _Migration, key: str, text: str) -> int | None:
    try:
        seconds, ignored = go_ttl(text)
    except ValueError as e:
        m.note("server", key, f"not carried over: {e}")
        return None
    if seconds > MAX_DURATION:
        m.note("server", key, f"not carried over: {show(text)} is longer than 100 years")
        return None
    if ignored:
        m.note(
            "server",
            key,
            f"the Go server reads only the first number and unit of {show(text)} and "
            f"ignores {show(ignored)}; carried over as "
            + _toml("server", "file_ttl", float(seconds)),
        )
    return seconds


def _metrics(m: _Migration) -> None:
    """`[metrics] listen` from metricsenabled and metricsport."""
    enabled = m.flag("server", "metricsenabled")
    port = m.string("server", "metricsport")
    if not enabled:
        if port is not None:
            m.drop("server", "metricsport", "metricsenabled is not true")
        return
    if port is None:
        m.note(
            "server",
            "metricsenabled",
            "not carried over: no metricsport (the Go server then serves /metrics on a "
            "random port)",
        )
        return
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        m.note(
            "server",
            "metricsport",
            f"not carried over: {show(port)} is not a port number (the Go server refuses to "
            "start with it)",
        )
        return
    entry = f"[::]:{int(port)}"
    listen = m.settings["server"]["listen"].value
    if isinstance(listen, tuple) and entry in listen:
        m.note(
            "server",
            "metricsport",
            "not carried over: it is the upload port (the Go server refuses to start so)",
        )
        return
    m.set("metrics", "listen", (entry,), "[server] metricsenabled, metricsport")
    m.note(
        "server",
        "metricsport",
        f"carried over as [metrics] listen = [{toml_string(entry)}]: every interface, as "
        'the Go server does; prefer a private address (e.g. "127.0.0.1:' + str(int(port)) + '")',
    )


def _naming(m: _Migration) -> None:
    naming = m.string("server", "file_naming")
    if naming is not None and naming not in ("", "original", "None"):
        m.note(
            "server",
            "file_naming",
            f"not carried over: with {show(naming)} the Go server stored files under names "
            "their URLs do not give; this server stores each file under its URL path, so "
            "files stored so far are not found by their URLs",
        )


def _iso(m: _Migration) -> None:
    if m.flag("iso", "enabled"):
        m.note(
            "iso",
            "enabled",
            "not carried over: the Go server stores files in the ISO container mounted at "
            "[iso] mountpoint, not in storage_path; copy them to storage_dir",
        )


# --- [security], [logging] --------------------------------------------------------------------


def _secret(m: _Migration) -> None:
    secret = m.string("security", "secret")
    if secret:
        m.set("hmac", "secret", secret, "[security] secret")
        m.note(
            "security",
            "secret",
            f"carried over as [hmac] secret; better move it into a file: write it to "
            f"{PACKAGE_SECRET_FILE} (owner root, group hmac-file-server, mode 0640), then "
            f'replace secret with secret_file = "{PACKAGE_SECRET_FILE}"',
        )
        return
    m.set("hmac", "secret_file", PACKAGE_SECRET_FILE, "no [security] secret")
    if secret is None and m.has("security", "secret"):
        state = "not usable"
    else:
        state = "empty" if m.has("security", "secret") else "not set"
    m.notes.append(
        f"note: [security] secret: {state}: written as secret_file = "
        f'"{PACKAGE_SECRET_FILE}", the secret file the package creates; the XMPP server must '
        "sign with the secret in it"
    )


def _level(m: _Migration) -> None:
    text = m.string("logging", "level")
    if text is None:
        return
    level = _LEVELS.get(text.lower())
    if level is None:
        m.note(
            "logging",
            "level",
            f"not carried over: {show(text)} is not a log level (the Go server logs at info "
            "then, as this server does by default)",
        )
        return
    if level != text.lower():
        m.note("logging", "level", f"carried over as log_level = {toml_string(level)}")
    m.set("server", "log_level", level, f"[logging] level = {show(text)}")


def migrate(data: Mapping[str, Any]) -> tuple[dict[str, dict[str, _Setting]], list[str]]:
    """Our settings for the Go configuration `data` (as tomllib read it), with where each
    came from, and the notes and warnings for standard error, in the order of the file."""
    m = _tables(data, [])
    _check_names(m)
    m.set("server", "upload_prefix", "/", "the Go server signs and stores the whole URL path")
    _listen(m)
    _storage(m)
    _upload_size(m)
    _ttl(m)
    _metrics(m)
    _naming(m)
    _iso(m)
    _secret(m)
    _level(m)
    for (section, reason), keys in m.dropped.items():
        where = ", ".join(_name(m.tables[section][1][key][0]) for key in keys)
        m.notes.append(f"note: [{_name(m.tables[section][0])}] {where}: not carried over: {reason}")
    m.notes.append(
        "note: the Go server also answers /health and /metrics on its upload port; here "
        'every path there may be a stored file (upload_prefix = "/"), so they are served on '
        "[metrics] listen only"
    )
    return m.settings, m.notes


# --- writing --------------------------------------------------------------------------------


def render(settings: Mapping[str, Mapping[str, _Setting]], source: Path) -> str:
    """Our configuration file holding `settings`, each with a comment saying where it came
    from, in the order of our sections and keys."""
    lines = [
        "# hmac-file-server configuration, migrated by `hmac-file-server migrate-config` from",
        f"# the HMAC File Server configuration {_comment(str(source))}.",
        "# Only the settings carried over are written; every other key has its default (see",
        "# hmac-file-server.toml(5); `hmac-file-server check-config` shows them all). What",
        "# was not carried over was listed on standard error when this file was written.",
    ]
    for section, keys in KEYS.items():
        chosen = settings.get(section, {})
        if not chosen:
            continue
        lines += ["", f"[{section}]"]
        for key in keys:
            setting = chosen.get(key.name)
            if setting is None:
                continue
            origin = _comment(setting.origin)
            lines.append(f"# from {origin}" if origin.startswith("[") else f"# {origin}")
            lines.append(f"{key.name} = {_toml(section, key.name, setting.value)}")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> str:
    """`text` safe on one comment line."""
    return "".join(char if char.isprintable() else "?" for char in text)


def check(text: str, out: Path | None) -> Config:
    """Read the written configuration back. Raises ConfigError if it does not load."""
    data = tomllib.loads(text)
    hmac_table = data.get("hmac", {})
    if "secret_file" in hmac_table:
        # The secret file may not exist yet on this machine; the rest must load.
        hmac_table.pop("secret_file")
        hmac_table["secret"] = "a-stand-in-for-the-secret-file"  # noqa: S105 (only checked)
    return config.parse(data, out.absolute() if out is not None else None)


def _write(path: Path, text: str, *, force: bool) -> None:
    """Write `text` to `path` (mode 0640) atomically. Raises MigrateError (EXIT_FAILURE) if
    `path` exists and not `force`, or if it cannot be written."""
    if (path.exists() or path.is_symlink()) and not force:
        raise MigrateError(f"{path} exists; give --force to replace it", EXIT_FAILURE)
    directory = path.absolute().parent
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as e:
        raise MigrateError(f"cannot write in {directory}: {e.strerror}", EXIT_FAILURE) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o640)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        Path(temporary).unlink(missing_ok=True)
        raise MigrateError(f"cannot write {path}: {e.strerror}", EXIT_FAILURE) from None


# --- the command ----------------------------------------------------------------------------


#: The arguments are defined apart (`hmacfs.admin.parsers`), so that the command line is built
#: without loading this module.
add_parser = add_migrate_parser


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run `migrate-config`: write the configuration to `out` or to args.output; notes and
    errors go to standard error. Returns the exit status (see the module docstring)."""
    source: Path = args.go_config
    target: Path | None = args.output
    try:
        return _run(source, target, out, force=args.force)
    except MigrateError as e:
        print(f"migrate-config: {e}", file=sys.stderr)
        return e.status


def _run(source: Path, target: Path | None, out: TextIO, *, force: bool) -> int:
    if target is not None and _same_file(source, target):
        raise MigrateError(f"{target} is the file being migrated; write elsewhere", EXIT_FAILURE)
    if target is not None and not force and (target.exists() or target.is_symlink()):
        raise MigrateError(f"{target} exists; give --force to replace it", EXIT_FAILURE)
    data = _read(source)
    settings, notes = migrate(data)
    text = render(settings, source)
    try:
        loaded = check(text, target)
    except ConfigError as e:
        raise MigrateError(f"the migrated configuration does not load: {e}", EXIT_FAILURE) from e
    for line in notes:
        print(line, file=sys.stderr)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if target is None:
        out.write(text)
        out.flush()
    else:
        _write(target, text, force=force)
        print(f"migrate-config: wrote {target}", file=sys.stderr)
    return EXIT_OK


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
