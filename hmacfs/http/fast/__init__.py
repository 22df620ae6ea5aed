"""The fast paths, optional pieces behind one switch (`[server] fast_paths`).

- `quick`: small GETs and HEADs answered from the request head (no Request object);
- `sendfile`: GET bodies sent by the kernel from the file to a plain socket;
- `splice`: large PUT bodies moved by the kernel from a plain socket to the partial file;
- `direct`: answers written straight to an idle plain socket.

With the switch off, every request takes the plain Twisted path, which answers exactly the
same (the protocol tests run both ways).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hmacfs.http.fast.splice import SpliceSupport


@dataclass
class FastPaths:
    """Which fast paths a site uses."""

    enabled: bool = True
    splice: SpliceSupport = field(default_factory=SpliceSupport)

    def __post_init__(self) -> None:
        if not self.enabled:
            self.splice.usable = False
