"""tus-js-client, the tus project's JavaScript client, in Node.js against the real server:
resumable uploads as the IETF draft describes them ("Resumable Uploads for HTTP"), in the two
versions tus-js-client speaks (its protocols "ietf-draft-03" and "ietf-draft-05", interop
versions 5 and 6).

Every upload goes through a `Cutter`, a proxy that breaks the connection at planned offsets
(fixed seeds), so the server sees a creation or an append end mid-body and the client resumes
(HEAD, then PATCH from the offset reported). The checks: the stored file is byte for byte the
source (fetched from the server, not through the proxy), the cuts happened and tus-js-client
retried, every answer named the client's interop version, and nothing is left in the storage
directory but the file (no partial upload of its path under `.hmacfs/partial`).

The client is tests/interop/tus/upload.mjs (tus-js-client pinned by its package-lock.json,
installed by ./dev.sh test with `npm ci`). It sends the whole file in the creation POST
(`chunk-size` infinity, as Apple's URLSession does) or in chunks (the POST carries the first,
PATCHes the rest). tus-js-client ignores the 104 (Upload Resumption Supported), so a creation
cut before its final answer makes it start a new upload; with `--location-from-104` the
script resumes at the 104's Location instead, as the draft intends. The file is given to
tus-js-client as a Buffer: given a file stream, tus-js-client 4 never says that an append
completes the upload (`test_file_source_never_says_complete`).

Where the client must have seen the 104 before a cut, the proxy cuts only connections the
server has answered and whose answer the client has read (`Cutter(after_answer=True)`): that
waits for what happened, not for a time.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cutter import Cut, Cutter
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import mac_v1

pytestmark = pytest.mark.interop

TUS_DIR = Path(__file__).parent / "tus"
SCRIPT = TUS_DIR / "upload.mjs"
#: tus-js-client's protocol names and the interop version each sends.
PROTOCOLS = {"ietf-draft-03": 5, "ietf-draft-05": 6}
MiB = 1 << 20
#: The files uploaded: several MiB, no multiple of the chunk size or of a read size.
SIZE = 4 * MiB + 12_345
CHUNK = MiB
#: How many times an upload is cut.
CUTS = 3
#: What a request head through the proxy takes at most (offsets past the first chunk).
HEAD_ROOM = 4096
CLIENT_TIMEOUT = 120
UPLOAD_RESOURCE = re.compile(r"/upload/\.hmacfs/uploads/[0-9a-f]{64}")
#: whole: the creation POST carries the whole file; chunks: it carries the first CHUNK bytes.
MODES = {"whole": "infinity", "chunks": str(CHUNK)}


# -- the client -------------------------------------------------------------------------------


@dataclass
class TusResult:
    """What upload.mjs printed (see its header), and how it exited."""

    returncode: int
    ok: bool
    url: str | None
    size: int
    offset: int | None
    retries: int
    errors: list[str]
    requests: list[dict[str, Any]]
    informational: list[dict[str, Any]]
    location104: str | None
    resumed_at: list[int]
    error: str | None
    stderr: str = field(repr=False, default="")

    def describe(self) -> str:
        return json.dumps(
            {name: value for name, value in vars(self).items() if name != "stderr"}, indent=1
        ) + (f"\nstderr: {self.stderr}" if self.stderr else "")

    def responses(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]

    def creations(self) -> list[dict[str, Any]]:
        """The 104s that answered a creation (one per upload resource made)."""
        return [i for i in self.informational if i["status"] == 104 and i["method"] == "POST"]


@pytest.fixture(scope="module")
def node() -> str:
    """Node.js and the pinned tus-js-client (fails naming the command when missing)."""
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is missing: run ./dev.sh test (or apt-get install nodejs npm)")
    if not (TUS_DIR / "node_modules" / "tus-js-client" / "package.json").is_file():
        pytest.fail(f"tus-js-client is not installed: run npm ci --prefix {TUS_DIR}")
    return found


def run_tus(
    node: str,
    source: Path,
    protocol: str,
    *,
    endpoint: str | None = None,
    upload_url: str | None = None,
    mode: str = "whole",
    retries: int = 12,
    location_from_104: bool = False,
    file_source: str = "buffer",
) -> TusResult:
    """Run upload.mjs once and return what it reported."""
    args = [node, str(SCRIPT), "--file", str(source), "--protocol", protocol]
    args += ["--chunk-size", MODES[mode], "--retries", str(retries), "--source", file_source]
    args += ["--timeout", str(CLIENT_TIMEOUT)]
    if endpoint is not None:
        args += ["--endpoint", endpoint]
    if upload_url is not None:
        args += ["--upload-url", upload_url]
    if location_from_104:
        args.append("--location-from-104")
    done = subprocess.run(
        args, capture_output=True, text=True, check=False, timeout=CLIENT_TIMEOUT + 60
    )
    lines = done.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise AssertionError(
            f"upload.mjs exited {done.returncode} without a result:\n"
            f"stdout: {done.stdout}\nstderr: {done.stderr}"
        ) from None
    return TusResult(
        returncode=done.returncode,
        ok=data["ok"],
        url=data["url"],
        size=data["size"],
        offset=data["offset"],
        retries=data["retries"],
        errors=data["errors"],
        requests=data["requests"],
        informational=data["informational"],
        location104=data["location104"],
        resumed_at=data["resumed_at"],
        error=data["error"],
        stderr=done.stderr,
    )


# -- servers, files, what the storage holds ---------------------------------------------------


class Servers:
    """The servers a test starts; each is stopped at the end and its exit and log checked."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    def start(self, directory: Path, *, workers: int = 1, **kwargs: Any) -> Server:
        directory.mkdir(parents=True, exist_ok=True)
        server = start_server(directory, workers=workers, **kwargs)
        self.started.append(server)
        return server

    def stop(self, server: Server) -> None:
        status = stop_server(server)
        assert status == 0, f"the server exited {status}:\n{server.log_tail()}"
        troubles = [line for line in server.log if "Traceback" in line or "Unhandled" in line]
        assert not troubles, "the server logged errors:\n" + server.log_tail(80)


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    for server in started.started:
        if server.process.poll() is None:
            started.stop(server)


