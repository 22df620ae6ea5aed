"""Every use of Twisted's private attributes, in one place.

The HTTP layer decides on a request between its headers and its body, answers small GETs
from the request head, takes a large body's reads past Twisted (splice) and writes answers
straight to idle sockets. Each of those needs a little of Twisted's private state; it is read
or changed only through the functions here, whose shape is the same from Twisted 22.4 to the
newest release. `tests/protocol/test_twisted_canary.py` exercises each of them against the
installed Twisted and fails loudly if that changes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.web import http


def request_line(channel: Any) -> tuple[bytes, bytes]:
    """The method and target of the request whose headers just arrived (Twisted keeps them
    on the channel until the body is complete)."""
    return getattr(channel, "_command", b"-"), getattr(channel, "_path", b"")


def request_version(channel: Any) -> bytes:
    """The HTTP version of the request whose headers just arrived (b"HTTP/1.1")."""
    return getattr(channel, "_version", b"")


def between_requests(channel: Any) -> bool:
    """Whether the channel holds nothing of a request: the next bytes begin a new one."""
    return not (
        channel.requests
        or channel._buffer
        or channel.paused
        or not channel.line_mode
        or channel._handlingRequest
        or channel._dataBuffer
    )


def peer_socket(transport: Any) -> socket.socket | None:
    """The socket under `transport` (`getHandle()`; through a TLS wrapper's own transport),
    if any."""
    for _ in range(3):
        get_handle = getattr(transport, "getHandle", None)
        if get_handle is not None:
            handle = get_handle()
            if isinstance(handle, socket.socket):
                return handle
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def request_disconnected(request: Any) -> bool:
    """Whether the request's connection is gone (nothing may be written to it any more)."""
    return bool(request._disconnected)


def transport_idle(transport: Any, channel: object) -> bool:
    """Whether a plain socket transport may be written to directly: connected, not closing,
    nothing of its own queued, and no producer but `channel` feeding it."""
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.producer in (None, channel)
    )


def take_writes(
    transport: Any,
    write: Callable[[bytes], None],
    write_sequence: Callable[[Iterable[bytes]], None],
) -> Callable[[bytes], None]:
    """Stand in for a transport's `write` and `writeSequence` (instance attributes, as the
    reactor's own methods are looked up on the instance); return its own `write`."""
    queue: Callable[[bytes], None] = transport.write
    transport.write = write
    transport.writeSequence = write_sequence
    return queue


def give_back_writes(transport: Any) -> None:
    """Undo `take_writes`."""
    for name in ("write", "writeSequence"):
        vars(transport).pop(name, None)


def take_reads(transport: Any, do_read: Callable[[], object]) -> None:
    """Have the reactor call `do_read` instead of the transport's own `doRead`."""
    transport.doRead = do_read


def reads_taken(transport: Any) -> Callable[[], object] | None:
    """What `take_reads` installed, if anything."""
    taken: Callable[[], object] | None = vars(transport).get("doRead")
    return taken


def give_back_reads(transport: Any) -> None:
    """Undo `take_reads`."""
    vars(transport).pop("doRead", None)


def body_decoder(channel: Any, request: Any) -> Any | None:
    """The channel's transfer decoder for `request`'s body if it is Twisted's identity
    decoder with the shape relied on here, waiting for more body bytes, with nothing held
    back in the channel; else None."""
    decoder_type = getattr(http, "_IdentityTransferDecoder", None)
    decoder = getattr(channel, "_transferDecoder", None)
    if decoder_type is None or type(decoder) is not decoder_type:
        return None
    left = getattr(decoder, "contentLength", None)
    if type(left) is not int or left <= 0:
        return None
    if (
        getattr(decoder, "dataCallback", None) != getattr(request, "handleContentChunk", 0)
        or getattr(decoder, "finishCallback", None) != getattr(channel, "_finishRequestBody", 0)
        or getattr(channel, "_buffer", None) != b""
        or getattr(channel, "_busyReceiving", None) is not False
        or getattr(channel, "line_mode", None) != 0
        or getattr(channel, "_handlingRequest", None) is not False
        or not channel.requests
        or channel.requests[-1] is not request
    ):
        return None
    return decoder


def body_left(decoder: Any) -> int:
    """How many body bytes the decoder still expects."""
    left: int = decoder.contentLength
    return left


def body_taken(decoder: Any, count: int) -> None:
    """Tell the decoder `count` body bytes were taken past it (it must not count them)."""
    decoder.contentLength -= count


def end_body(decoder: Any) -> None:
    """With nothing left to count, make the decoder finish the body (and the channel
    process the request) as the body's last bytes would have."""
    decoder.dataReceived(b"")


#: TCP states (tcpi_state of TCP_INFO) of a connection whose peer has reset it (TCP_CLOSE) or
#: closed its side (TCP_CLOSE_WAIT).
_PEER_GONE_STATES = frozenset({7, 8})


def peer_gone(transport: Any) -> bool:
    """Whether the peer of a TCP `transport` has already reset or closed the connection,
    though the reactor may not have noticed yet (it is not reading, or has not run since, or
    has not read the bytes that came before the reset). Reads nothing, clears nothing."""
    sock = peer_socket(transport)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except (OSError, AttributeError):
        return False
    return state in _PEER_GONE_STATES


def accept_one_at_a_time(port: Any) -> None:
    """Make a listening port take one connection per readiness event (Twisted accepts up to
    `numberAccepts` at once, and adjusts it as it goes)."""
    read = port.doRead

    def do_read() -> Any:
        port.numberAccepts = 1
        return read()

    port.doRead = do_read
