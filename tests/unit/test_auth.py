"""Tests for hmacfs.core.auth: every signing scheme, against vectors computed independently.

Expected MACs are built here with `hmac`/`hashlib`/`json`/`base64` directly from the formulas
in docs/SIGNING.md, never through the module's own message builders.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from hmacfs.core.auth import (
    Grant,
    PutAttempt,
    Signed,
    compute_mac,
    header_message,
    jwt_encode,
    sign,
    v1_message,
    v2_message,
    v3_message,
    verify,
    x_hmac_message,
)
from hmacfs.core.refusals import Reason, Refusal
from hmacfs.core.settings import ALGORITHMS, HmacSettings

SECRET = b"mysecret"
OLD_SECRET = b"the secret of last year"
NOW = 1_700_000_000.0
SCHEMES = ("v", "v2", "token", "v3", "jwt", "basic", "cookie", "x-hmac")
OCTET = "application/octet-stream"

# prosody-filer's published test vector
FILER_PATH = "thomas/abc/catmetal.jpg"
FILER_SIZE = 23026
FILER_V = "7b8879e2d1c733b423a70cde30cecc3a3c64a03f790d1b5bcbb2a6aca52b477e"
FILER_V2 = "7318cd44d4c40731e3b2ff869f553ab2326eae631868e7b8054db20d4aee1c06"

PROSODY_PATH = "4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/très cool.jpg"
EJABBERD_PATH = (
    hashlib.sha1(b"juliet@example.org").hexdigest()
    + "/aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA7b/tr_s_cool.jpg"
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def hexmac(message: str | bytes, secret: bytes = SECRET, digest: str = "sha256") -> str:
    data = message.encode("utf-8") if isinstance(message, str) else message
    return hmac.new(secret, data, digest).hexdigest()


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(
    claims: object,
    secret: bytes = SECRET,
    header: object = None,
    digest: str = "sha256",
) -> str:
    """A JWT built the way Prosody's util.jwt builds one."""
    head = b64u(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    body = b64u(json.dumps(claims).encode())
    sig = b64u(hmac.new(secret, f"{head}.{body}".encode(), digest).digest())
    return f"{head}.{body}.{sig}"


def prosody_claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": "juliet@example.org",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "slot": "4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67",
        "expires": int(NOW) + 7 * 86400,
        "filename": "très cool.jpg",
        "filesize": 1234,
        "filetype": "image/jpeg",
    }
    claims.update(overrides)
    return claims


def put(
    path: str = FILER_PATH,
    size: int = FILER_SIZE,
    query: Mapping[str, str | list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    method: str = "PUT",
) -> PutAttempt:
    q = {k: (v if isinstance(v, list) else [v]) for k, v in (query or {}).items()}
    return PutAttempt(method, path, q, {k.lower(): v for k, v in (headers or {}).items()}, size)


def cfg(**kwargs: Any) -> HmacSettings:
    kwargs.setdefault("secrets", (SECRET,))
    return HmacSettings(**kwargs)


def refused(attempt: PutAttempt, settings: HmacSettings | None = None,
            now: float = NOW) -> Refusal:
    with pytest.raises(Refusal) as info:
        verify(attempt, settings or cfg(), now)
    return info.value


def from_signed(signed: Signed, path: str, size: int, content_type: str) -> PutAttempt:
    headers = dict(signed.headers)
    if content_type:
        headers["Content-Type"] = content_type
    return put(path, size, dict(signed.query), headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------------------------
# published and independent vectors
# --------------------------------------------------------------------------------------------


def test_published_vector_builders() -> None:
    assert compute_mac(SECRET, v1_message(FILER_PATH, FILER_SIZE)) == FILER_V
    assert compute_mac(SECRET, v2_message(FILER_PATH, FILER_SIZE, "image/jpeg")) == FILER_V2
    assert hexmac(f"{FILER_PATH} {FILER_SIZE}") == FILER_V
    assert hexmac(f"{FILER_PATH}\0{FILER_SIZE}\0image/jpeg") == FILER_V2


def test_published_vector_v() -> None:
    grant = verify(put(query={"v": FILER_V}), cfg(), NOW)
    # (no Content-Type: the type catmetal.jpg implies)
    assert grant == Grant(FILER_PATH, FILER_SIZE, "image/jpeg", "v", None, None)


@pytest.mark.parametrize("param", ["v2", "token"])
def test_published_vector_v2_and_token(param: str) -> None:
    attempt = put(query={param: FILER_V2}, headers={"Content-Type": "image/jpeg"})
    grant = verify(attempt, cfg(), NOW)
    assert (grant.scheme, grant.content_type, grant.size) == (param, "image/jpeg", FILER_SIZE)


def test_published_vector_v2_needs_the_signed_type() -> None:
    attempt = put(query={"v2": FILER_V2}, headers={"Content-Type": "image/png"})
    assert refused(attempt).status == 403


def test_message_builders_match_the_formulas() -> None:
    assert v1_message("a/b c", 5) == b"a/b c 5"
    assert v2_message("a/é", 5, "") == "a/é\x005\x00".encode()
    assert v3_message("PUT", 1700000300, "a/b") == b"PUT\n1700000300\n/a/b"
    assert x_hmac_message("PUT", "a/b", 7, 1700000000) == b"PUT\n/a/b\n7\n1700000000"
    assert header_message("a/b", 7, "text/plain", None) == b"a/b\x007\x00text/plain"
    assert header_message("a/b", 7, "", "99") == b"a/b\x007\x00\x0099"


def test_compute_mac_other_algorithms_and_unknown() -> None:
    assert compute_mac(SECRET, b"x", "sha512") == hexmac(b"x", digest="sha512")
    with pytest.raises(ValueError, match="unsupported"):
        compute_mac(SECRET, b"x", "md5")


@given(
    secret=st.binary(max_size=300),
    message=st.binary(max_size=300),
    algorithm=st.sampled_from(ALGORITHMS),
)
def test_compute_mac_is_rfc_2104_for_any_key_length(
    secret: bytes, message: bytes, algorithm: str
) -> None:
    # Keys shorter than, as long as and longer than the hash's block (64 or 128 bytes),
    # each asked for twice (the second from the states kept for the secret).
    expected = hmac.new(secret, message, algorithm).hexdigest()
    assert compute_mac(secret, message, algorithm) == expected
    assert compute_mac(secret, message, algorithm) == expected


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 127, 128, 129, 1000])
def test_compute_mac_at_the_block_boundaries(length: int) -> None:
    secret = bytes(range(256)) * 4
    for algorithm in ALGORITHMS:
        key = secret[:length]
        assert compute_mac(key, b"m", algorithm) == hmac.new(key, b"m", algorithm).hexdigest()


