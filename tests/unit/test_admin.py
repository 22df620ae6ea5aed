"""The admin commands (list, stats, delete, prune, verify) against a storage filled here.

The commands run in this process through `hmacfs.cli.main`, on a storage directory written
with `LocalStorage` itself: files with and without an uploader, old and expired ones, a file
without metadata, orphaned metadata, leftover partial uploads and a symbolic link out.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hmacfs import cli
from hmacfs.admin import commands
from hmacfs.admin.inventory import BadArgument, human_duration, human_size, signed_path
from hmacfs.core.units import parse_duration
from hmacfs.storage.local import LocalPartial, LocalStorage
from tests.helpers.files import visible_files

DAY = 86400.0
SECRET = "0123456789abcdef0123456789abcdef"


@dataclass
class Store:
    root: Path
    config: Path
    now: float

    def storage(self, *, ago: float = 0.0, metadata: str = "auto") -> LocalStorage:
        """The storage directory, on a clock `ago` seconds behind."""
        return LocalStorage(
            self.root, fsync=False, clock=lambda: time.time() - ago, metadata=metadata
        )

    def put(
        self,
        rel: str,
        data: bytes,
        content_type: str = "text/plain",
        *,
        uploader: str | None = None,
        ago: float = 0.0,
        expires: float | None = None,
        metadata: str = "auto",
    ) -> None:
        partial = self.storage(ago=ago, metadata=metadata).begin(
            rel, len(data), content_type, uploader=uploader, expires=expires
        )
        partial.write(data)
        partial.commit()


def write_config(path: Path, storage: Path, extra: str = "") -> None:
    path.write_text(
        f'[server]\nstorage_dir = "{storage}"\n{extra}\n[hmac]\nsecret = "{SECRET}"\n'
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    root = tmp_path / "files"
    config = tmp_path / "config.toml"
    write_config(config, root)
    LocalStorage(root, fsync=False)
    return Store(root, config, time.time())


@pytest.fixture
def filled(store: Store) -> Store:
    """Five files: two by Juliet (one ten days old), one by Romeo, one anonymous and
    expired, one written by another server (no metadata)."""
    store.put("a1/old.txt", b"o" * 300, uploader="juliet@example.com", ago=10 * DAY)
    store.put("a2/new.txt", b"n" * 20, uploader="juliet@example.com")
    store.put("b1/cat.jpg", b"c" * 5000, "image/jpeg", uploader="romeo@example.com", ago=DAY)
    store.put("c1/gone.bin", b"e", "application/octet-stream", expires=time.time() - 60)
    (store.root / "d1").mkdir()
    (store.root / "d1" / "foreign.png").write_bytes(b"png")
    return store


def run(store: Store, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(["--config", str(store.config), *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def listed(store: Store, capsys: pytest.CaptureFixture[str], *filters: str) -> list[str]:
    status, out, err = run(store, "list", "--json", *filters, capsys=capsys)
    assert (status, err) == (0, "")
    return sorted(str(entry["path"]) for entry in json_lines(out))


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry below `root` with its size and modification time (to see nothing changed)."""
    found = {}
    for directory, subdirs, names in os.walk(root):
        for name in [*subdirs, *names]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
    return found


# -- list -----------------------------------------------------------------------------------


