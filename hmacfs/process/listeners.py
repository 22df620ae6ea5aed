"""Listening sockets: binding a `Listener`, describing it (without Twisted).

Every listener takes the same path, whether this process stands alone or is a worker:

- `bind` makes a listening socket for a `Listener`: bound here (TCP, IPv6, Unix) or a
  duplicate of one that systemd passed (socket activation), which is also how a worker
  receives the sockets its supervisor bound;
- `hmacfs.process.listening.Listeners` hands those sockets to the reactor
  (`adoptStreamPort`), wrapped in TLS for `https` listeners, and says where it listens
  (`describe_socket`);
- a socket other processes accept on too takes one connection per readiness event
  (`accept_one_at_a_time`, from `hmacfs.http._twisted`, where every use of Twisted's private
  state is canaried).

The supervisor binds with `bind_all` and passes the sockets on; it never accepts on them, and
never loads Twisted, nor the web layer (`hmacfs.http`, twisted.web) that accepting uses.
"""

from __future__ import annotations

import errno
import os
import socket

from hmacfs.core.listener import Listener

TYPE_CHECKING = False  # (the supervisor imports no typing: `hmacfs.process.supervisor`)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from hmacfs.process.systemd import ActivatedSockets

__all__ = [
    "SOCKET_BACKLOG",
    "Bound",
    "activated_listener",
    "bind",
    "bind_all",
    "describe_socket",
    "wants_tls",
]

#: The listen(2) backlog of every socket bound here.
SOCKET_BACKLOG = 1024


def activated_listener(name: str, tls: bool) -> Listener:
    """The listener for the socket systemd (or a supervisor) passed under `name`."""
    return Listener(text=f"{'https+' if tls else ''}systemd:{name}", tls=tls, activated=name)


def wants_tls(listeners: Sequence[Listener]) -> bool:
    """Whether any of `listeners` serves TLS (so that a certificate is needed)."""
    return any(listener.tls for listener in listeners)


def bind(listener: Listener, activated: ActivatedSockets) -> socket.socket:
    """A listening, non-blocking socket for `listener`.

    A socket-activated listener gets a duplicate of the descriptor systemd passed (the
    original stays open). Raises RuntimeError naming the entry when systemd passed no socket
    of that name, OSError naming the entry when the address cannot be bound.
    """
    if listener.activated is not None:
        try:
            fd = activated.find(listener.activated)
        except KeyError:
            raise RuntimeError(
                f"{listener.text}: systemd passed no socket named {listener.activated!r} "
                f"(passed: {', '.join(activated.names) or 'none'})"
            ) from None
        try:
            return socket.socket(fileno=os.dup(fd))
        except OSError as e:
            raise OSError(e.errno, f"{listener.text}: {e.strerror}") from None
    passed = _passed_for(listener, activated)
    if passed is not None:
        # systemd bound this very address (a .socket unit with the configured ListenStream=):
        # binding it again would fail, and the connections systemd queued would wait for ever.
        return socket.socket(fileno=os.dup(passed))
    try:
        sock = _bound(listener)
    except OSError as e:
        message = e.strerror
        if e.errno == errno.EADDRINUSE and activated.fds:
            passed_at = ", ".join(_where(fd) for fd in activated.fds)
            message = (
                f"{e.strerror} (systemd passed sockets on {passed_at}: name one with "
                f'"systemd:NAME", or give the same address as its ListenStream=)'
            )
        raise OSError(e.errno, f"{listener.text}: {message}") from None
    # A reactor accepts without blocking (the flag is shared with every duplicate).
    sock.setblocking(False)
    return sock


def _shown(family: int, address: object) -> str:
    """An address as getsockname() gives it, written as a listen entry."""
    if family == socket.AF_UNIX:
        path = address.decode("utf-8", "replace") if isinstance(address, bytes) else address
        return f"unix:{path}"
    host, port = address[:2]  # type: ignore[index]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def _address_of(listener: Listener) -> str | None:
    """Where `listener` binds, as `_shown`; None for a host name that does not resolve."""
    if listener.unix_path is not None:
        return _shown(socket.AF_UNIX, listener.unix_path)
    assert listener.host is not None and listener.port is not None, "a parsed listener"
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    try:
        host, port = _host(listener.host), listener.port
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None
    return _shown(family, infos[0][4])


def _where(fd: int) -> str:
    """Where the passed socket `fd` listens, as `_shown`."""
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return f"descriptor {fd}"
    try:
        return _shown(probe.family, probe.getsockname())
    except OSError:
        return f"descriptor {fd}"
    finally:
        probe.close()


def _passed_for(listener: Listener, activated: ActivatedSockets) -> int | None:
    """The descriptor systemd passed that listens where `listener` would bind, if any."""
    if not activated.fds or listener.port == 0:
        return None
    wanted = _address_of(listener)
    if wanted is None:
        return None
    for fd in activated.fds:
        if _where(fd) == wanted:
            return fd
    return None


def _host(host: str) -> bytes:
    """`host` as getaddrinfo takes it. (Given a str, it encodes every host with the IDNA codec,
    whose import costs a process that binds to an address about 0.4 MiB.)"""
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")


def _bound(listener: Listener) -> socket.socket:
    if listener.unix_path is not None:
        path = listener.unix_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.exists(path) and not os.path.isfile(path):
                os.unlink(path)  # a stale socket from a previous run
            sock.bind(path)
            sock.listen(SOCKET_BACKLOG)
        except OSError:
            sock.close()
            raise
        return sock
    assert listener.host is not None and listener.port is not None, "a parsed listener"
    # Listener keeps an IPv6 address without its brackets; a host name is bound over IPv4.
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    infos = socket.getaddrinfo(
        _host(listener.host), listener.port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(SOCKET_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def describe_socket(sock: socket.socket, tls: bool) -> str:
    """"127.0.0.1:5050", "https://[::]:443", "unix:/run/x.sock": where `sock` listens."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return f"unix:{name.decode('utf-8', 'replace') if isinstance(name, bytes) else name}"
    host, port = sock.getsockname()[:2]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{'https://' if tls else ''}{address}"


class Bound:
    """A listening socket and the listener it was bound for."""

    __slots__ = ("description", "listener", "sock")

    def __init__(self, listener: Listener, sock: socket.socket, description: str) -> None:
        self.listener = listener
        self.sock = sock
        #: Where it listens (worked out while the socket is open).
        self.description = description


def bind_all(listeners: Sequence[Listener], activated: ActivatedSockets) -> list[Bound]:
    """Bind every one of `listeners`, in order, or none: raises what `bind` raises for the
    first that fails, after closing those already bound."""
    bound: list[Bound] = []
    try:
        for listener in listeners:
            sock = bind(listener, activated)
            bound.append(Bound(listener, sock, describe_socket(sock, listener.tls)))
    except BaseException:
        for done in bound:
            done.sock.close()
        raise
    return bound