@pytest.mark.parametrize("param", ["v", "v2", "token"])
def test_non_ascii_path(param: str) -> None:
    size = 52_000
    if param == "v":
        mac = hexmac(f"{PROSODY_PATH} {size}")
    else:
        mac = hexmac(f"{PROSODY_PATH}\0{size}\0image/jpeg")
    grant = verify(put(PROSODY_PATH, size, {param: mac}, {"Content-Type": "image/jpeg"}), cfg(),
                   NOW)
    assert grant.path == PROSODY_PATH
    assert grant.content_type == "image/jpeg"


def test_ejabberd_three_segment_path() -> None:
    mac = hexmac(f"{EJABBERD_PATH} 999")
    grant = verify(put(EJABBERD_PATH, 999, {"v": mac}, {"Content-Type": "image/jpeg"}), cfg(),
                   NOW)
    assert (grant.scheme, grant.path, grant.content_type) == ("v", EJABBERD_PATH, "image/jpeg")


def test_uppercase_hex_accepted() -> None:
    assert verify(put(query={"v": FILER_V.upper()}), cfg(), NOW).scheme == "v"
    attempt = put(query={"token": FILER_V2.upper()}, headers={"Content-Type": "image/jpeg"})
    assert verify(attempt, cfg(), NOW).scheme == "token"


@pytest.mark.parametrize("bad", ["", "zz", FILER_V[:-1], FILER_V + "0", f" {FILER_V}x",
                                 "é" * 64, "g" * 64, "0x" + FILER_V[2:],
                                 # the right digits with whitespace between pairs (which
                                 # bytes.fromhex would skip), at the right length
                                 FILER_V[:30] + " " + FILER_V[32:] + "0",
                                 FILER_V[:2] + "\t" + FILER_V[3:],
                                 "٣" * 64])
def test_malformed_mac_is_a_mismatch(bad: str) -> None:
    error = refused(put(query={"v": bad}))
    assert (error.status, error.text) == (403, "signature mismatch")
    assert error.reason is Reason.SIGNATURE


# --------------------------------------------------------------------------------------------
# content types (v2 / token)
# --------------------------------------------------------------------------------------------


def v2mac(content_type: str, path: str = FILER_PATH, size: int = FILER_SIZE) -> str:
    return hexmac(f"{path}\0{size}\0{content_type}")


@pytest.mark.parametrize(
    ("header", "signed_type", "stored"),
    [
        (None, OCTET, OCTET),  # what Prosody signs when the slot request had no type
        (None, "", ""),
        ("", "", ""),
        ("", OCTET, OCTET),
        ("image/jpeg", "image/jpeg", "image/jpeg"),
        ("  image/jpeg ", "image/jpeg", "image/jpeg"),
        (OCTET, OCTET, OCTET),
    ],
)
def test_v2_content_type_candidates(header: str | None, signed_type: str, stored: str) -> None:
    headers = {} if header is None else {"Content-Type": header}
    for param in ("v2", "token"):
        grant = verify(put(query={param: v2mac(signed_type)}, headers=headers), cfg(), NOW)
        assert grant.content_type == stored


@pytest.mark.parametrize(
    ("header", "signed_type"),
    [("image/jpeg", OCTET), ("image/jpeg", ""), (None, "image/png"), ("", "image/jpeg"),
     ("image/png", "image/jpeg")],
)
def test_v2_content_type_must_match(header: str | None, signed_type: str) -> None:
    headers = {} if header is None else {"Content-Type": header}
    assert refused(put(query={"v2": v2mac(signed_type)}, headers=headers)).status == 403


