"""`listen` entries (`[server] listen`, `[metrics] listen`): what each one means.

Pure: no Twisted, no sockets. `parse_listen` turns one entry into a `Listener` and is the only
place that knows the forms an entry may take; everything that binds, adopts or describes a
listener reads the `Listener`, never the text again. Imported by both `hmacfs.core.settings`
(which parses `listen` once per settings object) and `hmacfs.core.config` (which validates it).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Final

from hmacfs.core.listener import Listener
from hmacfs.core.units import show

#: The examples every message about a malformed entry ends with.
LISTEN_EXAMPLES: Final = (
    '(examples: "127.0.0.1:5050", "0.0.0.0:443", "[::1]:5050", "[::]:443", '
    '"unix:/run/hmac-file-server/http.sock")'
)

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_PATH: Final = 107

# Twisted endpoint types someone might write instead of an address ("tcp:80" would otherwise
# read as host "tcp", port 80).
_ENDPOINT_TYPES: Final = frozenset({"tcp", "tcp6", "ssl", "tls", "systemd", "unix"})

_HOSTNAME_RE: Final = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?",
    re.ASCII | re.IGNORECASE,
)

_SOCKET_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,255}")


def parse_listen(entry: str) -> Listener:
    """Understand one `listen` entry.

    Forms: "host:port" or "http://host:port" (plain HTTP), "https://host:port" (TLS),
    "[v6]:port" likewise, "unix:/path" (plain HTTP on a Unix socket, for a reverse proxy),
    "systemd:NAME" and "https+systemd:NAME" (a socket handed over by systemd socket
    activation, by its FileDescriptorName or its position, 0 being the first). A host name
    ("localhost:5050") is bound over IPv4.

    Raises ValueError, naming the entry, for anything else: no host (":5050"; use "0.0.0.0"
    or "[::]" for every interface), an IPv6 address without brackets, a port outside
    0-65535, a path after the port, a relative or too long socket path, a bad systemd socket
    name, and a Twisted endpoint description ("tcp:80") written where an address belongs.
    """
    if entry.startswith("https+systemd:") or entry.startswith("systemd:"):
        name = entry.partition("systemd:")[2]
        if not _SOCKET_NAME_RE.fullmatch(name):
            raise ValueError(
                f"{show(entry)}: name the socket by its FileDescriptorName or its position "
                '(examples: "systemd:http", "systemd:0", "https+systemd:https")'
            )
        return Listener(text=entry, tls=entry.startswith("https+"), activated=name)
    tls = False
    address = entry
    if entry.startswith("https://"):
        tls, address = True, entry[len("https://") :]
    elif entry.startswith("http://"):
        address = entry[len("http://") :]
    if address.startswith("unix:"):
        return Listener(text=entry, tls=tls, unix_path=_unix_path(address))
    if address.endswith("/"):
        raise ValueError(f"{show(entry)}: no path after the port")
    host, port = _host_port(address)
    return Listener(text=entry, tls=tls, host=host, port=port)


def _unix_path(address: str) -> str:
    """The socket path of "unix:/path"; raises ValueError naming `address` if it is not one
    a Unix socket can be bound to."""
    path = address[len("unix:") :]
    if not path.startswith("/"):
        raise ValueError(f"{show(address)}: the socket path must be absolute")
    if path.endswith("/"):
        raise ValueError(f"{show(address)}: the socket path names a directory, not a socket")
    if "\x00" in path:
        raise ValueError(f"{show(address)}: the socket path contains a NUL character")
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        raise ValueError(f"{show(address)}: the socket path is not valid text") from None
    if len(encoded) > _MAX_UNIX_PATH:
        raise ValueError(f"{show(address)}: the socket path is longer than {_MAX_UNIX_PATH} bytes")
    return path


def _host_port(address: str) -> tuple[str, int]:
    """The host (IPv6 without brackets) and port of "host:port" or "[v6]:port"; raises
    ValueError naming `address` otherwise."""
    if address.partition(":")[0].lower() in _ENDPOINT_TYPES:
        raise ValueError(
            f"{show(address)}: write an address, not a Twisted endpoint {LISTEN_EXAMPLES}"
        )
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]:")
        if not bracket:
            raise ValueError(f"{show(address)} is not a listen address {LISTEN_EXAMPLES}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{show(address)}: {show(host)} is not an IPv6 address") from None
        return host, _port(address, port)
    host, colon, port = address.rpartition(":")
    if not colon:
        raise ValueError(f"{show(address)} is not a listen address {LISTEN_EXAMPLES}")
    if not host:
        raise ValueError(
            f'{show(address)} has no host: give one ("0.0.0.0:{port}" or "[::]:{port}" '
            "for every interface)"
        )
    if ":" in host:
        raise ValueError(f'{show(address)}: write an IPv6 address in brackets, like "[::1]:5050"')
    if not valid_host(host):
        raise ValueError(f"{show(address)} is not a listen address {LISTEN_EXAMPLES}")
    return host, _port(address, port)


def _port(address: str, port: str) -> int:
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{show(address)}: {show(port)} is not a port number (0-65535)")
    return int(port)


def valid_host(host: str) -> bool:
    """Whether `host` is an IPv4 address or a host name (a dotted all-digit name that is not
    an IPv4 address is neither)."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return _HOSTNAME_RE.fullmatch(host) is not None and not host.replace(".", "").isdigit()
    return True
