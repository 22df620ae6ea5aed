"""The object store over https: Ceph's gateway behind a TLS front (Debian's HAProxy) with a
certificate of a throwaway CA, trusted through `[storage] ca_file`. Uploads (one PUT and
multipart), ranged downloads and a resumable upload go through it byte-exact; without the CA
the start fails in one line."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.certs import TestCA
from tests.helpers import resumable as rufh
from tests.helpers.ceph import CephGateway
from tests.helpers.haproxy import Balancer, start_tls_front
from tests.helpers.server import start_server, stop_server
from tests.helpers.signing import mac_v1
from tests.objectstore.test_s3_backend_e2e import _run_refused, get, keys_env, put

MIB = 1024 * 1024


@pytest.fixture
def front(tmp_path: Path, ceph: CephGateway) -> Iterator[tuple[Balancer, TestCA]]:
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("store", ("127.0.0.1",))
    gateway = urlsplit(ceph.endpoint)
    assert gateway.hostname is not None and gateway.port is not None
    tls = start_tls_front(
        tmp_path / "front", (gateway.hostname, gateway.port), leaf.certificate, leaf.key
    )
    try:
        yield tls, ca
    finally:
        tls.stop()


def tls_toml(ceph: CephGateway, bucket: str, port: int, ca_file: Path | None) -> str:
    lines = [
        "[storage]",
        'backend = "s3"',
        f'endpoint = "https://127.0.0.1:{port}"',
        f"bucket = {json.dumps(bucket)}",
        f"region = {json.dumps(ceph.region)}",
        'part_size = "5M"',
    ]
    if ca_file is not None:
        lines.append(f"ca_file = {json.dumps(str(ca_file))}")
    return "\n".join(lines)


def test_uploads_and_downloads_over_https_with_a_ca_file(
    tmp_path: Path, ceph: CephGateway, bucket: str, front: tuple[Balancer, TestCA]
) -> None:
    tls, ca = front
    (tmp_path / "node").mkdir()
    node = start_server(
        tmp_path / "node", tls_toml(ceph, bucket, tls.port, ca.path), env=keys_env(ceph)
    )
    try:
        small = os.urandom(100_000)
        large = os.urandom(12 * MIB + 3)
        assert put(node, "s/small.bin", small)[0] == 201
        assert put(node, "s/large.bin", large)[0] == 201
        assert put(node, "s/small.bin", small)[0] == 201  # (an identical retry)
        assert put(node, "s/small.bin", os.urandom(100_000))[0] == 409
        store = ceph.client()  # (boto3, straight to the gateway)
        assert store.get_object(Bucket=bucket, Key="s/small.bin")["Body"].read() == small
        assert store.get_object(Bucket=bucket, Key="s/large.bin")["Body"].read() == large
        assert get(node, "s/large.bin")[2] == large
        status, headers, part = get(node, "s/large.bin", {"Range": "bytes=6291456-6291555"})
        assert (status, part) == (206, large[6291456:6291556])
        assert headers["content-range"] == f"bytes 6291456-6291555/{len(large)}"
        # A resumable upload, cut and continued, over the same connection pool.
        rel = f"{uuid.uuid4()}/resumed.bin"
        url = f"http://127.0.0.1:{node.port}/upload/{rel}?v={mac_v1(rel, len(large))}"
        exchange = rufh.create(url, large, 8, cut_after=6 * MIB)
        assert exchange.location is not None
        offset = rufh.head(exchange.location, 8)
        assert offset.headers["upload-offset"] == str(6 * MIB), offset
        done = rufh.patch(exchange.location, 8, 6 * MIB, large[6 * MIB :])
        assert done.status == 201, done
        assert store.get_object(Bucket=bucket, Key=rel)["Body"].read() == large
    finally:
        assert stop_server(node) == 0


def test_an_untrusted_certificate_fails_the_start_in_one_line(
    tmp_path: Path, ceph: CephGateway, bucket: str, front: tuple[Balancer, TestCA]
) -> None:
    tls, _ = front
    code, stderr = _run_refused(tmp_path, tls_toml(ceph, bucket, tls.port, None), keys_env(ceph))
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "[storage]" in lines[0] and "certificate" in lines[0], lines[0]