@pytest.mark.parametrize(
    ("path", "signed_type"),
    [
        (FILER_PATH, "image/jpeg"),  # Prosody's published vector, the PUT without its type
        ("a/voice message.m4a", "audio/mp4"),
        ("a/voice message.m4a", "audio/x-m4a"),  # Android's name for it
        ("a/VIDEO.MP4", "video/mp4"),
        ("a/report.pdf", "application/pdf"),
        ("a/notes.docx",
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ],
)
def test_v2_without_content_type_verifies_against_the_type_the_name_implies(
    path: str, signed_type: str
) -> None:
    # Kaidan (QXmpp before 1.13) and Movim name the type in the slot request and leave it out
    # of the PUT; the type that verified is the one stored.
    for param in ("v2", "token"):
        attempt = put(path=path, size=100, query={param: v2mac(signed_type, path, 100)})
        assert verify(attempt, cfg(), NOW).content_type == signed_type
    # Only when the header is absent: a PUT that says another type is held to it.
    attempt = put(path=path, size=100, query={"v2": v2mac(signed_type, path, 100)},
                  headers={"Content-Type": "text/plain"})
    assert refused(attempt).status == 403


def test_a_name_without_a_known_extension_implies_no_type() -> None:
    for path in ("a/README", "a/.profile", "a/archive.unknownext"):
        attempt = put(path=path, size=5, query={"v2": v2mac("text/plain", path, 5)})
        assert refused(attempt).status == 403


@pytest.mark.parametrize(
    ("header", "stored"),
    # (FILER_PATH ends in .jpg: a PUT that names no type gets the one its name implies)
    [(None, "image/jpeg"), ("", "image/jpeg"), ("text/plain", "text/plain")],
)
def test_v_content_type_from_header(header: str | None, stored: str) -> None:
    headers = {} if header is None else {"Content-Type": header}
    assert verify(put(query={"v": FILER_V}, headers=headers), cfg(), NOW).content_type == stored


# --------------------------------------------------------------------------------------------
# scheme choice, precedence, disabled schemes
# --------------------------------------------------------------------------------------------


def test_nothing_at_all() -> None:
    error = refused(put())
    assert (error.status, error.text, error.headers) == (403, "missing signature", ())
    assert error.reason is Reason.SIGNATURE


def test_unrelated_cookie_is_no_signature() -> None:
    assert refused(put(headers={"Cookie": "session=abc; lang=en"})).text == "missing signature"


def test_other_authorization_type_is_401_bearer() -> None:
    error = refused(put(headers={"Authorization": "Digest username=x"}))
    assert error.status == 401
    assert ("WWW-Authenticate", "Bearer") in error.headers


def test_other_authorization_type_with_cookie_uses_cookie() -> None:
    mac = hexmac(f"{FILER_PATH}\0{FILER_SIZE}\0{OCTET}")
    attempt = put(headers={"Authorization": "Digest x", "Cookie": f"auth={mac}"})
    assert verify(attempt, cfg(), NOW).scheme == "cookie"


def test_v2_wins_over_valid_v() -> None:
    attempt = put(query={"v": FILER_V, "v2": "0" * 64}, headers={"Content-Type": "image/jpeg"})
    assert refused(attempt).text == "signature mismatch"


def test_valid_v2_with_bad_v() -> None:
    attempt = put(query={"v": "0" * 64, "v2": FILER_V2}, headers={"Content-Type": "image/jpeg"})
    assert verify(attempt, cfg(), NOW).scheme == "v2"


def test_token_wins_over_v_and_v3_over_v2() -> None:
    attempt = put(query={"v": FILER_V, "token": "1" * 64})
    assert refused(attempt).status == 403
    attempt = put(query={"v2": FILER_V2, "v3": "1" * 64, "expires": str(int(NOW) + 60)},
                  headers={"Content-Type": "image/jpeg"})
    assert refused(attempt).text == "signature mismatch"


@pytest.mark.parametrize("name", ["v", "v2", "v3", "token", "expires"])
def test_a_signature_parameter_given_twice_is_a_bad_request(name: str) -> None:
    query: dict[str, str | list[str]] = {name: [FILER_V, FILER_V]}
    if name == "expires":
        query["v3"] = "1" * 64
    error = refused(put(query=query))
    assert (error.status, error.text) == (400, f"query parameter {name!r} given more than once")
    alone = refused(put(query={name: [FILER_V, FILER_V]}))
    assert (alone.status, alone.text) == (400, f"query parameter {name!r} given more than once")


def test_of_several_repeated_parameters_the_highest_scheme_is_named() -> None:
    error = refused(put(query={"v": ["a", "b"], "token": ["c", "d"], "v3": ["e", "f"]}))
    assert error.text == "query parameter 'v3' given more than once"
    error = refused(put(query={"expires": ["1", "2"], "v": ["a", "b"]}))
    assert error.text == "query parameter 'v' given more than once"


def test_expires_alone_is_no_signature_and_other_parameters_are_ignored() -> None:
    assert refused(put(query={"expires": str(int(NOW) + 60)})).text == "missing signature"
    attempt = put(query={"v": FILER_V, "lang": ["en", "de"], "x": ""})
    assert verify(attempt, cfg(), NOW).scheme == "v"


def test_query_wins_over_headers() -> None:
    path = "slot/name.jpg"
    token = make_jwt(prosody_claims(slot="slot", filename="name.jpg", filesize=5))
    attempt = put(path, 5, {"v": "0" * 64}, bearer(token))
    assert refused(attempt).status == 403


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_disabled(scheme: str) -> None:
    path, size = "slot/file.bin", 10
    signed = sign(scheme, path, size, "", SECRET, now=NOW)
    attempt = from_signed(signed, path, size, "")
    assert verify(attempt, cfg(), NOW).scheme == scheme
    flag = {"v": "v1_support", "x-hmac": "x_hmac_support"}.get(scheme, f"{scheme}_support")
    error = refused(attempt, cfg(**{flag: False}))
    assert error.status == 403
    assert scheme in error.text
    assert "disabled" in error.text


@pytest.mark.parametrize("param", ["v", "v2", "token", "v3", "expires"])
def test_duplicate_params(param: str) -> None:
    query: dict[str, str | list[str]] = {"v": FILER_V, param: [FILER_V, FILER_V]}
    error = refused(put(query=query))
    assert (error.status, error.reason) == (400, Reason.BAD_REQUEST)


def test_negative_content_length() -> None:
    error = refused(put(size=-1, query={"v": FILER_V}))
    assert (error.status, error.reason) == (400, Reason.BAD_REQUEST)


def test_unencodable_path_is_400() -> None:
    assert refused(put(path="a/\ud800", query={"v": FILER_V})).status == 400


# --------------------------------------------------------------------------------------------
# secret rotation and algorithms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_secret_rotation(scheme: str) -> None:
    path, size, ctype = "slot/file.png", 77, "image/png"
    attempt = from_signed(sign(scheme, path, size, ctype, OLD_SECRET, now=NOW), path, size, ctype)
    assert verify(attempt, cfg(secrets=(SECRET, OLD_SECRET)), NOW).scheme == scheme
    assert refused(attempt, cfg(secrets=(SECRET,))).status in (401, 403)
    assert refused(attempt, cfg(secrets=())).status in (401, 403)


def test_algorithm_setting_applies_to_hmac_schemes() -> None:
    mac512 = hexmac(f"{FILER_PATH} {FILER_SIZE}", digest="sha512")
    assert verify(put(query={"v": mac512}), cfg(algorithm="sha512"), NOW).scheme == "v"
    assert refused(put(query={"v": FILER_V}), cfg(algorithm="sha512")).status == 403
    assert refused(put(query={"v": mac512})).status == 403


def test_jwt_ignores_algorithm_setting() -> None:
    token = make_jwt(prosody_claims())
    attempt = put(PROSODY_PATH, 1234, headers=bearer(token))
    assert verify(attempt, cfg(algorithm="sha512"), NOW).scheme == "jwt"


# --------------------------------------------------------------------------------------------
# v3
# --------------------------------------------------------------------------------------------


def v3_attempt(expires: int | str, path: str = FILER_PATH, size: int = FILER_SIZE) -> PutAttempt:
    mac = hexmac(f"PUT\n{expires}\n/{path}")
    return put(path, size, {"v3": mac, "expires": str(expires)})


def test_v3_valid() -> None:
    grant = verify(v3_attempt(int(NOW) + 300), cfg(), NOW)
    assert (grant.scheme, grant.content_type) == ("v3", "image/jpeg")


def test_v3_expiry_boundary() -> None:
    expires = int(NOW)
    settings = cfg(clock_skew=30.0)
    assert verify(v3_attempt(expires), settings, expires + 30.0).scheme == "v3"
    error = refused(v3_attempt(expires), settings, expires + 30.001)
    assert (error.status, error.text) == (403, "expired")
    assert error.reason is Reason.EXPIRED
    assert refused(v3_attempt(expires), cfg(clock_skew=0.0), expires + 0.5).text == "expired"


@pytest.mark.parametrize("expires", [None, "", "abc", "1.5", "-5", "1e9", " 17"])
def test_v3_bad_expires(expires: str | None) -> None:
    query: dict[str, str | list[str]] = {"v3": "0" * 64}
    if expires is not None:
        query["expires"] = expires
    assert refused(put(query=query)).status == 403


def test_v3_binds_method_and_path_but_not_size() -> None:
    expires = int(NOW) + 300
    attempt = v3_attempt(expires)
    assert verify(replace(attempt, content_length=1), cfg(), NOW).size == 1  # documented
    assert refused(replace(attempt, method="POST")).status == 403
    assert refused(replace(attempt, path=FILER_PATH + "x")).status == 403
    moved = put(query={"v3": hexmac(f"PUT\n{expires}\n/{FILER_PATH}"),
                       "expires": str(expires + 1)})
    assert refused(moved).status == 403


def test_v3_expired_forgery_says_mismatch() -> None:
    attempt = put(query={"v3": "0" * 64, "expires": "1"})
    assert refused(attempt).text == "signature mismatch"


# --------------------------------------------------------------------------------------------
# X-HMAC-Signature
# --------------------------------------------------------------------------------------------


def xhmac_attempt(timestamp: int | str, prefix: str = "sha256", digest: str = "sha256",
                  size: int = FILER_SIZE) -> PutAttempt:
    mac = hexmac(f"PUT\n/{FILER_PATH}\n{size}\n{timestamp}", digest=digest)
    return put(size=size, headers={"X-HMAC-Signature": f"{prefix}={mac}",
                                   "X-HMAC-Timestamp": str(timestamp)})


def test_x_hmac_valid() -> None:
    grant = verify(xhmac_attempt(int(NOW)), cfg(), NOW)
    assert (grant.scheme, grant.content_type) == ("x-hmac", "image/jpeg")


def test_x_hmac_window() -> None:
    settings = cfg(x_hmac_window=300.0)
    ts = int(NOW)
    assert verify(xhmac_attempt(ts), settings, ts + 300.0).scheme == "x-hmac"
    assert verify(xhmac_attempt(ts), settings, ts - 300.0).scheme == "x-hmac"
    assert refused(xhmac_attempt(ts), settings, ts + 300.5).status == 403
    assert refused(xhmac_attempt(ts), settings, ts - 300.5).status == 403


@pytest.mark.parametrize("timestamp", ["", "soon", "1.5", "-1"])
def test_x_hmac_bad_timestamp(timestamp: str) -> None:
    assert refused(xhmac_attempt(timestamp)).status == 403


def test_x_hmac_missing_timestamp() -> None:
    attempt = put(headers={"X-HMAC-Signature": "sha256=" + "0" * 64})
    assert refused(attempt).status == 403


def test_x_hmac_algorithm_prefix() -> None:
    ts = int(NOW)
    assert refused(xhmac_attempt(ts, prefix="sha512")).text == "signature mismatch"
    assert refused(xhmac_attempt(ts, prefix="")).text == "signature mismatch"
    assert verify(xhmac_attempt(ts, prefix="SHA256"), cfg(), NOW).scheme == "x-hmac"
    attempt = xhmac_attempt(ts, prefix="sha512", digest="sha512")
    assert verify(attempt, cfg(algorithm="sha512"), NOW).scheme == "x-hmac"


def test_x_hmac_binds_size() -> None:
    attempt = xhmac_attempt(int(NOW))
    assert refused(replace(attempt, content_length=FILER_SIZE + 1)).status == 403


# --------------------------------------------------------------------------------------------
# Authorization: Basic and Cookie: auth=
# --------------------------------------------------------------------------------------------


def header_mac(content_type: str = OCTET, expires: str | None = None) -> str:
    message = f"{FILER_PATH}\0{FILER_SIZE}\0{content_type}"
    if expires is not None:
        message += f"\0{expires}"
    return hexmac(message)


def basic(user_and_password: str) -> str:
    return "Basic " + base64.b64encode(user_and_password.encode()).decode()


def test_basic_with_user() -> None:
    grant = verify(put(headers={"Authorization": basic(f"juliet@example.org:{header_mac()}")}),
                   cfg(), NOW)
    assert (grant.scheme, grant.content_type) == ("basic", OCTET)


def test_basic_without_colon_is_whole_mac() -> None:
    attempt = put(headers={"Authorization": basic(header_mac().upper())})
    assert verify(attempt, cfg(), NOW).scheme == "basic"


def test_basic_lowercase_scheme_name() -> None:
    attempt = put(headers={"Authorization": basic(f"u:{header_mac()}").replace("Basic", "basic")})
    assert verify(attempt, cfg(), NOW).scheme == "basic"


@pytest.mark.parametrize("value", ["Basic", "Basic !!!!", "Basic " + "A" * 5,
                                   basic("u:" + "0" * 64), basic("u:")])
def test_basic_bad(value: str) -> None:
    error = refused(put(headers={"Authorization": value}))
    assert (error.status, error.text) == (403, "signature mismatch")
    assert error.reason is Reason.SIGNATURE


@pytest.mark.parametrize(
    "cookie",
    [
        "auth={mac}",
        "session=1; auth={mac}",
        'auth="{mac}"',
        "a=b;auth= {mac} ; c=d",
        "theme=dark;  auth={mac}",
    ],
)
def test_cookie_syntax(cookie: str) -> None:
    attempt = put(headers={"Cookie": cookie.format(mac=header_mac())})
    grant = verify(attempt, cfg(), NOW)
    assert (grant.scheme, grant.content_type) == ("cookie", OCTET)


def test_cookie_name_is_exact() -> None:
    attempt = put(headers={"Cookie": f"xauth={header_mac()}; Auth={header_mac()}"})
    assert refused(attempt).text == "missing signature"


def test_cookie_bad_mac() -> None:
    assert refused(put(headers={"Cookie": "auth=" + "0" * 64})).text == "signature mismatch"


@pytest.mark.parametrize("header", [None, "", "image/jpeg"])
def test_slot_header_content_types(header: str | None) -> None:
    headers = {} if header is None else {"Content-Type": header}
    signed = OCTET if header is None else header
    headers["Cookie"] = f"auth={header_mac(signed)}"
    assert verify(put(headers=headers), cfg(), NOW).content_type == signed


def test_expires_decimal() -> None:
    expires = str(int(NOW) + 60)
    attempt = put(headers={"Cookie": f"auth={header_mac(expires=expires)}", "Expires": expires})
    assert verify(attempt, cfg(), NOW).scheme == "cookie"
    # the Expires text is part of the message: dropping or changing it breaks the MAC
    assert refused(replace(attempt, headers={"cookie": f"auth={header_mac(expires=expires)}"})
                   ).status == 403
    assert refused(put(headers={"Cookie": f"auth={header_mac(expires=expires)}",
                                "Expires": str(int(NOW) + 61)})).status == 403


def test_expires_http_date() -> None:
    expires = email.utils.formatdate(NOW + 60, usegmt=True)
    headers = {"Authorization": basic(f"u:{header_mac(expires=expires)}"), "Expires": expires}
    assert verify(put(headers=headers), cfg(), NOW).scheme == "basic"
    error = refused(put(headers=headers), cfg(clock_skew=30.0), NOW + 60 + 31)
    assert (error.status, error.text) == (403, "expired")
    assert error.reason is Reason.EXPIRED
    assert verify(put(headers=headers), cfg(clock_skew=30.0), NOW + 60 + 30).scheme == "basic"


def test_expires_http_date_without_zone_is_utc() -> None:
    expires = "Tue, 14 Nov 2023 22:14:20 -0000"  # NOW + 60
    headers = {"Cookie": f"auth={header_mac(expires=expires)}", "Expires": expires}
    assert verify(put(headers=headers), cfg(clock_skew=0.0), NOW + 60).scheme == "cookie"
    assert refused(put(headers=headers), cfg(clock_skew=0.0), NOW + 61).text == "expired"


def test_expires_decimal_expired() -> None:
    expires = str(int(NOW) - 31)
    attempt = put(headers={"Cookie": f"auth={header_mac(expires=expires)}", "Expires": expires})
    assert refused(attempt, cfg(clock_skew=30.0)).text == "expired"


@pytest.mark.parametrize("expires", ["tomorrow", "", "1.5", "Mon, 99 Foo 2023 00:00:00 GMT"])
def test_expires_unparsable(expires: str) -> None:
    attempt = put(headers={"Cookie": f"auth={header_mac(expires=expires)}", "Expires": expires})
    assert refused(attempt).status == 400


# --------------------------------------------------------------------------------------------
# JWT (Prosody 0.12 mod_http_file_share, external mode)
# --------------------------------------------------------------------------------------------


def jwt_put(token: str, size: int = 1234, path: str = PROSODY_PATH,
            headers: Mapping[str, str] | None = None) -> PutAttempt:
    return put(path, size, None, {**bearer(token), **(headers or {})})


def assert_invalid_token(error: Refusal) -> None:
    assert error.status == 401
    assert any(name == "WWW-Authenticate" and value.startswith("Bearer")
               for name, value in error.headers)


def test_jwt_valid() -> None:
    grant = verify(jwt_put(make_jwt(prosody_claims())), cfg(), NOW)
    assert grant == Grant(PROSODY_PATH, 1234, "image/jpeg", "jwt", NOW + 7 * 86400,
                          "juliet@example.org")


def test_jwt_with_padding_and_minimal_claims() -> None:
    claims = {"exp": NOW + 1, "slot": "s", "filename": "f", "filesize": 3}
    head = base64.urlsafe_b64encode(b'{"alg":"HS256"}').decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
    sig = base64.urlsafe_b64encode(
        hmac.new(SECRET, f"{head}.{body}".encode(), "sha256").digest()).decode()
    assert "=" in head + body + sig
    grant = verify(jwt_put(f"{head}.{body}.{sig}", 3, "s/f",
                           {"Content-Type": "text/plain"}), cfg(), NOW)
    assert (grant.content_type, grant.expires, grant.uploader) == ("text/plain", None, None)


@pytest.mark.parametrize(("filetype", "header", "stored"),
                         [("", None, "image/jpeg"), ("", "image/png", "image/png"),
                          (None, "text/plain", "text/plain"), (OCTET, "image/png", OCTET)])
def test_jwt_content_type(filetype: str | None, header: str | None, stored: str) -> None:
    claims = prosody_claims(filetype=filetype)
    if filetype is None:
        del claims["filetype"]
    headers = {} if header is None else {"Content-Type": header}
    assert verify(jwt_put(make_jwt(claims), headers=headers), cfg(), NOW).content_type == stored


@pytest.mark.parametrize("header", [{"alg": "none", "typ": "JWT"}, {"alg": "HS512"},
                                    {"typ": "JWT"}, {"alg": "hs256"},
                                    {"alg": "HS256", "crit": ["exp"]}])
def test_jwt_bad_algorithm(header: dict[str, object]) -> None:
    digest = "sha512" if header.get("alg") == "HS512" else "sha256"
    token = make_jwt(prosody_claims(), header=header, digest=digest)
    assert_invalid_token(refused(jwt_put(token)))


def test_jwt_alg_none_unsigned() -> None:
    head = b64u(b'{"alg":"none"}')
    body = b64u(json.dumps(prosody_claims()).encode())
    assert_invalid_token(refused(jwt_put(f"{head}.{body}.")))
    assert_invalid_token(refused(jwt_put(f"{head}.{body}")))


def test_jwt_tampered_payload() -> None:
    token = make_jwt(prosody_claims())
    head, _, sig = token.split(".")
    forged = b64u(json.dumps(prosody_claims(filesize=99999)).encode())
    assert_invalid_token(refused(jwt_put(f"{head}.{forged}.{sig}", 99999)))


def test_jwt_wrong_secret() -> None:
    assert_invalid_token(refused(jwt_put(make_jwt(prosody_claims(), secret=b"other"))))


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.",
                                   b64u(b"[1]") + "." + b64u(b"{}") + ".AAAA",
                                   b64u(b"not json") + ".e30.AAAA", "A.e30.AAAA"])
