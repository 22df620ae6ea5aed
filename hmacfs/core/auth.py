"""Who may PUT what: every signing scheme XMPP servers use for XEP-0363 upload slots.

Pure functions only: `verify` turns a `PutAttempt` (what the web layer saw of a PUT) into a
`Grant` (what may be stored) or raises a `hmacfs.core.refusals.Refusal` (the status to answer).
The signing side (`sign` and the message builders) is used by the ``sign`` command, the tests
and the benchmarks.
docs/SIGNING.md describes every scheme, where it comes from and every rule applied here.

Nothing here logs, and no refusal's text ever contains a MAC, a token or a secret.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, TypeVar

from hmacfs.core.mediatypes import implied_types
from hmacfs.core.records import quick_init
from hmacfs.core.refusals import (
    BadRequest,
    Forbidden,
    Gone,
    Reason,
    Refusal,
    TooLarge,
    Unauthorized,
)
from hmacfs.core.settings import ALGORITHMS, QUERY_SCHEMES, HmacSettings

__all__ = (
    "Grant",
    "PutAttempt",
    "Signed",
    "compute_mac",
    "header_message",
    "jwt_encode",
    "sign",
    "v1_message",
    "v2_message",
    "v3_message",
    "verify",
    "x_hmac_message",
)

#: What Prosody, Metronome and share.php sign when a slot request carried no content type.
DEFAULT_CONTENT_TYPE = "application/octet-stream"

_MISMATCH = "signature mismatch"
_DECIMAL = re.compile(r"[0-9]{1,20}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_BASIC_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_JWT_HEADER = b'{"alg":"HS256","typ":"JWT"}'
_BEARER = (("WWW-Authenticate", "Bearer"),)
_INVALID_TOKEN = (("WWW-Authenticate", 'Bearer error="invalid_token"'),)

_T = TypeVar("_T")


@quick_init
@dataclass(frozen=True)
class PutAttempt:
    """What the web layer saw of a PUT, reduced to what the signing schemes look at."""

    method: str
    #: The signed path: prefix removed, percent-decoded once, no leading slash.
    path: str
    #: `urllib.parse.parse_qs(raw_query, keep_blank_values=True)`.
    query: Mapping[str, Sequence[str]]
    #: Lower-case header name -> value (first occurrence).
    headers: Mapping[str, str]
    content_length: int


@quick_init
@dataclass(frozen=True)
class Grant:
    """Permission to store exactly `size` bytes at `path`, and how to serve them."""

    path: str
    size: int
    content_type: str
    scheme: str
    #: Unix time the stored file expires (JWT `expires` claim), else None.
    expires: float | None
    #: The uploader's bare JID (JWT `sub` claim), else None.
    uploader: str | None


@dataclass(frozen=True)
class Signed:
    """What a client must add to a PUT for `verify` to accept it."""

    #: Parameters to append to the PUT URL.
    query: dict[str, str]
    #: Headers the client must send (the slot's headers).
    headers: dict[str, str]


# --------------------------------------------------------------------------------------------
# Messages and MACs (the signing side)
# --------------------------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    # surrogateescape gives back the raw bytes of a path that was not valid UTF-8.
    return text.encode("utf-8", "surrogateescape")


def compute_mac(secret: bytes, message: bytes, algorithm: str = "sha256") -> str:
    """Return the lowercase hex HMAC of `message` under `secret`.

    Raises ValueError if `algorithm` is not one of `hmacfs.core.settings.ALGORITHMS`.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported HMAC algorithm {algorithm!r}")
    return _mac(secret, message, algorithm).hex()


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes, algorithm: str) -> tuple[Any, Any]:
    """The hash states of RFC 2104's inner and outer hashes with `secret` already in them.

    One HMAC from them is two copies and two short updates: a third of what `hmac.digest`
    costs, which looks the hash up and keys it again each time. Kept for the few secrets
    in use (a reload that changes them leaves the old ones to fall out).
    """
    inner, outer = hashlib.new(algorithm), hashlib.new(algorithm)
    block = inner.block_size
    key = hashlib.new(algorithm, secret).digest() if len(secret) > block else secret
    key = key.ljust(block, b"\0")
    inner.update(key.translate(_IPAD))
    outer.update(key.translate(_OPAD))
    return inner, outer


#: The key's bytes xor 0x36 and xor 0x5c (RFC 2104).
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _mac(secret: bytes, message: bytes, algorithm: str) -> bytes:
    """The HMAC of `message` under `secret` (`algorithm` one of ALGORITHMS)."""
    inner, outer = _keyed(secret, algorithm)
    inner, outer = inner.copy(), outer.copy()
    inner.update(message)
    outer.update(inner.digest())
    return outer.digest()  # type: ignore[no-any-return]


