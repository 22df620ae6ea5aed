"""`[quota]` on an s3 backend: the bytes each uploader stores are counted in the bucket (a
marker object per file), so the limits hold across nodes; deletes and the soft limit take
the markers along."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from tests.helpers import resumable as rufh
from tests.helpers.ceph import CephGateway
from tests.helpers.server import stop_server, wait_for
from tests.helpers.signing import mac_v1
from tests.objectstore.test_s3_backend_e2e import admin, get, keys, put, start_on

KIB = 1024
ROMEO = "a" * 40  # (ejabberd's sha1(user@host) directory: the uploader)
JULIET = "b" * 40


def markers(ceph: CephGateway, bucket: str, uploader: str) -> list[str]:
    prefix = f"files/.hmacfs/usage/{uploader}/"
    return [key[len(prefix) :] for key in keys(ceph, bucket) if key.startswith(prefix)]


def test_uploader_daily_and_total_limits(tmp_path: Path, ceph: CephGateway, bucket: str) -> None:
    limits = {"uploader_limit": "100K", "uploader_daily_limit": "150K"}
    srv = start_on(tmp_path, ceph, bucket, prefix="files/", max_upload_size="100K", quota=limits)
    try:
        assert put(srv, f"{ROMEO}/one.bin", os.urandom(60 * KIB))[0] == 201
        assert [m.split("/")[:2] for m in markers(ceph, bucket, ROMEO)] == [
            [f"{ROMEO}%2Fone.bin", str(60 * KIB)]
        ]
        status, body = put(srv, f"{ROMEO}/two.bin", os.urandom(60 * KIB))
        assert status == 413 and b"upload quota exceeded" in body
        # Deleting a file gives its bytes back (its marker goes with it).
        assert admin(srv, ceph, "delete", f"{ROMEO}/one.bin").returncode == 0
        assert markers(ceph, bucket, ROMEO) == []
        assert put(srv, f"{ROMEO}/two.bin", os.urandom(60 * KIB))[0] == 201
        # 120K uploaded today (deleted or not): 40K more is past the daily 150K.
        status, body = put(srv, f"{ROMEO}/three.bin", os.urandom(40 * KIB))
        assert status == 413 and b"daily upload quota exceeded" in body
        # Another uploader has limits of its own.
        assert put(srv, f"{JULIET}/one.bin", os.urandom(100 * KIB))[0] == 201
    finally:
        assert stop_server(srv) == 0


def test_the_total_limit(tmp_path: Path, ceph: CephGateway, bucket: str) -> None:
    srv = start_on(
        tmp_path, ceph, bucket, prefix="files/", max_upload_size="100K",
        quota={"total_limit": "200K"},
    )
    try:
        assert put(srv, "anyone/one.bin", os.urandom(100 * KIB))[0] == 201
        assert put(srv, f"{ROMEO}/two.bin", os.urandom(60 * KIB))[0] == 201
        status, body = put(srv, f"{JULIET}/three.bin", os.urandom(50 * KIB))
        assert status == 507 and b"quota is used up" in body
        assert put(srv, f"{JULIET}/three.bin", os.urandom(40 * KIB))[0] == 201
    finally:
        assert stop_server(srv) == 0


def test_the_soft_limit_deletes_the_oldest_files(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    srv = start_on(
        tmp_path, ceph, bucket, prefix="files/", max_upload_size="100K",
        quota={"uploader_soft_limit": "100K"},
    )
    try:
        # (a path too long to name in a marker's key: the marker holds it)
        old = f"{ROMEO}/{'é' * 80}.bin"
        encoded = f"{ROMEO}/{quote('é' * 80)}.bin"
        assert put(srv, encoded, os.urandom(60 * KIB), mac=mac_v1(old, 60 * KIB))[0] == 201
        assert markers(ceph, bucket, ROMEO)[0].startswith("~")
        assert put(srv, f"{ROMEO}/new.bin", os.urandom(60 * KIB))[0] == 201
        wait_for(lambda: get(srv, encoded)[0] == 404, 20, "the oldest file deleted")
        assert get(srv, f"{ROMEO}/new.bin")[0] == 200
        assert [m.split("/")[0] for m in markers(ceph, bucket, ROMEO)] == [f"{ROMEO}%2Fnew.bin"]
    finally:
        assert stop_server(srv) == 0


def test_the_sweeper_drops_the_markers_of_files_gone(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    srv = start_on(
        tmp_path, ceph, bucket, 'sweep_interval = "1s"', prefix="files/",
        max_upload_size="100K", quota={"uploader_limit": "100K"},
    )
    try:
        assert put(srv, f"{ROMEO}/one.bin", os.urandom(60 * KIB))[0] == 201
        assert put(srv, f"{ROMEO}/two.bin", os.urandom(30 * KIB))[0] == 201
        # Removed behind the server's back: its bytes are counted until a sweep sees it gone.
        ceph.client().delete_object(Bucket=bucket, Key=f"files/{ROMEO}/one.bin")
        wait_for(lambda: len(markers(ceph, bucket, ROMEO)) == 1, 30, "a sweep")
        assert markers(ceph, bucket, ROMEO)[0].startswith(f"{ROMEO}%2Ftwo.bin/")
        assert put(srv, f"{ROMEO}/three.bin", os.urandom(60 * KIB))[0] == 201
        # Removed behind its back and uploaded again: the old marker goes, the new one stays.
        ceph.client().delete_object(Bucket=bucket, Key=f"files/{ROMEO}/two.bin")
        assert put(srv, f"{ROMEO}/two.bin", os.urandom(10 * KIB))[0] == 201
        wait_for(
            lambda: sorted(
                m.split("/")[1] for m in markers(ceph, bucket, ROMEO) if "two.bin" in m
            ) == [str(10 * KIB)],
            30,
            "a sweep",
        )
    finally:
        assert stop_server(srv) == 0


def test_verify_finds_and_repairs_what_the_ledger_misses(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    srv = start_on(
        tmp_path, ceph, bucket, prefix="files/", max_upload_size="100K",
        quota={"uploader_limit": "100K"},
    )
    try:
        assert put(srv, f"{ROMEO}/counted.bin", os.urandom(10 * KIB))[0] == 201
        assert put(srv, f"{ROMEO}/older.bin", os.urandom(20 * KIB))[0] == 201
        assert put(srv, f"{JULIET}/gone.bin", os.urandom(30 * KIB))[0] == 201
        store = ceph.client()
        # A file stored before its marker existed (as before the ledger was kept) ...
        [older] = [m for m in markers(ceph, bucket, ROMEO) if m.startswith(f"{ROMEO}%2Folder")]
        store.delete_object(Bucket=bucket, Key=f"files/.hmacfs/usage/{ROMEO}/{older}")
        # ... a file counted twice (a repair made while its own marker was being written) ...
        [counted] = [m for m in markers(ceph, bucket, ROMEO) if m.startswith(f"{ROMEO}%2Fcounted")]
        twice = counted.rsplit("/", 1)[0] + "/1.0"
        store.put_object(Bucket=bucket, Key=f"files/.hmacfs/usage/{ROMEO}/{twice}", Body=b"")
        # ... a file removed behind the server's back, and an object of another program.
        store.delete_object(Bucket=bucket, Key=f"files/{JULIET}/gone.bin")
        store.put_object(Bucket=bucket, Key="files/foreign.txt", Body=b"x")
        found = admin(srv, ceph, "verify", "--json")
        assert found.returncode == 1, found.stderr
        kinds = sorted((f["kind"], f["path"]) for f in map(json.loads, found.stdout.splitlines()))
        assert kinds == [
            ("no metadata", "foreign.txt"),
            ("not counted", f"{ROMEO}/older.bin"),
            ("stale usage marker", f"{ROMEO}/counted.bin"),
            ("stale usage marker", f"{JULIET}/gone.bin"),
        ]
        repaired = admin(srv, ceph, "verify", "--repair")
        assert repaired.returncode == 1, repaired.stdout  # (the foreign object stays)
        assert "3 repaired" in repaired.stdout
        assert sorted(m.split("/")[0] for m in markers(ceph, bucket, ROMEO)) == [
            f"{ROMEO}%2Fcounted.bin", f"{ROMEO}%2Folder.bin"
        ]
        assert counted in markers(ceph, bucket, ROMEO)  # (the newer of the two)
        assert markers(ceph, bucket, JULIET) == []
        # Romeo's 30K are all counted again: 80K more do not fit.
        status, _ = put(srv, f"{ROMEO}/more.bin", os.urandom(80 * KIB))
        assert status == 413
        again = admin(srv, ceph, "verify", "--json")
        assert [json.loads(line)["kind"] for line in again.stdout.splitlines()] == ["no metadata"]
    finally:
        assert stop_server(srv) == 0


def test_a_resumable_upload_is_counted_once_and_checked_at_its_creation(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    srv = start_on(
        tmp_path, ceph, bucket, prefix="files/", max_upload_size="10M",
        quota={"uploader_limit": "10M"},
    )
    try:
        rel = f"{ROMEO}/resumed.bin"
        body = os.urandom(7 * 1024 * KIB)
        url = f"http://127.0.0.1:{srv.port}/upload/{rel}?v={mac_v1(rel, len(body))}"
        cut = rufh.create(url, body, 8, cut_after=3 * 1024 * KIB)
        assert cut.location is not None
        offset = int(rufh.head(cut.location, 8).headers["upload-offset"])
        assert rufh.patch(cut.location, 8, offset, body[offset:]).status == 201
        assert [m.split("/")[:2] for m in markers(ceph, bucket, ROMEO)] == [
            [f"{ROMEO}%2Fresumed.bin", str(len(body))]
        ]
        # 7M of 10M used: a creation of 4M more is refused before a byte is stored.
        big = f"{ROMEO}/big.bin"
        url = f"http://127.0.0.1:{srv.port}/upload/{big}?v={mac_v1(big, 4 * 1024 * KIB)}"
        refused = rufh.create(url, os.urandom(4 * 1024 * KIB), 8)
        assert refused.final is not None and refused.final.status == 413, refused
        assert refused.location is None  # (no upload resource was announced)
    finally:
        assert stop_server(srv) == 0
