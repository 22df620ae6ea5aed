"""The fast paths over real sockets: a server with them and one without store the same bodies
(small, at the quick-answer and sendfile edges, spliced) and answer every download alike,
header for header and byte for byte."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.test_http_e2e import get, put, write_file
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import mac_v1

#: 0 B, 1 B, the quick-answer limit and one past it (sendfile from there), spliced (512 KiB+).
SIZES = (0, 1, 65536, 65537, 300_000, 2 * 1024 * 1024)
REQUESTS = (
    ("GET",),
    ("HEAD",),
    ("GET", "Range: bytes=1-"),
    ("GET", "Range: bytes=-70000"),
    ("GET", "Range: bytes=0-9,100-199"),
    ("GET", 'If-None-Match: "nope"'),
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    fast = start_server(tmp_path_factory.mktemp("fast"), track=False)
    plain = start_server(
        tmp_path_factory.mktemp("plain"), server_toml="fast_paths = false", track=False
    )
    yield fast, plain
    assert stop_server(fast) == 0
    assert stop_server(plain) == 0


@pytest.fixture(scope="module")
def stored(
    servers: tuple[Server, Server], tmp_path_factory: pytest.TempPathFactory
) -> dict[int, str]:
    """Each size uploaded to both servers (the same path and mtime on both)."""
    source = tmp_path_factory.mktemp("bodies")
    paths = {}
    for size in SIZES:
        body = source / f"{size}.bin"
        write_file(body, size)
        rel = f"fast-{size}/f.bin"
        for server in servers:
            assert put(server.url(rel) + f"?v={mac_v1(rel, size)}", body) == 201
            os.utime(server.storage / f"fast-{size}" / "f.bin", (1.7e9, 1.7e9))
        paths[size] = rel
    return paths


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("request_", REQUESTS, ids=" ".join)
def test_with_and_without_the_fast_paths_every_answer_is_the_same(
    servers: tuple[Server, Server], stored: dict[int, str], size: int, request_: tuple[str, ...]
) -> None:
    method, *headers = request_
    args = ["-I"] if method == "HEAD" else []
    for header in headers:
        args += ["-H", header]
    answers = []
    for server in servers:
        status, got, body = get(server.url(stored[size]), *args)
        got.pop("date")
        answers.append((status, got, body))
    (status, headers_fast, body_fast), (plain_status, headers_plain, body_plain) = answers
    if headers_fast.get("content-type", "").startswith("multipart/"):
        mark_fast = headers_fast["content-type"].split('"')[1].encode()
        mark_plain = headers_plain["content-type"].split('"')[1].encode()
        body_plain = body_plain.replace(mark_plain, mark_fast)
        headers_plain["content-type"] = headers_fast["content-type"]
    assert (status, headers_fast) == (plain_status, headers_plain)
    assert body_fast == body_plain
    if method == "GET" and not headers and size:
        assert status == 200 and len(body_fast) == size


def test_the_fast_paths_were_taken(servers: tuple[Server, Server], stored: dict[int, str]) -> None:
    """The comparison means something only if the fast server used them: its log shows the
    spliced body, the plain one's does not."""
    fast, plain = servers
    assert any("bytes spliced" in line for line in fast.log)
    assert not any("splicing" in line for line in plain.log)