def random_file(path: Path, seed: int, size: int = SIZE) -> str:
    """Write `size` random bytes (from `seed`) to `path`; their sha256."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def slot(rel: str, size: int = SIZE) -> str:
    """The signed slot path of `rel` (scheme v: tus-js-client sets its own content type)."""
    return f"/upload/{rel}?v={mac_v1(rel, size)}"


def new_rel(name: str) -> str:
    return f"{uuid.uuid4().hex}/{name}.bin"


def download(server: Server, rel: str) -> tuple[int, bytes]:
    """GET `rel` from the server itself (not through the proxy)."""
    try:
        with urllib.request.urlopen(server.url(rel), timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def leftovers(storage: Path, rel: str) -> list[str]:
    """What `.hmacfs/partial` still holds for uploads of `rel`: an unfinished upload's facts
    (`<id>.json` not marked completed) and any partial file (`<id>`) of an upload of `rel`."""
    partial = storage / ".hmacfs" / "partial"
    found = []
    for facts_path in sorted(partial.glob("*.json")):
        try:
            facts = json.loads(facts_path.read_bytes())
        except (OSError, ValueError):
            continue  # (removed as we read it, or being written)
        if not isinstance(facts, dict) or facts.get("rel") != rel:
            continue
        upload_id = facts_path.name.removesuffix(".json")
        if not facts.get("completed"):
            found.append(f"{facts_path.name} (not completed: {facts})")
        data = partial / upload_id
        if data.exists():
            found.append(f"{upload_id} ({data.stat().st_size} bytes)")
    return found


def partial_listing(storage: Path) -> list[str]:
    partial = storage / ".hmacfs" / "partial"
    return sorted(p.name for p in partial.iterdir()) if partial.is_dir() else []


def check_stored(server: Server, rel: str, digest: str) -> None:
    """The file is there, byte for byte, and nothing of its upload is left unfinished."""
    status, body = download(server, rel)
    assert status == 200
    assert len(body) == SIZE and hashlib.sha256(body).hexdigest() == digest, (
        f"stored file differs: {len(body)} bytes"
    )
    left = leftovers(server.storage, rel)
    assert not left, (
        f"left behind in .hmacfs/partial: {left}; all: {partial_listing(server.storage)}"
    )
    visible = sorted(
        str(p.relative_to(server.storage))
        for p in server.storage.rglob("*")
        if p.is_file() and ".hmacfs" not in p.relative_to(server.storage).parts
    )
    assert visible == [rel]


def check_answers(result: TusResult, protocol: str) -> None:
    """Every answer, the 104s included, named the client's interop version; every 104 of a
    creation gave the upload resource's Location."""
    version = str(PROTOCOLS[protocol])
    assert all(r["version"] == version for r in result.requests), result.describe()
    assert all(i["version"] == version for i in result.informational), result.describe()
    for informational in result.creations():
        assert UPLOAD_RESOURCE.search(informational["location"] or ""), result.describe()
        if protocol == "ietf-draft-05":
            assert informational["limit"] and "max-size=" in informational["limit"]


