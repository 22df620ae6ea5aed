"""Who the client is behind `trusted_proxies` (X-Forwarded-For, X-Forwarded-Proto)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The peers whose forwarding headers are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

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
        """The client's address: the peer's, or the one a trusted proxy forwarded."""
        address = peer if peer is not None else "unix"
        if not self.networks or not self._trusted(address):
            return address
        hops = [h.strip() for v in forwarded for h in v.decode("latin-1").split(",")]
        # The nearest hop that is not one of our proxies is the client.
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._trusted(hop):
                return hop
            address = hop
        return address
