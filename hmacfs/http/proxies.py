"""Who the client is behind `trusted_proxies` (X-Forwarded-For, X-Forwarded-Proto)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: An IPv6 zone (scope id) worth believing: an interface name or number, nothing else.
_ZONE = re.compile(r"[0-9A-Za-z_.-]{1,64}")
#: A port after an address ("1.2.3.4:5678", "[2001:db8::1]:1234").
_PORT = re.compile(r"[0-9]{1,5}")


def parse_hop(hop: str) -> IPAddress | None:
    """The address of one X-Forwarded-For hop, or None when it is not an address.

    Accepted: a bare IPv4 or IPv6 address, either in brackets (``[2001:db8::1]``), and
    either with a port (``1.2.3.4:5678``, ``[2001:db8::1]:1234``), as proxies send them.
    Anything else (``unknown``, an obfuscated name, a host name, garbage) is None.
    """
    host = hop
    if hop.startswith("["):
        host, bracket, rest = hop[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
    elif hop.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has two colons or more)
        host, _, port = hop.partition(":")
        if not _PORT.fullmatch(port):
            return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    zone = ip.scope_id if isinstance(ip, ipaddress.IPv6Address) else None
    if zone is not None and not _ZONE.fullmatch(zone):
        return None
    return ip


class TrustedProxies:
    """The peers whose forwarding headers are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)

    def _trusted_ip(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks)

    def _trusted(self, address: str) -> bool:
        ip = parse_hop(address)
        return ip is not None and self._trusted_ip(ip)

    def secure(self, tls: bool, peer: str | None, proto: Sequence[bytes]) -> bool:
        """Whether the client used TLS: to us, or to a trusted proxy (X-Forwarded-Proto)."""
        if tls:
            return True
        if not self.networks or peer is None or not self._trusted(peer):
            return False
        # The first value is what the client used with the outermost proxy.
        first = proto[0].split(b",")[0].strip().lower() if proto else b""
        return first == b"https"

    def client_address(self, peer: str | None, forwarded: Sequence[bytes]) -> str:
        """The client's address: the peer's, or the one a trusted proxy forwarded.

        X-Forwarded-For is read from the nearest hop outwards, and only while each hop is
        one of our proxies: the first hop that is not is the client, written as a plain
        address (no brackets, no port). A hop that is not an address at all (see
        `parse_hop`) ends the trust there: whoever wrote it, it says nothing reliable about
        the client, and neither do the hops beyond it. The client is then the last address
        we could trust, the proxy that passed that hop on: the nearest trusted hop, or the
        peer itself. So the result is always the peer's address (or "unix") or an address
        that `ipaddress` accepted, never text the client chose.
        """
        address = peer if peer is not None else "unix"
        if not self.networks or not self._trusted(address):
            return address
        hops = [h.strip() for v in forwarded for h in v.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            ip = parse_hop(hop)
            if ip is None:
                return address
            if not self._trusted_ip(ip):
                return str(ip)
            address = str(ip)
        return address
