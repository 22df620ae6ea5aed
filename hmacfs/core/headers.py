"""Response headers that do not depend on Twisted: security headers, CORS, media types,
Content-Disposition and HTTP dates. Every way of answering takes them from here."""

from __future__ import annotations

import email.utils
import functools
import re
import time
from collections.abc import Callable
from urllib.parse import quote

from hmacfs.core.settings import HttpSettings

SERVER_NAME = b"hmac-file-server"
ALLOWED_METHODS = "OPTIONS, HEAD, GET, PUT"
CONTENT_SECURITY_POLICY = b"default-src 'none'; frame-ancestors 'none'; sandbox"
#: Headers on every answer, whichever way it is written.
BASE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Server", SERVER_NAME),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
    (b"Referrer-Policy", b"no-referrer"),
)
#: Response headers a browser script may read (CORS).
EXPOSED_HEADERS = (
    "Content-Length, Content-Range, Content-Disposition, ETag, Last-Modified, Location, "
    "Upload-Offset, Upload-Complete, Upload-Incomplete, Upload-Length, Upload-Limit, "
    "Upload-Draft-Interop-Version"
)

_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # noqa: S105 (an RFC 9110 token, not a password)
_MEDIA_TYPE = re.compile(
    rf"^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*\s*$"
)


def _http_date(seconds: int) -> bytes:
    return email.utils.formatdate(seconds, usegmt=True).encode("ascii")


#: The HTTP date of a whole second: Date (one new second at a time) and Last-Modified (files
#: asked for again and again).
http_date_of: Callable[[int], bytes] = functools.lru_cache(maxsize=1024)(_http_date)


def http_date_now() -> bytes:
    """The Date header's value for now (made once a second)."""
    return http_date_of(int(time.time()))


def parse_http_date(value: str) -> int | None:
    """The Unix time an HTTP date names, or None if it is not one (or out of range)."""
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return int(email.utils.mktime_tz(parsed))
    except (ValueError, OverflowError, TypeError):
        return None


def safe_media_type(value: str | None) -> str | None:
    """`value` if it is a well-formed ASCII media type (parameters allowed), else None."""
    if not value or not value.isascii() or not _MEDIA_TYPE.match(value):
        return None
    return value.strip()


def is_inline(media_type: str) -> bool:
    """Whether a type may be shown in the browser (images, audio, video, plain text)."""
    essence = media_type.split(";", 1)[0].strip().lower()
    if essence == "image/svg+xml":
        return False  # scriptable: download only
    major = essence.split("/", 1)[0]
    return major in ("image", "video", "audio") or essence == "text/plain"


def content_disposition(kind: str, name: str) -> str:
    """An RFC 6266 header value: an ASCII fallback name plus the UTF-8 name in filename*."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\%;' else "_" for c in name
    )
    value = f'{kind}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def cors_headers(settings: HttpSettings, origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers for an actual (non-preflight) response to a request from `origin`."""
    if not settings.cors_enabled:
        return []
    out: list[tuple[str, str]] = []
    wildcard = "*" in settings.cors_origins
    if wildcard and not settings.cors_credentials:
        out.append(("Access-Control-Allow-Origin", "*"))
    else:
        out.append(("Vary", "Origin"))
        if origin is not None and (wildcard or origin in settings.cors_origins):
            out.append(("Access-Control-Allow-Origin", origin))
            if settings.cors_credentials:
                out.append(("Access-Control-Allow-Credentials", "true"))
        else:
            return out
    out.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
    return out


@functools.lru_cache(maxsize=256)
def cors_fields(settings: HttpSettings, origin: str | None) -> tuple[tuple[bytes, bytes], ...]:
    """`cors_headers` as they go on the wire (worked out once for the origins seen most)."""
    return tuple(encoded(cors_headers(settings, origin)))


def preflight_headers(settings: HttpSettings, origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers answering a preflight OPTIONS."""
    out = cors_headers(settings, origin)
    if not any(name == "Access-Control-Allow-Origin" for name, _ in out):
        return out
    out.append(("Access-Control-Allow-Methods", ", ".join(settings.cors_methods)))
    out.append(("Access-Control-Allow-Headers", ", ".join(settings.cors_headers)))
    out.append(("Access-Control-Max-Age", str(int(settings.cors_max_age))))
    return out


def encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Text headers as the bytes that go on the wire (latin-1, as HTTP/1.1 has it)."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
