"""Fuzz target: every signing scheme's parser (`hmacfs.core.auth.verify`).

Contract: `verify` returns a Grant for exactly the attempt's path and size, under a scheme
that is switched on, and only if the attempt is signed with one of the secrets (the same
attempt under another secret is refused); otherwise it raises a Refusal with one of the
documented statuses (400, 401 with WWW-Authenticate, 403, 410, 413), whose text never holds
the MAC or token the client sent. Any other exception is a crash.

An input that starts with "PUT " is a request head (request line, headers), read as the web
layer reads it: the seed corpus holds real requests, signed with the target's secret. Other
inputs drive a FuzzedDataProvider; most of them start from a correctly signed attempt (`sign`,
or a JWT with arbitrary claim bytes signed with the known secret) and mutate parts of it, so
that the fuzzer gets past the MAC checks to the expiry, size and claim checks.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import sys
from urllib.parse import parse_qs

import atheris

# Coverage guidance needs the code under test instrumented as it is imported; the corpus
# replay in pytest imports this module without that.
with atheris.instrument_imports(include=["hmacfs"]) if __name__ == "__main__" else (
    contextlib.nullcontext()
):
    from hmacfs.core.auth import Grant, PutAttempt, sign, verify
    from hmacfs.core.paths import decode_path
    from hmacfs.core.refusals import Refusal
    from hmacfs.core.settings import ALGORITHMS, HmacSettings

SECRET = b"fuzzing secret, known to the target"
OTHER_SECRET = b"a secret nobody signed with"
NOW = 1_700_000_000.0
SCHEMES = ("v", "v2", "token", "v3", "jwt", "basic", "cookie", "x-hmac")
SWITCHES = tuple(f.name for f in dataclasses.fields(HmacSettings) if f.name.endswith("_support"))
STATUSES = frozenset({400, 401, 403, 410, 413})
#: Where a mutation lands in a signed attempt.
PARTS = ("path", "size", "method", "query", "header", "content-type", "now")
HEADER_NAMES = (
    "authorization", "cookie", "expires", "content-type", "x-hmac-signature",
    "x-hmac-timestamp",
)
QUERY_NAMES = ("v", "v2", "v3", "token", "expires")


def _text(fdp: atheris.FuzzedDataProvider, most: int = 64) -> str:
    # Header values reach auth as UTF-8 with surrogateescape (see UploadRequest.plain_headers).
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, most)).decode("utf-8", "surrogateescape")


def _settings(fdp: atheris.FuzzedDataProvider) -> HmacSettings:
    switches = {name: fdp.ConsumeProbability() > 0.1 for name in SWITCHES}
    secrets = (OTHER_SECRET, SECRET) if fdp.ConsumeBool() else (SECRET,)
    return HmacSettings(
        secrets=secrets,
        algorithm=fdp.PickValueInList(list(ALGORITHMS)),
        clock_skew=float(fdp.ConsumeIntInRange(0, 120)),
        x_hmac_window=float(fdp.ConsumeIntInRange(1, 600)),
        **switches,
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt(header: bytes, payload: bytes) -> str:
    """A JWT of arbitrary header and payload bytes, correctly signed with SECRET (built here,
    not with `jwt_encode`, so that the payload need not be JSON at all)."""
    signing_input = f"{_b64url(header)}.{_b64url(payload)}"
    mac = hmac.new(SECRET, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(mac)}"


@dataclasses.dataclass
class Draft:
    """A PUT being put together, before it is frozen into a PutAttempt."""

    method: str
    path: str
    size: int
    query: dict[str, list[str]]
    headers: dict[str, str]
    now: float

    def attempt(self) -> PutAttempt:
        return PutAttempt(self.method, self.path, self.query, self.headers, self.size)


def _raw(fdp: atheris.FuzzedDataProvider) -> Draft:
    """An attempt from the fuzzer's bytes alone, query string parsed as the site does."""
    target = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    query = parse_qs(target.decode("utf-8", "replace"), keep_blank_values=True)
    headers = {}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        name = fdp.PickValueInList(list(HEADER_NAMES)) if fdp.ConsumeBool() else _text(fdp, 16)
        headers[name.lower()] = _text(fdp, 256)
    return Draft("PUT", _text(fdp), fdp.ConsumeIntInRange(0, 2**40), query, headers, NOW)


def _request(data: bytes) -> Draft | None:
    """A PUT from a request head, None if it has no path the site would pass on to auth."""
    request_line, *lines = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
    _, _, target = request_line.partition(b" ")
    path, _, query = target.partition(b" ")[0].partition(b"?")
    try:
        rel = decode_path(path, "/upload/")
    except Refusal:
        return None
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        key = name.decode("latin-1").strip().lower()
        headers.setdefault(key, value.strip().decode("utf-8", "surrogateescape"))
    length = headers.get("content-length", "0")
    size = int(length) if length.isascii() and length.isdigit() and len(length) < 19 else 0
    parsed = parse_qs(query.decode("utf-8", "replace"), keep_blank_values=True)
    return Draft("PUT", rel, size, parsed, headers, NOW)


