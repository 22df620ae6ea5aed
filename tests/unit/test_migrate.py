"""`hmac-file-server migrate-config`: Go HMAC File Server configurations turned into ours."""

from __future__ import annotations

import argparse
import io
import stat
from pathlib import Path

import pytest

from hmacfs.admin import migrate
from hmacfs.core import config
from hmacfs.core.settings import Config

FIXTURES = Path(__file__).parent / "migrate"
SECRET_NOTE = (
    "note: [security] secret: carried over as [hmac] secret; better move it into a file: "
    "write it to /etc/hmac-file-server/secret (owner root, group hmac-file-server, mode "
    '0640), then replace secret with secret_file = "/etc/hmac-file-server/secret"'
)
HEALTH_NOTE = (
    "note: the Go server also answers /health and /metrics on its upload port; here every "
    'path there may be a stored file (upload_prefix = "/"), so they are served on [metrics] '
    "listen only"
)
LIMIT_NOTE = (
    "note: [server] max_upload_size: not set: the Go server 3.4 then accepts uploads of any "
    "size (3.3: 10GB); written as 10G, set the limit your XMPP server announces"
)


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hmac-file-server")
    migrate.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["migrate-config", *argv])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    """The exit status, what went to `out` and the lines of standard error."""
    out = io.StringIO()
    status = migrate.run(parse_args(*argv), out)
    return status, out.getvalue(), capsys.readouterr().err.splitlines()


def migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], go: Path
) -> tuple[Config, list[str]]:
    """Migrate `go` into a file, load that file with our loader."""
    target = tmp_path / "config.toml"
    status, out, err = run(capsys, str(go), "-o", str(target))
    assert status == migrate.EXIT_OK, err
    assert out == ""
    assert err[-1] == f"migrate-config: wrote {target}"
    return config.load(target), err[:-1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "go.toml"
    path.write_text(text)
    return path


def test_minimal_genconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, notes = migrated(tmp_path, capsys, FIXTURES / "minimal.toml")
    assert cfg.server.listen == ("[::]:8080",)  # bind_ip 0.0.0.0: Go listens dual-stack
    assert cfg.server.upload_prefix == "/"
    assert cfg.server.storage_dir == Path("/srv/hmac-file-server/uploads")
    assert cfg.server.max_upload_size == 10 * 1024**3
    assert cfg.server.file_ttl == 8760 * 3600
    assert cfg.server.log_level == "info"
    assert cfg.hmac.secrets == (b"f3b1d0c8a2e94b7c9d6e5f4a3b2c1d0e",)
    assert cfg.hmac.v3_support
    assert cfg.metrics.listen == ()
    assert cfg.warnings == ()
    assert notes == [
        LIMIT_NOTE,
        SECRET_NOTE,
        "note: [server] min_free_bytes: not carried over: the Go server checks the free space "
        "once, at start-up; the nearest setting here refuses each upload that would cut into "
        "the free space ([quota] min_free_space): set it by hand if wanted",
        "note: [server] pidfilepath: not carried over: this server writes no PID file "
        "(systemd tracks it)",
        "note: [logging] file, max_size, max_backups, max_age, compress: not carried over: "
        "this server logs to standard error (the journal, under systemd), which rotates its "
        "logs",
        HEALTH_NOTE,
    ]


def test_the_written_file_keeps_the_secret_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    migrated(tmp_path, capsys, FIXTURES / "minimal.toml")
    written = tmp_path / "config.toml"
    assert stat.S_IMODE(written.stat().st_mode) == 0o640
    text = written.read_text()
    assert "# from [server] storage_path\n" in text
    assert 'file_ttl = "365d"\n' in text


def test_full_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, notes = migrated(tmp_path, capsys, FIXTURES / "full.toml")
    assert cfg.server.listen == ("192.0.2.10:8443",)
    assert cfg.server.storage_dir == Path("/var/lib/hmac-file-server/uploads")
    assert cfg.server.max_upload_size == 2 * 1024**3
    assert cfg.server.file_ttl == 30 * 86400
    assert cfg.server.sweep_interval == 3600
    assert cfg.server.log_level == "warning"
    assert cfg.metrics.listen == ("[::]:9090",)  # metricsport given as an integer
    assert cfg.hmac.secrets == (b"Qk9Xb3J0aGVyZW1haW5pbmdzZWNyZXQ0Mg",)
    assert cfg.tls.certificate is None  # the Go server has no TLS: nothing to carry over
    assert notes == [
        "warning: [tls]: unknown section, which the Go server ignores; not carried over",
        "warning: [server] tls_cert: unknown key, which the Go server ignores; not carried over",
        'note: [server] metricsport: carried over as [metrics] listen = ["[::]:9090"]: every '
        'interface, as the Go server does; prefer a private address (e.g. "127.0.0.1:9090")',
        SECRET_NOTE,
        'note: [logging] level: carried over as log_level = "warning"',
        "note: [server] metrics_path: not carried over: the Go server always serves /metrics, "
        "whatever this says (as does this server)",
        "note: [server] min_free_bytes: not carried over: the Go server checks the free space "
        "once, at start-up; the nearest setting here refuses each upload that would cut into "
        "the free space ([quota] min_free_space): set it by hand if wanted",
        "note: [server] autoadjustworkers: not carried over: the Go server's pool of "
        "goroutines; [server] workers here counts processes (0, the default, starts one per "
        "core)",
        "note: [server] pidfilepath, clean_upon_exit: not carried over: this server writes no "
        "PID file (systemd tracks it)",
        "note: [server] deduplication_enabled: not carried over: this server does not "
        "deduplicate files",
        "note: [server] force_protocol: not carried over: it concerns the Go server's "
        "outgoing connections",
        "note: [security] enablejwt, jwtsecret, jwtalgorithm, jwtexpiration: not carried "
        "over: the Go server's JWTs (any HMAC-signed token, with jwtsecret) are not what this "
        "server's jwt scheme checks (Prosody mod_http_file_share tokens signed with [hmac] "
        "secret)",
        "note: [logging] file: not carried over: this server logs to standard error (the "
        "journal, under systemd), which rotates its logs",
        "note: [timeouts] readtimeout, writetimeout, idletimeout: not carried over: a "
        "net/http timeout on the whole request or response, unlike this server's "
        "idle_timeout, head_timeout and send_timeout, whose defaults apply",
        "note: [timeouts] shutdown: not carried over: read but never used by the Go server "
        "(it always waits 30s, the default of shutdown_timeout here)",
        "note: [uploads] allowed_extensions: not carried over: this server has no file-type "
        "filter: it accepts every extension",
        "note: [uploads] chunked_uploads_enabled, chunk_size, resumable_uploads_enabled: not "
        "carried over: the Go server's own chunked-upload API has no counterpart here "
        "(clients resume with the IETF resumable-uploads draft, [server] resumable)",
        "note: [downloads] chunked_downloads_enabled, chunk_size: not carried over: read but "
        "never used by the Go server (downloads here always allow ranges)",
        "note: [deduplication] enabled, directory: not carried over: this server does not "
        "deduplicate files",
        "note: [clamav] clamavenabled, clamavsocket, numscanworkers, scanfileextensions: not "
        "carried over: this server does not scan uploads for viruses",
        "note: [redis] redisenabled, redisaddr, redispassword, redisdbindex, "
        "redishealthcheckinterval: not carried over: this server keeps no state in Redis",
        "note: [workers] numworkers, uploadqueuesize: not carried over: the Go server's pool "
        "of goroutines; [server] workers here counts processes (0, the default, starts one "
        "per core)",
        "note: [build] version: not carried over: the version the Go server reports; not a setting",
        "note: [server] max_file_age: not carried over: filettl takes precedence",
        HEALTH_NOTE,
    ]


def test_no_secret_is_ever_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cfg, notes = migrated(tmp_path, capsys, FIXTURES / "full.toml")
    text = "\n".join(notes)
    for secret in ("Qk9Xb3J0", "another-secret", "redis-password"):
        assert secret not in text


def test_names_from_the_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, notes = migrated(tmp_path, capsys, FIXTURES / "readme.toml")
    # The Go server ignores listenport, storagepath, metrics_*, file_ttl*: its defaults hold.
    assert cfg.server.listen == ("[::]:8080",)
    assert cfg.server.storage_dir == Path("/var/lib/hmac-file-server/files")
    assert cfg.server.file_ttl is None
    assert cfg.server.sweep_interval == 3600
    assert cfg.server.max_upload_size == 100 * 1024**2
    assert cfg.metrics.listen == ()
    assert cfg.hmac.secrets == (b"your-hmac-secret-key",)

    def ignored(key: str, where: str, real: str) -> str:
        return (
            f"warning: {key}: the Go server ignores this key ({where}, its code reads {real}); "
            "not carried over"
        )

    readme, examples = "its README names it", "its example configurations name it"
    assert notes == [
        ignored("[server] listenport", readme, "[server] listen_address"),
        ignored("[server] storagepath", readme, "[server] storage_path"),
        ignored("[server] metrics_enabled", examples, "[server] metricsenabled"),
        ignored("[server] metrics_port", examples, "[server] metricsport"),
        ignored("[server] file_ttl_enabled", readme, "[server] filettlenabled"),
        ignored("[server] file_ttl", readme, "[server] filettl"),
        ignored("[uploads] allowedextensions", examples, "[uploads] allowed_extensions"),
        ignored("[clamav] enabled", examples, "[clamav] clamavenabled"),
        "warning: [logging] levle: unknown key, which the Go server ignores; did you mean "
        "level?; not carried over",
        "note: [server] listen_address: not set: the Go server listens on its default, port "
        '8080; written as listen = ["[::]:8080"]',
        "note: [server] storage_path: not set: the Go server stores files in ./uploads under "
        "its working directory; set storage_dir to the absolute path of that directory",
        SECRET_NOTE,
        HEALTH_NOTE,
    ]


def test_writes_to_standard_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, str(FIXTURES / "minimal.toml"))
    assert status == migrate.EXIT_OK
    assert err[-1] == HEALTH_NOTE
    target = tmp_path / "out.toml"
    target.write_text(out)
    assert config.load(target).server.listen == ("[::]:8080",)