def test_list_json_has_every_file_with_stable_keys(
    filled: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(filled, "list", "--json", capsys=capsys)
    assert (status, err) == (0, "")
    entries = {entry["path"]: entry for entry in json_lines(out)}
    assert sorted(entries) == [
        "a1/old.txt", "a2/new.txt", "b1/cat.jpg", "c1/gone.bin", "d1/foreign.png",
    ]
    for entry in entries.values():
        assert list(entry) == ["path", "size", "content_type", "uploader", "uploaded", "expires"]
    old = entries["a1/old.txt"]
    assert (old["size"], old["content_type"], old["uploader"]) == (
        300, "text/plain", "juliet@example.com",
    )
    assert isinstance(old["uploaded"], int)
    assert abs(filled.now - 10 * DAY - old["uploaded"]) < 5
    assert old["expires"] is None
    gone = entries["c1/gone.bin"]
    assert isinstance(gone["expires"], int) and gone["expires"] < time.time()
    foreign = entries["d1/foreign.png"]
    assert (foreign["content_type"], foreign["uploader"], foreign["expires"]) == (None, None, None)
    assert foreign["uploaded"] == int((filled.root / "d1" / "foreign.png").stat().st_mtime)


def test_list_text_has_a_header_and_a_line_per_file(
    filled: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(filled, "list", capsys=capsys)
    assert status == 0
    header, *lines = out.splitlines()
    assert header.split() == ["SIZE", "AGE", "EXPIRES", "TYPE", "UPLOADER", "PATH"]
    by_path = {line.split()[-1]: line.split() for line in lines}
    assert len(by_path) == 5
    assert by_path["a1/old.txt"][:5] == ["300B", "1w3d", "never", "text/plain",
                                         "juliet@example.com"]
    assert by_path["b1/cat.jpg"][0] == "4.9K"
    assert by_path["c1/gone.bin"][2] == "expired"
    assert by_path["d1/foreign.png"][3:5] == ["-", "-"]


def test_list_of_nothing_prints_nothing(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(store, "list", capsys=capsys) == (0, "", "")
    assert run(store, "list", "--json", capsys=capsys) == (0, "", "")


def test_list_filters(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert listed(filled, capsys, "--uploader", "juliet@example.com") == [
        "a1/old.txt", "a2/new.txt",
    ]
    assert listed(filled, capsys, "--uploader", "nobody") == []
    assert listed(filled, capsys, "--older-than", "12h") == ["a1/old.txt", "b1/cat.jpg"]
    assert listed(filled, capsys, "--older-than", "1w") == ["a1/old.txt"]
    assert listed(filled, capsys, "--larger-than", "1K") == ["b1/cat.jpg"]
    assert listed(filled, capsys, "--larger-than", "20") == ["a1/old.txt", "b1/cat.jpg"]
    assert listed(filled, capsys, "--type", "image/") == ["b1/cat.jpg"]
    assert listed(filled, capsys, "--type", "TEXT/") == ["a1/old.txt", "a2/new.txt"]
    assert listed(filled, capsys, "--expired") == ["c1/gone.bin"]
    # Every filter given must match.
    assert listed(
        filled, capsys, "--uploader", "juliet@example.com", "--older-than", "1d"
    ) == ["a1/old.txt"]
    assert listed(filled, capsys, "--expired", "--uploader", "juliet@example.com") == []


def test_list_escapes_what_a_terminal_would_act_on(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.put("x1/\x1b[31mred.txt", b"r", uploader="eve\x07@example.com")
    status, out, _ = run(store, "list", capsys=capsys)
    assert status == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "x1/\\x1b[31mred.txt" in out
    status, out, _ = run(store, "list", "--json", capsys=capsys)
    assert json_lines(out)[0]["path"] == "x1/\x1b[31mred.txt"


# -- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["list", "--older-than", "3x"], "--older-than: \"3x\" is not a duration"),
        (["list", "--older-than=-5m"], "--older-than: \"-5m\""),
        (["list", "--larger-than", "10Q"], "--larger-than: \"10Q\" is not a size"),
        (["list", "--uploader", ""], "--uploader: must not be empty"),
        (["list", "--type", ""], "--type: must not be empty"),
        (["stats", "--top=-1"], "--top: -1 is negative"),
        (["prune"], "prune: give at least one of --older-than, --uploader, --expired"),
        (["prune", "--dry-run"], "give at least one of"),
        (["prune", "--older-than", "soon"], "--older-than: \"soon\""),
        (["delete", "../etc/passwd"], "../etc/passwd: empty or dot segment in path"),
        (["delete", "a1/../../x"], "a1/../../x: empty or dot segment"),
        (["delete", "a1//old.txt"], "a1//old.txt: empty or dot segment"),
        (["delete", "a1/old.txt/"], "a1/old.txt/: empty or dot segment"),
        (["delete", "/etc/passwd"], "/etc/passwd: an absolute path"),
        (["delete", ".hmacfs/meta/00/1.json"], ".hmacfs/meta/00/1.json: inside the server's own"),
        (["delete", "out/passwd"], "out/passwd: leads out of the storage directory"),
        (["delete", "out"], "out: leads out of the storage directory"),
        (["delete", "http://h/elsewhere/a1/old.txt"], "not under the upload prefix /upload/"),
        (["delete", "http://h/upload/a1%2Fold.txt"], "encoded slash in path"),
        (["delete", "http://h/upload/.hmacfs/partial/x"], "inside the server's own .hmacfs"),
        (["delete", "http://h/upload/"], "names no file"),
        (["delete", "a1/\x01.txt"], "control character in path"),
    ],
)
def test_a_bad_argument_is_a_clear_error_naming_it(
    filled: Store, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    os.symlink("/etc", filled.root / "out")
    before = tree(filled.root)
    status, out, err = run(filled, *argv, capsys=capsys)
    assert status == cli.EXIT_CONFIG == 2
    assert out == ""
    assert err.startswith("hmac-file-server: ") and len(err.splitlines()) == 1, err
    assert named in err
    assert tree(filled.root) == before


def test_a_bad_path_among_good_ones_removes_nothing(
    filled: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(filled, "delete", "a1/old.txt", "../x", "a2/new.txt", capsys=capsys)
    assert status == 2 and out == "" and "../x" in err
    assert "a1/old.txt" in visible_files(filled.root)


def test_usage_errors_of_the_parser_are_status_2(filled: Store) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--config", str(filled.config), "delete"])
    assert caught.value.code == 2


def test_a_broken_configuration_is_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[server]\nstorage_dirr = 1\n")
    for command in ("list", "stats", "verify"):
        assert cli.main(["--config", str(config), command]) == 2
        assert "storage_dirr" in capsys.readouterr().err


def test_a_missing_storage_directory_is_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    write_config(config, tmp_path / "nowhere")
    for command in ("list", "stats", "verify"):
        assert cli.main(["--config", str(config), command]) == 1
        err = capsys.readouterr().err
        assert err.startswith("hmac-file-server: storage_dir ") and "nowhere" in err
    assert not (tmp_path / "nowhere").exists()


def test_exit_statuses_are_those_of_the_cli() -> None:
    assert (commands.EXIT_OK, commands.EXIT_FAILURE, commands.EXIT_USAGE) == (
        cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_CONFIG,
    )


# -- delete ---------------------------------------------------------------------------------


def test_delete_by_path_and_by_url(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.put("s1/ça va.txt", b"hello", uploader="juliet@example.com")
    store.put("s2/plus+sign.txt", b"+")
    store.put("s3/kept.txt", b"k")
    status, out, err = run(
        store,
        "delete",
        "s1/ça va.txt",
        "https://upload.example.org/upload/s2/plus+sign.txt?v=0",
        capsys=capsys,
    )
    assert (status, err) == (0, "")
    assert out.splitlines() == ["removed s1/ça va.txt", "removed s2/plus+sign.txt"]
    assert visible_files(store.root) == ["s3/kept.txt"]
    # Emptied directories go too, as the sweeper prunes them.
    assert sorted(p.name for p in store.root.iterdir()) == [".hmacfs", "s3"]


def test_delete_a_percent_encoded_url(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.put("s1/ça va.txt", b"hello")
    status, out, _ = run(store, "delete", "http://h/upload/s1/%C3%A7a%20va.txt", capsys=capsys)
    assert (status, out) == (0, "removed s1/ça va.txt\n")


def test_delete_removes_a_metadata_file_too(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.put("m1/f.txt", b"meta in a file", metadata="file")
    ino = (store.root / "m1" / "f.txt").stat().st_ino
    meta = store.root / ".hmacfs" / "meta" / f"{ino % 256:02x}" / f"{ino}.json"
    assert meta.exists()
    assert run(store, "delete", "m1/f.txt", capsys=capsys)[0] == 0
    assert not meta.exists()


def test_delete_of_a_missing_file_is_status_1_and_goes_on(
    filled: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(filled, "delete", "zz/none.txt", "a2/new.txt", "a%20b", capsys=capsys)
    assert status == 1
    assert out == "removed a2/new.txt\n"
    assert err.splitlines() == [
        "hmac-file-server: zz/none.txt: no such file",
        "hmac-file-server: a%20b: no such file (a percent-encoded path: give the whole URL)",
    ]


def test_delete_leaves_a_symbolic_link_and_its_target(
    filled: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink("../a1/old.txt", filled.root / "a2" / "link.txt")
    status, _, err = run(filled, "delete", "a2/link.txt", capsys=capsys)
    assert status == 1 and "a2/link.txt: a symbolic link, not a stored file" in err
    assert (filled.root / "a1" / "old.txt").exists()


def test_delete_through_a_link_inside_the_storage(
    filled: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink("a1", filled.root / "alias")
    status, out, _ = run(filled, "delete", "alias/old.txt", capsys=capsys)
    assert (status, out) == (0, "removed alias/old.txt\n")
    assert not (filled.root / "a1" / "old.txt").exists()


def test_a_read_only_storage_refuses_delete_prune_and_repair(
    filled: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmacfs.process.stores

    def read_only(config: object) -> LocalStorage:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(hmacfs.process.stores, "open_storage", read_only)
    for argv in (["delete", "a1/old.txt"], ["prune", "--expired"], ["verify", "--repair"]):
        status, out, err = run(filled, *argv, capsys=capsys)
        assert status == 1 and out == ""
        assert err == (
            f"hmac-file-server: {argv[0]}: cannot write to storage_dir {filled.root}: "
            "Read-only file system\n"
        )
    # What only looks does not need to write.
    assert run(filled, "prune", "--expired", "--dry-run", capsys=capsys)[0] == 0
    assert run(filled, "list", capsys=capsys)[0] == 0


def test_looking_writes_nothing(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    (filled.root / ".hmacfs" / "partial" / "old-partial").write_bytes(b"p")
    before = tree(filled.root)
    for argv in (["list"], ["list", "--json"], ["stats"], ["stats", "--json"], ["verify"],
                 ["verify", "--json"], ["prune", "--expired", "--dry-run"]):
        run(filled, *argv, capsys=capsys)
        assert tree(filled.root) == before, argv


# -- prune ----------------------------------------------------------------------------------


def test_prune_dry_run_then_for_real(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    before = visible_files(filled.root)
    status, out, err = run(filled, "prune", "--older-than", "12h", "--dry-run", capsys=capsys)
    assert (status, err) == (0, "")
    assert sorted(out.splitlines()[:-1]) == ["would remove a1/old.txt", "would remove b1/cat.jpg"]
    assert out.splitlines()[-1] == "would remove 2 files, 5.2K"
    assert visible_files(filled.root) == before
    status, out, err = run(filled, "prune", "--older-than", "12h", capsys=capsys)
    assert (status, err) == (0, "")
    assert sorted(out.splitlines()[:-1]) == ["removed a1/old.txt", "removed b1/cat.jpg"]
    assert out.splitlines()[-1] == "removed 2 files, 5.2K"
    assert visible_files(filled.root) == ["a2/new.txt", "c1/gone.bin", "d1/foreign.png"]


def test_prune_filters_combine(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        filled, "prune", "--uploader", "juliet@example.com", "--older-than", "1d", capsys=capsys
    )
    assert status == 0 and out.splitlines() == ["removed a1/old.txt", "removed 1 file, 300B"]
    status, out, _ = run(filled, "prune", "--expired", capsys=capsys)
    assert out.splitlines() == ["removed c1/gone.bin", "removed 1 file, 1B"]
    status, out, _ = run(filled, "prune", "--uploader", "nobody@example.com", capsys=capsys)
    assert (status, out) == (0, "removed 0 files, 0B\n")
    assert visible_files(filled.root) == ["a2/new.txt", "b1/cat.jpg", "d1/foreign.png"]


# -- stats ----------------------------------------------------------------------------------


def test_stats_json(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    partial = filled.root / ".hmacfs" / "partial"
    (partial / "abandoned").write_bytes(b"a" * 10)
    os.utime(partial / "abandoned", (time.time() - 2 * DAY,) * 2)
    (partial / "in-flight").write_bytes(b"f" * 7)
    upload = filled.storage().begin("r1/big.bin", 100, "text/plain", reopenable=True)
    upload.write(b"12345")
    upload.close()
    status, out, _ = run(filled, "stats", "--json", capsys=capsys)
    assert status == 0
    (stats,) = json_lines(out)
    assert stats["files"] == 5 and stats["bytes"] == 300 + 20 + 5000 + 1 + 3
    assert stats["expired"] == {"files": 1, "bytes": 1}
    assert stats["uploaders"] == [
        {"uploader": "romeo@example.com", "files": 1, "bytes": 5000},
        {"uploader": "juliet@example.com", "files": 2, "bytes": 320},
        {"uploader": None, "files": 2, "bytes": 4},
    ]
    assert stats["content_types"][0] == {"content_type": "image/jpeg", "files": 1, "bytes": 5000}
    assert {"content_type": None, "files": 1, "bytes": 3} in stats["content_types"]
    oldest = stats["oldest"]
    assert isinstance(oldest, dict) and oldest["path"] == "a1/old.txt"
    assert abs(oldest["age"] - 10 * DAY) < 5
    assert stats["partials"] == {
        "kept": {"files": 1, "bytes": 5},
        "in_progress": {"files": 1, "bytes": 7},
        "abandoned": {"files": 1, "bytes": 10},
    }
    status, out, _ = run(filled, "stats", "--json", "--top", "1", capsys=capsys)
    (stats,) = json_lines(out)
    assert [u["uploader"] for u in stats["uploaders"]] == ["romeo@example.com"]


def test_stats_text(filled: Store, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(filled, "stats", "--top", "2", capsys=capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "stored: 5 files, 5.2K (1 expired, waiting for the sweep)"
    assert lines[1] == "oldest: a1/old.txt (1w3d old)"
    assert lines[2].startswith("partial uploads: 0 kept for resumption (0B), ")
    uploaders = lines[lines.index("by uploader:") + 1 : lines.index("by content type:")]
    assert [line.split() for line in uploaders] == [
        ["romeo@example.com", "1", "file,", "4.9K"],
        ["juliet@example.com", "2", "files,", "320B"],
        ["...", "and", "1", "more"],
    ]


def test_stats_of_an_empty_storage(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(store, "stats", "--json", capsys=capsys)
    (stats,) = json_lines(out)
    assert (status, stats["files"], stats["oldest"], stats["uploaders"]) == (0, 0, None, [])


# -- verify ---------------------------------------------------------------------------------


def test_verify_a_clean_storage(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.put("v1/a.txt", b"a", uploader="juliet@example.com")
    store.put("v2/b.txt", b"b", metadata="file")
    assert run(store, "verify", capsys=capsys) == (0, "clean: 2 files checked\n", "")
    assert run(store, "verify", "--json", capsys=capsys) == (0, "", "")
    assert run(store, "verify", "--repair", capsys=capsys) == (0, "clean: 2 files checked\n", "")


@pytest.fixture
def troubled(filled: Store) -> Iterator[tuple[Store, LocalPartial]]:
    """`filled` with every kind of problem verify knows, and what must be left alone."""
    root = filled.root
    meta = root / ".hmacfs" / "meta"
    old = time.time() - 2 * 3600
    orphan = meta / "07" / "999999.json"
    orphan.write_text(json.dumps({"path": "zz/removed.txt", "size": 3}))
    os.utime(orphan, (old, old))
    unreadable = meta / "08" / "999998.json"
    unreadable.write_text("{not json")
    os.utime(unreadable, (old, old))
    (meta / "09" / "999997.json").write_text(json.dumps({"path": "zz/linking.txt", "size": 1}))
    filled.put("m1/grown.txt", b"abc", metadata="file")
    with open(root / "m1" / "grown.txt", "ab") as grown:
        grown.write(b"def")  # changed behind the server's back
    partial = root / ".hmacfs" / "partial"
    (partial / "abandoned").write_bytes(b"x" * 10)
    os.utime(partial / "abandoned", (time.time() - 2 * DAY,) * 2)
    (partial / "in-flight").write_bytes(b"y")
    storage = filled.storage()
    stale = storage.begin("r1/stale.bin", 100, "text/plain", reopenable=True)
    stale.write(b"123")
    stale.close()
    os.utime(partial / stale.name, (time.time() - 3 * DAY,) * 2)
    held = storage.begin("r2/held.bin", 100, "text/plain", reopenable=True)
    held.write(b"45")
    os.utime(partial / held.name, (time.time() - 3 * DAY,) * 2)
    fresh = storage.begin("r3/fresh.bin", 100, "text/plain", reopenable=True)
    fresh.write(b"6")
    fresh.close()
    (partial / f"{'f' * 32}.appending").touch()
    os.utime(partial / f"{'f' * 32}.appending", (old, old))
    os.symlink("/etc", root / "out")
    os.mkfifo(root / "d1" / "pipe")
    try:
        yield filled, held
    finally:
        held.abort()


def test_verify_reports_every_problem(
    troubled: tuple[Store, LocalPartial], capsys: pytest.CaptureFixture[str]
) -> None:
    store, held = troubled
    stale = next(p.name for p in store.storage().partial_files() if p.size == 3)
    before = tree(store.root)
    status, out, err = run(store, "verify", "--json", capsys=capsys)
    assert (status, err) == (1, "")
    found = {(entry["kind"], entry["path"]) for entry in json_lines(out)}
    assert found == {
        ("no metadata", "d1/foreign.png"),
        ("metadata mismatch", "m1/grown.txt"),
        ("orphaned metadata", ".hmacfs/meta/07/999999.json"),
        ("orphaned metadata", ".hmacfs/meta/08/999998.json"),
        ("abandoned partial", ".hmacfs/partial/abandoned"),
        ("abandoned partial", f".hmacfs/partial/{stale}"),
        ("abandoned partial", f".hmacfs/partial/{held.name}"),
        ("abandoned partial", f".hmacfs/partial/{'f' * 32}"),
        ("not a regular file", "out"),
        ("not a regular file", "d1/pipe"),
    }
    assert all(entry["repaired"] is False for entry in json_lines(out))
    assert tree(store.root) == before
    status, out, _ = run(store, "verify", capsys=capsys)
    lines = out.splitlines()
    assert status == 1 and lines[-1] == "10 problems found (--repair fixes what is safe)"
    assert "metadata mismatch: m1/grown.txt: its metadata says 3 bytes, the file has 6" in lines
    assert "not a regular file: out: a symbolic link to /etc (out of the storage directory)" in (
        lines
    )
    assert "orphaned metadata: .hmacfs/meta/07/999999.json: for zz/removed.txt, written 2h ago" in (
        lines
    )


def test_verify_repairs_what_is_safe(
    troubled: tuple[Store, LocalPartial], capsys: pytest.CaptureFixture[str]
) -> None:
    store, held = troubled
    root = store.root
    status, out, err = run(store, "verify", "--repair", capsys=capsys)
    assert (status, err) == (1, "")
    lines = out.splitlines()
    assert lines[-1] == "10 problems found, 6 repaired"
    assert (
        "no metadata: d1/foreign.png: a file without metadata"
        " -> wrote metadata (image/png, uploaded at its mtime)"
    ) in lines
    held_line = next(line for line in lines if held.name in line)
    assert held_line.endswith("(a request still holds it) -> left as it is")
    assert "metadata mismatch: m1/grown.txt: its metadata says 3 bytes, the file has 6" \
        " -> left as it is" in lines
    meta = root / ".hmacfs" / "meta"
    assert not (meta / "07" / "999999.json").exists()
    assert not (meta / "08" / "999998.json").exists()
    assert (meta / "09" / "999997.json").exists()  # young: maybe an upload being linked
    partials = sorted(os.listdir(root / ".hmacfs" / "partial"))
    kept = store.storage().partial_files()
    fresh = next(p for p in kept if p.kind == "resumable" and p.size == 1)
    assert "abandoned" not in partials and f"{'f' * 32}.appending" not in partials
    assert {"in-flight", held.name, fresh.name} <= set(partials)
    assert held.received == 2
    # The repaired file is served as its name says, from the metadata written for it.
    foreign = store.storage().lookup("d1/foreign.png")
    mtime = (root / "d1" / "foreign.png").stat().st_mtime
    assert (foreign.content_type, foreign.uploaded, foreign.expires) == ("image/png", mtime, None)
    # What is left is what cannot be repaired.
    status, out, _ = run(store, "verify", capsys=capsys)
    assert status == 1
    assert {line.split(":")[0] for line in out.splitlines()[:-1]} == {
        "metadata mismatch", "abandoned partial", "not a regular file",
    }
    held.abort()
    (root / "out").unlink()
    (root / "d1" / "pipe").unlink()
    (root / "m1" / "grown.txt").unlink()
    assert run(store, "verify", capsys=capsys)[:2] == (0, "clean: 5 files checked\n")


def test_verify_repair_json(
    troubled: tuple[Store, LocalPartial], capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = troubled
    status, out, _ = run(store, "verify", "--repair", "--json", capsys=capsys)
    entries = json_lines(out)
    assert status == 1 and len(entries) == 10
    for entry in entries:
        assert list(entry) == ["kind", "path", "detail", "repaired", "action"]
        assert entry["repaired"] is (entry["action"] is not None)
    assert sum(1 for entry in entries if entry["repaired"]) == 6


# -- the pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (90, "1m30s"), (3600, "1h"), (3605, "1h"), (90061, "1d1h"),
     (10 * DAY + 1, "1w3d"), (14 * DAY, "2w")],
)
def test_durations_for_people_read_back(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
    parsed = parse_duration(text)
    assert parsed is not None and parsed <= seconds


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (1023, "1023B"), (1024, "1.0K"), (5000, "4.9K"), (20 * 1024**2, "20M"),
     (3 * 1024**5, "3.0P")],
)
def test_sizes_for_people(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("argument", "rel"),
    [
        ("3f2a/cat.jpg", "3f2a/cat.jpg"),
        ("3f2a/100% cat.jpg", "3f2a/100% cat.jpg"),
        ("https://h/upload/3f2a/100%25%20cat.jpg", "3f2a/100% cat.jpg"),
        ("http://h:5050/upload/3f2a/a+b.jpg?v2=abc#x", "3f2a/a+b.jpg"),
        ("HTTPS://h/upload/%E2%82%AC/x", "€/x"),
    ],
)
def test_signed_paths(argument: str, rel: str) -> None:
    assert signed_path(argument, "/upload/") == rel


def test_signed_path_with_the_root_prefix() -> None:
    assert signed_path("http://h/3f2a/cat.jpg", "/") == "3f2a/cat.jpg"
    with pytest.raises(BadArgument, match="inside the server's own"):
        signed_path("http://h/.hmacfs/meta", "/")
