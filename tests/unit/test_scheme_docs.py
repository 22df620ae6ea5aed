"""Which switches refuse a v2-signed request, as docs/SIGNING.md, hmac-file-server.toml(5),
etc/config.toml and the key docs of hmacfs.core.settings say.

`token` signs the very message of `v2`, and `cookie` and `basic` sign it too when the request
has no Expires header: the MAC of a v2 URL is accepted in any of the four places, so
`v2_support = false` alone does not refuse it. Switching off all four does.
"""

from __future__ import annotations

import base64
import hmac
import re
from pathlib import Path

import pytest

from hmacfs.core.auth import PutAttempt, verify
from hmacfs.core.config import KEYS
from hmacfs.core.refusals import Refusal
from hmacfs.core.settings import HmacSettings

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"mysecret"
NOW = 1_700_000_000.0
PATH = "thomas/abc/catmetal.jpg"
SIZE = 23026
TYPE = "image/jpeg"
#: The four switches that together refuse every request carrying a v2 MAC.
V2_SWITCHES = ("v2_support", "token_support", "cookie_support", "basic_support")


def v2_mac() -> str:
    """The MAC of a v2 URL (`?v2=`), from the formula, not the module's message builder."""
    return hmac.new(SECRET, f"{PATH}\0{SIZE}\0{TYPE}".encode(), "sha256").hexdigest()


def carried(scheme: str, mac: str, **headers: str) -> PutAttempt:
    """A PUT carrying `mac` the way `scheme` does."""
    query: dict[str, list[str]] = {}
    sent = {"content-type": TYPE, **{k.lower(): v for k, v in headers.items()}}
    if scheme in ("v2", "token"):
        query[scheme] = [mac]
    elif scheme == "cookie":
        sent["cookie"] = f"auth={mac}"
    else:
        credentials = base64.b64encode(f"juliet@example.org:{mac}".encode()).decode("ascii")
        sent["authorization"] = f"Basic {credentials}"
    return PutAttempt("PUT", PATH, query, sent, SIZE)


def settings(*off: str) -> HmacSettings:
    return HmacSettings(secrets=(SECRET,), **dict.fromkeys(off, False))


@pytest.mark.parametrize("scheme", ["token", "cookie", "basic"])
def test_v2_support_off_alone_still_accepts_a_v2_mac(scheme: str) -> None:
    with pytest.raises(Refusal) as refused:
        verify(carried("v2", v2_mac()), settings("v2_support"), NOW)
    assert (refused.value.status, refused.value.text) == (403, "v2 signing is disabled")
    grant = verify(carried(scheme, v2_mac()), settings("v2_support"), NOW)
    assert (grant.scheme, grant.path, grant.size, grant.content_type) == (
        scheme, PATH, SIZE, TYPE
    )


@pytest.mark.parametrize("scheme", ["v2", "token", "cookie", "basic"])
def test_the_four_switches_off_refuse_every_v2_mac(scheme: str) -> None:
    with pytest.raises(Refusal) as refused:
        verify(carried(scheme, v2_mac()), settings(*V2_SWITCHES), NOW)
    assert (refused.value.status, refused.value.text) == (403, f"{scheme} signing is disabled")


@pytest.mark.parametrize("scheme", ["cookie", "basic"])
def test_with_an_expires_header_cookie_and_basic_need_another_mac(scheme: str) -> None:
    attempt = carried(scheme, v2_mac(), Expires=str(int(NOW) + 300))
    with pytest.raises(Refusal) as refused:
        verify(attempt, settings(), NOW)
    assert (refused.value.status, refused.value.text) == (403, "signature mismatch")


def test_the_documentation_says_so() -> None:
    docs = {key.name: key.doc for key in KEYS["hmac"]}
    for name in ("token_support", "cookie_support", "basic_support"):
        assert "v2" in docs[name], name
    assert all(word in docs["v2_support"] for word in ("?token=", "Cookie", "Basic"))
    advice = "switch off v2_support, token_support, cookie_support and basic_support"
    signing = " ".join((ROOT / "docs" / "SIGNING.md").read_text(encoding="utf-8").split())
    assert advice in signing.replace("`", "")
    etc = (ROOT / "etc" / "config.toml").read_text(encoding="utf-8")
    assert advice in " ".join(line.lstrip("# ") for line in etc.splitlines()).replace("  ", " ")
    page = (ROOT / "man" / "hmac-file-server.toml.5").read_text(encoding="utf-8")
    text = " ".join(re.sub(r"^\.BR? ", "", line) for line in page.splitlines())
    assert re.sub(r" ([,.:])", r"\1", text).count(advice) == 2  # the key and SIGNING SCHEMES