def test_jwt_malformed(token: str) -> None:
    assert_invalid_token(refused(jwt_put(token)))


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"not json", b"",
                                     b'{"exp": 1, "exp": 2}', b'{"exp": NaN}'])
def test_jwt_payload_not_an_object(payload: bytes) -> None:
    head = b64u(b'{"alg":"HS256","typ":"JWT"}')
    body = b64u(payload)
    sig = b64u(hmac.new(SECRET, f"{head}.{body}".encode(), "sha256").digest())
    assert_invalid_token(refused(jwt_put(f"{head}.{body}.{sig}")))


@pytest.mark.parametrize(
    "overrides",
    [{"exp": "1700000300"}, {"exp": True}, {"exp": None}, {"filesize": "1234"},
     {"filesize": [1234]}, {"slot": 5}, {"filename": None}, {"filetype": 7},
     {"sub": 42}, {"expires": "never"}, {"expires": 10**400}, {"exp": 1e400}],
)
def test_jwt_claims_of_wrong_type(overrides: dict[str, object]) -> None:
    assert_invalid_token(refused(jwt_put(make_jwt(prosody_claims(**overrides)))))


@pytest.mark.parametrize("missing", ["exp", "slot", "filename", "filesize"])
def test_jwt_required_claims(missing: str) -> None:
    claims = prosody_claims()
    del claims[missing]
    assert_invalid_token(refused(jwt_put(make_jwt(claims))))


