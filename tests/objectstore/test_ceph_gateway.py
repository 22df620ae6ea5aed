"""The throwaway Ceph gateway itself, with boto3 as the reference client: what the object store
backend's tests take for granted of it (byte-exact objects, conditional creation, user
metadata, multipart uploads and their listing and abort, ranged reads, ListObjectsV2)."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from tests.helpers.ceph import CephGateway

MIB = 1 << 20
PART = 5 * MIB  # the smallest part S3 allows but the last


def status(error: ClientError) -> int:
    return int(error.response["ResponseMetadata"]["HTTPStatusCode"])


def if_none_match_client(ceph: CephGateway) -> Any:
    """A client whose every PutObject carries `If-None-Match: *` (create, never replace).

    The header is added by a hook rather than with PutObject's IfNoneMatch parameter, which
    botocore only has since 1.35.
    """
    client = ceph.client()

    def add_header(request: Any, **_: Any) -> None:
        request.headers["If-None-Match"] = "*"

    client.meta.events.register("before-sign.s3.PutObject", add_header)
    return client


def test_put_get_round_trip(ceph: CephGateway, bucket: str) -> None:
    client = ceph.client()
    data = os.urandom(MIB)
    put = client.put_object(Bucket=bucket, Key="dir/random.bin", Body=data)
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'

    got = client.get_object(Bucket=bucket, Key="dir/random.bin")
    assert got["ContentLength"] == MIB
    assert got["Body"].read() == data


def test_if_none_match_refuses_an_existing_key(ceph: CephGateway, bucket: str) -> None:
    client = if_none_match_client(ceph)
    sent: list[object] = []

    def record(request: Any, **_: Any) -> None:
        sent.append(request.headers.get("If-None-Match"))

    client.meta.events.register("before-send.s3.PutObject", record)
    first = os.urandom(4096)
    client.put_object(Bucket=bucket, Key="once", Body=first)

    with pytest.raises(ClientError) as refused:
        client.put_object(Bucket=bucket, Key="once", Body=b"second")
    assert status(refused.value) == 412
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert sent == [b"*", b"*"]  # (botocore's prepared headers are bytes)

    got = ceph.client().get_object(Bucket=bucket, Key="once")
    assert got["Body"].read() == first
    assert got["ETag"] == f'"{hashlib.md5(first).hexdigest()}"'


def test_if_none_match_lets_one_of_racing_writers_win(ceph: CephGateway, bucket: str) -> None:
    """Conditional creation is atomic: of writers racing for one key, exactly one succeeds
    and the object is that writer's, whole."""
    writers = 8
    bodies = [bytes([i]) * (256 * 1024) for i in range(writers)]
    clients = [if_none_match_client(ceph) for _ in range(writers)]
    start = threading.Barrier(writers)
    outcomes: list[int | None] = [None] * writers

    def write(i: int) -> None:
        start.wait()
        try:
            clients[i].put_object(Bucket=bucket, Key="contended", Body=bodies[i])
            outcomes[i] = 200
        except ClientError as e:
            outcomes[i] = status(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes.count(200) == 1, outcomes
    assert set(outcomes) <= {200, 412}, outcomes

    winner = outcomes.index(200)
    got = ceph.client().get_object(Bucket=bucket, Key="contended")["Body"].read()
    assert got == bodies[winner]


def test_if_match_replaces_only_the_object_seen(ceph: CephGateway, bucket: str) -> None:
    """What a claim's takeover relies on: a PUT with If-Match on the entity tag a node saw
    replaces the object only while it has that tag. (Ceph 16 matches the bare tag; the
    quoted form HTTP uses is refused, so the backend tries both.)"""
    s3 = ceph.client()
    s3.put_object(Bucket=bucket, Key="claim", Body=b"first")
    seen = s3.head_object(Bucket=bucket, Key="claim")["ETag"].strip('"')
    client = _raw_client(ceph, bucket)
    assert client.request("PUT", "claim", headers={"if-match": seen}, body=b"second").status == 200
    # The object changed: the same condition is refused now, and nothing is replaced.
    assert client.request("PUT", "claim", headers={"if-match": seen}, body=b"third").status == 412
    assert s3.get_object(Bucket=bucket, Key="claim")["Body"].read() == b"second"


def _raw_client(ceph: CephGateway, bucket: str) -> Any:
    from hmacfs.core.credentials import Credentials
    from hmacfs.storage.s3.client import BlockingClient, Bucket

    return BlockingClient(
        Bucket(ceph.endpoint, bucket, ceph.region),
        Credentials(ceph.access_key, ceph.secret_key),
    )


def test_user_metadata_round_trip(ceph: CephGateway, bucket: str) -> None:
    client = ceph.client()
    metadata = {"owner": "alice@example.org", "sha256": hashlib.sha256(b"x").hexdigest()}
    client.put_object(
        Bucket=bucket, Key="meta", Body=b"x", Metadata=metadata, ContentType="text/plain"
    )

    head = client.head_object(Bucket=bucket, Key="meta")
    assert head["Metadata"] == metadata
    assert head["ContentType"] == "text/plain"
    headers = head["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amz-meta-owner"] == "alice@example.org"


def test_multipart_upload_completes(ceph: CephGateway, bucket: str) -> None:
    client = ceph.client()
    parts = [os.urandom(PART), os.urandom(PART), os.urandom(1234)]
    upload = client.create_multipart_upload(Bucket=bucket, Key="big", Metadata={"kind": "mp"})
    upload_id = upload["UploadId"]
    done = []
    for number, data in enumerate(parts, start=1):
        part = client.upload_part(
            Bucket=bucket, Key="big", UploadId=upload_id, PartNumber=number, Body=data
        )
        assert part["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
        done.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket, Key="big", UploadId=upload_id, MultipartUpload={"Parts": done}
    )

    head = client.head_object(Bucket=bucket, Key="big")
    digests = b"".join(hashlib.md5(data).digest() for data in parts)
    assert head["ETag"] == f'"{hashlib.md5(digests).hexdigest()}-3"'
    assert head["ContentLength"] == sum(map(len, parts))
    assert head["Metadata"] == {"kind": "mp"}
    assert client.get_object(Bucket=bucket, Key="big")["Body"].read() == b"".join(parts)
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket)


