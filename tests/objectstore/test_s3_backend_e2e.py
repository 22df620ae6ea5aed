"""The server on a real Ceph gateway (`[storage] backend = "s3"`), end to end: uploads stored
as objects with their metadata, never over another one, downloads streamed back with the
local backend's headers, ranges and conditional answers, abandoned uploads aborted.

boto3 is the reference client that looks into the bucket.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers.ceph import CephGateway
from tests.helpers.server import Server, hmacfs, start_server, stop_server, wait_for
from tests.helpers.signing import mac_v1

MIB = 1024 * 1024


def storage_toml(ceph: CephGateway, bucket: str, **extra: object) -> str:
    lines = [
        "[storage]",
        'backend = "s3"',
        f"endpoint = {json.dumps(ceph.endpoint)}",
        f"bucket = {json.dumps(bucket)}",
        f"region = {json.dumps(ceph.region)}",
    ]
    extra = {"part_size": "5M", **extra}
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines)


def keys_env(ceph: CephGateway) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ceph.access_key, "AWS_SECRET_ACCESS_KEY": ceph.secret_key}


def start_on(
    tmp: Path,
    ceph: CephGateway,
    bucket: str,
    server_toml: str = "",
    *,
    quota: dict[str, str] | None = None,
    max_upload_size: str = "2G",
    **extra: object,
) -> Server:
    tables = storage_toml(ceph, bucket, **extra)
    if quota:
        tables += "\n[quota]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in quota.items())
    return start_server(
        tmp,
        tables,
        server_toml,
        env=keys_env(ceph),
        max_upload_size=max_upload_size,
    )


def put(
    server: Server,
    path: str,
    body: bytes,
    content_type: str = "application/octet-stream",
    *,
    mac: str | None = None,
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(
            "PUT",
            f"/upload/{path}?v={mac or mac_v1(path, len(body))}",
            body=body,
            headers={"Content-Type": content_type, "Content-Length": str(len(body))},
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def get(
    server: Server, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, f"/upload/{path}", headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def unfinished(ceph: CephGateway, bucket: str) -> list[Any]:
    return list(ceph.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def keys(ceph: CephGateway, bucket: str) -> list[str]:
    """The bucket's keys, but for the sweep's turn (`.hmacfs/sweep`, there once a node swept:
    see test_nodes_of_one_bucket_sweep_it_one_at_a_time)."""
    listed = ceph.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(k for item in listed if not (k := item["Key"]).endswith(".hmacfs/sweep"))


@pytest.fixture
def server(tmp_path: Path, ceph: CephGateway, bucket: str) -> Iterator[Server]:
    srv = start_on(tmp_path, ceph, bucket, prefix="files/")
    yield srv
    assert stop_server(srv) == 0


def test_small_upload_is_one_object_with_its_metadata(
    server: Server, ceph: CephGateway, bucket: str
) -> None:
    body = os.urandom(100_000)
    assert put(server, "dir/photo.jpg", body, "image/jpeg")[0] == 201
    head = ceph.client().head_object(Bucket=bucket, Key="files/dir/photo.jpg")
    assert head["ContentLength"] == len(body)
    assert head["ETag"].strip('"') == hashlib.md5(body).hexdigest()
    assert head["ContentType"] == "image/jpeg"
    meta = head["Metadata"]
    assert meta["type"] == "image/jpeg"
    assert abs(float(meta["uploaded"]) - time.time()) < 60
    assert keys(ceph, bucket) == ["files/dir/photo.jpg"]  # no claim, no partial left
    status, headers, data = get(server, "dir/photo.jpg")
    assert status == 200
    assert data == body
    assert headers["content-type"] == "image/jpeg"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-length"] == str(len(body))


def test_large_upload_is_a_multipart_object(
    server: Server, ceph: CephGateway, bucket: str
) -> None:
    body = os.urandom(12 * MIB + 12345)
    assert put(server, "big.bin", body)[0] == 201
    head = ceph.client().head_object(Bucket=bucket, Key="files/big.bin")
    assert head["ContentLength"] == len(body)
    assert head["ETag"].strip('"').endswith("-3")  # 5M + 5M + the rest
    assert head["Metadata"]["part-size"] == str(5 * MIB)
    assert unfinished(ceph, bucket) == []
    assert keys(ceph, bucket) == ["files/big.bin"]  # the claim is gone
    status, _, data = get(server, "big.bin")
    assert status == 200
    assert hashlib.sha256(data).digest() == hashlib.sha256(body).digest()


def test_ranges_and_conditionals_as_the_local_backend(server: Server) -> None:
    body = os.urandom(6 * MIB)
    assert put(server, "r/file.bin", body)[0] == 201
    status, headers, data = get(server, "r/file.bin", {"Range": "bytes=100-199"})
    assert (status, data) == (206, body[100:200])
    assert headers["content-range"] == f"bytes 100-199/{len(body)}"
    status, headers, data = get(server, "r/file.bin", {"Range": "bytes=-10, 0-4"})
    assert status == 206
    assert headers["content-type"].startswith("multipart/byteranges")
    assert body[-10:] in data and body[:5] in data
    status, headers, _ = get(server, "r/file.bin", method="HEAD")
    assert status == 200
    etag = headers["etag"]
    assert get(server, "r/file.bin", {"If-None-Match": etag})[0] == 304
    assert get(server, "r/file.bin", {"Range": f"bytes={len(body)}-"})[0] == 416
    assert get(server, "r/missing.bin")[0] == 404


@pytest.mark.parametrize("size", [1000, 7 * MIB], ids=["single", "multipart"])
def test_no_overwrite_identical_retry_201_other_body_409(
    server: Server, ceph: CephGateway, bucket: str, size: int
) -> None:
    body = os.urandom(size)
    assert put(server, "once.bin", body)[0] == 201
    before = ceph.client().head_object(Bucket=bucket, Key="files/once.bin")["ETag"]
    assert put(server, "once.bin", body)[0] == 201  # a retry after a lost answer
    other = os.urandom(size)
    assert put(server, "once.bin", other)[0] == 409
    assert put(server, "once.bin", body + b"x")[0] == 409  # another size: refused at once
    after = ceph.client().head_object(Bucket=bucket, Key="files/once.bin")["ETag"]
    assert after == before
    assert get(server, "once.bin")[2] == body
    assert unfinished(ceph, bucket) == []


def test_bad_signature_refused_before_anything_is_stored(
    server: Server, ceph: CephGateway, bucket: str
) -> None:
    assert put(server, "x.bin", b"abc", mac="00" * 32)[0] == 403
    assert keys(ceph, bucket) == []


@pytest.mark.parametrize("size", [4 * MIB, 20 * MIB], ids=["single", "multipart"])
def test_client_gone_mid_body_leaves_nothing(
    server: Server, ceph: CephGateway, bucket: str, size: int
) -> None:
    path = "cut.bin"
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        f"PUT /upload/{path}?v={mac_v1(path, size)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {size}\r\n\r\n".encode()
    )
    sock.sendall(os.urandom(size * 3 // 4))
    sock.close()
    # The multipart upload is aborted as the client goes (not left to the sweeper).
    wait_for(lambda: unfinished(ceph, bucket) == [] or None, 20, "the upload to be aborted")
    assert keys(ceph, bucket) == []
    assert get(server, path)[0] == 404
    body = os.urandom(size)
    assert put(server, path, body)[0] == 201  # and the slot still works
    assert get(server, path)[2] == body


def test_racing_uploads_of_one_path_one_wins(
    server: Server, ceph: CephGateway, bucket: str
) -> None:
    bodies = [os.urandom(11 * MIB) for _ in range(3)]
    results: list[int] = [0] * len(bodies)

    def upload(index: int) -> None:
        results[index] = put(server, "race.bin", bodies[index])[0]

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [201, 409, 409], results
    stored = get(server, "race.bin")[2]
    assert stored == bodies[results.index(201)]
    assert unfinished(ceph, bucket) == []
    assert keys(ceph, bucket) == ["files/race.bin"]


def test_slow_reader_does_not_make_the_server_buffer(server: Server) -> None:
    body = os.urandom(64 * MIB)
    assert put(server, "slow.bin", body)[0] == 201

    def rss() -> int:
        with open(f"/proc/{server.process.pid}/status") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET /upload/slow.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    before = rss()
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    time.sleep(2)  # the client reads nothing: the store's side must wait too
    grown = rss() - before
    assert grown < 24 * MIB, f"the server grew by {grown} bytes for a client reading nothing"
    received = bytearray(first.split(b"\r\n\r\n", 1)[1])
    while len(received) < len(body):
        chunk = sock.recv(1 << 20)
        assert chunk
        received += chunk
    sock.close()
    assert bytes(received) == body


def test_expired_files_are_swept_from_the_store(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    srv = start_on(tmp_path, ceph, bucket, 'file_ttl = "3s"\nsweep_interval = "1s"')
    try:
        assert put(srv, "brief.txt", b"gone soon")[0] == 201
        assert get(srv, "brief.txt")[0] == 200
        wait_for(lambda: keys(ceph, bucket) == [] or None, 30, "the sweeper to delete it")
        assert get(srv, "brief.txt")[0] == 404
    finally:
        assert stop_server(srv) == 0


def test_nodes_of_one_bucket_sweep_it_one_at_a_time(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    nodes = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            nodes.append(
                start_on(tmp_path / name, ceph, bucket, 'file_ttl = "2s"\nsweep_interval = "5s"')
            )
        a, b = nodes
        # a swept as it started; b, starting within the interval, leaves it to a.
        wait_for(lambda: any("left to another node" in line for line in b.log) or None, 20,
                 "the second node to leave the sweep to the first")
        turn = json.loads(
            ceph.client().get_object(Bucket=bucket, Key=".hmacfs/sweep")["Body"].read()
        )
        assert set(turn) == {"node", "report"} and "files" in turn["report"]
        assert not any("left to another node" in line for line in a.log)
        # The node whose turn it was dies: the other one sweeps once the turn is stale.
        assert put(b, "brief.txt", b"gone soon")[0] == 201
        a.process.kill()
        a.process.wait()
        wait_for(lambda: "brief.txt" not in keys(ceph, bucket) or None, 40, "b to sweep")
    finally:
        for node in nodes:
            if node.process.poll() is None:
                assert stop_server(node) == 0


def test_the_sweeper_aborts_multipart_uploads_a_dead_node_left(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    client = ceph.client()
    left = client.create_multipart_upload(Bucket=bucket, Key="left/behind.bin")
    client.upload_part(
        Bucket=bucket, Key="left/behind.bin", PartNumber=1, UploadId=left["UploadId"],
        Body=b"x" * (5 * MIB),
    )
    # A part of a live upload is never older than part_size / min_body_rate + 2 idle timeouts.
    srv = start_on(
        tmp_path, ceph, bucket,
        'sweep_interval = "1s"\nmin_body_rate = "100M"\nidle_timeout = "1s"',
    )
    try:
        wait_for(lambda: unfinished(ceph, bucket) == [] or None, 30, "the sweeper to abort it")
    finally:
        assert stop_server(srv) == 0


def test_credentials_from_a_file(tmp_path: Path, ceph: CephGateway, bucket: str) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {ceph.access_key}\n"
        f"aws_secret_access_key = {ceph.secret_key}\n"
    )
    credentials.chmod(0o640)
    srv = start_server(
        tmp_path, storage_toml(ceph, bucket, credentials_file=str(credentials)), env={}
    )
    try:
        assert put(srv, "c.txt", b"hello")[0] == 201
        assert ceph.client().get_object(Bucket=bucket, Key="c.txt")["Body"].read() == b"hello"
    finally:
        assert stop_server(srv) == 0


def _run_refused(tmp_path: Path, toml: str, env: dict[str, str]) -> tuple[int, str]:
    import subprocess

    from tests.helpers.server import config_text, write_config

    path = tmp_path / "config.toml"
    write_config(path, config_text(tmp_path / "files", extra_toml=toml))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run(
        [sys.executable, "-m", "hmacfs", "--config", str(path), "run"],
        capture_output=True, text=True, timeout=60, env={**environment, **env}, check=False,
    )
    return done.returncode, done.stderr


def test_start_fails_in_one_line_naming_the_bucket(
    tmp_path: Path, ceph: CephGateway
) -> None:
    code, stderr = _run_refused(
        tmp_path, storage_toml(ceph, "no-such-bucket-here"), keys_env(ceph)
    )
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "[storage] bucket" in lines[0] and "does not exist" in lines[0]


def test_wrong_keys_fail_the_start(tmp_path: Path, ceph: CephGateway, bucket: str) -> None:
    code, stderr = _run_refused(
        tmp_path,
        storage_toml(ceph, bucket),
        {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong"},
    )
    assert code == 1
    assert "refuses these credentials" in stderr


def test_no_credentials_is_a_config_error(tmp_path: Path, ceph: CephGateway, bucket: str) -> None:
    code, stderr = _run_refused(tmp_path, storage_toml(ceph, bucket), {})
    assert code == 2
    assert "[storage] credentials_file" in stderr or "credentials_file" in stderr


def test_health_reports_the_store(server: Server) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert response.status == 200
        assert b"ok" in response.read()
    finally:
        connection.close()


def fetch_url(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET of an absolute http URL (a presigned one), as a client following a 302 does."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("GET", parts.path + "?" + parts.query, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_redirected_downloads_are_served_by_the_store(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    srv = start_on(
        tmp_path, ceph, bucket, 'file_ttl = "100s"',
        redirect_downloads=True, redirect_lifetime="1h", prefix="f/",
    )
    try:
        body = os.urandom(300_000)
        assert put(srv, "a/page.html", body, "text/html")[0] == 201
        status, headers, content = get(srv, "a/page.html")
        assert status == 302 and content == b""
        location = headers["location"]
        assert location.startswith(ceph.endpoint + "/" + bucket + "/f/a/page.html?")
        # Valid for redirect_lifetime, but never past the file's expiry (file_ttl here).
        expires = int(location.split("X-Amz-Expires=")[1].split("&")[0])
        assert 60 < expires <= 100
        assert headers["cache-control"].startswith("private")
        # The store answers with the headers our own answer would carry: an HTML upload is
        # no page of ours (attachment), with its type and caching.
        _, ours, _ = get(srv, "a/page.html", method="HEAD")
        status, theirs, content = fetch_url(location)
        assert status == 200 and content == body
        for name in ("content-type", "content-disposition", "cache-control"):
            assert theirs[name] == ours[name], name
        assert ours["content-disposition"].startswith("attachment")
        # A range is asked again of the store.
        status, _, content = get(srv, "a/page.html", {"Range": "bytes=10-19"})
        assert status == 302
        status, theirs, content = fetch_url(location, {"Range": "bytes=10-19"})
        assert status == 206 and content == body[10:20]
        # What needs no body, or more than the store does, is answered here.
        etag = ours["etag"]
        assert get(srv, "a/page.html", {"If-None-Match": etag})[0] == 304
        assert get(srv, "a/page.html", {"Range": "bytes=900000-"})[0] == 416
        status, headers, content = get(srv, "a/page.html", {"Range": "bytes=0-1,5-6"})
        assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
        assert get(srv, "a/page.html", method="HEAD")[0] == 200
        assert get(srv, "missing")[0] == 404
        # Uploads are never redirected, and a signature on a presigned URL is checked.
        assert put(srv, "b", b"x")[0] == 201
        assert fetch_url(location.replace("X-Amz-Signature=", "X-Amz-Signature=0"))[0] == 403
    finally:
        assert stop_server(srv) == 0


def admin(server: Server, ceph: CephGateway, *args: str) -> subprocess.CompletedProcess[str]:
    return hmacfs(server, *args, env=keys_env(ceph))


def test_list_and_delete_work_on_the_bucket(
    server: Server, ceph: CephGateway, bucket: str
) -> None:
    assert put(server, "a/one.txt", b"1" * 10, "text/plain")[0] == 201
    assert put(server, "b/two.bin", b"2" * 20)[0] == 201
    listed = admin(server, ceph, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    records = sorted((r["path"], r["size"], r["content_type"]) for r in rows)
    assert records == [
        ("a/one.txt", 10, "text/plain"),
        ("b/two.bin", 20, "application/octet-stream"),
    ]
    assert "a/one.txt" in admin(server, ceph, "list").stdout
    deleted = admin(server, ceph, "delete", "a/one.txt", "missing.txt")
    assert deleted.returncode == 1
    assert "removed a/one.txt" in deleted.stdout and "missing.txt: no such file" in deleted.stderr
    assert keys(ceph, bucket) == ["files/b/two.bin"]
    assert get(server, "a/one.txt")[0] == 404
    # prune: chosen by a listing, removed unless a new upload took the path meanwhile.
    romeo = "a" * 40  # (ejabberd's directory of an uploader)
    assert put(server, f"{romeo}/three.bin", b"3" * 30)[0] == 201
    assert admin(server, ceph, "prune", "--older-than", "1h").stdout.endswith("0 files, 0B\n")
    pruned = admin(server, ceph, "prune", "--uploader", romeo, "--dry-run")
    assert pruned.returncode == 0 and f"would remove {romeo}/three.bin" in pruned.stdout
    assert f"files/{romeo}/three.bin" in keys(ceph, bucket)
    pruned = admin(server, ceph, "prune", "--uploader", romeo)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.splitlines() == [f"removed {romeo}/three.bin", "removed 1 file, 30B"]
    assert [k for k in keys(ceph, bucket) if not k.startswith("files/.hmacfs/")] == [
        "files/b/two.bin"
    ]
    # And the bucket is clean (verify's findings: tests/objectstore/test_quota_s3.py).
    verify = admin(server, ceph, "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout == "clean: 1 file checked\n"


def test_stats_on_the_bucket(server: Server, ceph: CephGateway, bucket: str) -> None:
    assert put(server, "a/one.txt", b"1" * 10, "text/plain")[0] == 201
    assert put(server, "b/two.bin", b"2" * 20)[0] == 201
    client = ceph.client()
    left = client.create_multipart_upload(Bucket=bucket, Key="files/left/behind.bin")
    client.upload_part(
        Bucket=bucket, Key="files/left/behind.bin", PartNumber=1, UploadId=left["UploadId"],
        Body=b"x" * (5 * MIB),
    )
    stats = admin(server, ceph, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    report = json.loads(stats.stdout)
    assert (report["files"], report["bytes"]) == (2, 30)
    types = {t["content_type"]: t["files"] for t in report["content_types"]}
    assert types == {"text/plain": 1, "application/octet-stream": 1}
    # A multipart upload under way (nobody's, as far as the sweeper can tell yet).
    assert report["partials"]["in_progress"] == {"files": 1, "bytes": 5 * MIB}
    assert "2 files" in admin(server, ceph, "stats").stdout
