"""Three of our server processes, each on its own loopback address, behind Debian's HAProxy
(round robin), over one shared storage: the Ceph bucket, or one local directory.

Uploads and downloads spread over the nodes; a node killed with SIGKILL in the middle of an
upload leaves nothing visible, and the client's retry, which HAProxy hands to another node,
gets its 201; a resumable upload begun on one node is continued on another (on both
storages). Every file is compared byte for byte.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import resumable as rufh
from tests.helpers.ceph import CephGateway
from tests.helpers.haproxy import Balancer, start_haproxy
from tests.helpers.server import Server, start_server, stop_server, wait_for
from tests.helpers.signing import mac_v1
from tests.helpers.tcp import tcp_entries
from tests.objectstore.test_s3_backend_e2e import keys_env, storage_toml

MIB = 1024 * 1024
NODES = 3


@dataclass
class Cluster:
    nodes: list[Server]
    balancer: Balancer
    backend: str

    def answered(self, node: Server, method: str) -> int:
        """How many `method` requests `node` answered (its log lines "METHOD path -> ...")."""
        return sum(1 for line in node.log if f" {method} " in line and " -> " in line)


@pytest.fixture(params=["s3", "shared-directory"])
def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, ceph: CephGateway, bucket: str
) -> Iterator[Cluster]:
    backend = request.param
    shared = tmp_path / "shared"
    nodes: list[Server] = []
    balancer = None
    try:
        for index in range(NODES):
            host = f"127.0.0.{index + 2}"
            directory = tmp_path / f"node{index + 1}"
            directory.mkdir()
            if backend == "s3":
                node = start_server(
                    directory,
                    storage_toml(ceph, bucket),
                    listen=(f"{host}:0",),
                    env=keys_env(ceph),
                )
            else:
                node = start_server(directory, listen=(f"{host}:0",), storage=shared)
            nodes.append(node)
        balancer = start_haproxy(
            tmp_path / "haproxy",
            [address_of(node) for node in nodes],
        )
        yield Cluster(nodes, balancer, backend)
    finally:
        if balancer is not None:
            balancer.stop()
        for node in nodes:
            if node.process.poll() is None:
                stop_server(node)


def address_of(node: Server) -> tuple[str, int]:
    """The host and port the node listens on (it asked for port 0)."""
    host, port = node.addresses[0].removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def own_base(node: Server) -> str:
    """The node's own address (not through HAProxy)."""
    host, port = address_of(node)
    return f"http://{host}:{port}"


def put(base: str, path: str, body: bytes) -> int:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(
            "PUT", f"/upload/{path}?v={mac_v1(path, len(body))}", body=body,
            headers={"Content-Length": str(len(body))},
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def get(base: str, path: str) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", f"/upload/{path}")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_uploads_and_downloads_spread_over_the_nodes(cluster: Cluster) -> None:
    files = {f"{uuid.uuid4()}/f{index}.bin": os.urandom(50_000 + index) for index in range(9)}
    for path, body in files.items():
        assert put(cluster.balancer.base, path, body) == 201
    for path, body in files.items():
        status, data = get(cluster.balancer.base, path)
        assert status == 200
        assert data == body
    for node in cluster.nodes:
        assert cluster.answered(node, "PUT") >= 1, node.log_tail()
        assert cluster.answered(node, "GET") >= 1, node.log_tail()
    # And every node serves what any other stored.
    for node in cluster.nodes:
        for path, body in files.items():
            assert get(own_base(node), path) == (200, body)


def _connections_to(ports: set[int]) -> set[tuple[int, int]]:
    """The open TCP connections to `ports`, as (node port, peer port)."""
    return {
        (entry.local_port, entry.remote_port)
        for entry in tcp_entries()
        if entry.local_port in ports and entry.remote_port != 0 and entry.inode != 0
    }


def test_a_node_killed_mid_upload_and_the_retry_on_another_node(
    cluster: Cluster, ceph: CephGateway, bucket: str
) -> None:
    path = f"{uuid.uuid4()}/big.bin"
    body = os.urandom(40 * MIB)
    host, port = cluster.balancer.base.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"PUT /upload/{path}?v={mac_v1(path, len(body))} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    sock.sendall(body[: 16 * MIB])
    ports = {address_of(node)[1]: node for node in cluster.nodes}

    def receiving() -> Server | None:
        # HAProxy's health checks come and go; the upload's connection stays.
        first = _connections_to(set(ports))
        time.sleep(0.4)
        lasting = first & _connections_to(set(ports))
        found = {port for port, _ in lasting}
        return ports[found.pop()] if len(found) == 1 else None

    victim = wait_for(receiving, 20, "a node to receive the body")
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    with pytest.raises(OSError):
        sock.settimeout(10)
        sock.sendall(body[16 * MIB :])
        sock.recv(1)  # (an answer would be a bug: the node is dead)
        raise OSError("no answer")
    sock.close()
    assert get(cluster.balancer.base, path)[0] == 404  # nothing of it is visible
    wait_for(
        lambda: cluster.balancer.states().get(
            f"n{cluster.nodes.index(victim) + 1}"
        ) not in (None, "UP") or None,
        10,
        "HAProxy to see the node down",
    )
    assert put(cluster.balancer.base, path, body) == 201
    status, data = get(cluster.balancer.base, path)
    assert status == 200
    assert hashlib.sha256(data).digest() == hashlib.sha256(body).digest()
    survivors = [node for node in cluster.nodes if node is not victim]
    assert sum(cluster.answered(node, "PUT") for node in survivors) >= 1


def test_a_resumable_upload_continued_on_another_node(cluster: Cluster) -> None:
    version = 8
    size = 300_000
    body = os.urandom(size)
    rel = f"{uuid.uuid4()}/resumed.bin"
    first, second = cluster.nodes[0], cluster.nodes[1]
    base_of = {node.process.pid: own_base(node) for node in cluster.nodes}
    url = f"{base_of[first.process.pid]}/upload/{rel}?v={mac_v1(rel, size)}"
    exchange = rufh.create(url, body[:120_000], version, complete=False, upload_length=size)
    assert exchange.final is not None and exchange.final.status == 201, exchange
    location = exchange.final.headers["location"]
    # The same resource on the second node (the nodes share the storage, not their memory).
    moved = location.replace(base_of[first.process.pid], base_of[second.process.pid])
    assert moved != location
    offset = rufh.head(moved, version)
    assert offset.headers.get("upload-offset") == "120000", offset
    done = rufh.patch(moved, version, 120_000, body[120_000:])
    assert done.status in (200, 201, 204), done
    assert get(cluster.balancer.base, rel) == (200, body)