def check_succeeded(result: TusResult) -> None:
    """tus-js-client reported success, and its last request said it completed the upload."""
    assert result.ok and result.returncode == 0, result.describe()
    assert result.offset == SIZE, result.describe()
    assert result.url is not None and UPLOAD_RESOURCE.search(result.url), result.describe()
    sending = [r for r in result.requests if r["method"] in ("POST", "PATCH")]
    assert sending and sending[-1]["complete"] == "?1", result.describe()


def check_offsets(result: TusResult, cuts: list[Cut]) -> None:
    """After each cut of a whole-file request, the offset the server reported lies between
    where that request started and what reached the server of it (never more), when every
    cut fell in a body and each was followed by one offset retrieval."""
    if len(result.resumed_at) != len(cuts) or any(c.body_bytes is None for c in cuts):
        return
    start = 0
    for cut, resumed in zip(cuts, result.resumed_at, strict=True):
        assert cut.body_bytes is not None
        assert start <= resumed <= start + cut.body_bytes, (cut, result.resumed_at)
        start = resumed


def story(result: TusResult, cutter: Cutter, *servers: Server) -> str:
    """What the client, the proxy and the servers said, for an assertion message."""
    parts = [result.describe(), cutter.describe()]
    parts += [f"server on port {s.port}:\n{s.log_tail(40)}" for s in servers]
    return "\n".join(parts)


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_upload_uncut(
    node: str, servers: Servers, tmp_path: Path, protocol: str, mode: str
) -> None:
    server = servers.start(tmp_path / "server")
    source = tmp_path / "source.bin"
    digest = random_file(source, seed=1)
    rel = new_rel(f"uncut-{mode}")
    with Cutter(("127.0.0.1", server.port)) as cutter:
        result = run_tus(node, source, protocol, endpoint=cutter.url(slot(rel)), mode=mode)
    check_succeeded(result)
    assert result.retries == 0 and not result.errors, result.describe()
    check_answers(result, protocol)
    posts = result.responses("POST")
    if mode == "whole":
        assert [(p["status"], p["offset"]) for p in posts] == [(201, str(SIZE))]
        assert result.responses("PATCH") == []
    else:
        assert [(p["status"], p["offset"]) for p in posts] == [(201, str(CHUNK))]
        patches = result.responses("PATCH")
        assert [p["offset"] for p in patches] == [
            str(min(SIZE, CHUNK * n)) for n in range(2, len(patches) + 2)
        ]
        assert all(p["status"] == 201 for p in patches), result.describe()
    assert len(result.creations()) == 1
    assert result.url == result.creations()[0]["location"]
    check_stored(server, rel, digest)
    servers.stop(server)