def v1_message(path: str, size: int) -> bytes:
    """The message of `v` (Prosody v1, ejabberd): ``path + " " + size``."""
    return _utf8(f"{path} {size}")


def v2_message(path: str, size: int, content_type: str) -> bytes:
    """The message of `v2` and `token`: ``path \\0 size \\0 content_type``."""
    return _utf8(f"{path}\0{size}\0{content_type}")


def v3_message(method: str, expires: int, path: str) -> bytes:
    """The message of `v3`: ``METHOD \\n expires \\n /path`` (the size is not bound)."""
    return _utf8(f"{method}\n{expires}\n/{path}")


def x_hmac_message(method: str, path: str, size: int, timestamp: int) -> bytes:
    """The message of `X-HMAC-Signature`: ``METHOD \\n /path \\n size \\n timestamp``."""
    return _utf8(f"{method}\n/{path}\n{size}\n{timestamp}")


def header_message(path: str, size: int, content_type: str, expires: str | None) -> bytes:
    """The message of `Authorization: Basic` and `Cookie: auth=`.

    The `v2` message, followed by ``"\\0" + expires`` when the slot has an `Expires` header
    (`expires` is that header's text).
    """
    message = v2_message(path, size, content_type)
    if expires is not None:
        message += b"\0" + _utf8(expires)
    return message


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt_signature(secret: bytes, signing_input: bytes) -> str:
    return _b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())


def jwt_encode(secret: bytes, claims: Mapping[str, object]) -> str:
    """Return an HS256 JWT of `claims`, as Prosody's `util.jwt` builds it.

    Raises TypeError or ValueError if a claim cannot be encoded as JSON.
    """
    payload = json.dumps(dict(claims), separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False)
    signing_input = f"{_b64url(_JWT_HEADER)}.{_b64url(payload.encode('utf-8'))}"
    return f"{signing_input}.{_jwt_signature(secret, signing_input.encode('ascii'))}"


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def sign(  # noqa: PLR0911 (one return per scheme)
    scheme: str,
    path: str,
    size: int,
    content_type: str,
    secret: bytes,
    *,
    algorithm: str = "sha256",
    now: float,
    lifetime: float = 300.0,
    uploader: str = "user@example.org",
    file_expiry: float | None = None,
) -> Signed:
    """Sign a PUT of `size` bytes of `content_type` to `path` the way `verify` accepts it.

    `lifetime` bounds the `v3` URL, the JWT and the basic/cookie `Expires` header;
    `file_expiry` becomes the JWT `expires` claim. The client must send `content_type` as its
    Content-Type (an empty type: an empty header or none).
    Raises ValueError for an unknown scheme or algorithm, a path the JWT cannot express
    (anything but ``slot/filename``) or a basic-auth `uploader` containing ":".
    """
    def mac(message: bytes) -> str:
        return compute_mac(secret, message, algorithm)

    if scheme == "v":
        return Signed({"v": mac(v1_message(path, size))}, {})
    if scheme in ("v2", "token"):
        return Signed({scheme: mac(v2_message(path, size, content_type))}, {})
    if scheme == "v3":
        expires = int(now + lifetime)
        return Signed({"v3": mac(v3_message("PUT", expires, path)), "expires": str(expires)}, {})
    if scheme == "x-hmac":
        timestamp = int(now)
        signature = mac(x_hmac_message("PUT", path, size, timestamp))
        return Signed({}, {"X-HMAC-Signature": f"{algorithm}={signature}",
                           "X-HMAC-Timestamp": str(timestamp)})
    if scheme in ("basic", "cookie"):
        expires_header = str(int(now + lifetime))
        signature = mac(header_message(path, size, content_type, expires_header))
        if scheme == "cookie":
            return Signed({}, {"Cookie": f"auth={signature}", "Expires": expires_header})
        if ":" in uploader:
            raise ValueError("a basic-auth user name cannot contain ':'")
        credentials = base64.b64encode(_utf8(f"{uploader}:{signature}")).decode("ascii")
        return Signed({}, {"Authorization": f"Basic {credentials}", "Expires": expires_header})
    if scheme == "jwt":
        slot, _, filename = path.partition("/")
        if not slot or not filename or "/" in filename:
            raise ValueError("a JWT slot path must be exactly 'slot/filename'")
        iat = int(now)
        claims: dict[str, object] = {
            "sub": uploader,
            "iat": iat,
            "exp": _json_number(iat + lifetime),
            "slot": slot,
            "filename": filename,
            "filesize": size,
            "filetype": content_type,
        }
        if file_expiry is not None:
            claims["expires"] = _json_number(file_expiry)
        return Signed({}, {"Authorization": f"Bearer {jwt_encode(secret, claims)}"})
    raise ValueError(f"unknown signing scheme {scheme!r}")


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def verify(attempt: PutAttempt, settings: HmacSettings, now: float) -> Grant:
    """Decide whether `attempt` is a PUT the XMPP server approved, at unix time `now`.

    Returns the `Grant` describing what may be stored. Raises a `Refusal` with the status to
    answer: 400 (malformed request), 401 (JWT problems, with `WWW-Authenticate`), 403
    (missing, disabled or wrong signature, expired URL), 410 (expired JWT) or 413 (size
    differs from the JWT's).
    """
    if attempt.content_length < 0:
        raise BadRequest("invalid Content-Length")
    scheme = _choose_scheme(attempt)
    try:
        return _verify_as(scheme, attempt, settings, now)
    except Refusal as refusal:
        refusal.scheme = scheme
        raise