def test_unfinished_multipart_upload_is_listed_and_aborted(ceph: CephGateway, bucket: str) -> None:
    client = ceph.client()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="unfinished")["UploadId"]
    client.upload_part(
        Bucket=bucket, Key="unfinished", UploadId=upload_id, PartNumber=1, Body=b"a" * 1000
    )

    uploads = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("unfinished", upload_id)]
    parts = client.list_parts(Bucket=bucket, Key="unfinished", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 1000)]

    client.abort_multipart_upload(Bucket=bucket, Key="unfinished", UploadId=upload_id)
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket)
    with pytest.raises(ClientError) as gone:
        client.upload_part(
            Bucket=bucket, Key="unfinished", UploadId=upload_id, PartNumber=2, Body=b"b"
        )
    assert status(gone.value) == 404
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"
    with pytest.raises(ClientError) as gone:
        client.list_parts(Bucket=bucket, Key="unfinished", UploadId=upload_id)
    # radosgw 16 answers ListParts of an unknown upload with NoSuchKey, AWS with NoSuchUpload.
    assert status(gone.value) == 404
    assert gone.value.response["Error"]["Code"] in {"NoSuchUpload", "NoSuchKey"}
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)


@pytest.mark.parametrize(
    ("header", "window", "content_range"),
    [
        ("bytes=100-199", slice(100, 200), "bytes 100-199/10000"),
        ("bytes=9990-", slice(9990, 10000), "bytes 9990-9999/10000"),
        ("bytes=-10", slice(9990, 10000), "bytes 9990-9999/10000"),
        ("bytes=9000-20000", slice(9000, 10000), "bytes 9000-9999/10000"),
    ],
)
def test_ranged_get(
    ceph: CephGateway, bucket: str, header: str, window: slice, content_range: str
) -> None:
    client = ceph.client()
    data = os.urandom(10000)
    client.put_object(Bucket=bucket, Key="ranged", Body=data)

    got = client.get_object(Bucket=bucket, Key="ranged", Range=header)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == content_range
    assert got["Body"].read() == data[window]


def test_ranged_get_past_the_end_is_refused(ceph: CephGateway, bucket: str) -> None:
    client = ceph.client()
    client.put_object(Bucket=bucket, Key="short", Body=b"0123456789")
    with pytest.raises(ClientError) as refused:
        client.get_object(Bucket=bucket, Key="short", Range="bytes=10-20")
    assert status(refused.value) == 416


def test_list_objects_v2_pages_and_prefixes(ceph: CephGateway, bucket: str) -> None:
    client = ceph.client()
    keys = [f"a/{i:02d}" for i in range(5)] + ["b/0", "top"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())

    def listing(**kwargs: Any) -> tuple[list[str], list[str]]:
        seen: list[str] = []
        prefixes: list[str] = []
        extra: dict[str, str] = {}
        while True:
            page = client.list_objects_v2(Bucket=bucket, MaxKeys=2, **kwargs, **extra)
            assert page["KeyCount"] <= 2
            seen += [o["Key"] for o in page.get("Contents", [])]
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            if not page["IsTruncated"]:
                return seen, prefixes
            extra = {"ContinuationToken": page["NextContinuationToken"]}

    assert listing() == (keys, [])
    assert listing(Prefix="a/") == (keys[:5], [])
    assert listing(Delimiter="/") == (["top"], ["a/", "b/"])
    assert listing(StartAfter="a/03") == (keys[4:], [])
    sizes = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert sizes == {key: len(key) for key in keys}
