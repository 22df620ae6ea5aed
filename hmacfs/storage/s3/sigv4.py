"""AWS Signature Version 4 for S3 requests, with the standard library only.

Written from AWS's published description of the algorithm (the IAM user guide's "Create a
signed AWS API request", and the S3 API reference's "Authenticating Requests (AWS Signature
Version 4)"). A request is signed in four steps:

1. the canonical request: the method, the canonical URI, the canonical query string, the
   canonical headers, the signed header names and the payload's hash, one per line
   (`canonical_request`);
2. the string to sign: the algorithm, the time, the credential scope
   (``<date>/<region>/<service>/aws4_request``) and the SHA-256 of step 1 (`string_to_sign`);
3. the signing key: the secret key chained through HMAC-SHA256 with the date, the region,
   the service and ``aws4_request`` (`signing_key`);
4. the signature: the HMAC-SHA256 of step 2 under the key of step 3, in hexadecimal.

`sign_headers` does all four for the ``Authorization`` header, `presign_query` for a
presigned URL (query-string authentication).

S3 differs from the other services in the path: an object key may hold ``//``, ``.`` or
``..`` segments and is signed as it is named, so S3 paths are neither normalised nor encoded
twice. It also wants the payload's hash sent in ``x-amz-content-sha256``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from hmacfs.core.credentials import Credentials

#: The signing algorithm's name, first in the string to sign and the Authorization header.
ALGORITHM = "AWS4-HMAC-SHA256"
#: The hex SHA-256 of an empty payload. (Written out: hashlib and hmac, which load OpenSSL's
#: libcrypto, are imported only when something is signed, like the rest of this backend.)
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#: The payload "hash" of a request whose body is not signed (S3 only).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: The longest life of a presigned URL S3 accepts: seven days, in seconds.
MAX_EXPIRES = 7 * 24 * 3600

# RFC 3986's unreserved characters, the only ones SigV4 leaves unencoded.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
# What each byte becomes, with and without "/" kept.
_ESCAPED = tuple(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256))
_ESCAPED_KEEP_SLASH = tuple("/" if b == ord("/") else e for b, e in enumerate(_ESCAPED))

# The characters of an HTTP token (RFC 9110), which header names and methods are made of.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Headers that `sign_headers` writes itself and so will not take from the caller.
_SIGNER_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
# Query parameters that `presign_query` writes itself (compared without case).
_PRESIGN_PARAMETERS = frozenset(
    {
        "x-amz-algorithm",
        "x-amz-credential",
        "x-amz-date",
        "x-amz-expires",
        "x-amz-signedheaders",
        "x-amz-security-token",
        "x-amz-signature",
    }
)


def uri_encode(text: str, *, keep_slash: bool) -> str:
    """Percent-encode `text` the way SigV4 wants: RFC 3986's unreserved characters
    (A-Z a-z 0-9 - _ . ~) are kept, every other byte of its UTF-8 form becomes ``%XX`` in
    upper case, and so does ``/`` unless `keep_slash` (paths keep theirs; query names and
    values do not). Raises UnicodeEncodeError (a ValueError) for a lone surrogate."""
    table = _ESCAPED_KEEP_SLASH if keep_slash else _ESCAPED
    return "".join([table[b] for b in text.encode("utf-8")])


def canonical_request(  # noqa: PLR0917 (the parts of a request, in the order they are signed)
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    payload_hash: str,
    *,
    s3: bool = True,
) -> str:
    """Build the canonical request (step 1) of a request.

    `path` is the decoded path ("/bucket/my key.txt"). With `s3` (the default) it is encoded
    once and otherwise left as it is, as S3 wants; without, it is normalised as RFC 3986
    says (``.`` and ``..`` segments resolved, repeated slashes collapsed) and then encoded
    twice, as the other services want: their canonical URI is the encoding of the path as it
    goes on the wire, which is itself encoded once.

    `query` holds decoded (name, value) pairs; a name without a value has the value "".
    `headers` may name its headers in any case, and must hold every one of `signed_headers`;
    their values are trimmed and inner runs of spaces and tabs made one space.
    """
    if not method or not set(method) <= _TCHAR:
        raise ValueError(f"not an HTTP method: {method!r}")
    if path and not path.startswith("/"):
        raise ValueError(f"a request path begins with '/': {path!r}")
    if s3:
        uri = uri_encode(path, keep_slash=True)
    else:
        once = uri_encode(_remove_dot_segments(path), keep_slash=True)
        uri = uri_encode(once, keep_slash=True)
    values = _header_values(headers)
    names = sorted({name.lower() for name in signed_headers})
    missing = [name for name in names if name not in values]
    if missing:
        raise ValueError(f"signed headers not in the request: {', '.join(missing)}")
    return "\n".join(
        (
            method,
            uri or "/",
            _canonical_query(query),
            "".join(f"{name}:{values[name]}\n" for name in names),
            ";".join(names),
            payload_hash,
        )
    )


def string_to_sign(when: datetime, scope: str, canonical: str) -> str:
    """Build the string to sign (step 2) of a canonical request made at `when` (an aware
    datetime), for the credential scope `scope` (``<date>/<region>/<service>/aws4_request``)."""
    import hashlib

    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return "\n".join((ALGORITHM, _amz_date(when), scope, digest))


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """Derive the signing key (step 3) for one day (`date` as YYYYMMDD), region and service."""
    if len(date) != 8 or not date.isascii() or not date.isdigit():
        raise ValueError(f"a signing date is YYYYMMDD: {date!r}")
    import hashlib
    import hmac

    key = ("AWS4" + secret_key).encode("utf-8")
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def sign_headers(  # noqa: PLR0917 (a request's parts as for canonical_request, then who and when)
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    when: datetime,
    *,
    payload_hash: str = UNSIGNED_PAYLOAD,
    service: str = "s3",
    s3: bool = True,
) -> dict[str, str]:
    """Sign a request with the Authorization header, and return the headers to add to it:
    ``x-amz-date``, ``x-amz-content-sha256`` (for the service "s3" only: the payload hash),
    ``x-amz-security-token`` (with a session token) and ``Authorization``.

    Every header in `headers` is signed, with the added x-amz-* ones; it must hold ``host``,
    and may not hold the headers added here. `path`, `query` and `s3` are as for
    `canonical_request`; `when` is the (aware) time of signing.
    """
    stamp = _amz_date(when)
    values = _header_values(headers)
    if "host" not in values:
        raise ValueError("a signed request has a host header")
    ours = _SIGNER_HEADERS | ({"x-amz-content-sha256"} if service == "s3" else set())
    taken = sorted(ours & values.keys())
    if taken:
        raise ValueError(f"headers the signer sets were given: {', '.join(taken)}")
    _check_value("access key", credentials.access_key)
    added = {"x-amz-date": stamp}
    if service == "s3":
        _check_value("payload hash", payload_hash)
        added["x-amz-content-sha256"] = payload_hash
    if credentials.session_token:
        _check_value("session token", credentials.session_token)
        added["x-amz-security-token"] = credentials.session_token
    everything = values | added
    names = sorted(everything)
    canonical = canonical_request(method, path, query, everything, names, payload_hash, s3=s3)
    scope = _scope(stamp[:8], region, service)
    signature = _signature(credentials.secret_key, when, region, service, canonical)
    authorization = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return {**added, "Authorization": authorization}


def presign_query(  # noqa: PLR0917 (as sign_headers, with how long the URL lasts)
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    host: str,
    credentials: Credentials,
    region: str,
    when: datetime,
    expires: int,
    *,
    service: str = "s3",
) -> list[tuple[str, str]]:
    """Sign a request in its query string (a presigned URL) valid for `expires` seconds from
    `when` (1 to 604800, seven days), as S3's query-string authentication defines: only
    ``host`` is signed, and the payload is UNSIGNED-PAYLOAD.

    Returns the whole query: the caller's `query` pairs, then X-Amz-Algorithm,
    X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders, X-Amz-Security-Token
    (with a session token, which is signed too) and, last, X-Amz-Signature. The values are
    decoded; encode each name and value with ``uri_encode(..., keep_slash=False)``. The path
    is encoded as S3 wants (see `canonical_request`).
    """
    if isinstance(expires, bool) or not 1 <= expires <= MAX_EXPIRES:
        raise ValueError(f"a presigned URL expires in 1 to {MAX_EXPIRES} seconds: {expires!r}")
    taken = sorted({name for name, _ in query if name.lower() in _PRESIGN_PARAMETERS})
    if taken:
        raise ValueError(f"query parameters the signer sets were given: {', '.join(taken)}")
    stamp = _amz_date(when)
    scope = _scope(stamp[:8], region, service)
    pairs = [
        *query,
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key}/{scope}"),
        ("X-Amz-Date", stamp),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if credentials.session_token:
        pairs.append(("X-Amz-Security-Token", credentials.session_token))
    canonical = canonical_request(
        method, path, pairs, {"host": host}, ["host"], UNSIGNED_PAYLOAD, s3=True
    )
    signature = _signature(credentials.secret_key, when, region, service, canonical)
    pairs.append(("X-Amz-Signature", signature))
    return pairs


def _signature(secret_key: str, when: datetime, region: str, service: str, canonical: str) -> str:
    """Steps 2 to 4: the hex signature of a canonical request."""
    import hashlib
    import hmac

    date = _amz_date(when)[:8]
    key = signing_key(secret_key, date, region, service)
    message = string_to_sign(when, _scope(date, region, service), canonical).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _scope(date: str, region: str, service: str) -> str:
    """The credential scope of a signature."""
    return f"{date}/{region}/{service}/aws4_request"


def _amz_date(when: datetime) -> str:
    """`when` as SigV4 writes times (``YYYYMMDDTHHMMSSZ``, in UTC). Raises ValueError for a
    naive datetime, which could be in any zone."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("the time of signing must be timezone-aware (UTC)")
    t = when.astimezone(UTC)
    return f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}Z"