def test_jwt_expired() -> None:
    token = make_jwt(prosody_claims(exp=int(NOW) - 30))
    settings = cfg(clock_skew=30.0)
    assert verify(jwt_put(token), settings, NOW).scheme == "jwt"
    error = refused(jwt_put(token), settings, NOW + 0.5)
    assert (error.status, error.text) == (410, "token expired")
    assert error.reason is Reason.EXPIRED


def test_jwt_slot_mismatch() -> None:
    token = make_jwt(prosody_claims(slot="another-slot"))
    error = refused(jwt_put(token))
    # A URL outside the token is the token's refusal, counted with the signatures.
    assert (error.status, error.reason) == (400, Reason.SIGNATURE)


def test_jwt_filename_mismatch() -> None:
    token = make_jwt(prosody_claims())
    slot = "4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67"
    assert refused(jwt_put(token, path=f"{slot}/evil.html")).status == 400
    assert refused(jwt_put(token, path=f"{slot}/très cool.jpg/x")).status == 400
    assert refused(jwt_put(token, path=slot)).status == 400
    assert refused(jwt_put(make_jwt(prosody_claims(filename="")), path=f"{slot}/")).status == 400


def test_jwt_size_mismatch() -> None:
    error = refused(jwt_put(make_jwt(prosody_claims()), size=1235))
    assert error.status == 413


