"""Fuzz target: X-Forwarded-For hops (`hmacfs.http.proxies`).

Contract: `parse_hop` returns None or an IPv4/IPv6 address (with, for IPv6, at most a zone made
of interface-name characters); `TrustedProxies.client_address` returns the peer's address or
one that `ipaddress` accepts, never other text from the header. Neither raises.

The input is the X-Forwarded-For header's value (as in the seed corpus), read as latin-1
like the web layer does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import sys

import atheris

# Coverage guidance needs the code under test instrumented as it is imported; the corpus
# replay in pytest imports this module without that.
with atheris.instrument_imports(include=["hmacfs"]) if __name__ == "__main__" else (
    contextlib.nullcontext()
):
    from hmacfs.http.proxies import TrustedProxies, parse_hop

PEER = "10.0.0.2"
PROXIES = TrustedProxies(["10.0.0.0/8", "fd00::/8", "127.0.0.1"])
_ZONE = re.compile(r"[0-9A-Za-z_.-]{1,64}")


def check_hop(hop: str) -> None:
    ip = parse_hop(hop)
    if ip is None:
        return
    assert isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address), (hop, ip)
    assert ipaddress.ip_address(str(ip)) == ip, (hop, ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        assert _ZONE.fullmatch(ip.scope_id), (hop, ip)


def check_client(forwarded: bytes) -> None:
    for peer in (PEER, "203.0.113.9", None):
        address = PROXIES.client_address(peer, [forwarded])
        if address in (peer, "unix"):
            continue
        assert str(ipaddress.ip_address(address)) == address, (forwarded, address)


def TestOneInput(data: bytes) -> None:
    text = data.decode("latin-1")
    for hop in text.split(","):
        check_hop(hop.strip())
        check_hop(hop)
    check_client(data)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
