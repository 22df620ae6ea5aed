"""Loading and validating the configuration file (hmacfs.core.config)."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hmacfs.core import config as cfg
from hmacfs.core.config import (
    MASK,
    SCHEMA,
    ConfigError,
    describe,
    development_config,
    load,
    parse,
    parse_listen,
)
from hmacfs.core.settings import (
    ALGORITHMS,
    Config,
    HmacSettings,
    HttpSettings,
    Listener,
    MetricsSettings,
    QuotaSettings,
    ServerSettings,
    StorageSettings,
    TlsSettings,
)
from hmacfs.core.units import MAX_DURATION, MAX_SIZE, toml_string
from tests.certs import Leaf, TestCA

SECRET = "0123456789abcdef0123456789abcdef"
MINIMAL = f'[hmac]\nsecret = "{SECRET}"\n'
ETC_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "config.toml"
INSTALLED_SECRET_FILE = "/etc/hmac-file-server/secret"


def write(path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    path.chmod(mode)
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load(write(tmp_path / "config.toml", text))


def error_of(tmp_path: Path, text: str) -> str:
    """The one-line message of the ConfigError that `text` as a config file gives, without
    the leading file name (which is checked here)."""
    path = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    prefix = f"{path}: "
    assert message.startswith(prefix)
    return message[len(prefix) :]


def with_secret(section: str) -> str:
    return section if "[hmac]" in section else section + "\n" + MINIMAL


def server_error(tmp_path: Path, body: str) -> str:
    return error_of(tmp_path, f"[server]\n{body}\n{MINIMAL}")


def http_error(tmp_path: Path, body: str) -> str:
    return error_of(tmp_path, f"[http]\n{body}\n{MINIMAL}")


def hmac_error(tmp_path: Path, body: str) -> str:
    return error_of(tmp_path, f"[hmac]\n{body}\n")


# --- the whole file --------------------------------------------------------------------------


def test_minimal_config_has_the_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    assert config.server == ServerSettings()
    assert config.hmac == HmacSettings(secrets=(SECRET.encode(),))
    assert config.http == HttpSettings()
    assert config.source == tmp_path / "config.toml"
    assert config.warnings == ()


FULL = """
[server]
listen = ["0.0.0.0:8080", "[::1]:8081", "unix:/run/hmac-file-server/http.sock"]
upload_prefix = "files"
storage_dir = "/srv/uploads"
max_upload_size = "1.5G"
public_url = "https://Upload.example.org/"
file_ttl = "30d"
sweep_interval = "1h"
idle_timeout = 45
fsync = false
log_level = "DEBUG"

[hmac]
secret = "sixteen-bytes-or-more-current"
previous_secrets = ["sixteen-bytes-or-more-older", "sixteen-bytes-or-more-oldest"]
algorithm = "SHA512"
v1_support = false
v2_support = true
token_support = false
v3_support = true
jwt_support = false
basic_support = false
cookie_support = false
x_hmac_support = true
clock_skew = 0
x_hmac_window = "1m30s"

[http]
cors_enabled = false
cors_origins = ["https://Chat.Example.org", "http://localhost:8080", "https://[::1]:8443"]
cors_methods = ["options", "Get", "PUT"]
cors_headers = ["Authorization", "X-Requested-With"]
cors_credentials = true
cors_max_age = 7200.5
"""


def test_every_key(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL)
    assert config.server == ServerSettings(
        listen=("0.0.0.0:8080", "[::1]:8081", "unix:/run/hmac-file-server/http.sock"),
        upload_prefix="/files/",
        storage_dir=Path("/srv/uploads"),
        max_upload_size=1536 * 1024 * 1024,
        public_url="https://Upload.example.org",
        file_ttl=30 * 86400.0,
        sweep_interval=3600.0,
        idle_timeout=45.0,
        fsync=False,
        log_level="debug",
    )
    assert config.hmac == HmacSettings(
        secrets=(
            b"sixteen-bytes-or-more-current",
            b"sixteen-bytes-or-more-older",
            b"sixteen-bytes-or-more-oldest",
        ),
        algorithm="sha512",
        v1_support=False,
        v2_support=True,
        token_support=False,
        v3_support=True,
        jwt_support=False,
        basic_support=False,
        cookie_support=False,
        x_hmac_support=True,
        clock_skew=0.0,
        x_hmac_window=90.0,
    )
    assert config.http == HttpSettings(
        cors_enabled=False,
        cors_origins=("https://chat.example.org", "http://localhost:8080", "https://[::1]:8443"),
        cors_methods=("OPTIONS", "GET", "PUT"),
        cors_headers=("Authorization", "X-Requested-With"),
        cors_credentials=True,
        cors_max_age=7200.5,
    )
    assert config.warnings == ()


def test_schema_matches_the_settings() -> None:
    """Every settings field but the secrets is a key of the same name, and vice versa."""
    assert set(SCHEMA) == {"server", "hmac", "http", "tls", "metrics", "quota", "storage"}
    for section, settings_class in (
        ("server", ServerSettings),
        ("hmac", HmacSettings),
        ("http", HttpSettings),
        ("tls", TlsSettings),
        ("metrics", MetricsSettings),
        ("quota", QuotaSettings),
        ("storage", StorageSettings),
    ):
        fields = {f.name for f in dataclasses.fields(settings_class)}
        keys = set(SCHEMA[section])
        if section == "hmac":
            fields = fields - {"secrets"} | {"secret", "secret_file", "previous_secrets"}
        assert keys == fields


def test_parse_without_source_names_no_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"server": {"max_upload_size": "100Q"}, "hmac": {"secret": SECRET}}, None)
    assert str(info.value) == (
        '[server] max_upload_size: "100Q" is not a size (examples: "100M", "1G", 1048576)'
    )
    assert info.value.path is None
    assert info.value.section == "server"
    assert info.value.key == "max_upload_size"


def test_config_error_attributes(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", '[server]\nfsync = "yes"\n' + MINIMAL)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (info.value.path, info.value.section, info.value.key) == (path, "server", "fsync")
    assert info.value.message == 'expected a boolean (true or false), got a string "yes"'


# --- reading the file ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: cannot read the configuration file: No such file or directory"
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read the configuration file: Is a directory"


def test_unreadable_file_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable file (simulated: the tests run as root, which reads any file)."""
    path = write(tmp_path / "config.toml", MINIMAL)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: cannot read the configuration file: Permission denied"


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[server]\nlisten = ["127.0.0.1:5050"\nfsync = true\n')
    assert message.startswith("invalid TOML: ")
    assert re.search(r"\(at line 3, column \d+\)$", message), message


def test_toml_duplicate_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[server]\nfsync = true\nfsync = false\n" + MINIMAL)
    assert message.startswith("invalid TOML: ")
    assert "line 3" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", b'[server]\nlog_level = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: not UTF-8 text (line 2, byte 22)"


def test_world_readable_config_with_inline_secret_warns(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", MINIMAL, mode=0o644)
    (warning,) = load(path).warnings
    assert warning == (
        f"{path}: [hmac] secret: {path} holds the secret and is readable by every user "
        f"(mode 0644); run chmod o-r {path}, or use secret_file"
    )


def test_world_readable_config_with_secret_file_is_fine(tmp_path: Path) -> None:
    write(tmp_path / "secret", SECRET + "\n")
    path = write(tmp_path / "config.toml", '[hmac]\nsecret_file = "secret"\n', mode=0o644)
    assert load(path).warnings == ()


def test_group_readable_config_is_fine(tmp_path: Path) -> None:
    assert load(write(tmp_path / "config.toml", MINIMAL, mode=0o640)).warnings == ()


# --- unknown sections and keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[server]\nlistne = ["127.0.0.1:5050"]\n',
            'unknown key [server] listne (did you mean "listen"?)',
        ),
        ("[hmac]\nsecert = 'x'\n", 'unknown key [hmac] secert (did you mean "secret"?)'),
        (
            "[http]\ncors_origin = ['*']\n",
            'unknown key [http] cors_origin (did you mean "cors_origins"?)',
        ),
        (
            "[server]\nlistenport = 8080\n",
            'unknown key [server] listenport (did you mean "listen"?)',
        ),
        (
            "[http]\nzzz = 1\n",
            "unknown key [http] zzz (known keys: cors_enabled, cors_origins, cors_methods, "
            "cors_headers, cors_credentials, cors_max_age)",
        ),
        ("[sever]\nfsync = true\n", "unknown section [sever] (did you mean [server]?)"),
        (
            "[network_resilience]\nenabled = true\n",
            "unknown section [network_resilience] (known sections: [server], [hmac], [http], "
            "[tls], [metrics], [quota], [storage])",
        ),
        ("[server.tls]\ncert = 'x'\n", "unknown key [server] tls (known keys: listen, "),
        (
            'listen = ["127.0.0.1:5050"]\n',
            "unknown key listen at the top level "
            "(every key belongs in a section; did you mean [server] listen?)",
        ),
        (
            "verbose = true\n",
            "unknown key verbose at the top level (every key belongs in a section)",
        ),
        ("server = 5\n", "[server]: expected a table (a section), got an integer"),
        ("http = ['*']\n", "[http]: expected a table (a section), got an array"),
        ('[server]\n"a\\nb" = 1\n', "unknown key [server] a\\nb (known keys: listen, "),
    ],
)
def test_unknown_keys_and_sections(tmp_path: Path, text: str, message: str) -> None:
    got = error_of(tmp_path, with_secret(text))
    assert got.startswith(message), got


def test_unknown_key_reported_before_bad_values(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[server]\nfsync = "yes"\nlog_levle = "info"\n' + MINIMAL)
    assert message == 'unknown key [server] log_levle (did you mean "log_level"?)'


def test_top_level_secret_is_not_echoed(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'secret = "hunter2hunter2hunter2"\n')
    assert "hunter2" not in message
    assert message.endswith("did you mean [hmac] secret?)")


# --- [server] --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "listen"),
    [
        ('"127.0.0.1:5050"', ("127.0.0.1:5050",)),
        ('["0.0.0.0:0"]', ("0.0.0.0:0",)),
        ('["[::]:443", "0.0.0.0:65535"]', ("[::]:443", "0.0.0.0:65535")),
        ('["localhost:5050"]', ("localhost:5050",)),
        ('["upload.example.org:80"]', ("upload.example.org:80",)),
        ('["[fe80::1%eth0]:80"]', ("[fe80::1%eth0]:80",)),
        ('"unix:/run/hmac-file-server/http.sock"', ("unix:/run/hmac-file-server/http.sock",)),
    ],
)
def test_listen(tmp_path: Path, value: str, listen: tuple[str, ...]) -> None:
    config = load_text(tmp_path, f"[server]\nlisten = {value}\n{MINIMAL}")
    assert config.server.listen == listen


LISTEN_EXAMPLES = (
    '(examples: "127.0.0.1:5050", "0.0.0.0:443", "[::1]:5050", "[::]:443", '
    '"unix:/run/hmac-file-server/http.sock")'
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '":5050"',
            '":5050" has no host: give one ("0.0.0.0:5050" or "[::]:5050" for every interface)',
        ),
        ('"::1:5050"', '"::1:5050": write an IPv6 address in brackets, like "[::1]:5050"'),
        ('"127.0.0.1"', f'"127.0.0.1" is not a listen address {LISTEN_EXAMPLES}'),
        ('"5050"', f'"5050" is not a listen address {LISTEN_EXAMPLES}'),
        ('"127.0.0.1:65536"', '"127.0.0.1:65536": "65536" is not a port number (0-65535)'),
        ('"127.0.0.1:-1"', '"127.0.0.1:-1": "-1" is not a port number (0-65535)'),
        ('"127.0.0.1:http"', '"127.0.0.1:http": "http" is not a port number (0-65535)'),
        ('"127.0.0.1:"', '"127.0.0.1:": "" is not a port number (0-65535)'),
        ('"999.1.1.1:80"', f'"999.1.1.1:80" is not a listen address {LISTEN_EXAMPLES}'),
        ('"bad_host:80"', f'"bad_host:80" is not a listen address {LISTEN_EXAMPLES}'),
        ('" 127.0.0.1:80"', f'" 127.0.0.1:80" is not a listen address {LISTEN_EXAMPLES}'),
        ('"[::1]"', f'"[::1]" is not a listen address {LISTEN_EXAMPLES}'),
        ('"[::g]:80"', '"[::g]:80": "::g" is not an IPv6 address'),
        ('"[127.0.0.1]:80"', '"[127.0.0.1]:80": "127.0.0.1" is not an IPv6 address'),
        ('"unix:run/x.sock"', '"unix:run/x.sock": the socket path must be absolute'),
        ('"unix:"', '"unix:": the socket path must be absolute'),
        (
            '"unix:/' + "x" * 107 + '"',
            '"unix:/' + "x" * 70 + "...: the socket path is longer than 107 bytes",
        ),
        ('"unix:/a\\u0000b"', '"unix:/a\\u0000b": the socket path contains a NUL character'),
        ('"tcp:5050"', f'"tcp:5050": write an address, not a Twisted endpoint {LISTEN_EXAMPLES}'),
        (
            '"systemd:domain=INET:index=0"',
            '"systemd:domain=INET:index=0": name the socket by its FileDescriptorName or its '
            'position (examples: "systemd:http", "systemd:0", "https+systemd:https")',
        ),
        ("[]", f"give at least one address to listen on {LISTEN_EXAMPLES}"),
        (
            '["127.0.0.1:1", "[::1]:2", "127.0.0.1:1"]',
            '"127.0.0.1:1" is listed twice',
        ),
        ("5050", "expected an array of strings, got an integer 5050"),
        ('["127.0.0.1:1", 2]', 'expected an array of strings, got an array ["127.0.0.1:1", 2]'),
        ("true", "expected an array of strings, got a boolean true"),
    ],
)
def test_listen_errors(tmp_path: Path, value: str, message: str) -> None:
    assert server_error(tmp_path, f"listen = {value}") == f"[server] listen: {message}"


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("upload", "/upload/"),
        ("/upload", "/upload/"),
        ("upload/", "/upload/"),
        ("/upload/", "/upload/"),
        ("/", "/"),
        ("", "/"),
        ("a/b", "/a/b/"),
        ("/x.y/~z-_/", "/x.y/~z-_/"),
        ("/a:b@c+d=e/", "/a:b@c+d=e/"),
    ],
)
def test_upload_prefix(tmp_path: Path, value: str, prefix: str) -> None:
    config = load_text(tmp_path, f"[server]\nupload_prefix = {toml_string(value)}\n{MINIMAL}")
    assert config.server.upload_prefix == prefix


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/up?x", '"/up?x" must not contain "?" (a path prefix only)'),
        ("/up#x", '"/up#x" must not contain "#" (a path prefix only)'),
        ("/up%20load/", '"/up%20load/" must not contain "%" (a path prefix only)'),
        ("/a//b/", '"/a//b/" must not contain "//"'),
        ("//", '"//" must not contain "//"'),
        ("/a/../b/", '"/a/../b/" must not contain "." or ".." segments'),
        ("/./", '"/./" must not contain "." or ".." segments'),
        ("..", '".." must not contain "." or ".." segments'),
        (
            "/up load/",
            '"/up load/" may contain only letters, digits, "/" and -._~!$&\'()*+,;=:@',
        ),
        ("/très/", '"/très/" may contain only letters, digits, "/" and -._~!$&\'()*+,;=:@'),
    ],
)
def test_upload_prefix_errors(tmp_path: Path, value: str, message: str) -> None:
    got = server_error(tmp_path, f"upload_prefix = {toml_string(value)}")
    assert got == f"[server] upload_prefix: {message}"


def test_upload_prefix_type(tmp_path: Path) -> None:
    assert server_error(tmp_path, "upload_prefix = ['/up/']") == (
        '[server] upload_prefix: expected a string, got an array ["/up/"]'
    )


def test_storage_dir_absolute(tmp_path: Path) -> None:
    config = load_text(tmp_path, f'[server]\nstorage_dir = "/srv/x"\n{MINIMAL}')
    assert config.server.storage_dir == Path("/srv/x")


def test_storage_dir_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, f'[server]\nstorage_dir = "var/files"\n{MINIMAL}')
    assert config.server.storage_dir == tmp_path / "var" / "files"