def test_broken_toml_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "broken.toml"
    status, out, err = run(capsys, str(path))
    assert (status, out) == (migrate.EXIT_INPUT, "")
    assert err == [f"migrate-config: {path}: invalid TOML: Invalid value (at line 3, column 16)"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[server]\nstorage_path = '\xff'\n", "line 2: not UTF-8 text"),
        (
            b"# a comment\nserver = 8080\n",
            "line 2: server must be a section (a table) for the Go server, not an integer",
        ),
    ],
)
def test_unusable_input_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "go.toml"
    path.write_bytes(content)
    status, _out, err = run(capsys, str(path))
    assert status == migrate.EXIT_INPUT
    assert err == [f"migrate-config: {path}: {message}"]


def test_missing_file_and_directory_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _out, err = run(capsys, str(tmp_path / "nope.toml"))
    assert status == migrate.EXIT_INPUT
    assert err == [
        f"migrate-config: {tmp_path / 'nope.toml'}: cannot read it: No such file or directory"
    ]
    status, _out, err = run(capsys, str(tmp_path))
    assert status == migrate.EXIT_INPUT
    assert err == [f"migrate-config: {tmp_path}: not a regular file"]


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "config.toml"
    target.write_text("keep me\n")
    go = str(FIXTURES / "minimal.toml")
    status, _out, err = run(capsys, go, "-o", str(target))
    assert status == migrate.EXIT_FAILURE
    assert err == [f"migrate-config: {target} exists; give --force to replace it"]
    assert target.read_text() == "keep me\n"
    status, _out, _err = run(capsys, go, "-o", str(target), "--force")
    assert status == migrate.EXIT_OK
    assert config.load(target).server.upload_prefix == "/"


def test_never_replaces_the_go_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    go = write(tmp_path, (FIXTURES / "minimal.toml").read_text())
    status, _out, err = run(capsys, str(go), "-o", str(go), "--force")
    assert status == migrate.EXIT_FAILURE
    assert err == [f"migrate-config: {go} is the file being migrated; write elsewhere"]


def test_unix_socket_and_loose_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    go = write(
        tmp_path,
        '[Server]\nunixsocket = "true"\nListen_Address = 8080\nstorage_path = "/srv/u"\n'
        'filettlenabled = 1\nfilettl = "1h30m"\nmax_upload_size = "512mb"\n'
        '[security]\nsecret = "0123456789abcdef0123"\n[logging]\nlevel = "trace"\n',
    )
    cfg, notes = migrated(tmp_path, capsys, go)
    assert cfg.server.listen == ("unix:/tmp/hmac-file-server.sock",)
    assert cfg.server.file_ttl == 3600  # parseTTL stops after the first unit
    assert cfg.server.max_upload_size == 512 * 1024**2
    assert cfg.server.log_level == "debug"
    assert notes[:4] == [
        "note: [Server] unixsocket: carried over: the Go server listens on "
        "/tmp/hmac-file-server.sock (and no TCP port); a socket under /run (e.g. "
        '"unix:/run/hmac-file-server/http.sock") is safer',
        "note: [Server] filettl: the Go server reads only the first number and unit of "
        '"1h30m" and ignores "30m"; carried over as "1h"',
        SECRET_NOTE,
        'note: [logging] level: carried over as log_level = "debug"',
    ]
    assert (
        "note: [Server] Listen_Address: not carried over: with unixsocket = true the Go "
        "server ignores it" in notes
    )