def test_jwt_float_size_is_compared_numerically() -> None:
    assert verify(jwt_put(make_jwt(prosody_claims(filesize=1234.0))), cfg(), NOW).size == 1234


def test_jwt_empty_bearer() -> None:
    assert_invalid_token(refused(put(headers={"Authorization": "Bearer"})))
    assert_invalid_token(refused(put(headers={"Authorization": "Bearer   "})))


def test_jwt_encode_is_prosody_compatible() -> None:
    claims = prosody_claims()
    token = jwt_encode(SECRET, claims)
    head, body, sig = token.split(".")
    assert base64.urlsafe_b64decode(head + "==") == b'{"alg":"HS256","typ":"JWT"}'
    assert json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == claims
    expected = b64u(hmac.new(SECRET, f"{head}.{body}".encode(), "sha256").digest())
    assert sig == expected
    assert "=" not in token


# --------------------------------------------------------------------------------------------
# reasons never leak
# --------------------------------------------------------------------------------------------


def test_reasons_never_contain_credentials() -> None:
    token = make_jwt(prosody_claims(), secret=b"other")
    mac = "ab" * 32
    attempts = [
        put(query={"v": mac}),
        put(query={"v2": mac}),
        put(query={"v3": mac, "expires": "12"}),
        put(query={"v3": mac}),
        put(headers={"Cookie": f"auth={mac}"}),
        put(headers={"Authorization": basic(f"u:{mac}")}),
        put(headers={"X-HMAC-Signature": f"sha256={mac}", "X-HMAC-Timestamp": "1"}),
        put(headers={"Authorization": f"Token {mac}"}),
        jwt_put(token),
        jwt_put(make_jwt(prosody_claims()), size=1),
    ]
    for attempt in attempts:
        error = refused(attempt)
        for secret_text in (mac, token, token.split(".")[2], SECRET.decode()):
            assert secret_text not in error.text
            assert secret_text not in str(error)
            assert all(secret_text not in value for _, value in error.headers)