def test_storage_dir_relative_to_a_relative_config_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc" / "config.toml", f'[server]\nstorage_dir = "files"\n{MINIMAL}')
    monkeypatch.chdir(tmp_path)
    config = load(Path("etc/config.toml"))
    assert config.server.storage_dir == tmp_path / "etc" / "files"
    assert config.server.storage_dir.is_absolute()


def test_storage_dir_relative_without_a_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"server": {"storage_dir": "files"}, "hmac": {"secret": SECRET}}, None)
    assert str(info.value) == (
        '[server] storage_dir: "files" must be an absolute path '
        "(there is no configuration file to resolve it against)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('""', "must not be empty"),
        ('"/a\\u0000b"', '"/a\\u0000b" is not a path (it contains a NUL character)'),
        ("5", "expected a string, got an integer 5"),
    ],
)
def test_storage_dir_errors(tmp_path: Path, value: str, message: str) -> None:
    assert server_error(tmp_path, f"storage_dir = {value}") == f"[server] storage_dir: {message}"


@pytest.mark.parametrize(
    ("value", "size"),
    [("1048576", 1048576), ('"100M"', 100 * 1024**2), ('"10 MiB"', 10 * 1024**2), ("0", 0)],
)
def test_max_upload_size(tmp_path: Path, value: str, size: int) -> None:
    config = load_text(tmp_path, f"[server]\nmax_upload_size = {value}\n{MINIMAL}")
    assert config.server.max_upload_size == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"100Q"', '"100Q" is not a size (examples: "100M", "1G", 1048576)'),
        ('""', '"" is not a size (examples: "100M", "1G", 1048576)'),
        ('"nan"', '"nan" is not a size (examples: "100M", "1G", 1048576)'),
        ("-1", "-1 is not a size: it is negative"),
        ('"-5M"', '"-5M" is not a size: it is negative'),
        (str(MAX_SIZE + 1), f"{MAX_SIZE + 1} is too large a size (at most {MAX_SIZE} bytes)"),
        (
            "1.5e9",
            'expected a size (an integer number of bytes or a string such as "100M"), '
            "got a float 1500000000.0",
        ),
        (
            "true",
            'expected a size (an integer number of bytes or a string such as "100M"), '
            "got a boolean true",
        ),
    ],
)
def test_max_upload_size_errors(tmp_path: Path, value: str, message: str) -> None:
    got = server_error(tmp_path, f"max_upload_size = {value}")
    assert got == f"[server] max_upload_size: {message}"


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("https://upload.example.org", "https://upload.example.org"),
        ("https://upload.example.org/", "https://upload.example.org"),
        ("HTTPS://upload.example.org:8443/", "https://upload.example.org:8443"),
        ("http://127.0.0.1:5050", "http://127.0.0.1:5050"),
        ("http://[::1]:5050/", "http://[::1]:5050"),
        ("https://example.org/xmpp/", "https://example.org/xmpp"),
    ],
)
def test_public_url(tmp_path: Path, value: str, url: str) -> None:
    config = load_text(tmp_path, f"[server]\npublic_url = {toml_string(value)}\n{MINIMAL}")
    assert config.server.public_url == url


PUBLIC_URL_EXAMPLES = '(examples: "https://upload.example.org", "http://127.0.0.1:5050")'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://example.org", f'"ftp://example.org" is not an http(s) URL {PUBLIC_URL_EXAMPLES}'),
        ("example.org", f'"example.org" is not an http(s) URL {PUBLIC_URL_EXAMPLES}'),
        ("https://", f'"https://" is not an http(s) URL {PUBLIC_URL_EXAMPLES}'),
        ("", f'"" is not an http(s) URL {PUBLIC_URL_EXAMPLES}'),
        (
            "https://x.org:99999",
            f'"https://x.org:99999" is not an http(s) URL {PUBLIC_URL_EXAMPLES}',
        ),
        ("https://x.org:0", '"https://x.org:0" has port 0'),
        ("https://x.org/?a=b", '"https://x.org/?a=b" must not have a query or fragment'),
        ("https://x.org/#top", '"https://x.org/#top" must not have a query or fragment'),
        ("https://u:p@x.org", '"https://u:p@x.org" must not contain a user name or password'),
        ("https://x.org/a b", '"https://x.org/a b" must not contain spaces or control characters'),
        ("https://bad_host.org", '"https://bad_host.org" has an invalid host name'),
        ("https://[::g]/", f'"https://[::g]/" is not an http(s) URL {PUBLIC_URL_EXAMPLES}'),
    ],
)
def test_public_url_errors(tmp_path: Path, value: str, message: str) -> None:
    got = server_error(tmp_path, f"public_url = {toml_string(value)}")
    assert got == f"[server] public_url: {message}"


@pytest.mark.parametrize(
    ("value", "ttl"),
    [
        ('"never"', None),
        ('"off"', None),
        ("0", None),
        ('"0s"', None),
        ('"30d"', 30 * 86400.0),
        ("3600", 3600.0),
        ("0.5", 0.5),
        ('"1w1d"', 8 * 86400.0),
    ],
)
def test_file_ttl(tmp_path: Path, value: str, ttl: float | None) -> None:
    config = load_text(tmp_path, f"[server]\nfile_ttl = {value}\n{MINIMAL}")
    assert config.server.file_ttl == ttl


DURATION_EXAMPLES = '(examples: "30s", "5m", "12h", "7d", "1h30m", 90)'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('file_ttl = "-1d"', '[server] file_ttl: "-1d" is not a duration: it is negative'),
        (
            'file_ttl = "soon"',
            '[server] file_ttl: "soon" is not a duration '
            '(examples: "30s", "5m", "12h", "7d", "1h30m", 90, "never")',
        ),
        (
            "file_ttl = true",
            '[server] file_ttl: expected a duration (a number of seconds or a string such as "5m"),'
            " got a boolean true",
        ),
        (
            'file_ttl = "200y"',
            '[server] file_ttl: "200y" is not a duration '
            '(examples: "30s", "5m", "12h", "7d", "1h30m", 90, "never")',
        ),
        (
            'file_ttl = "40000d"',
            '[server] file_ttl: "40000d" is too long a duration '
            '(at most 36525d, 100 years; use "never" for no limit)',
        ),
        (
            "sweep_interval = 0",
            "[server] sweep_interval: 0 is too short: it must be more than 0 seconds",
        ),
        (
            'sweep_interval = "never"',
            '[server] sweep_interval: "never" is not allowed here: give a duration '
            + DURATION_EXAMPLES,
        ),
        (
            'idle_timeout = "0s"',
            '[server] idle_timeout: "0s" is too short: it must be more than 0 seconds',
        ),
        ("idle_timeout = -5", "[server] idle_timeout: -5 is not a duration: it is negative"),
        (
            "idle_timeout = nan",
            f"[server] idle_timeout: nan is not a duration {DURATION_EXAMPLES}",
        ),
        (
            "idle_timeout = inf",
            f"[server] idle_timeout: inf is not a duration {DURATION_EXAMPLES}",
        ),
        (
            "idle_timeout = 1979-05-27",
            "[server] idle_timeout: expected a duration "
            '(a number of seconds or a string such as "5m"), got a date/time 1979-05-27',
        ),
        (
            'idle_timeout = "5m30m"',
            '[server] idle_timeout: "5m30m" is not a duration: '
            'write each unit once, largest first (like "1h30m")',
        ),
    ],
)
def test_duration_errors(tmp_path: Path, body: str, message: str) -> None:
    got = server_error(tmp_path, body)
    # A TOML date comes back as datetime.date, whose repr is not TOML; only the start matters.
    if "date/time" in message:
        assert got.startswith(message.rsplit(" ", 1)[0])
    else:
        assert got == message


def test_durations(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, f'[server]\nsweep_interval = "1.5m"\nidle_timeout = 0.25\n{MINIMAL}'
    )
    assert config.server.sweep_interval == 90.0
    assert config.server.idle_timeout == 0.25


@pytest.mark.parametrize("value", ['"yes"', "1", '"true"', "[true]"])
def test_booleans_must_be_booleans(tmp_path: Path, value: str) -> None:
    got = server_error(tmp_path, f"fsync = {value}")
    assert got.startswith("[server] fsync: expected a boolean (true or false), got ")