def _canonical_query(query: Sequence[tuple[str, str]]) -> str:
    """The canonical query string: each name and value encoded, sorted by encoded name and
    then encoded value, joined as ``name=value`` with ``&``."""
    pairs = sorted(
        (uri_encode(name, keep_slash=False), uri_encode(value, keep_slash=False))
        for name, value in query
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def _header_values(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers by lower-cased name, with their values as they are signed. Raises
    ValueError for a malformed name or value, or a name given twice in different cases."""
    values: dict[str, str] = {}
    for name, value in headers.items():
        if not name or not set(name) <= _TCHAR:
            raise ValueError(f"not a header name: {name!r}")
        _check_value(f"header {name}", value)
        lower = name.lower()
        if lower in values:
            raise ValueError(f"header given twice: {lower}")
        # Trimmed, and each inner run of spaces and tabs made one space.
        values[lower] = " ".join(part for part in value.replace("\t", " ").split(" ") if part)
    return values


def _check_value(what: str, value: str) -> None:
    """Refuse a value that would break out of its header line."""
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{what} holds a line break or NUL")


def _remove_dot_segments(path: str) -> str:
    """Normalise a path as RFC 3986 (section 5.2.4) says, and collapse repeated slashes as
    AWS's services also want: "//a/./b/../c/" becomes "/a/c/"."""
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    # A path naming a directory ("/a/", "/a/b/..", "/a/.") keeps its final slash.
    trailing = "/" if kept and segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing
