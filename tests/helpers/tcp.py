"""What the kernel shows of this machine's TCP connections (/proc/net/tcp and tcp6): the
queues of both ends of a loopback connection, so that a test can wait until a peer has read
what was sent to it, and the socket inode that tells which process holds an end."""

from __future__ import annotations

from typing import NamedTuple


class TcpEntry(NamedTuple):
    local_port: int
    remote_port: int
    tx_queue: int
    rx_queue: int
    inode: int


def tcp_entries() -> list[TcpEntry]:
    """Every TCP socket of the machine (IPv4 and IPv6)."""
    entries = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, queues = fields[1], fields[2], fields[4]
            tx, _, rx = queues.partition(":")
            entries.append(
                TcpEntry(
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                    int(tx, 16),
                    int(rx, 16),
                    int(fields[9]),
                )
            )
    return entries


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """The (send, receive) queue lengths of the TCP socket from `local_port` to
    `remote_port` (on loopback); None if there is none."""
    for entry in tcp_entries():
        if (entry.local_port, entry.remote_port) == (local_port, remote_port):
            return entry.tx_queue, entry.rx_queue
    return None