#: The seed of each cut test's plan and file (fixed: a failure is reproducible).
SEEDS = {
    ("ietf-draft-03", "whole"): 303,
    ("ietf-draft-05", "whole"): 505,
    ("ietf-draft-03", "chunks"): 3031,
    ("ietf-draft-05", "chunks"): 5051,
}


def cut_upload(
    node: str, server: Server, tmp_path: Path, protocol: str, mode: str, *, cuts: int = CUTS
) -> None:
    """Upload through a cutter that breaks the upload `cuts` times, and check the outcome.

    whole: the POST carries the whole file and the client resumes at the 104's Location.
    chunks: tus-js-client as it is; the cuts fall after the first chunk (in PATCHes, which it
    resumes by itself: it knows the upload's URL from the creation's answer).
    A connection is cut only after the server answered on it (the 104 of a creation, which
    may come after the first few hundred KiB of body are on their way).
    """
    seed = SEEDS[protocol, mode]
    source = tmp_path / "source.bin"
    digest = random_file(source, seed=seed)
    rel = new_rel(f"cut-{mode}")
    low = 0 if mode == "whole" else CHUNK + HEAD_ROOM
    target = ("127.0.0.1", server.port)
    with Cutter.random(
        target, times=cuts, total=SIZE, seed=seed, low=low, after_answer=True
    ) as cutter:
        result = run_tus(
            node,
            source,
            protocol,
            endpoint=cutter.url(slot(rel)),
            mode=mode,
            location_from_104=mode == "whole",
        )
        made = cutter.cuts
        told = story(result, cutter, server)
    check_succeeded(result)
    assert len(made) == cuts, told
    assert result.retries >= cuts, told
    assert len(result.resumed_at) >= cuts, told
    # Every cut was resumed in the one upload resource: one creation, never a new one.
    assert len(result.creations()) == 1, told
    assert len(result.responses("POST")) == (0 if mode == "whole" else 1), told
    assert all(0 <= offset < SIZE for offset in result.resumed_at), told
    check_answers(result, protocol)
    if mode == "whole":
        check_offsets(result, made)
    check_stored(server, rel, digest)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_upload_cut_and_resumed(
    node: str, servers: Servers, tmp_path: Path, protocol: str, mode: str
) -> None:
    server = servers.start(tmp_path / "server")
    cut_upload(node, server, tmp_path, protocol, mode)
    servers.stop(server)