def _verify_as(scheme: str, attempt: PutAttempt, settings: HmacSettings, now: float) -> Grant:
    if not settings.enabled(scheme):
        raise Forbidden(f"{scheme} signing is disabled")
    try:
        if scheme == "jwt":
            return _verify_jwt(attempt, settings, now)
        if scheme == "x-hmac":
            return _verify_x_hmac(attempt, settings, now)
        if scheme in ("basic", "cookie"):
            return _verify_slot_header(scheme, attempt, settings, now)
        if scheme == "v3":
            return _verify_v3(attempt, settings, now)
        return _verify_query(scheme, attempt, settings)
    except UnicodeEncodeError:
        # A path or header holding lone surrogates cannot have been signed by anyone.
        raise BadRequest("malformed request") from None


def _choose_scheme(attempt: PutAttempt) -> str:
    """Pick the one scheme to check (no fallback); raise a Refusal if there is none."""
    if attempt.query:
        scheme = _query_scheme(attempt.query)
        if scheme is not None:
            return scheme
    authorization = attempt.headers.get("authorization")
    if authorization is not None:
        kind = _auth_scheme(authorization)
        if kind == "bearer":
            return "jwt"
        if kind == "basic":
            return "basic"
    if "x-hmac-signature" in attempt.headers:
        return "x-hmac"
    if _cookie(attempt.headers.get("cookie"), "auth") is not None:
        return "cookie"
    if authorization is not None:
        raise Unauthorized("unsupported Authorization scheme", headers=_BEARER)
    raise Forbidden("missing signature")


#: The query parameters that choose a scheme, and "expires", in the order they are checked.
_SCHEME_PARAMETERS_ORDERED = (*QUERY_SCHEMES, "expires")
_SCHEME_PARAMETERS = frozenset(_SCHEME_PARAMETERS_ORDERED)


def _query_scheme(query: Mapping[str, Sequence[str]]) -> str | None:
    """The scheme the query's parameters choose, if any; BadRequest if one is repeated."""
    present = _SCHEME_PARAMETERS.intersection(query)
    if len(present) == 1:  # (the usual: one signature)
        (name,) = present
        if len(query[name]) > 1:
            raise BadRequest(f"query parameter {name!r} given more than once")
        return name if name != "expires" and query[name] else None
    for name in _SCHEME_PARAMETERS_ORDERED:
        if name in present and len(query[name]) > 1:
            raise BadRequest(f"query parameter {name!r} given more than once")
    for name in QUERY_SCHEMES:  # ordered highest first
        if name in present and query[name]:
            return name
    return None


def _auth_scheme(value: str) -> str:
    words = value.split(None, 1)
    return words[0].lower() if words else ""


def _auth_credentials(value: str) -> str:
    words = value.split(None, 1)
    return words[1].strip() if len(words) == 2 else ""


