"""Resumable uploads kept in the Ceph bucket: two of our servers on the same bucket (as two
nodes), an upload begun on one continued on the other, after a cut connection (every byte
that came is kept), a node killed with SIGKILL (what was stored is kept), or a connection
that never said it was gone; small appends across a part boundary (the tail); a
cancellation; the sweeper. Every file is compared byte for byte with boto3's view of the
bucket."""

from __future__ import annotations

import itertools
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import resumable as rufh
from tests.helpers.ceph import CephGateway
from tests.helpers.server import Server, hmacfs, stop_server, wait_for
from tests.helpers.signing import mac_v1
from tests.objectstore.test_s3_backend_e2e import get, keys, keys_env, start_on, unfinished

MIB = 1024 * 1024
VERSION = 8
PREFIX = "files/"


@pytest.fixture
def nodes(tmp_path: Path, ceph: CephGateway, bucket: str) -> Iterator[tuple[Server, Server]]:
    started = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            started.append(start_on(tmp_path / name, ceph, bucket, prefix=PREFIX))
        yield started[0], started[1]
    finally:
        for node in started:
            if node.process.poll() is None:
                assert stop_server(node) == 0


def slot(node: Server, rel: str, size: int) -> str:
    return f"http://127.0.0.1:{node.port}/upload/{rel}?v={mac_v1(rel, size)}"


def on(node: Server, location: str) -> str:
    """The upload resource `location` (on any node) on `node`."""
    path = location.split("/upload/", 1)[1]
    return f"http://127.0.0.1:{node.port}/upload/{path}"


def upload_id(location: str) -> str:
    return location.rsplit("/", 1)[1][:32]


def facts(ceph: CephGateway, bucket: str, location: str) -> dict[str, object] | None:
    key = f"{PREFIX}.hmacfs/resumable/{upload_id(location)}/facts"
    try:
        body = ceph.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception:  # (NoSuchKey)
        return None
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


def stored(ceph: CephGateway, bucket: str, rel: str) -> tuple[bytes, str]:
    answer = ceph.client().get_object(Bucket=bucket, Key=PREFIX + rel)
    return answer["Body"].read(), answer["ETag"]


def resource_keys(ceph: CephGateway, bucket: str, location: str) -> list[str]:
    base = f"{PREFIX}.hmacfs/resumable/{upload_id(location)}/"
    return [key[len(base) :] for key in keys(ceph, bucket) if key.startswith(base)]


def cut_creation(node: Server, name: str, cut_after: int) -> tuple[bytes, str, str]:
    """A resumable creation of 13 MiB on `node`, cut after `cut_after` bytes: the body, its
    path and the upload resource."""
    body = os.urandom(13 * MIB)
    rel = f"{uuid.uuid4()}/{name}"
    exchange = rufh.create(slot(node, rel, len(body)), body, VERSION, cut_after=cut_after)
    assert exchange.location is not None and exchange.final is None, exchange
    return body, rel, exchange.location


def send_most_of(node: Server, name: str) -> tuple[bytes, str, rufh.Transfer]:
    """A resumable creation of 13 MiB on `node`, of which 11 MiB are sent (two whole
    parts and some): the body, its path and the transfer, still open."""
    body = os.urandom(13 * MIB)
    rel = f"{uuid.uuid4()}/{name}"
    transfer = rufh.start_create(slot(node, rel, len(body)), body, VERSION)
    transfer.send(11 * MIB)
    assert transfer.wait_informational() is not None and transfer.location is not None
    return body, rel, transfer


def patched(node: Server, location: str, body: bytes, offset: int) -> None:
    """Send the rest of `body`, from `offset`, to the upload resource on `node`: 201."""
    done = rufh.patch(on(node, location), VERSION, offset, body[offset:])
    assert done.status == 201, done


def offset_of(location: str) -> int:
    answer = rufh.head(location, VERSION)
    assert answer.status == 204, answer
    return int(answer.headers["upload-offset"])