@pytest.mark.parametrize(
    ("server", "note"),
    [
        (
            'max_upload_size = "1TB"',
            'note: [server] max_upload_size: not carried over: "1TB" is not a size the Go '
            "server reads (an integer followed by KB, MB or GB); it refuses to start with it",
        ),
        (
            'bind_ip = "upload.example.org"',
            'note: [server] bind_ip: not carried over: "upload.example.org" is not an IP '
            "address (the Go server refuses to start with it); every interface is used",
        ),
        (
            'filettl = "720h"',
            "note: [server] filettl: not carried over: filettlenabled is not true, so the Go "
            "server keeps files",
        ),
        (
            'file_naming = "HMAC"',
            'note: [server] file_naming: not carried over: with "HMAC" the Go server stored '
            "files under names their URLs do not give; this server stores each file under its "
            "URL path, so files stored so far are not found by their URLs",
        ),
        (
            'storage_path = "./uploads"',
            'note: [server] storage_path: not carried over: "./uploads" is relative to the Go '
            "server's working directory, which this file cannot tell; set storage_dir to its "
            "absolute path",
        ),
        (
            'listen_address = "127.0.0.1:8080"',
            "note: [server] listen_address: the Go server wants a port number here (and the "
            'address in bind_ip); carried over as the address it names, "127.0.0.1:8080"',
        ),
        (
            "metricsenabled = true",
            "note: [server] metricsenabled: not carried over: no metricsport (the Go server "
            "then serves /metrics on a random port)",
        ),
    ],
)
def test_values_that_cannot_be_carried_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server: str, note: str
) -> None:
    go = write(tmp_path, f'[server]\n{server}\n[security]\nsecret = "0123456789abcdef"\n')
    _cfg, notes = migrated(tmp_path, capsys, go)
    assert note in notes


def test_no_secret_points_at_the_package_secret_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    go = write(tmp_path, '[server]\nlisten_address = "8080"\nstorage_path = "/srv/u"\n')
    target = tmp_path / "config.toml"
    status, _out, err = run(capsys, str(go), "-o", str(target))
    assert status == migrate.EXIT_OK
    assert (
        "note: [security] secret: not set: written as secret_file = "
        '"/etc/hmac-file-server/secret", the secret file the package creates; the XMPP '
        "server must sign with the secret in it"
    ) in err
    assert 'secret_file = "/etc/hmac-file-server/secret"\n' in target.read_text()


def test_go_size_and_ttl_follow_the_go_parsers() -> None:
    assert migrate.go_size("10GB") == 10 * 1024**3
    assert migrate.go_size(" 100kb ") == 100 * 1024
    for bad in ("100M", "1.5GB", "10 GB", "1TB", "GB", "-1MB"):
        with pytest.raises(ValueError, match="not a size the Go server reads"):
            migrate.go_size(bad)
    assert migrate.go_ttl("168h") == (168 * 3600, "")
    assert migrate.go_ttl("1Y") == (365 * 86400, "")
    assert migrate.go_ttl("2w3d") == (2 * 604800, "3d")
    for bad in ("", "3600", "h", "5x"):
        with pytest.raises(ValueError, match="not a duration the Go server reads"):
            migrate.go_ttl(bad)


def test_loose_go_values() -> None:
    assert migrate.go_string(9090) == "9090"
    assert migrate.go_string(True) == "1"
    assert migrate.go_string(["a"]) is None
    assert migrate.go_bool("true") is True
    assert migrate.go_bool("0") is False
    assert migrate.go_bool(2) is True
    assert migrate.go_bool("yes") is None


def test_every_reason_names_a_real_go_key() -> None:
    # The ignored names are not keys the Go server reads, and what they point at is one.
    for (section, key), (_where, real) in migrate.IGNORED_NAMES.items():
        assert key not in migrate.GO_KEYS[section]
        real_section, real_key = real[1:].split("] ")
        assert real_key in migrate.GO_KEYS[real_section]