# --------------------------------------------------------------------------------------------
# sign()
# --------------------------------------------------------------------------------------------


def test_sign_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unknown"):
        sign("v4", "a/b", 1, "", SECRET, now=NOW)


@pytest.mark.parametrize("path", ["onlyone", "a/b/c", "/b", "a/"])
def test_sign_jwt_needs_slot_and_filename(path: str) -> None:
    with pytest.raises(ValueError, match="slot/filename"):
        sign("jwt", path, 1, "", SECRET, now=NOW)


def test_sign_basic_user_with_colon() -> None:
    with pytest.raises(ValueError, match=":"):
        sign("basic", "a/b", 1, "", SECRET, now=NOW, uploader="a:b")


def test_sign_jwt_claims() -> None:
    signed = sign("jwt", "slot/f.jpg", 10, "image/jpeg", SECRET, now=NOW + 0.7, lifetime=600,
                  uploader="romeo@example.net", file_expiry=NOW + 86400)
    assert signed.query == {}
    token = signed.headers["Authorization"].removeprefix("Bearer ")
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert claims == {"sub": "romeo@example.net", "iat": int(NOW), "exp": int(NOW) + 600,
                      "slot": "slot", "filename": "f.jpg", "filesize": 10,
                      "filetype": "image/jpeg", "expires": int(NOW) + 86400}


def test_sign_query_schemes_match_independent_macs() -> None:
    path, size, ctype = PROSODY_PATH, 5, "image/png"
    assert sign("v", path, size, ctype, SECRET, now=NOW).query == {
        "v": hexmac(f"{path} {size}")}
    assert sign("token", path, size, ctype, SECRET, now=NOW).query == {
        "token": hexmac(f"{path}\0{size}\0{ctype}")}
    expires = int(NOW) + 300
    assert sign("v3", path, size, ctype, SECRET, now=NOW).query == {
        "v3": hexmac(f"PUT\n{expires}\n/{path}"), "expires": str(expires)}
    assert sign("x-hmac", path, size, ctype, SECRET, now=NOW).headers == {
        "X-HMAC-Signature": "sha256=" + hexmac(f"PUT\n/{path}\n{size}\n{int(NOW)}"),
        "X-HMAC-Timestamp": str(int(NOW))}
    assert sign("cookie", path, size, ctype, SECRET, now=NOW).headers == {
        "Cookie": "auth=" + hexmac(f"{path}\0{size}\0{ctype}\0{expires}"),
        "Expires": str(expires)}