@pytest.mark.parametrize(
    ("value", "level"), [("debug", "debug"), ("WARNING", "warning"), ("Error", "error")]
)
def test_log_level(tmp_path: Path, value: str, level: str) -> None:
    config = load_text(tmp_path, f'[server]\nlog_level = "{value}"\n{MINIMAL}')
    assert config.server.log_level == level


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '"warn"',
            '"warn" is not one of debug, info, warning, error (did you mean "warning"?)',
        ),
        ('"verbose"', '"verbose" is not one of debug, info, warning, error'),
        ("10", "expected a string, got an integer 10"),
    ],
)
def test_log_level_errors(tmp_path: Path, value: str, message: str) -> None:
    assert server_error(tmp_path, f"log_level = {value}") == f"[server] log_level: {message}"


# --- [hmac] ----------------------------------------------------------------------------------


def test_secret_is_utf8_bytes(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[hmac]\nsecret = "très secret, très long"\n')
    assert config.hmac.secrets == ("très secret, très long".encode(),)


def test_inline_secret_keeps_its_spaces(tmp_path: Path) -> None:
    config = load_text(tmp_path, f'[hmac]\nsecret = " {SECRET} "\n')
    assert config.hmac.secrets == (f" {SECRET} ".encode(),)


@pytest.mark.parametrize("text", ["[hmac]\nalgorithm = 'sha256'\n", "[server]\nfsync = true\n", ""])
def test_no_secret(tmp_path: Path, text: str) -> None:
    assert error_of(tmp_path, text) == (
        "[hmac]: no secret: set secret (the shared secret itself) or secret_file "
        "(a file holding it), the same secret the XMPP server signs upload URLs with"
    )


def test_secret_and_secret_file(tmp_path: Path) -> None:
    write(tmp_path / "secret", SECRET)
    assert hmac_error(tmp_path, f'secret = "{SECRET}"\nsecret_file = "secret"') == (
        "[hmac] secret_file: give either secret or secret_file, not both"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('""', "[hmac] secret: must not be empty"),
        ("1234567890123456", "[hmac] secret: expected a string, got an integer"),
        ('["hunter2hunter2hunter2"]', "[hmac] secret: expected a string, got an array"),
    ],
)
def test_secret_errors_do_not_show_the_secret(tmp_path: Path, value: str, message: str) -> None:
    assert hmac_error(tmp_path, f"secret = {value}") == message


def test_short_secret_warns(tmp_path: Path) -> None:
    (warning,) = load_text(tmp_path, '[hmac]\nsecret = "short"\n').warnings
    path = tmp_path / "config.toml"
    assert warning == (
        f"{path}: [hmac] secret: the secret is only 5 bytes long; use at least 16 random bytes "
        "(e.g. the output of `openssl rand -hex 32`)"
    )


def test_secret_file(tmp_path: Path) -> None:
    write(
        tmp_path / "secret",
        "\ufeff# current first\n"
        f"  {SECRET}  \r\n"
        "\n"
        "   \n"
        "# then older ones\n"
        "older-secret-still-accepted\n"
        "  # indented comment\n"
        "oldest-secret-still-accepted",
    )
    config = load_text(
        tmp_path,
        '[hmac]\nsecret_file = "secret"\nprevious_secrets = ["from-the-config-file-too"]\n',
    )
    assert config.hmac.secrets == (
        SECRET.encode(),
        b"older-secret-still-accepted",
        b"oldest-secret-still-accepted",
        b"from-the-config-file-too",
    )
    assert config.warnings == ()


def test_secret_file_absolute(tmp_path: Path) -> None:
    secret_file = write(tmp_path / "elsewhere", SECRET)
    (tmp_path / "etc").mkdir()
    config = load(
        write(tmp_path / "etc" / "config.toml", f'[hmac]\nsecret_file = "{secret_file}"\n')
    )
    assert config.hmac.secrets == (SECRET.encode(),)


def test_secret_file_relative_without_a_file() -> None:
    with pytest.raises(ConfigError) as info:
        parse({"hmac": {"secret_file": "secret"}})
    assert str(info.value) == (
        '[hmac] secret_file: "secret" must be an absolute path '
        "(there is no configuration file to resolve it against)"
    )


def test_secret_file_world_readable_warns(tmp_path: Path) -> None:
    secret_file = write(tmp_path / "secret", SECRET, mode=0o644)
    (warning,) = load_text(tmp_path, '[hmac]\nsecret_file = "secret"\n').warnings
    assert warning == (
        f"{tmp_path / 'config.toml'}: [hmac] secret_file: {secret_file} is readable by every "
        f"user (mode 0644); run chmod o-r {secret_file}"
    )


def test_secret_file_short_secret_warns(tmp_path: Path) -> None:
    secret_file = write(tmp_path / "secret", f"{SECRET}\n\nold\n")
    (warning,) = load_text(tmp_path, '[hmac]\nsecret_file = "secret"\n').warnings
    assert warning.endswith(
        f"[hmac] secret_file: the secret on line 3 of {secret_file} is only 3 bytes long; "
        "use at least 16 random bytes (e.g. the output of `openssl rand -hex 32`)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", '{path} holds no secret (blank lines and lines starting with "#" are skipped)'),
        (
            "\n# only a comment\n  \n",
            '{path} holds no secret (blank lines and lines starting with "#" are skipped)',
        ),
        (b"\xff\xfe" + SECRET.encode(), "{path} is not UTF-8 text (byte 0)"),
        ("x" * (64 * 1024 + 1), "{path} is larger than 65536 bytes; is it a secret file?"),
    ],
)
def test_secret_file_errors(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = write(tmp_path / "secret", content)
    got = hmac_error(tmp_path, 'secret_file = "secret"')
    assert got == "[hmac] secret_file: " + message.format(path=path)


def test_secret_file_missing(tmp_path: Path) -> None:
    assert hmac_error(tmp_path, 'secret_file = "nope"') == (
        f"[hmac] secret_file: cannot read {tmp_path / 'nope'}: No such file or directory"
    )


def test_secret_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    assert hmac_error(tmp_path, 'secret_file = "secrets"') == (
        f"[hmac] secret_file: {tmp_path / 'secrets'} is not a regular file"
    )


def test_secret_file_is_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "secret")  # opening it must not wait for a writer
    assert hmac_error(tmp_path, 'secret_file = "secret"') == (
        f"[hmac] secret_file: {tmp_path / 'secret'} is not a regular file"
    )