def _cookie(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header (first one wins), or None."""
    if header is None:
        return None
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


_DIGEST_SIZES = {algorithm: hashlib.new(algorithm).digest_size for algorithm in ALGORITHMS}


def _matching(
    settings: HmacSettings, provided: str, candidates: Iterable[tuple[_T, bytes]]
) -> _T | None:
    """The label of the first (label, message) whose MAC, under any secret, is `provided`."""
    algorithm = settings.algorithm
    digest_size = _DIGEST_SIZES[algorithm]
    mac = provided.strip().lower()
    if len(mac) != 2 * digest_size:
        return None
    try:
        wanted = bytes.fromhex(mac)
    except ValueError:
        return None  # (not hex digits)
    if len(wanted) != digest_size:
        return None  # (whitespace between them, which fromhex skips)
    for label, message in candidates:
        for secret in settings.secrets:
            if hmac.compare_digest(_mac(secret, message, algorithm), wanted):
                return label
    return None


def _v2_types(headers: Mapping[str, str], path: str) -> tuple[str, ...]:
    """The content types a v2-style MAC may have been computed with, most likely first:
    without a Content-Type, also those the file name implies (the slot named the type, the
    PUT left it out: Kaidan, Movim)."""
    raw = headers.get("content-type")
    if raw is None:
        implied = tuple(t for t in implied_types(path) if t != DEFAULT_CONTENT_TYPE)
        return (DEFAULT_CONTENT_TYPE, "", *implied)
    value = raw.strip()
    return (value,) if value else ("", DEFAULT_CONTENT_TYPE)


def _stored_type(attempt: PutAttempt) -> str:
    """The type to store where the scheme signs none: the PUT's, else the one its name
    implies (a client that sends none, such as Kaidan, still gets its photo shown inline)."""
    given = attempt.headers.get("content-type", "").strip()
    if given:
        return given
    implied = implied_types(attempt.path)
    return implied[0] if implied else DEFAULT_CONTENT_TYPE


def _grant(attempt: PutAttempt, scheme: str, content_type: str) -> Grant:
    return Grant(attempt.path, attempt.content_length, content_type, scheme, None, None)


def _verify_query(scheme: str, attempt: PutAttempt, settings: HmacSettings) -> Grant:
    provided = attempt.query[scheme][0]
    path, size = attempt.path, attempt.content_length
    if scheme == "v":
        if _matching(settings, provided, [(True, v1_message(path, size))]) is None:
            raise _mismatch(Forbidden(_MISMATCH))
        return _grant(attempt, scheme, _stored_type(attempt))
    candidates = [(ct, v2_message(path, size, ct)) for ct in _v2_types(attempt.headers, path)]
    content_type = _matching(settings, provided, candidates)
    if content_type is None:
        raise _mismatch(Forbidden(_MISMATCH))
    return _grant(attempt, scheme, content_type)


def _verify_v3(attempt: PutAttempt, settings: HmacSettings, now: float) -> Grant:
    raw = (attempt.query.get("expires") or [""])[0]
    if not _DECIMAL.fullmatch(raw):
        raise Forbidden("missing or invalid expires")
    expires = int(raw)
    message = v3_message(attempt.method, expires, attempt.path)
    if _matching(settings, attempt.query["v3"][0], [(True, message)]) is None:
        raise _mismatch(Forbidden(_MISMATCH))
    if now > expires + settings.clock_skew:
        raise Forbidden("expired", Reason.EXPIRED)
    return _grant(attempt, "v3", _stored_type(attempt))


def _verify_x_hmac(attempt: PutAttempt, settings: HmacSettings, now: float) -> Grant:
    raw = attempt.headers.get("x-hmac-timestamp", "").strip()
    if not _DECIMAL.fullmatch(raw):
        raise Forbidden("missing or invalid X-HMAC-Timestamp")
    timestamp = int(raw)
    algorithm, _, provided = attempt.headers["x-hmac-signature"].strip().partition("=")
    if algorithm.strip().lower() != settings.algorithm:
        raise _mismatch(Forbidden(_MISMATCH))
    message = x_hmac_message(attempt.method, attempt.path, attempt.content_length, timestamp)
    if _matching(settings, provided, [(True, message)]) is None:
        raise _mismatch(Forbidden(_MISMATCH))
    if abs(now - timestamp) > settings.x_hmac_window:
        raise Forbidden("X-HMAC-Timestamp outside the allowed window", Reason.EXPIRED)
    return _grant(attempt, "x-hmac", _stored_type(attempt))


def _expires_at(text: str) -> float:
    """Parse an Expires header (decimal unix seconds or an HTTP-date)."""
    if _DECIMAL.fullmatch(text):
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise BadRequest("invalid Expires header") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _basic_password(value: str) -> str:
    credentials = _auth_credentials(value)
    if not _BASIC_B64.fullmatch(credentials):
        return ""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""
    return decoded.partition(":")[2] if ":" in decoded else decoded


def _verify_slot_header(
    scheme: str, attempt: PutAttempt, settings: HmacSettings, now: float
) -> Grant:
    raw_expires = attempt.headers.get("expires")
    expires_text = None if raw_expires is None else raw_expires.strip()
    deadline = None if expires_text is None else _expires_at(expires_text)
    if scheme == "basic":
        provided = _basic_password(attempt.headers["authorization"])
    else:
        provided = _cookie(attempt.headers.get("cookie"), "auth") or ""
    path, size = attempt.path, attempt.content_length
    candidates = [
        (ct, header_message(path, size, ct, expires_text))
        for ct in _v2_types(attempt.headers, path)
    ]
    content_type = _matching(settings, provided, candidates)
    if content_type is None:
        raise _mismatch(Forbidden(_MISMATCH))
    if deadline is not None and now > deadline + settings.clock_skew:
        raise Forbidden("expired", Reason.EXPIRED)
    return _grant(attempt, scheme, content_type)


# JWT ----------------------------------------------------------------------------------------


_R = TypeVar("_R", bound=Refusal)


def _mismatch(refusal: _R) -> _R:
    """`refusal`, marked as a MAC that none of the secrets gives."""
    refusal.mismatch = True
    return refusal


def _invalid_token(reason: str = "invalid token") -> Unauthorized:
    return Unauthorized(reason, headers=_INVALID_TOKEN)


def _b64url_decode(segment: str) -> bytes:
    """Decode base64url with or without padding; raise ValueError if it is not base64url."""
    if not _B64URL.fullmatch(segment):
        raise ValueError("not base64url")
    bare = segment.rstrip("=")
    if len(bare) % 4 == 1:
        raise ValueError("truncated base64url")
    return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate JSON key")
        result[key] = value
    return result


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _json_object(segment: str) -> dict[str, object]:
    """Decode a base64url JSON object strictly; raise ValueError if it is anything else."""
    try:
        value = json.loads(
            _b64url_decode(segment).decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constants,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _is_number(value: object) -> bool:
    """A JSON number a float can hold (true/false, NaN and infinities are not numbers)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _claim(claims: Mapping[str, object], name: str, check: Callable[[object], bool],
           *, required: bool) -> object:
    """A claim of the right JSON type (None if absent and optional); 401 otherwise."""
    if name not in claims:
        if required:
            raise _invalid_token()
        return None
    value = claims[name]
    if not check(value):
        raise _invalid_token()
    return value


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _verify_jwt(attempt: PutAttempt, settings: HmacSettings, now: float) -> Grant:
    token = _auth_credentials(attempt.headers["authorization"])
    parts = token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(part) for part in parts):
        raise _invalid_token("malformed token")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = _json_object(header_b64)
    except ValueError:
        raise _invalid_token("malformed token") from None
    if header.get("alg") != "HS256" or "crit" in header:
        raise _invalid_token("unsupported token algorithm")

    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    provided = signature_b64.rstrip("=").encode("ascii")
    if not any(
        hmac.compare_digest(_jwt_signature(secret, signing_input).encode("ascii"), provided)
        for secret in settings.secrets
    ):
        raise _mismatch(_invalid_token())
    try:
        claims = _json_object(payload_b64)
    except ValueError:
        raise _invalid_token("malformed token") from None

    exp = _claim(claims, "exp", _is_number, required=True)
    slot = _claim(claims, "slot", _is_str, required=True)
    filename = _claim(claims, "filename", _is_str, required=True)
    filesize = _claim(claims, "filesize", _is_number, required=True)
    filetype = _claim(claims, "filetype", _is_str, required=False)
    expires = _claim(claims, "expires", _is_number, required=False)
    sub = _claim(claims, "sub", _is_str, required=False)
    assert isinstance(exp, int | float) and isinstance(filesize, int | float)

    if exp < now - settings.clock_skew:
        raise Gone("token expired")
    segments = attempt.path.split("/")
    if not segments[0] or segments[0] != slot:
        raise BadRequest("URL does not match the token's slot", Reason.SIGNATURE)
    if len(segments) != 2 or not segments[1] or segments[1] != filename:
        raise BadRequest("URL does not match the token's filename", Reason.SIGNATURE)
    if filesize != attempt.content_length:
        raise TooLarge("size does not match the token")

    content_type = filetype if isinstance(filetype, str) and filetype else None
    return Grant(
        path=attempt.path,
        size=attempt.content_length,
        content_type=content_type or _stored_type(attempt),
        scheme="jwt",
        expires=float(expires) if isinstance(expires, int | float) else None,
        uploader=sub if isinstance(sub, str) else None,
    )
