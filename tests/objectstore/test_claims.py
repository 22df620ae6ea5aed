"""The claim that guards a multipart completion (`S3Storage.take_claim`), on a real Ceph
gateway: one taker at a time, a claim a dead node left taken over once stale, and only by
one of the nodes that find it stale."""

from __future__ import annotations

import json
import threading
import time

import pytest

from hmacfs.core.credentials import Credentials
from hmacfs.core.refusals import StorageFailure
from hmacfs.storage.s3 import backend as s3backend
from hmacfs.storage.s3.backend import CLAIM_STALE, S3Storage
from hmacfs.storage.s3.client import BlockingClient, Bucket
from tests.helpers.ceph import CephGateway

CLAIM = "p/.hmacfs/claims/dir/file.bin"


def storage(ceph: CephGateway, bucket: str, skew: float = 0.0) -> S3Storage:
    client = BlockingClient(
        Bucket(ceph.endpoint, bucket, ceph.region),
        Credentials(ceph.access_key, ceph.secret_key),
    )
    return S3Storage(client, prefix="p/", clock=lambda: time.time() + skew)


def nonce_in(ceph: CephGateway, bucket: str) -> str:
    body = ceph.client().get_object(Bucket=bucket, Key=CLAIM)["Body"].read()
    return str(json.loads(body)["nonce"])


def test_a_claim_is_taken_and_dropped(ceph: CephGateway, bucket: str) -> None:
    node = storage(ceph, bucket)
    nonce = node.take_claim("dir/file.bin")
    assert nonce_in(ceph, bucket) == nonce
    node.drop_claim("dir/file.bin")
    assert "Contents" not in ceph.client().list_objects_v2(Bucket=bucket)


def test_a_live_claim_makes_another_node_wait_then_give_up(
    ceph: CephGateway, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3backend, "CLAIM_WAIT", 1.0)
    first, second = storage(ceph, bucket), storage(ceph, bucket)
    held = first.take_claim("dir/file.bin")
    started = time.monotonic()
    with pytest.raises(StorageFailure, match="being completed"):
        second.take_claim("dir/file.bin")
    assert time.monotonic() - started >= 1.0
    assert nonce_in(ceph, bucket) == held  # (untouched)
    # Once the holder drops it, the other node takes it.
    first.drop_claim("dir/file.bin")
    taken = second.take_claim("dir/file.bin")
    assert nonce_in(ceph, bucket) == taken


def test_a_stale_claim_is_taken_over(ceph: CephGateway, bucket: str) -> None:
    dead = storage(ceph, bucket)
    left = dead.take_claim("dir/file.bin")  # (its node dies: never dropped)
    # A node whose clock says the claim is older than CLAIM_STALE takes it over at once.
    later = storage(ceph, bucket, skew=CLAIM_STALE + 5)
    started = time.monotonic()
    taken = later.take_claim("dir/file.bin")
    assert time.monotonic() - started < 5
    assert taken != left and nonce_in(ceph, bucket) == taken


def test_of_nodes_racing_for_a_stale_claim_one_takes_it_at_a_time(
    ceph: CephGateway, bucket: str
) -> None:
    storage(ceph, bucket).take_claim("dir/file.bin")  # (left by a dead node)
    stale = ceph.client().head_object(Bucket=bucket, Key=CLAIM)["ETag"]
    # Each takeover is conditional on the entity tag its taker saw: of racing takers, one
    # replaces the dead node's claim; the others find a new claim and must look again.
    nodes = [storage(ceph, bucket, skew=CLAIM_STALE + 5) for _ in range(4)]
    barrier = threading.Barrier(len(nodes))
    answers: list[bool] = []

    def take_over(node: S3Storage) -> None:
        barrier.wait()
        answers.append(node._replace_if(CLAIM, stale, b'{"nonce": "x"}'))

    threads = [threading.Thread(target=take_over, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [False, False, False, True]