def test_secret_file_unreadable_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreadable secret file (simulated: the tests run as root)."""
    write(tmp_path / "secret", SECRET)
    path = write(tmp_path / "config.toml", '[hmac]\nsecret_file = "secret"\n')

    def refuse(*args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: [hmac] secret_file: cannot read {tmp_path / 'secret'}: Permission denied"
    )


def test_previous_secrets_empty(tmp_path: Path) -> None:
    text = f'[hmac]\nsecret = "{SECRET}"\nprevious_secrets = []\n'
    assert load_text(tmp_path, text).hmac.secrets == (SECRET.encode(),)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"hunter2hunter2hunter2"', "expected an array of strings, got a string"),
        ("[1]", "expected an array of strings, got an array"),
        ('["hunter2hunter2hunter2", ""]', "item 2 is empty"),
    ],
)
def test_previous_secrets_errors(tmp_path: Path, value: str, message: str) -> None:
    got = error_of(tmp_path, f'[hmac]\nsecret = "{SECRET}"\nprevious_secrets = {value}\n')
    assert got == f"[hmac] previous_secrets: {message}"
    assert "hunter2" not in got


def test_short_previous_secret_warns(tmp_path: Path) -> None:
    text = f'[hmac]\nsecret = "{SECRET}"\nprevious_secrets = ["{SECRET}-old", "old"]\n'
    (warning,) = load_text(tmp_path, text).warnings
    assert ": [hmac] previous_secrets: item 2 is only 3 bytes long;" in warning


def test_repeated_secrets_are_used_once(tmp_path: Path) -> None:
    text = f'[hmac]\nsecret = "{SECRET}"\nprevious_secrets = ["{SECRET}", "{SECRET}-old"]\n'
    config = load_text(tmp_path, text)
    assert config.hmac.secrets == (SECRET.encode(), f"{SECRET}-old".encode())
    assert config.warnings == (
        f"{tmp_path / 'config.toml'}: [hmac]: the same secret is given more than once; "
        "it is used once",
    )


@pytest.mark.parametrize(
    ("value", "algorithm"), [(a, a) for a in ALGORITHMS] + [("SHA384", "sha384")]
)
def test_algorithm(tmp_path: Path, value: str, algorithm: str) -> None:
    config = load_text(tmp_path, f'{MINIMAL}algorithm = "{value}"\n')
    assert config.hmac.algorithm == algorithm


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"md5"', '"md5" is not one of sha256, sha384, sha512'),
        ('"sha-256"', '"sha-256" is not one of sha256, sha384, sha512 (did you mean "sha256"?)'),
        ("256", "expected a string, got an integer 256"),
    ],
)
def test_algorithm_errors(tmp_path: Path, value: str, message: str) -> None:
    assert error_of(tmp_path, f"{MINIMAL}algorithm = {value}\n") == f"[hmac] algorithm: {message}"


@pytest.mark.parametrize("scheme", cfg.SCHEME_KEYS)
def test_one_scheme_is_enough(tmp_path: Path, scheme: str) -> None:
    switches = "".join(f"{key} = {str(key == scheme).lower()}\n" for key in cfg.SCHEME_KEYS)
    config = load_text(tmp_path, MINIMAL + switches)
    assert [getattr(config.hmac, key) for key in cfg.SCHEME_KEYS].count(True) == 1
    assert getattr(config.hmac, scheme) is True


def test_no_scheme_at_all(tmp_path: Path) -> None:
    switches = "".join(f"{key} = false\n" for key in cfg.SCHEME_KEYS)
    assert error_of(tmp_path, MINIMAL + switches) == (
        "[hmac]: every signing scheme is switched off: set at least one of v1_support, "
        "v2_support, token_support, v3_support, jwt_support, basic_support, cookie_support, "
        "x_hmac_support to true"
    )


def test_scheme_switch_type(tmp_path: Path) -> None:
    assert error_of(tmp_path, MINIMAL + 'v1_support = "no"\n') == (
        '[hmac] v1_support: expected a boolean (true or false), got a string "no"'
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('clock_skew = "-1s"', '[hmac] clock_skew: "-1s" is not a duration: it is negative'),
        (
            'clock_skew = "never"',
            '[hmac] clock_skew: "never" is not allowed here: give a duration ' + DURATION_EXAMPLES,
        ),
        (
            "x_hmac_window = 0",
            "[hmac] x_hmac_window: 0 is too short: it must be more than 0 seconds",
        ),
    ],
)
def test_hmac_duration_errors(tmp_path: Path, body: str, message: str) -> None:
    assert error_of(tmp_path, f"{MINIMAL}{body}\n") == message


def test_clock_skew_may_be_zero(tmp_path: Path) -> None:
    assert load_text(tmp_path, f'{MINIMAL}clock_skew = "0s"\n').hmac.clock_skew == 0.0


# --- [http] ----------------------------------------------------------------------------------


def test_cors_credentials_with_any_origin_is_allowed(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, f'[http]\ncors_origins = ["*"]\ncors_credentials = true\n{MINIMAL}'
    )
    assert config.http.cors_origins == ("*",)
    assert config.http.cors_credentials is True
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("https://Chat.Example.ORG", "https://chat.example.org"),
        ("HTTP://localhost:8080", "http://localhost:8080"),
        ("https://chat.example.org:443", "https://chat.example.org"),
        ("http://chat.example.org:80", "http://chat.example.org"),
        ("http://chat.example.org:443", "http://chat.example.org:443"),
        ("https://[::1]:08443", "https://[::1]:8443"),
        ("http://127.0.0.1", "http://127.0.0.1"),
        ("*", "*"),
    ],
)
def test_cors_origins_as_browsers_send_them(tmp_path: Path, value: str, origin: str) -> None:
    config = load_text(tmp_path, f'[http]\ncors_origins = ["{value}"]\n{MINIMAL}')
    assert config.http.cors_origins == (origin,)


def test_cors_empty_lists(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, f"[http]\ncors_origins = []\ncors_methods = []\ncors_headers = []\n{MINIMAL}"
    )
    assert (config.http.cors_origins, config.http.cors_methods, config.http.cors_headers) == (
        (),
        (),
        (),
    )


ORIGIN_EXAMPLES = '(examples: "*", "https://chat.example.org", "http://localhost:8080")'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'cors_origins = "*"',
            '[http] cors_origins: expected an array of strings, got a string "*" (write ["*"])',
        ),
        (
            'cors_origins = ["https://chat.example.org/"]',
            '[http] cors_origins: "https://chat.example.org/" is not an origin: an origin is '
            "scheme://host[:port], with no path, not even a trailing slash",
        ),
        (
            'cors_origins = ["https://chat.example.org/app"]',
            '[http] cors_origins: "https://chat.example.org/app" is not an origin: an origin is '
            "scheme://host[:port], with no path, not even a trailing slash",
        ),
        (
            'cors_origins = ["chat.example.org"]',
            f'[http] cors_origins: "chat.example.org" is not an origin {ORIGIN_EXAMPLES}',
        ),
        (
            'cors_origins = ["ftp://chat.example.org"]',
            f'[http] cors_origins: "ftp://chat.example.org" is not an origin {ORIGIN_EXAMPLES}',
        ),
        (
            'cors_origins = ["null"]',
            f'[http] cors_origins: "null" is not an origin {ORIGIN_EXAMPLES}',
        ),
        (
            'cors_origins = ["https://x.org:123456"]',
            f'[http] cors_origins: "https://x.org:123456" is not an origin {ORIGIN_EXAMPLES}',
        ),
        (
            'cors_origins = ["https://bad_host"]',
            f'[http] cors_origins: "https://bad_host" is not an origin {ORIGIN_EXAMPLES}',
        ),
        (
            'cors_origins = ["*", "https://chat.example.org"]',
            '[http] cors_origins: "*" already allows every origin; list it alone or leave it out',
        ),
        (
            'cors_methods = ["PUT", "GET POST"]',
            '[http] cors_methods: "GET POST" is not an HTTP method',
        ),
        ('cors_methods = [""]', '[http] cors_methods: "" is not an HTTP method'),
        (
            'cors_headers = ["Content Type"]',
            '[http] cors_headers: "Content Type" is not an HTTP header name',
        ),
        (
            'cors_headers = ["X-A:b"]',
            '[http] cors_headers: "X-A:b" is not an HTTP header name',
        ),
        (
            "cors_headers = 5",
            "[http] cors_headers: expected an array of strings, got an integer 5",
        ),
        (
            'cors_enabled = "true"',
            '[http] cors_enabled: expected a boolean (true or false), got a string "true"',
        ),
        (
            "cors_credentials = 1",
            "[http] cors_credentials: expected a boolean (true or false), got an integer 1",
        ),
        (
            'cors_max_age = "-1h"',
            '[http] cors_max_age: "-1h" is not a duration: it is negative',
        ),
    ],
)
def test_http_errors(tmp_path: Path, body: str, message: str) -> None:
    assert http_error(tmp_path, body) == message


# --- [server] workers, trusted_proxies, shutdown_timeout -------------------------------------


@pytest.mark.parametrize(("value", "workers"), [("0", 0), ("1", 1), ("4", 4), ("256", 256)])
def test_workers(tmp_path: Path, value: str, workers: int) -> None:
    assert load_text(tmp_path, f"[server]\nworkers = {value}\n{MINIMAL}").server.workers == workers


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "-1 is out of range: 0 (one per core) to 256"),
        ("257", "257 is out of range: 0 (one per core) to 256"),
        ("true", "expected an integer (0 for one per core), got a boolean true"),
        ('"4"', 'expected an integer (0 for one per core), got a string "4"'),
        ("1.5", "expected an integer (0 for one per core), got a float 1.5"),
    ],
)
def test_workers_errors(tmp_path: Path, value: str, message: str) -> None:
    assert server_error(tmp_path, f"workers = {value}") == f"[server] workers: {message}"


def test_trusted_proxies(tmp_path: Path) -> None:
    text = '[server]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1", "10.1.2.3/8"]\n'
    config = load_text(tmp_path, text + MINIMAL)
    assert config.server.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1", "10.1.2.3/8")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            '["127.0.0.1", "nope"]',
            '"nope" is not an IP address or network (examples: "127.0.0.1", "10.0.0.0/8", "::1")',
        ),
        (
            '"127.0.0.1"',
            'expected an array of strings, got a string "127.0.0.1" (write ["127.0.0.1"])',
        ),
    ],
)
def test_trusted_proxies_errors(tmp_path: Path, value: str, message: str) -> None:
    got = server_error(tmp_path, f"trusted_proxies = {value}")
    assert got == f"[server] trusted_proxies: {message}"


def test_shutdown_timeout(tmp_path: Path) -> None:
    config = load_text(tmp_path, f"[server]\nshutdown_timeout = 0\n{MINIMAL}")
    assert config.server.shutdown_timeout == 0.0
    assert server_error(tmp_path, 'shutdown_timeout = "never"') == (
        '[server] shutdown_timeout: "never" is not allowed here: give a duration '
        + DURATION_EXAMPLES
    )


def test_fast_paths(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).server.fast_paths is True
    config = load_text(tmp_path, f"[server]\nfast_paths = false\n{MINIMAL}")
    assert config.server.fast_paths is False
    assert "\nfast_paths = false\n" in describe(config)
    assert server_error(tmp_path, 'fast_paths = "off"') == (
        '[server] fast_paths: expected a boolean (true or false), got a string "off"'
    )


# --- [metrics] -------------------------------------------------------------------------------


def metrics_error(tmp_path: Path, text: str) -> str:
    return error_of(tmp_path, text + MINIMAL)


def test_metrics_listen(tmp_path: Path) -> None:
    config = load_text(tmp_path, f'[metrics]\nlisten = "127.0.0.1:9100"\n{MINIMAL}')
    assert config.metrics == MetricsSettings(listen=("127.0.0.1:9100",))
    assert load_text(tmp_path, f"[metrics]\nlisten = []\n{MINIMAL}").metrics == MetricsSettings()


def test_metrics_listen_may_share_port_zero(tmp_path: Path) -> None:
    text = f'[server]\nlisten = "127.0.0.1:0"\n[metrics]\nlisten = "127.0.0.1:0"\n{MINIMAL}'
    assert load_text(tmp_path, text).metrics.listen == ("127.0.0.1:0",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[server]\nlisten = ["127.0.0.1:5050", "127.0.0.1:9100"]\n'
            '[metrics]\nlisten = ["[::1]:9100", "127.0.0.1:9100"]\n',
            '[metrics] listen: "127.0.0.1:9100" is also a [server] listen address; '
            "use another port",
        ),
        (
            '[metrics]\nlisten = ["tcp:9100"]\n',
            f'[metrics] listen: "tcp:9100": write an address, not a Twisted endpoint '
            f"{LISTEN_EXAMPLES}",
        ),
        (
            '[metrics]\nlisten = ["[::1]:1", "[::1]:1"]\n',
            '[metrics] listen: "[::1]:1" is listed twice',
        ),
        (
            "[metrics]\nlisten = 9100\n",
            "[metrics] listen: expected an array of strings, got an integer 9100",
        ),
    ],
)
def test_metrics_listen_errors(tmp_path: Path, text: str, message: str) -> None:
    assert metrics_error(tmp_path, text) == message


@pytest.mark.parametrize(
    ("text", "health"),
    [
        ("", "/health"),
        ('[metrics]\nhealth_path = "/healthz"\n', "/healthz"),
        ('[metrics]\nhealth_path = ""\n', ""),
        ('[metrics]\nhealth_path = "/up"\n', "/up"),
        ('[server]\nupload_prefix = "/"\n', ""),
        ('[server]\nupload_prefix = "/a/"\n[metrics]\nhealth_path = "/a"\n', None),
        ('[server]\nupload_prefix = "/files/"\n[metrics]\nhealth_path = "/f/x/"\n', "/f/x/"),
    ],
)
def test_health_path(tmp_path: Path, text: str, health: str | None) -> None:
    if health is None:
        assert "under upload_prefix" in metrics_error(tmp_path, text)
    else:
        assert load_text(tmp_path, text + MINIMAL).metrics.health_path == health


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('health_path = "health"', '"health" is not a path like "/health"'),
        ('health_path = "/a//b"', '"/a//b" is not a path like "/health"'),
        ('health_path = "/a b"', '"/a b" is not a path like "/health"'),
        ("health_path = 1", "expected a string, got an integer 1"),
        (
            'health_path = "/upload/health"',
            '"/upload/health" is under upload_prefix "/upload/", where it could be a stored '
            'file; choose another path or ""',
        ),
        (
            'health_path = "/upload"',
            '"/upload" is under upload_prefix "/upload/", where it could be a stored file; '
            'choose another path or ""',
        ),
    ],
)
def test_health_path_errors(tmp_path: Path, text: str, message: str) -> None:
    assert metrics_error(tmp_path, f"[metrics]\n{text}\n") == f"[metrics] health_path: {message}"


def test_health_path_under_a_root_prefix(tmp_path: Path) -> None:
    text = '[server]\nupload_prefix = "/"\n[metrics]\nhealth_path = "/health"\n'
    assert metrics_error(tmp_path, text) == (
        '[metrics] health_path: "/health" is under upload_prefix "/", where it could be a '
        'stored file; choose another path or ""'
    )


# --- [tls] -----------------------------------------------------------------------------------


@pytest.fixture
def leaf(tmp_path: Path) -> Leaf:
    return TestCA(tmp_path / "ca").issue("server")


def test_tls_files_are_not_read_without_an_https_listener(tmp_path: Path) -> None:
    text = f'[tls]\ncertificate = "nope.pem"\nkey = "/nope.key"\nmin_version = "1.3"\n{MINIMAL}'
    config = load_text(tmp_path, text)
    assert config.tls == TlsSettings(
        certificate=tmp_path / "nope.pem", key=Path("/nope.key"), min_version="1.3"
    )
    assert load_text(tmp_path, MINIMAL).tls == TlsSettings()


@pytest.mark.parametrize(
    "listen",
    [
        '[server]\nlisten = "https://127.0.0.1:0"\n',
        '[server]\nlisten = ["127.0.0.1:0", "https+systemd:https"]\n',
        '[metrics]\nlisten = "https://[::1]:0"\n',
    ],
)
def test_tls_needed_by_https_listeners(tmp_path: Path, leaf: Leaf, listen: str) -> None:
    assert error_of(tmp_path, listen + MINIMAL) == (
        "[tls] certificate: an https:// listener needs a certificate file"
    )
    tls = f'[tls]\ncertificate = "{leaf.certificate}"\n'
    assert error_of(tmp_path, listen + tls + MINIMAL) == (
        "[tls] key: an https:// listener needs a private key file"
    )
    tls += f'key = "{leaf.key}"\nciphers = "ECDHE+AESGCM"\n'
    config = load_text(tmp_path, listen + tls + MINIMAL)
    assert config.tls == TlsSettings(
        certificate=leaf.certificate, key=leaf.key, ciphers="ECDHE+AESGCM"
    )
    assert f"certificate = {toml_string(str(leaf.certificate))}\n" in describe(config)
    assert "# chain is not set\n" in describe(config)


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        (
            'chain = "missing.pem"',
            "[tls] chain: cannot read {tmp}/missing.pem: No such file or directory",
        ),
        ('chain = "/dev/zero"', "[tls] chain: /dev/zero is not a regular file"),
        ('chain = "{tmp}/fifo"', "[tls] chain: {tmp}/fifo is not a regular file"),
        ('chain = "{tmp}/huge.pem"', "[tls] chain: {tmp}/huge.pem is larger than 1048576 bytes"),
        ('ciphers = "NOPE"', "[tls] ciphers: OpenSSL accepts none of them: "),
        ('min_version = "1.1"', '[tls] min_version: "1.1" is not one of 1.2, 1.3'),
        ("min_version = 1.3", "[tls] min_version: expected a string, got a float 1.3"),
    ],
)
def test_tls_errors(tmp_path: Path, leaf: Leaf, tls: str, message: str) -> None:
    # (a FIFO nobody writes to, or /dev/zero, would hang or fill the process if read)
    os.mkfifo(tmp_path / "fifo")
    with (tmp_path / "huge.pem").open("wb") as f:
        f.truncate((1 << 20) + 1)
    tls = tls.format(tmp=tmp_path)
    text = (
        '[server]\nlisten = "https://127.0.0.1:0"\n'
        f'[tls]\ncertificate = "{leaf.certificate}"\nkey = "{leaf.key}"\n{tls}\n{MINIMAL}'
    )
    assert error_of(tmp_path, text).startswith(message.format(tmp=tmp_path))


def test_a_key_of_another_certificate_is_a_config_error(tmp_path: Path, leaf: Leaf) -> None:
    other = TestCA(tmp_path / "other-ca").issue("elsewhere")
    text = (
        '[server]\nlisten = "https://127.0.0.1:0"\n'
        f'[tls]\ncertificate = "{leaf.certificate}"\nkey = "{other.key}"\n{MINIMAL}'
    )
    assert error_of(tmp_path, text).startswith(
        f"[tls] key: {other.key} does not belong to the certificate"
    )


# --- parse_listen ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "listener"),
    [
        ("127.0.0.1:5050", Listener("127.0.0.1:5050", False, host="127.0.0.1", port=5050)),
        ("0.0.0.0:0", Listener("0.0.0.0:0", False, host="0.0.0.0", port=0)),
        ("localhost:80", Listener("localhost:80", False, host="localhost", port=80)),
        ("[::1]:5050", Listener("[::1]:5050", False, host="::1", port=5050)),
        ("[::]:443", Listener("[::]:443", False, host="::", port=443)),
        (
            "[fe80::1%eth0]:65535",
            Listener("[fe80::1%eth0]:65535", False, host="fe80::1%eth0", port=65535),
        ),
        (
            "http://127.0.0.1:5050",
            Listener("http://127.0.0.1:5050", False, host="127.0.0.1", port=5050),
        ),
        ("https://[::1]:443", Listener("https://[::1]:443", True, host="::1", port=443)),
        ("unix:/run/x.sock", Listener("unix:/run/x.sock", False, unix_path="/run/x.sock")),
        (
            "unix:/run/a:b=c\\d.sock",
            Listener("unix:/run/a:b=c\\d.sock", False, unix_path="/run/a:b=c\\d.sock"),
        ),
        (
            "https://unix:/run/x.sock",
            Listener("https://unix:/run/x.sock", True, unix_path="/run/x.sock"),
        ),
        ("systemd:http", Listener("systemd:http", False, activated="http")),
        ("systemd:0", Listener("systemd:0", False, activated="0")),
        ("https+systemd:https", Listener("https+systemd:https", True, activated="https")),
    ],
)
def test_parse_listen(entry: str, listener: Listener) -> None:
    parsed = parse_listen(entry)
    assert parsed == listener
    where = (parsed.activated, parsed.unix_path, (parsed.host, parsed.port))
    assert sum(part not in (None, (None, None)) for part in where) == 1
    assert (parsed.host is None) == (parsed.port is None)


@given(st.text(alphabet=st.characters(exclude_characters="\x00"), min_size=1, max_size=80))
@example("\ud800")  # not encodable
@example("\udcff")  # an undecodable byte, as os.fsdecode gives it
@example("a:b=c\\d")
@example("/")  # a directory
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_parse_listen_unix(name: str) -> None:
    path = "/run/" + name
    try:
        encoded: bytes | None = os.fsencode(path)
    except UnicodeEncodeError:
        encoded = None
    if encoded is None or len(encoded) > 107 or path.endswith("/"):
        reason = (
            "names a directory"
            if path.endswith("/")
            else "not valid text"
            if encoded is None
            else "longer than 107 bytes"
        )
        with pytest.raises(ValueError, match=reason):
            parse_listen("unix:" + path)
    else:
        assert parse_listen("unix:" + path) == Listener("unix:" + path, False, unix_path=path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (":5050", "has no host"),
        ("https://127.0.0.1:5050/", "no path after the port"),
        ("https://:5050", '":5050" has no host'),
        ("systemd:", "name the socket by its FileDescriptorName"),
        ("https+systemd:a b", "name the socket by its FileDescriptorName"),
    ],
)
def test_parse_listen_rejects(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_listen(entry)


def test_listeners_parsed_once_per_settings_object() -> None:
    server = ServerSettings(listen=("127.0.0.1:0", "unix:/run/x.sock"))
    assert server.listeners == (
        Listener("127.0.0.1:0", False, host="127.0.0.1", port=0),
        Listener("unix:/run/x.sock", False, unix_path="/run/x.sock"),
    )
    assert server.listeners is server.listeners
    assert MetricsSettings().listeners == ()
    moved = dataclasses.replace(server, listen=("[::1]:1",))
    assert moved.listeners == (Listener("[::1]:1", False, host="::1", port=1),)
    assert moved == ServerSettings(listen=("[::1]:1",))


def test_listeners_of_a_loaded_config(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[server]\nlisten = ["127.0.0.1:0", "systemd:http"]\n'
        '[metrics]\nlisten = "[::1]:0"\n' + MINIMAL,
    )
    assert [listener.text for listener in config.server.listeners] == list(config.server.listen)
    assert config.server.listeners[1].activated == "http"
    assert config.metrics.listeners == (Listener("[::1]:0", False, host="::1", port=0),)


# --- describe --------------------------------------------------------------------------------


def reveal(text: str, secrets: tuple[bytes, ...]) -> str:
    """`describe` output with the masks replaced by the real secrets, in order."""
    values = iter(secrets)
    revealed = re.sub(
        re.escape(toml_string(MASK)), lambda _: toml_string(next(values).decode()), text
    )
    assert next(values, None) is None
    return revealed


def assert_same_settings(a: Config, b: Config) -> None:
    assert (a.server, a.hmac, a.http, a.tls, a.metrics) == (
        b.server,
        b.hmac,
        b.http,
        b.tls,
        b.metrics,
    )


def test_describe(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL)
    text = describe(config)
    assert text.startswith(
        f"# Effective settings of hmac-file-server (read from {tmp_path / 'config.toml'}).\n"
    )
    assert "sixteen-bytes" not in text
    assert 'secret = "********"\n' in text
    assert 'previous_secrets = ["********", "********"]  # 2 previous secret(s)' in text
    assert 'max_upload_size = "1536M"\n' in text
    assert 'file_ttl = "4w2d"\n' in text
    assert 'cors_max_age = "2h0.5s"\n' in text
    data = tomllib.loads(text)
    for section, keys in SCHEMA.items():
        shown = set(data[section])
        if section == "hmac":
            shown.add("secret_file")
        if section == "tls":  # unset paths are shown as comments
            shown |= {"certificate", "key", "chain"}
        if section == "storage":  # (and so is what only the s3 backend needs)
            shown |= {"endpoint", "bucket", "credentials_file", "ca_file"}
        assert shown == set(keys)
    assert_same_settings(parse(tomllib.loads(reveal(text, config.hmac.secrets))), config)


def test_describe_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    text = describe(config)
    assert "# public_url is not set\n" in text
    assert 'file_ttl = "never"\n' in text
    assert "previous_secrets = []  # 0 previous secret(s)" in text
    assert 'max_upload_size = "100M"\n' in text
    assert_same_settings(parse(tomllib.loads(reveal(text, config.hmac.secrets))), config)


def test_describe_shows_warnings(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[hmac]\nsecret = "short"\n')
    assert f"# warning: {config.warnings[0]}\n" in describe(config)


def test_describe_plain_byte_size(tmp_path: Path) -> None:
    config = load_text(tmp_path, f"[server]\nmax_upload_size = 1000\n{MINIMAL}")
    assert "max_upload_size = 1000\n" in describe(config)


_durations = st.floats(min_value=0, max_value=MAX_DURATION)
_positive_durations = st.floats(min_value=0, max_value=MAX_DURATION, exclude_min=True)
# The marker shows that no secret appears in describe()'s output.
_secret = st.text(max_size=40).map(lambda text: "S3CR3T" + text)
_token = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1
)


@st.composite
def _settings_mappings(draw: st.DrawFn) -> dict[str, dict[str, object]]:
    switches = {key: draw(st.booleans()) for key in cfg.SCHEME_KEYS}
    switches[draw(st.sampled_from(cfg.SCHEME_KEYS))] = True
    return {
        "server": {
            "listen": draw(
                st.lists(
                    st.sampled_from(
                        ["127.0.0.1:1", "[::1]:2", "0.0.0.0:0", "unix:/run/h:f.sock", "a.b:3"]
                    ),
                    min_size=1,
                    unique=True,
                )
            ),
            "upload_prefix": draw(st.sampled_from(["/", "/upload/", "a/b", "x:y"])),
            "storage_dir": draw(st.sampled_from(["/srv/files", '/var/lib/h f/ü"x'])),
            "max_upload_size": draw(st.integers(min_value=0, max_value=MAX_SIZE)),
            "public_url": draw(st.sampled_from(["https://x.org", "http://[::1]:80/a/"])),
            "file_ttl": draw(st.one_of(_durations, st.just("never"))),
            "sweep_interval": draw(_positive_durations),
            "idle_timeout": draw(_positive_durations),
            "fsync": draw(st.booleans()),
            "log_level": draw(st.sampled_from(cfg.LOG_LEVELS)),
        },
        "hmac": {
            "secret": draw(_secret),
            "previous_secrets": draw(st.lists(_secret, max_size=3)),
            "algorithm": draw(st.sampled_from(ALGORITHMS)),
            **switches,
            "clock_skew": draw(_durations),
            "x_hmac_window": draw(_positive_durations),
        },
        "http": {
            "cors_enabled": draw(st.booleans()),
            "cors_origins": draw(
                st.sampled_from([["*"], [], ["https://a.org", "http://b.org:8080"]])
            ),
            "cors_methods": draw(st.lists(_token, max_size=4)),
            "cors_headers": draw(st.lists(_token, max_size=4)),
            "cors_credentials": draw(st.booleans()),
            "cors_max_age": draw(_durations),
        },
    }


@given(_settings_mappings())
def test_describe_round_trip(data: dict[str, dict[str, object]]) -> None:
    config = parse(data)
    text = describe(config)
    assert "S3CR3T" not in text
    assert_same_settings(parse(tomllib.loads(reveal(text, config.hmac.secrets))), config)


# --- development_config ----------------------------------------------------------------------


def test_development_config(tmp_path: Path) -> None:
    secret = os.urandom(32)  # need not be text
    config = development_config(tmp_path, secret)
    assert config.server == ServerSettings(
        listen=("127.0.0.1:5050",),
        storage_dir=tmp_path / "var" / "files",
        public_url="http://127.0.0.1:5050",
        log_level="info",
    )
    assert config.hmac == HmacSettings(secrets=(secret,))
    assert config.http == HttpSettings()
    assert config.source is None
    assert config.warnings == ()
    assert describe(config).startswith("# Effective settings of hmac-file-server (built in).\n")


def test_development_config_relative_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = development_config(Path("checkout"), b"x" * 32)
    assert config.server.storage_dir == tmp_path / "checkout" / "var" / "files"


def test_development_config_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        development_config(tmp_path, b"")
    assert str(info.value) == "[hmac] secret: must not be empty"
    (warning,) = development_config(tmp_path, b"dev").warnings
    assert warning.startswith("[hmac] secret: the secret is only 3 bytes long")


# --- the installed etc/config.toml -----------------------------------------------------------


def installed_config(tmp_path: Path, text: str | None = None) -> Path:
    """etc/config.toml (or `text`), with the secret file moved into `tmp_path`."""
    secret_file = write(tmp_path / "secret", SECRET + "\n", mode=0o640)
    text = ETC_CONFIG.read_text() if text is None else text
    assert text.count(INSTALLED_SECRET_FILE) >= 1
    return write(
        tmp_path / "config.toml", text.replace(INSTALLED_SECRET_FILE, str(secret_file)), 0o640
    )


def test_etc_config_loads_as_the_defaults(tmp_path: Path) -> None:
    config = load(installed_config(tmp_path))
    assert config.server == ServerSettings()
    assert config.hmac == HmacSettings(secrets=(SECRET.encode(),))
    assert config.http == HttpSettings()
    assert config.warnings == ()


def test_etc_config_sets_or_shows_every_key() -> None:
    text = ETC_CONFIG.read_text()
    section = None
    seen: dict[str, set[str]] = {name: set() for name in SCHEMA}
    for line in text.splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header[1]
            assert section in SCHEMA
        elif assignment := re.match(r"(?:# )?(\w+) = ", line):
            assert section is not None, line
            assert assignment[1] in SCHEMA[section], line
            seen[section].add(assignment[1])
    assert seen == {name: set(keys) for name, keys in SCHEMA.items()}


def with_s3_storage(data: dict[str, dict[str, object]], key: str, tmp_path: Path) -> None:
    """Complete a `[storage]` example into an s3 backend that loads: an endpoint, a bucket,
    and a credentials file of its own where the example names files that are not here."""
    storage = data["storage"]
    credentials = tmp_path / "credentials"
    profile = storage.get("credentials_profile", "default")
    write(credentials, f"[{profile}]\naws_access_key_id = a\naws_secret_access_key = b\n".encode())
    credentials.chmod(0o640)
    if key in ("credentials_file", "ca_file"):
        storage[key] = str(credentials)  # (an existing file stands in for the example's)
    storage.setdefault("credentials_file", str(credentials))
    storage.update(backend="s3")
    storage.setdefault("endpoint", "http://127.0.0.1:7480")
    storage.setdefault("bucket", "uploads")


def test_etc_config_examples_are_valid(tmp_path: Path) -> None:
    section = None
    examples = 0
    for line in ETC_CONFIG.read_text().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header[1]
        elif line.startswith("# Example: "):
            assert section is not None
            key, _, value = line.removeprefix("# Example: ").partition(" = ")
            assert key in SCHEMA[section], line
            data: dict[str, dict[str, object]] = {"hmac": {"secret": SECRET}}
            data.setdefault(section, {})
            if key == "secret_file":
                write(tmp_path / "secret", SECRET)
                value = toml_string(str(tmp_path / "secret"))
                data["hmac"] = {}
            data[section][key] = tomllib.loads(f"v = {value}")["v"]
            if section == "storage":
                with_s3_storage(data, key, tmp_path)
            parse(data, tmp_path / "config.toml")
            examples += 1
    assert examples >= sum(len(keys) for keys in SCHEMA.values()) - len(cfg.SCHEME_KEYS) - 1


def test_etc_config_commented_alternatives_load(tmp_path: Path) -> None:
    text = ETC_CONFIG.read_text()
    assert '\n# public_url = "https://upload.example.org"\n' in text
    assert '\n# secret = "..."\n' in text
    text = text.replace("\n# public_url = ", "\npublic_url = ")
    text = text.replace("\nsecret_file = ", "\n# secret_file = ").replace(
        '\n# secret = "..."\n', f'\nsecret = "{SECRET}"\n'
    )
    config = load(installed_config(tmp_path, text))
    assert config.server.public_url == "https://upload.example.org"
    assert config.hmac.secrets == (SECRET.encode(),)


# --- [quota] ---------------------------------------------------------------------------------


def test_quota_limits_are_read(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[server]\nmax_upload_size = "10M"\n[quota]\nuploader_limit = "1G"\n'
        'uploader_soft_limit = "500M"\nuploader_daily_limit = "100M"\ntotal_limit = "2T"\n'
        'min_free_space = "5G"\nuploader_from_path = false\n' + MINIMAL,
    )
    assert config.quota == QuotaSettings(
        uploader_limit=1 << 30,
        uploader_soft_limit=500 << 20,
        uploader_daily_limit=100 << 20,
        total_limit=2 << 40,
        min_free_space=5 << 30,
        uploader_from_path=False,
    )
    assert config.quota.counts
    assert not load_text(tmp_path, MINIMAL).quota.counts


@pytest.mark.parametrize(
    ("quota", "message"),
    [
        ('uploader_limit = "5M"',
         "[quota] uploader_limit: 5M is smaller than [server] max_upload_size (10M): uploads "
         "that size could never be stored"),
        ('uploader_daily_limit = "1M"',
         "[quota] uploader_daily_limit: 1M is smaller than [server] max_upload_size (10M)"),
        ('total_limit = 1000', "[quota] total_limit: 1000 is smaller than"),
        ('uploader_limit = "1G"\nuploader_soft_limit = "1G"',
         "[quota] uploader_soft_limit: 1G is not below uploader_limit (1G)"),
        ('uploader_limit = "lots"', "[quota] uploader_limit: "),
    ],
)
def test_quota_errors_name_the_key(tmp_path: Path, quota: str, message: str) -> None:
    text = f'[server]\nmax_upload_size = "10M"\n[quota]\n{quota}\n{MINIMAL}'
    assert message in error_of(tmp_path, text)