def _signed(fdp: atheris.FuzzedDataProvider, algorithm: str) -> Draft:
    """A correctly signed attempt for one scheme, as a client would send it."""
    scheme = fdp.PickValueInList(list(SCHEMES))
    slot = fdp.ConsumeUnicodeNoSurrogates(12) or "slot"
    name = fdp.ConsumeUnicodeNoSurrogates(24) or "file.jpg"
    path = f"{slot}/{name}" if scheme == "jwt" or fdp.ConsumeBool() else name
    size = fdp.ConsumeIntInRange(0, 2**40)
    content_type = fdp.PickValueInList(["", "image/jpeg", "text/plain; charset=utf-8"])
    signed_at = NOW + fdp.ConsumeIntInRange(-1000, 1000)
    try:
        signed = sign(
            scheme, path, size, content_type, SECRET,
            algorithm=algorithm, now=signed_at,
            lifetime=float(fdp.ConsumeIntInRange(0, 3600)),
            uploader=fdp.ConsumeUnicodeNoSurrogates(16),
            file_expiry=signed_at + 86400 if fdp.ConsumeBool() else None,
        )
    except ValueError:  # documented: a JWT path with a "/" in the name, a ":" in a user
        signed = sign("v2", path, size, content_type, SECRET, algorithm=algorithm, now=NOW)
    headers = {name.lower(): value for name, value in signed.headers.items()}
    if content_type:
        headers["content-type"] = content_type
    query = {name: [value] for name, value in signed.query.items()}
    return Draft("PUT", path, size, query, headers, NOW)


def _claims(fdp: atheris.FuzzedDataProvider) -> Draft:
    """A JWT whose header and payload are the fuzzer's bytes, signed with the known secret."""
    header = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)) if fdp.ConsumeBool() else (
        b'{"alg":"HS256","typ":"JWT"}'
    )
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    path = fdp.ConsumeUnicodeNoSurrogates(32)
    headers = {"authorization": f"Bearer {_jwt(header, payload)}"}
    return Draft("PUT", path, fdp.ConsumeIntInRange(0, 2**40), {}, headers, NOW)


def _mutate(fdp: atheris.FuzzedDataProvider, draft: Draft) -> None:
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        part = fdp.PickValueInList(list(PARTS))
        if part == "path":
            draft.path = _text(fdp)
        elif part == "size":
            draft.size = fdp.ConsumeIntInRange(-1, 2**63)
        elif part == "method":
            draft.method = fdp.PickValueInList(["PUT", "POST", "put", ""])
        elif part == "now":
            draft.now = NOW + fdp.ConsumeFloatInRange(-1e7, 1e7)
        elif part == "query":
            name = fdp.PickValueInList(list(QUERY_NAMES))
            draft.query[name] = [_spliced(fdp, v) for v in draft.query.get(name, [""])]
            if fdp.ConsumeProbability() < 0.1:
                draft.query[name].append(_text(fdp))
        else:
            name = "content-type" if part == "content-type" else (
                fdp.PickValueInList(list(HEADER_NAMES))
            )
            if fdp.ConsumeProbability() < 0.2:
                draft.headers.pop(name, None)
            else:
                draft.headers[name] = _spliced(fdp, draft.headers.get(name, ""))


def _spliced(fdp: atheris.FuzzedDataProvider, value: str) -> str:
    """`value` with a piece cut out and the fuzzer's text put in its place."""
    start = fdp.ConsumeIntInRange(0, len(value))
    end = fdp.ConsumeIntInRange(start, len(value))
    return value[:start] + _text(fdp, 32) + value[end:]


def _secrets_sent(draft: Draft) -> list[str]:
    """The long credential-like values the client sent (none may appear in a refusal)."""
    values = [v for vs in draft.query.values() for v in vs] + list(draft.headers.values())
    return [piece for v in values for piece in v.replace("=", " ").split() if len(piece) >= 24]


def check(draft: Draft, settings: HmacSettings) -> None:
    attempt = draft.attempt()
    try:
        grant = verify(attempt, settings, draft.now)
    except Refusal as e:
        assert e.status in STATUSES, (attempt, e)
        if e.status == 401:
            assert any(name == "WWW-Authenticate" for name, _ in e.headers), (attempt, e)
        assert not any(s in e.text for s in _secrets_sent(draft)), (attempt, e)
        return
    assert isinstance(grant, Grant), grant
    assert grant.path == attempt.path and grant.size == attempt.content_length, (attempt, grant)
    assert settings.enabled(grant.scheme), (attempt, grant)
    assert isinstance(grant.content_type, str), (attempt, grant)
    # Accepted only because of the secret: under another one, the same attempt is refused.
    stranger = dataclasses.replace(settings, secrets=(b"not the secret",))
    try:
        verify(attempt, stranger, draft.now)
    except Refusal:
        pass
    else:
        raise AssertionError(f"accepted without the secret: {attempt}")


def TestOneInput(data: bytes) -> None:
    if data.startswith(b"PUT "):
        request = _request(data)
        if request is not None:
            check(request, HmacSettings(secrets=(SECRET,)))
        return
    fdp = atheris.FuzzedDataProvider(data)
    settings = _settings(fdp)
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        draft = _raw(fdp)
    elif kind == 1:
        draft = _claims(fdp)
    else:
        draft = _signed(fdp, settings.algorithm)
    if kind != 0:
        _mutate(fdp, draft)
    check(draft, settings)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
