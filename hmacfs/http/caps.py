"""Connection caps: how many connections one process keeps open, in all and per client
address, so that no client (or botnet) can take every descriptor.

A connection over a cap is answered ``503 Service Unavailable`` with ``Retry-After`` at once
and closed. Reverse proxies (`trusted_proxies`) are exempt from the per-address cap: all of
their clients come from their address. The caps are per process: with workers, each has them.
A refusal is logged once per LOG_INTERVAL, with how many there were.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Callable, Iterable

from twisted.logger import Logger

from hmacfs.core.throttle import Throttle

#: At most one log line per this many seconds about refused connections.
LOG_INTERVAL = 60.0
#: What a client over a cap is told to wait before it tries again.
RETRY_AFTER = 5

_log = Logger(namespace="hmacfs.http")


def refusal_bytes(reason: str) -> bytes:
    """The whole answer to a connection over a cap."""
    body = f"too many connections ({reason}); try again later\n".encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %d\r\nContent-Type: text/plain;"
        b" charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (RETRY_AFTER, len(body))
    ) + body


class ConnectionCaps:
    """Counts open connections, in all and per address, against the caps."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.total = 0
        self.per_address: collections.Counter[str] = collections.Counter()
        self._refusals = Throttle(clock, LOG_INTERVAL)

    def admit(
        self, host: str | None, limit: int, per_address: int, exempt: Iterable[str]
    ) -> str | None:
        """Count a new connection from `host`; None if it may stay, else which cap it is
        over (it is then not counted)."""
        if limit and self.total >= limit:
            return self._refuse("in all")
        if (
            host is not None
            and per_address
            and self.per_address[host] >= per_address
            and not _exempt(host, exempt)
        ):
            return self._refuse("from one address")
        self.total += 1
        if host is not None:
            self.per_address[host] += 1
        return None

    def release(self, host: str | None) -> None:
        """A connection `admit` counted has closed."""
        self.total = max(0, self.total - 1)
        if host is not None:
            self.per_address[host] -= 1
            if self.per_address[host] <= 0:
                del self.per_address[host]

    def _refuse(self, reason: str) -> str:
        count = self._refusals.due()
        if count is not None:
            _log.warn(
                "refused {count} connections over the connection caps ({reason})",
                count=count,
                reason=reason,
            )
        return reason


def _exempt(host: str, networks: Iterable[str]) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)
