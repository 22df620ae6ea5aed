"""How requests name a bucket and a key: path style (what Ceph and most S3 servers want) and
virtual-host style (AWS's own), the request target percent-encoded as SigV4 signs it."""

from __future__ import annotations

from hmacfs.storage.s3.client import Bucket


def test_path_style_names_the_bucket_in_the_path() -> None:
    bucket = Bucket("http://127.0.0.1:7480", "files", "us-east-1")
    assert bucket.host == "127.0.0.1:7480"
    assert bucket.path("a/b c.txt") == "/files/a/b c.txt"
    assert bucket.path("") == "/files"
    assert bucket.url("a/b c.txt") == "http://127.0.0.1:7480/files/a/b%20c.txt"
    assert not bucket.secure


def test_virtual_host_style_names_the_bucket_in_the_host() -> None:
    bucket = Bucket("https://s3.eu-west-1.amazonaws.com", "files", "eu-west-1", virtual_host=True)
    assert bucket.secure
    assert bucket.host == "files.s3.eu-west-1.amazonaws.com"
    assert bucket.path("a/ü.txt") == "/a/ü.txt"
    assert bucket.path("") == "/"
    assert bucket.target("") == "/"
    assert bucket.url("a/ü.txt", [("uploadId", "x/y"), ("partNumber", "2")]) == (
        "https://files.s3.eu-west-1.amazonaws.com/a/%C3%BC.txt?uploadId=x%2Fy&partNumber=2"
    )


def test_an_endpoint_with_a_path_keeps_it() -> None:
    assert Bucket("http://h:1/s3", "b", "r").path("k") == "/s3/b/k"
    assert Bucket("http://h:1/s3/", "b", "r", virtual_host=True).path("k") == "/s3/k"
