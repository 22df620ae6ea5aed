"""The typed, validated settings the server runs with.

`hmacfs.core.config` builds these from a TOML file; everything else only reads them. Durations are
seconds (float), sizes are bytes (int). A value of ``None`` for a duration means "never".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from hmacfs.core.listen import Listener, parse_listen

__all__ = [
    "ALGORITHMS",
    "HEADER_SCHEMES",
    "QUERY_SCHEMES",
    "Config",
    "HmacSettings",
    "HttpSettings",
    "Listener",
    "MetricsSettings",
    "ServerSettings",
    "TlsSettings",
]

#: The HMAC algorithms `[hmac] algorithm` may name (Prosody, ejabberd and Metronome use sha256).
ALGORITHMS = ("sha256", "sha384", "sha512")

#: Every signing scheme the server knows, in the order a query string is examined.
QUERY_SCHEMES = ("v3", "v2", "token", "v")
HEADER_SCHEMES = ("jwt", "basic", "cookie", "x-hmac")


@dataclass(frozen=True)
class ServerSettings:
    """`[server]`: where to listen, where to store, how large."""

    listen: tuple[str, ...] = ("127.0.0.1:5050",)
    upload_prefix: str = "/upload/"
    storage_dir: Path = Path("/var/lib/hmac-file-server/files")
    max_upload_size: int = 100 * 1024 * 1024
    #: Base URL (scheme://host[:port]) clients reach us at; used by `sign` to print full URLs.
    public_url: str | None = None
    #: Stored files are deleted this long after their upload (None: kept until they expire).
    file_ttl: float | None = None
    #: How often expired files and abandoned partial uploads are removed.
    sweep_interval: float = 600.0
    #: A connection that sends nothing for this long is closed (also mid-body).
    idle_timeout: float = 120.0
    #: fsync the data and its directory entry before answering 201.
    fsync: bool = True
    log_level: str = "info"
    #: On SIGTERM, uploads in flight get this long to finish before they are cut off.
    shutdown_timeout: float = 30.0
    #: Worker processes sharing the listening sockets: 0 for one per core, 1 for a single
    #: process (no supervisor).
    workers: int = 0
    #: Peers (addresses or networks) whose X-Forwarded-For and X-Forwarded-Proto are believed.
    trusted_proxies: tuple[str, ...] = ()

    @cached_property
    def listeners(self) -> tuple[Listener, ...]:
        """`listen`, parsed (once per settings object). Raises ValueError for an entry that
        is not a listen address (never for settings `hmacfs.core.config` built)."""
        return tuple(parse_listen(entry) for entry in self.listen)


@dataclass(frozen=True)
class HmacSettings:
    """`[hmac]`: the shared secrets and which signing schemes are accepted."""

    #: The current secret first, then older ones still accepted during a rotation.
    secrets: tuple[bytes, ...] = ()
    algorithm: str = "sha256"
    v1_support: bool = True
    v2_support: bool = True
    token_support: bool = True
    v3_support: bool = True
    jwt_support: bool = True
    basic_support: bool = True
    cookie_support: bool = True
    x_hmac_support: bool = True
    #: Allowance for clock differences when checking `v3` expiry, JWT `exp` and `Expires`.
    clock_skew: float = 30.0
    #: How far an `X-HMAC-Timestamp` may be from now, either way.
    x_hmac_window: float = 300.0

    def enabled(self, scheme: str) -> bool:
        """Whether `scheme` (one of QUERY_SCHEMES or HEADER_SCHEMES) is switched on."""
        flag = {
            "v": self.v1_support,
            "v2": self.v2_support,
            "token": self.token_support,
            "v3": self.v3_support,
            "jwt": self.jwt_support,
            "basic": self.basic_support,
            "cookie": self.cookie_support,
            "x-hmac": self.x_hmac_support,
        }.get(scheme)
        if flag is None:
            raise ValueError(f"unknown scheme {scheme!r}")
        return flag


@dataclass(frozen=True)
class HttpSettings:
    """`[http]`: CORS for browser clients."""

    cors_enabled: bool = True
    cors_origins: tuple[str, ...] = ("*",)
    cors_methods: tuple[str, ...] = ("OPTIONS", "HEAD", "GET", "PUT")
    cors_headers: tuple[str, ...] = ("Authorization", "Content-Type")
    cors_credentials: bool = False
    cors_max_age: float = 86400.0


@dataclass(frozen=True)
class TlsSettings:
    """`[tls]`: the certificate for `https://` listeners (re-read on SIGHUP)."""

    #: PEM certificate, optionally followed by its chain (Let's Encrypt's fullchain.pem).
    certificate: Path | None = None
    #: PEM private key (Let's Encrypt's privkey.pem).
    key: Path | None = None
    #: Extra PEM chain file, when the certificate file holds only the leaf (cert.pem + chain.pem).
    chain: Path | None = None
    min_version: str = "1.2"
    #: OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults).
    ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


@dataclass(frozen=True)
class MetricsSettings:
    """`[metrics]`: Prometheus metrics and health checks."""

    #: Listeners serving /metrics and /health only (keep them private, e.g. on localhost).
    listen: tuple[str, ...] = ()
    #: Path of the health check on the upload listeners ("" turns it off there).
    health_path: str = "/health"

    @cached_property
    def listeners(self) -> tuple[Listener, ...]:
        """`listen`, parsed (once per settings object). Raises ValueError for an entry that
        is not a listen address (never for settings `hmacfs.core.config` built)."""
        return tuple(parse_listen(entry) for entry in self.listen)


@dataclass(frozen=True)
class Config:
    """Everything the server needs; `source` is the file it came from (None if built in)."""

    server: ServerSettings = field(default_factory=ServerSettings)
    hmac: HmacSettings = field(default_factory=HmacSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    source: Path | None = None
    #: Non-fatal remarks found while loading (e.g. a short secret), for the log.
    warnings: tuple[str, ...] = ()