@pytest.mark.workers
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_upload_cut_and_resumed_with_two_workers(
    node: str, servers: Servers, tmp_path: Path, protocol: str, mode: str
) -> None:
    """The same with two worker processes: a resumption may reach the other worker while the
    one that had the cut request has not yet let go of it."""
    server = servers.start(tmp_path / "server", workers=2)
    cut_upload(node, server, tmp_path, protocol, mode, cuts=CUTS + 1)
    servers.stop(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_creation_cut_without_the_104_starts_over(
    node: str, servers: Servers, tmp_path: Path, protocol: str
) -> None:
    """tus-js-client as it is, whole file in the POST: it never sees the 104, so each cut
    creation is abandoned and a new one made. The last one completes the file, and the
    abandoned partials of the same slot go with that commit. (How many 104s reach the client
    is not certain: a reset drops what the client's socket had not read yet.)"""
    server = servers.start(tmp_path / "server")
    seed = 7 + PROTOCOLS[protocol]
    source = tmp_path / "source.bin"
    digest = random_file(source, seed=seed)
    rel = new_rel("starts-over")
    target = ("127.0.0.1", server.port)
    with Cutter.random(target, times=CUTS, total=SIZE, seed=seed) as cutter:
        result = run_tus(node, source, protocol, endpoint=cutter.url(slot(rel)))
        told = story(result, cutter, server)
        assert cutter.cuts_done == CUTS, told
    check_succeeded(result)
    assert result.retries == CUTS, told
    assert 1 <= len(result.creations()) <= CUTS + 1, told
    assert result.creations()[-1]["location"] == result.url, told
    assert [p["status"] for p in result.responses("POST")] == [201], told
    assert result.resumed_at == [], told
    check_answers(result, protocol)
    check_stored(server, rel, digest)
    servers.stop(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_upload_resumed_after_a_server_restart(
    node: str, servers: Servers, tmp_path: Path, protocol: str
) -> None:
    """Cut the creation, stop the server, start another on the same storage directory (and
    another port), resume: the offset survives the restart and the upload completes.

    The proxy's port is the server's public_url, so the upload resource's Location stays
    valid; the proxy is pointed at the new server. The first run has no retries (it ends at
    the first cut); the second resumes from the Location and is cut twice more.
    """
    seed = 11 + PROTOCOLS[protocol]
    source = tmp_path / "source.bin"
    digest = random_file(source, seed=seed)
    rel = new_rel("restart")
    plan = Cutter.random_plan(CUTS, SIZE, seed)
    with Cutter(("127.0.0.1", 9), plan, after_answer=True) as cutter:
        server_toml = f"public_url = {json.dumps(cutter.base)}"
        first = servers.start(tmp_path / "first", server_toml=server_toml)
        cutter.target = ("127.0.0.1", first.port)
        endpoint = cutter.url(slot(rel))
        before = run_tus(
            node, source, protocol, endpoint=endpoint, retries=0, location_from_104=True
        )
        told = story(before, cutter, first)
        assert not before.ok and before.returncode == 1, told
        assert cutter.cuts_done == 1, told
        location = before.location104
        assert location is not None and location.startswith(cutter.base + "/upload/"), told
        assert UPLOAD_RESOURCE.search(location), told
        arrived = cutter.cuts[0].body_bytes
        # The partial is kept, and is not the file.
        assert download(first, rel)[0] == 404
        servers.stop(first)
        assert leftovers(first.storage, rel), partial_listing(first.storage)
        assert not (first.storage / rel).exists()

        second = servers.start(tmp_path / "second", storage=first.storage, server_toml=server_toml)
        assert second.port != 0
        cutter.target = ("127.0.0.1", second.port)
        after = run_tus(node, source, protocol, upload_url=location)
        told = story(after, cutter, second)
    check_succeeded(after)
    assert after.url == location, told
    assert cutter.cuts_done == CUTS, told
    assert after.retries >= CUTS - 1, told
    assert after.resumed_at, told
    # What the first server had received is resumed from, not thrown away (and no more).
    assert arrived is not None and 0 < after.resumed_at[0] <= arrived, told
    assert after.responses("POST") == [], told
    check_answers(after, protocol)
    check_stored(second, rel, digest)
    servers.stop(second)


@pytest.mark.parametrize("mode", MODES)
def test_file_source_never_says_complete(
    node: str, servers: Servers, tmp_path: Path, mode: str
) -> None:
    """tus-js-client given a fs.ReadStream (what a Node.js program would pass): every PATCH
    says `Upload-Complete: ?0`, the last one too, and tus-js-client reports success once the
    offset is the size (its issue #820). The file is stored because the server takes an
    upload that has all of its (signed) size as complete, as tusd does."""
    server = servers.start(tmp_path / "server")
    source = tmp_path / "source.bin"
    digest = random_file(source, seed=13)
    rel = new_rel(f"file-source-{mode}")
    plan = [SIZE // 2] if mode == "whole" else []
    with Cutter(("127.0.0.1", server.port), plan, after_answer=True) as cutter:
        result = run_tus(
            node,
            source,
            "ietf-draft-05",
            endpoint=cutter.url(slot(rel)),
            mode=mode,
            location_from_104=True,
            file_source="path",
        )
        told = story(result, cutter, server)
    assert result.ok and result.offset == SIZE, told
    patches = result.responses("PATCH")
    assert patches and all(p["complete"] == "?0" for p in patches), told
    check_stored(server, rel, digest)
    servers.stop(server)
