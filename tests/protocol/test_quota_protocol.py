"""[quota]: each limit refuses from the headers (no 100 Continue, no body byte stored), the
counts follow uploads and deletions, and the soft limit deletes the uploader's oldest files."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from hmacfs.core import auth
from hmacfs.core.settings import QuotaSettings
from tests.helpers.config import make_config
from tests.helpers.files import partial_files, visible_files
from tests.helpers.signing import mac_v1
from tests.protocol.test_upload_protocol import Harness, put_head, status_of

ROMEO = "romeo@montague.example"
#: ejabberd's directory for juliet@capulet.example (sha1 of the bare JID).
JULIET_DIR = hashlib.sha1(b"juliet@capulet.example").hexdigest()


def harness_with(storage_dir: Path, **limits: object) -> Harness:
    config = make_config(storage_dir, max_upload_size=1000)
    harness = Harness(replace(config, quota=QuotaSettings(**limits)))  # type: ignore[arg-type]
    harness.storage.count_usage()
    harness.storage.rebuild_usage()
    return harness


def jwt_put(harness: Harness, rel: str, body: bytes, uploader: str = ROMEO) -> bytes:
    now = harness.clock.seconds()
    signed = auth.sign(
        "jwt", rel, len(body), "text/plain", harness.config.hmac.secrets[0], now=now,
        uploader=uploader,
    )
    channel, transport = harness.connect()
    head = put_head(rel, len(body), "", f"Authorization: {signed.headers['Authorization']}",
                    "Expect: 100-continue")
    channel.dataReceived(head)
    if b"100 Continue" in transport.value():
        channel.dataReceived(body)
    return transport.value()


def v_put(harness: Harness, rel: str, body: bytes) -> bytes:
    channel, transport = harness.connect()
    channel.dataReceived(put_head(rel, len(body), f"v={mac_v1(rel, len(body))}",
                                  "Expect: 100-continue"))
    if b"100 Continue" in transport.value():
        channel.dataReceived(body)
    return transport.value()


def refused_before_the_body(response: bytes, status: int, harness: Harness) -> None:
    assert status_of(response) == status, response
    assert b"100 Continue" not in response
    assert partial_files(harness.storage) == []


def test_an_uploaders_limit_refuses_from_the_headers(storage_dir: Path) -> None:
    harness = harness_with(storage_dir, uploader_limit=1000)
    assert status_of(jwt_put(harness, "s1/a.txt", b"a" * 600)) == 201
    response = jwt_put(harness, "s2/b.txt", b"b" * 500)
    refused_before_the_body(response, 413, harness)
    assert b"upload quota exceeded: 600 of 1000 stored" in response
    # Another uploader, and v1 uploads (no uploader), are not held to romeo's bytes.
    assert status_of(jwt_put(harness, "s3/c.txt", b"c" * 500, uploader="tybalt@x.example")) == 201
    assert status_of(v_put(harness, "s4/d.txt", b"d" * 900)) == 201
    # What romeo deletes frees his quota.
    assert harness.storage.delete("s1/a.txt")
    assert status_of(jwt_put(harness, "s2/b.txt", b"b" * 500)) == 201
    assert harness.storage.accounting is not None
    assert harness.storage.accounting.of(ROMEO).bytes == 500
    assert harness.site.metrics.render()[0].count(b'reason="quota"') >= 1


def test_ejabberds_hashed_jid_directory_names_the_uploader(storage_dir: Path) -> None:
    harness = harness_with(storage_dir, uploader_limit=1000)
    assert status_of(v_put(harness, f"{JULIET_DIR}/r1/a.jpg", b"a" * 700)) == 201
    refused_before_the_body(v_put(harness, f"{JULIET_DIR}/r2/b.jpg", b"b" * 400), 413, harness)
    assert harness.storage.lookup(f"{JULIET_DIR}/r1/a.jpg").uploader == JULIET_DIR
    # Switched off, such a directory is only a directory.
    off = harness_with(storage_dir / "off", uploader_limit=1000, uploader_from_path=False)
    assert status_of(v_put(off, f"{JULIET_DIR}/r1/a.jpg", b"a" * 700)) == 201
    assert status_of(v_put(off, f"{JULIET_DIR}/r2/b.jpg", b"b" * 400)) == 201


def test_a_daily_limit_counts_what_was_uploaded_in_24_hours(storage_dir: Path) -> None:
    harness = harness_with(storage_dir, uploader_daily_limit=1000)
    assert status_of(jwt_put(harness, "s1/a.txt", b"a" * 800)) == 201
    assert harness.storage.delete("s1/a.txt")  # deleting does not give the bytes back today
    response = jwt_put(harness, "s2/b.txt", b"b" * 300)
    refused_before_the_body(response, 413, harness)
    assert b"daily upload quota exceeded: 800 of 1000 in the last 24 hours" in response
    harness.clock.advance(86400 + 1)
    assert status_of(jwt_put(harness, "s2/b.txt", b"b" * 300)) == 201


def test_a_total_limit_is_507_from_the_headers(storage_dir: Path) -> None:
    harness = harness_with(storage_dir, total_limit=1500)
    assert status_of(v_put(harness, "s1/a.txt", b"a" * 1000)) == 201
    response = v_put(harness, "s2/b.txt", b"b" * 600)
    refused_before_the_body(response, 507, harness)
    assert b"the storage is full" in response
    assert status_of(v_put(harness, "s2/b.txt", b"b" * 500)) == 201
    # An identical retry of a stored file adds nothing, and is not refused.
    assert status_of(v_put(harness, "s1/a.txt", b"a" * 1000)) == 201


def test_min_free_space_is_507_from_the_headers(
    storage_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = harness_with(storage_dir, min_free_space=10_000)
    monkeypatch.setattr(harness.storage, "free_bytes", lambda: 10_500)
    assert status_of(v_put(harness, "s1/a.txt", b"a" * 400)) == 201
    response = v_put(harness, "s2/b.txt", b"b" * 600)
    refused_before_the_body(response, 507, harness)
    assert b"not enough free space" in response


def test_the_soft_limit_deletes_the_oldest_files_after_an_upload(storage_dir: Path) -> None:
    harness = harness_with(storage_dir, uploader_soft_limit=1000)
    for n in range(4):
        assert status_of(jwt_put(harness, f"s{n}/f.txt", bytes([65 + n]) * 300)) == 201
        harness.clock.advance(10)
    # 1200 bytes after the fourth: the oldest goes, never the one just stored.
    assert visible_files(harness.storage.root) == ["s1/f.txt", "s2/f.txt", "s3/f.txt"]
    assert status_of(jwt_put(harness, "s9/big.txt", b"z" * 1000)) == 201
    assert visible_files(harness.storage.root) == ["s9/big.txt"]
    assert harness.storage.accounting is not None
    assert harness.storage.accounting.of(ROMEO).bytes == 1000
    assert b"hmacfs_quota_deleted_files_total 4.0" in harness.site.metrics.render()[0]


def test_counts_are_made_again_from_the_files(storage_dir: Path) -> None:
    harness = harness_with(storage_dir, uploader_limit=1000)
    assert status_of(jwt_put(harness, "s1/a.txt", b"a" * 600)) == 201
    harness.storage.close()  # (its ready partial files would look like leftovers below)
    # Counts lost (or never kept, the storage older than the quotas): a restart counts again.
    usage = storage_dir / ".hmacfs" / "usage"
    for path in usage.rglob("*"):
        if path.is_file():
            path.unlink()
    again = harness_with(storage_dir, uploader_limit=1000)
    refused_before_the_body(jwt_put(again, "s2/b.txt", b"b" * 500), 413, again)
    assert again.storage.accounting is not None
    total = again.storage.accounting.total()
    assert total is not None and (total.files, total.bytes) == (1, 600)