def test_a_cut_upload_resumes_on_the_other_node_where_it_broke_off(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, b = nodes
    body, rel, location = cut_creation(a, "cut.bin", 12 * MIB)
    size = len(body)
    # Two whole parts (5M each) were stored; of the third, on its way when the client went,
    # what came is stored as the tail.
    assert offset_of(on(b, location)) == 12 * MIB
    kept = ["claim", "facts", f"tail-{10 * MIB}"]  # (and the HEAD's holder, let go of soon)
    wait_for(lambda: sorted(resource_keys(ceph, bucket, location)) == kept or None, 10, "keys")
    patched(b, location, body, 12 * MIB)
    data, etag = stored(ceph, bucket, rel)
    assert data == body
    assert etag.strip('"').endswith("-3")  # (its three parts, as they came)
    status, headers, served = get(a, rel)
    assert (status, served) == (200, body)
    assert headers["content-length"] == str(size)
    assert unfinished(ceph, bucket) == []
    # The upload resource still answers (complete), from its facts alone.
    assert resource_keys(ceph, bucket, location) == ["facts"]
    answer = rufh.head(on(a, location), VERSION)
    assert answer.status == 204 and answer.headers["upload-offset"] == str(size), answer
    assert rufh.says_complete(VERSION, answer.headers) is True


def test_small_appends_across_a_part_boundary_on_alternating_nodes(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, b = nodes
    size = 12 * MIB + 17
    body = os.urandom(size)
    rel = f"{uuid.uuid4()}/appended.bin"
    cuts = [0, 3 * MIB, 6 * MIB + 5, 9 * MIB, size]
    first = rufh.create(
        slot(a, rel, size), body[: cuts[1]], VERSION, complete=False, upload_length=size
    )
    assert first.final is not None and first.final.status == 201, first
    location = first.final.headers["location"]
    assert resource_keys(ceph, bucket, location) == ["facts", f"tail-{0}"]
    for index, (start, end) in enumerate(itertools.pairwise(cuts[1:])):
        node = (b, a)[index % 2]
        assert offset_of(on(node, location)) == start
        last = end == size
        answer = rufh.patch(on(node, location), VERSION, start, body[start:end], complete=last)
        assert answer.status == (201 if last else 204), answer
        if not last:
            assert answer.headers["upload-offset"] == str(end)
    assert stored(ceph, bucket, rel)[0] == body
    assert get(b, rel)[2] == body
    assert resource_keys(ceph, bucket, location) == ["facts"]
    assert unfinished(ceph, bucket) == []


def test_a_small_upload_cut_completes_as_one_object(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, b = nodes
    size = 1 * MIB
    body = os.urandom(size)
    rel = f"{uuid.uuid4()}/small.bin"
    exchange = rufh.create(slot(a, rel, size), body, VERSION, cut_after=300_000)
    location = exchange.location
    assert location is not None
    # One piece (the whole file, one PUT) was on its way: what came of it is the tail.
    assert offset_of(on(b, location)) == 300_000
    assert rufh.patch(on(b, location), VERSION, 300_000, body[300_000:]).status == 201
    data, etag = stored(ceph, bucket, rel)
    assert data == body and "-" not in etag


def test_a_node_killed_mid_upload_leaves_it_to_the_other_node(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, b = nodes
    body, rel, transfer = send_most_of(a, "killed.bin")
    try:
        location_url = transfer.location
        assert location_url is not None

        def two_parts() -> bool | None:
            known = facts(ceph, bucket, location_url)
            return True if known and len(known["parts"]) == 2 else None  # type: ignore[arg-type]

        wait_for(two_parts, 30, "two parts in the facts")
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
    finally:
        transfer.connection.close()
    # Its holder record is left behind: the other node takes it over once it is stale.
    assert resource_keys(ceph, bucket, location_url).count("holder") == 1
    assert offset_of(on(b, location_url)) == 10 * MIB
    patched(b, location_url, body, 10 * MIB)
    assert stored(ceph, bucket, rel)[0] == body


def test_a_connection_that_went_quiet_is_taken_over_by_the_other_node(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, b = nodes
    body, rel, transfer = send_most_of(a, "quiet.bin")
    try:
        transfer.settle()
        location = transfer.location
        assert location is not None
        # (the client moved to another network: its old connection says nothing more)
        assert offset_of(on(b, location)) == 11 * MIB
        transfer.connection.wait_closed(10)  # node a let go and closed it
    finally:
        transfer.connection.close()
    patched(b, location, body, 11 * MIB)
    assert stored(ceph, bucket, rel)[0] == body
    assert any("taking over the upload" in line for line in a.log), a.log_tail()


def test_a_cancelled_upload_leaves_nothing_in_the_store(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, b = nodes
    _, rel, location = cut_creation(a, "cancelled.bin", 7 * MIB)
    assert offset_of(on(b, location)) == 7 * MIB
    assert rufh.delete(on(b, location), VERSION).status == 204
    wait_for(lambda: resource_keys(ceph, bucket, location) == [] or None, 10, "removal")
    assert unfinished(ceph, bucket) == []
    assert rufh.head(on(a, location), VERSION).status == 404
    assert get(a, rel)[0] == 404


def test_the_sweeper_keeps_a_live_upload_and_removes_one_whose_time_is_up(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    # Parts would count as abandoned after seconds (min_body_rate), but a resumable upload's
    # multipart upload is kept for as long as the upload is.
    node = start_on(
        tmp_path, ceph, bucket,
        'sweep_interval = "1s"\nmin_body_rate = "100M"\nidle_timeout = "1s"\n'
        'resumable_ttl = "15s"',
        prefix=PREFIX,
    )
    try:
        _, _, location = cut_creation(node, "left.bin", 6 * MIB)
        assert offset_of(location) == 6 * MIB
        [ours] = unfinished(ceph, bucket)
        stats = hmacfs(node, "stats", "--json", env=keys_env(ceph))
        assert stats.returncode == 0, stats.stderr
        partials = json.loads(stats.stdout)["partials"]
        assert partials["kept"] == {"files": 1, "bytes": 6 * MIB}, partials
        assert partials["in_progress"]["files"] == 0, partials  # (its parts are not counted twice)
        # A multipart upload of nobody's, begun after ours: once a sweep aborted it, ours
        # was older than abandoned ones are, and it is kept all the same.
        ceph.client().create_multipart_upload(Bucket=bucket, Key=f"{PREFIX}stray.bin")
        wait_for(
            lambda: [u["Key"] for u in unfinished(ceph, bucket)] == [ours["Key"]] or None,
            30,
            "the sweeper to abort the stray one",
        )
        assert offset_of(location) == 6 * MIB  # still resumable
        wait_for(lambda: unfinished(ceph, bucket) == [] or None, 30, "the sweeper to remove it")
        wait_for(lambda: resource_keys(ceph, bucket, location) == [] or None, 10, "its keys")
        assert rufh.head(location, VERSION).status == 404
    finally:
        assert stop_server(node) == 0


def test_what_a_cut_left_of_a_large_piece_is_stored_as_a_part(
    tmp_path: Path, ceph: CephGateway, bucket: str
) -> None:
    node = start_on(tmp_path, ceph, bucket, prefix=PREFIX, part_size="8M")
    try:
        size = 20 * MIB
        body = os.urandom(size)
        rel = f"{uuid.uuid4()}/parts.bin"
        exchange = rufh.create(slot(node, rel, size), body, VERSION, cut_after=14 * MIB)
        location = exchange.location
        assert location is not None
        assert offset_of(location) == 14 * MIB
        known = facts(ceph, bucket, location)
        assert known is not None
        # The first part whole (8M), the 6M that came of the second as a part of its own.
        assert [(p[1], p[2]) for p in known["parts"]] == [(0, 8 * MIB), (8 * MIB, 6 * MIB)]  # type: ignore[union-attr]
        assert known["tail"] is None
        done = rufh.patch(location, VERSION, 14 * MIB, body[14 * MIB :])
        assert done.status == 201, done
        data, etag = stored(ceph, bucket, rel)
        assert data == body and etag.strip('"').endswith("-3")
    finally:
        assert stop_server(node) == 0


def test_a_node_stopping_stores_what_arrived_before_it_goes(
    tmp_path: Path, nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    _, b = nodes
    (tmp_path / "c").mkdir()
    a = start_on(tmp_path / "c", ceph, bucket, 'shutdown_timeout = "1s"', prefix=PREFIX)
    body, rel, transfer = send_most_of(a, "stopped.bin")
    try:
        transfer.settle()
        location = transfer.location
        assert location is not None
        # SIGTERM: the upload under way gets a second to finish, then is cut off, and what
        # came of it is stored before the node goes.
        assert stop_server(a) == 0
    finally:
        if a.process.poll() is None:
            stop_server(a)
        transfer.connection.close()
    assert offset_of(on(b, location)) == 11 * MIB
    assert "holder" not in resource_keys(ceph, bucket, location)
    patched(b, location, body, 11 * MIB)
    assert stored(ceph, bucket, rel)[0] == body


def test_a_request_whose_upload_changed_under_it_changes_nothing_more(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, _ = nodes
    size = 13 * MIB
    body = os.urandom(size)
    rel = f"{uuid.uuid4()}/fenced.bin"
    transfer = rufh.start_create(slot(a, rel, size), body, VERSION)
    try:
        transfer.send(3 * MIB)
        assert transfer.wait_informational() is not None and transfer.location is not None
        location = transfer.location
        transfer.settle()
        # Another node's request took the upload over and wrote its facts (as after this
        # node lost the store for longer than its holder record lasts).
        key = f"{PREFIX}.hmacfs/resumable/{upload_id(location)}/facts"
        theirs = dict(facts(ceph, bucket, location) or {}, touched=1.0)
        ceph.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(theirs).encode())
        transfer.send()  # (the first part is stored; its facts are refused: this one stops)
        final = transfer.final or transfer.connection.read_final("PUT", 30)[1]
    except OSError:
        final = None  # (refused mid-body, the connection closed as the body still came)
    finally:
        transfer.connection.close()
    assert final is None or final.status >= 500, final
    assert facts(ceph, bucket, location) == theirs  # never overwritten by the old holder
    assert get(a, rel)[0] == 404


def test_an_empty_file_a_retry_and_another_body_as_for_plain_uploads(
    nodes: tuple[Server, Server], ceph: CephGateway, bucket: str
) -> None:
    a, b = nodes
    empty = f"{uuid.uuid4()}/empty.bin"
    created = rufh.create(slot(a, empty, 0), b"", VERSION)
    assert created.final is not None and created.final.status == 201, created
    assert stored(ceph, bucket, empty)[0] == b""
    # The same large body again (a client that lost the 201) gets its 201, on any node;
    # another body of the same size gets 409, and the file is left as it was.
    body = os.urandom(7 * MIB)
    rel = f"{uuid.uuid4()}/twice.bin"
    for node in (a, b):
        again = rufh.create(slot(node, rel, len(body)), body, VERSION)
        assert again.final is not None and again.final.status == 201, again
    other = rufh.create(slot(b, rel, len(body)), os.urandom(7 * MIB), VERSION)
    assert other.final is not None and other.final.status == 409, other
    assert stored(ceph, bucket, rel)[0] == body
    assert unfinished(ceph, bucket) == []
