"""`Listener`: one parsed `listen` entry (`hmacfs.core.listen` parses them).

A module of its own, without dataclasses or typing, because the supervisor binds listeners
too and imports no more than it needs (`hmacfs.process.supervisor`).
"""

from __future__ import annotations


class Listener:
    """One parsed `listen` entry. Exactly one of `activated`, `unix_path` and (`host`,
    `port`) is set. Immutable, compared and hashed by value."""

    __slots__ = ("activated", "host", "port", "text", "tls", "unix_path")

    #: The entry as written in the configuration.
    text: str
    #: Connections are TLS (`https://...`, `https+systemd:...`).
    tls: bool
    #: FileDescriptorName or position of a socket handed over by systemd.
    activated: str | None
    #: Absolute path of a Unix socket to bind.
    unix_path: str | None
    #: Address or host name to bind; an IPv6 address without its brackets.
    host: str | None
    #: TCP port to bind (0: any free port).
    port: int | None

    def __init__(
        self,
        text: str,
        tls: bool,
        *,
        activated: str | None = None,
        unix_path: str | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        set_field = object.__setattr__
        set_field(self, "text", text)
        set_field(self, "tls", tls)
        set_field(self, "activated", activated)
        set_field(self, "unix_path", unix_path)
        set_field(self, "host", host)
        set_field(self, "port", port)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Listener is immutable: cannot set {name}")

    def as_dict(self) -> dict[str, object]:
        """Its fields by name (JSON-able), as `Listener(**fields)` takes them back."""
        return {
            "text": self.text, "tls": self.tls, "activated": self.activated,
            "unix_path": self.unix_path, "host": self.host, "port": self.port,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Listener):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"Listener({fields})"