# --------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------

segment = st.text(
    st.characters(codec="utf-8", exclude_characters="/"), min_size=1,
    max_size=24,
)
paths = st.tuples(segment, segment).map("/".join)
sizes = st.integers(min_value=0, max_value=2**40)
content_types = st.one_of(
    st.just(""),
    st.from_regex(r"[a-z]{1,12}/[a-z0-9.+-]{1,20}(; charset=[a-z0-9-]{1,10})?", fullmatch=True),
)
nows = st.floats(min_value=1e6, max_value=4e9, allow_nan=False)
algorithms = st.sampled_from(ALGORITHMS)
schemes = st.sampled_from(SCHEMES)
PROPERTY = hsettings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def flip_hex(mac: str, index: int, step: int) -> str:
    i = index % len(mac)
    digit = "0123456789abcdef"[(int(mac[i], 16) + step) % 16]
    return mac[:i] + digit + mac[i + 1:]


def tamper(scheme: str, signed: Signed, index: int, step: int) -> Signed:
    """Change one digit of the MAC (one character of a JWT signature)."""
    query, headers = dict(signed.query), dict(signed.headers)
    if scheme in ("v", "v2", "token", "v3"):
        query[scheme] = flip_hex(query[scheme], index, step)
    elif scheme == "x-hmac":
        prefix, _, mac = headers["X-HMAC-Signature"].partition("=")
        headers["X-HMAC-Signature"] = f"{prefix}={flip_hex(mac, index, step)}"
    elif scheme == "cookie":
        headers["Cookie"] = "auth=" + flip_hex(headers["Cookie"].removeprefix("auth="), index,
                                               step)
    elif scheme == "basic":
        user, _, mac = base64.b64decode(headers["Authorization"][6:]).decode().partition(":")
        credentials = f"{user}:{flip_hex(mac, index, step)}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    else:
        head, body, sig = headers["Authorization"].removeprefix("Bearer ").split(".")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        i = index % len(sig)
        new = alphabet[(alphabet.index(sig[i]) + step) % 64]
        headers["Authorization"] = f"Bearer {head}.{body}.{sig[:i]}{new}{sig[i + 1:]}"
    return Signed(query, headers)


@PROPERTY
@given(scheme=schemes, path=paths, size=sizes, ctype=content_types, now=nows,
       algorithm=algorithms, file_expiry=st.none() | nows)
def test_property_sign_then_verify(*, scheme: str, path: str, size: int, ctype: str,
                                   now: float, algorithm: str, file_expiry: float | None
                                   ) -> None:
    signed = sign(scheme, path, size, ctype, SECRET, algorithm=algorithm, now=now,
                  file_expiry=file_expiry)
    grant = verify(from_signed(signed, path, size, ctype), cfg(algorithm=algorithm), now)
    assert (grant.path, grant.size, grant.scheme) == (path, size, scheme)
    if scheme in ("v2", "token", "basic", "cookie"):
        assert grant.content_type == ctype  # the type that verified, even ""
    else:
        assert grant.content_type == (ctype or OCTET)
    if scheme == "jwt":
        assert grant.uploader == "user@example.org"
        assert grant.expires == file_expiry
    if scheme in ("v2", "token", "basic", "cookie") and not ctype:
        # an empty signed type also verifies with an empty Content-Type header
        attempt = from_signed(signed, path, size, "")
        headers = {**attempt.headers, "content-type": ""}
        assert verify(replace(attempt, headers=headers), cfg(algorithm=algorithm), now).scheme \
            == scheme


@PROPERTY
@given(scheme=schemes, path=paths, size=sizes, ctype=content_types, now=nows,
       index=st.integers(min_value=0), step=st.integers(min_value=1, max_value=15))
def test_property_flipped_mac_refused(*, scheme: str, path: str, size: int, ctype: str,
                                      now: float, index: int, step: int) -> None:
    signed = tamper(scheme, sign(scheme, path, size, ctype, SECRET, now=now), index, step)
    error = refused(from_signed(signed, path, size, ctype), cfg(), now)
    assert error.status in (401, 403)


@PROPERTY
@given(scheme=schemes.filter(lambda s: s != "v3"), path=paths,
       size=st.integers(min_value=1, max_value=2**40), ctype=content_types, now=nows,
       delta=st.sampled_from([-1, 1]))
def test_property_size_change_refused(*, scheme: str, path: str, size: int, ctype: str,
                                      now: float, delta: int) -> None:
    signed = sign(scheme, path, size, ctype, SECRET, now=now)
    error = refused(from_signed(signed, path, size + delta, ctype), cfg(), now)
    assert error.status in (403, 413)


@PROPERTY
@given(scheme=schemes, path=paths, other=paths, size=sizes, ctype=content_types, now=nows)
def test_property_path_change_refused(*, scheme: str, path: str, other: str, size: int,
                                      ctype: str, now: float) -> None:
    if other == path:
        other = path + "x"
    signed = sign(scheme, path, size, ctype, SECRET, now=now)
    error = refused(from_signed(signed, other, size, ctype), cfg(), now)
    assert error.status in (400, 403)
