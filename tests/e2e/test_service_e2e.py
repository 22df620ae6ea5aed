"""The server as a service process: TLS and certificate reload, systemd notifications through a
real datagram socket, journal-style output, SIGHUP reload, SIGTERM with uploads in flight,
Unix and socket-activated listeners, trusted proxies."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import TestCA
from tests.helpers.client import curl
from tests.helpers.server import Server, start_server, stop_server
from tests.helpers.signing import mac_v1


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def _receive(self) -> dict[str, str] | None:
        """The next message's fields (recorded in `messages`), or None after 0.2 s."""
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append(fields)
        return fields

    def collect(self, until: str, timeout: float = 20) -> dict[str, str]:
        """Read messages until one contains the field `until` ("READY=1"); return it."""
        name, _, value = until.partition("=")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self._receive()
            if fields is not None and fields.get(name) == value:
                return fields
        raise AssertionError(f"no {until} within {timeout}s; got {self.messages}")

    def gather(self, seconds: float) -> list[dict[str, str]]:
        """Every message that arrives within `seconds`."""
        got: list[dict[str, str]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            fields = self._receive()
            if fields is not None:
                got.append(fields)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=[1, pytest.param(2, marks=pytest.mark.workers)], ids=["1w", "2w"])
def workers(request: pytest.FixtureRequest) -> int:
    """The tests of what systemd and an admin see run in one process and under a
    supervisor with two workers: the same signals, messages and outcomes either way."""
    return int(request.param)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def upload(url: str, body: bytes, *extra: str) -> int:
    with tempfile.NamedTemporaryFile() as source:
        source.write(body)
        source.flush()
        result = subprocess.run(
            ["curl", "-sS", "-T", source.name, "-H", "Expect:", "-o", "/dev/null",
             "-w", "%{http_code}", *extra, url],
            capture_output=True, timeout=60, check=False,
        )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def put_url(base: str, rel: str, size: int) -> str:
    return f"{base}/upload/{rel}?v={mac_v1(rel, size)}"


def test_notify_ready_status_reload_watchdog_stopping(
    tmp_path: Path, notify: NotifySocket, workers: int
) -> None:
    server = start_server(
        tmp_path,
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"},
        workers=workers,
    )
    ready = notify.collect("READY=1")
    assert ready["STATUS"].startswith(f"listening on 127.0.0.1:{server.port}")
    assert "0 uploads in flight" in ready["STATUS"]
    # Watchdog pings at half the interval (0.2 s): several within a second.
    pings = [m for m in notify.gather(1.0) if m.get("WATCHDOG") == "1"]
    assert 2 <= len(pings) <= 10  # every 0.2 s; a loaded machine may delay one or two
    # SIGHUP: RELOADING=1, then READY=1 again.
    server.process.send_signal(signal.SIGHUP)
    notify.collect("RELOADING=1")
    notify.collect("READY=1")
    assert stop_server(server) == 0
    stopping = notify.collect("STOPPING=1")
    assert "stopping" in stopping["STATUS"]


def test_without_notify_socket_nothing_is_sent(tmp_path: Path) -> None:
    env = {k: "" for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    server = start_server(tmp_path, env=env)
    assert stop_server(server) == 0
    assert not any("Traceback" in line for line in server.log)


def test_journal_lines_carry_priorities_and_no_timestamps(tmp_path: Path, workers: int) -> None:
    # The server compares JOURNAL_STREAM with its own stderr (as systemd sets it up): name
    # that pipe's device and inode from inside, through a tiny shell wrapper.
    server = start_server(
        tmp_path,
        argv_prefix=(
            "sh", "-c",
            'export JOURNAL_STREAM="$(stat -L -c %d:%i /proc/self/fd/2)"; exec "$@"', "sh",
        ),
        workers=workers,
    )
    rel = f"{uuid.uuid4()}/j.txt"
    assert upload(put_url(server.base, rel, 2), b"hi") == 201
    assert upload(f"{server.base}/upload/{rel}?v=00", b"xx") in (403, 409)
    assert stop_server(server) == 0
    lines = [line for line in server.log if line]
    assert lines, "no output"
    assert all(line[:3] in ("<6>", "<4>", "<3>", "<7>", "<2>") for line in lines), lines
    assert any(line.startswith("<6>") and "PUT" in line and "201" in line for line in lines)
    assert not any(line[3:7].isdigit() and line[7] == "-" for line in lines)  # no dates


def test_log_level_and_readable_stderr(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    rel = f"{uuid.uuid4()}/l.txt"
    assert upload(put_url(server.base, rel, 1), b"x") == 201
    assert stop_server(server) == 0
    put_lines = [line for line in server.log if " PUT " in line]
    assert put_lines and " INFO " in put_lines[0]
    assert "[v]" in put_lines[0] and "-> 201" in put_lines[0] and "1 bytes" in put_lines[0]
    assert not any(mac_v1(rel, 1) in line for line in server.log)  # never a MAC in the log


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def tls_server(
    tmp_path: Path, ca: TestCA, cert_name: str = "first", workers: int = 1
) -> tuple[Server, Path, Path]:
    leaf = ca.issue(cert_name)
    live_cert, live_key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    live_cert.write_bytes(leaf.certificate.read_bytes())
    live_key.write_bytes(leaf.key.read_bytes())
    server = start_server(
        tmp_path,
        listen=("127.0.0.1:0", "https://127.0.0.1:0"),
        extra_toml=f'[tls]\ncertificate = "{live_cert}"\nkey = "{live_key}"\n',
        workers=workers,
    )
    return server, live_cert, live_key


def https_base(server: Server) -> str:
    address = next(a for a in server.addresses if a.startswith("https://"))
    return address.replace("https://127.0.0.1", "https://localhost")


def served_serial(base: str) -> int:
    host, port = base.removeprefix("https://").split(":")
    pem = ssl.get_server_certificate((host, int(port)))
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def test_tls_upload_download_versions_and_alpn(tmp_path: Path, ca: TestCA) -> None:
    server, _, _ = tls_server(tmp_path, ca)
    base = https_base(server)
    rel = f"{uuid.uuid4()}/secure.bin"
    assert upload(put_url(base, rel, 5), b"tls!!", "--cacert", str(ca.path)) == 201
    result = curl("--cacert", str(ca.path), "-v", f"{base}/upload/{rel}")
    assert result.stdout == b"tls!!"
    assert (
        b"ALPN: server accepted http/1.1" in result.stderr
        or b"ALPN, server accepted to use http/1.1" in result.stderr
    )
    too_old = curl("--cacert", str(ca.path), "--tls-max", "1.1", f"{base}/upload/{rel}")
    assert too_old.returncode != 0
    context = ssl.create_default_context(cafile=str(ca.path))
    host, port = base.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port))) as raw, context.wrap_socket(
        raw, server_hostname=host
    ) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        cipher = tls.cipher()
        assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])
    # A client offering only h2 is never answered with a protocol it did not offer: it gets
    # no ALPN answer (or, with Debian's Twisted 22.4, a handshake alert): we speak HTTP/1.1.
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port))) as raw, context.wrap_socket(
            raw, server_hostname=host
        ) as tls:
            assert tls.selected_alpn_protocol() is None
    except ssl.SSLError as e:
        assert "ALERT" in str(e)
    assert stop_server(server) == 0


def test_refusal_over_tls_while_the_client_sends_its_body(tmp_path: Path, ca: TestCA) -> None:
    server, _, _ = tls_server(tmp_path, ca)
    base = https_base(server)
    body = os.urandom(9_000_000)
    for _ in range(3):
        status = upload(f"{base}/upload/{uuid.uuid4()}/x.bin?v={'0' * 64}", body,
                        "--cacert", str(ca.path))
        assert status == 403
    assert stop_server(server) == 0
    assert not any("Traceback" in line or "Unhandled" in line for line in server.log)


def test_certificate_reload_during_a_transfer(tmp_path: Path, ca: TestCA, workers: int) -> None:
    server, live_cert, live_key = tls_server(tmp_path, ca, workers=workers)
    base = https_base(server)
    first_serial = served_serial(base)
    rel = f"{uuid.uuid4()}/big.bin"
    body = os.urandom(4_000_000)
    assert upload(put_url(base, rel, len(body)), body, "--cacert", str(ca.path)) == 201
    # A slow download keeps a connection on the old certificate while it is replaced.
    slow = subprocess.Popen(
        ["curl", "-sS", "--cacert", str(ca.path), "--limit-rate", "1M", "-o",
         str(tmp_path / "down.bin"), f"{base}/upload/{rel}"],
        stderr=subprocess.PIPE,
    )
    time.sleep(0.8)
    renewed = ca.issue("renewed")
    live_cert.write_bytes(renewed.certificate.read_bytes())
    live_key.write_bytes(renewed.key.read_bytes())
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while served_serial(base) != renewed.serial:
        assert time.monotonic() < deadline, "the renewed certificate was not picked up"
        time.sleep(0.1)
    # With workers, the first new one serves the new certificate before the others are
    # replaced: the reload is over once it says so (a second SIGHUP before that would find
    # an old worker still serving the old certificate).
    while not any("configuration reloaded" in line for line in server.log):
        assert time.monotonic() < deadline, server.log[-5:]
        time.sleep(0.1)
    assert slow.wait(timeout=60) == 0, slow.stderr.read() if slow.stderr else ""
    assert (tmp_path / "down.bin").read_bytes() == body
    assert first_serial != renewed.serial
    # A broken certificate keeps the current one and says so in the log.
    live_cert.write_text("not a certificate")
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any("keeping the" in line for line in server.log):
        assert time.monotonic() < deadline, server.log[-5:]
        time.sleep(0.1)
    assert served_serial(base) == renewed.serial
    assert stop_server(server) == 0


def test_reload_applies_new_limits_and_keeps_running_on_a_broken_config(
    tmp_path: Path, workers: int
) -> None:
    server = start_server(tmp_path, workers=workers)
    rel = f"{uuid.uuid4()}/a.bin"
    assert upload(put_url(server.base, rel + "1", 10), b"x" * 10) == 201
    text = server.config_path.read_text()
    server.config_path.write_text(text.replace('max_upload_size = "2G"', 'max_upload_size = "5"'))
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while not any("configuration reloaded" in line for line in server.log):
        assert time.monotonic() < deadline, server.log[-5:]
        time.sleep(0.1)
    assert upload(put_url(server.base, rel + "2", 10), b"x" * 10) == 413
    server.config_path.write_text(text.replace('max_upload_size = "2G"', 'max_upload_size = 5Q'))
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any("reload failed" in line for line in server.log):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert any("config.toml" in line and "reload failed" in line for line in server.log)
    assert upload(put_url(server.base, rel + "3", 10), b"x" * 10) == 413  # still the 5-byte limit
    assert server.process.poll() is None
    assert stop_server(server) == 0


def send_partial_upload(port: int, rel: str, size: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"PUT /upload/{rel}?v={mac_v1(rel, size)} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    sock.sendall(head + first)
    return sock


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path, server_toml='shutdown_timeout = "20s"', workers=workers)
    rel = f"{uuid.uuid4()}/late.bin"
    sock = send_partial_upload(server.port, rel, 10, b"12345")
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New connections are refused while the upload may still finish.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    sock.sendall(b"67890")
    response = sock.recv(4096)
    sock.close()
    assert response.startswith(b"HTTP/1.1 201")
    assert server.process.wait(timeout=20) == 0
    assert (server.storage / rel).read_bytes() == b"1234567890"


def test_sigterm_cuts_off_an_upload_that_does_not_finish(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path, server_toml='shutdown_timeout = "1s"', workers=workers)
    rel = f"{uuid.uuid4()}/never.bin"
    sock = send_partial_upload(server.port, rel, 10, b"123")
    time.sleep(0.3)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=20) == 0
    assert time.monotonic() - started < 10
    sock.close()
    assert not (server.storage / rel).exists()
    assert os.listdir(server.storage / ".hmacfs" / "partial") == []
    assert any("cut off 1 unfinished upload" in line for line in server.log)


def test_unix_socket_listener(tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    server = start_server(tmp_path, listen=("127.0.0.1:0", f"unix:{path}"))
    assert f"unix:{path}" in server.addresses
    rel = f"{uuid.uuid4()}/u.txt"
    status = upload(f"http://localhost/upload/{rel}?v={mac_v1(rel, 3)}", b"abc",
                    "--unix-socket", str(path))
    assert status == 201
    assert curl("--unix-socket", str(path), f"http://localhost/upload/{rel}").stdout == b"abc"
    assert stop_server(server) == 0


def test_socket_activation(tmp_path: Path, workers: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # systemd hands the socket over as descriptor 3, with LISTEN_PID set to the service's PID:
    # a small launcher does the same, then execs the server under its own PID.
    launcher = (
        "import os, sys; "
        f"{fd} != 3 and (os.dup2({fd}, 3), os.close({fd})); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    server = start_server(
        tmp_path,
        listen=("systemd:http",),
        env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"},
        argv_prefix=(sys.executable, "-c", launcher),
        pass_fds=(fd,),
        workers=workers,
    )
    listener.close()
    rel = f"{uuid.uuid4()}/activated.txt"
    assert upload(put_url(f"http://127.0.0.1:{port}", rel, 2), b"ok") == 201
    assert stop_server(server) == 0


def test_missing_activated_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="systemd passed no socket named 'http'"):
        start_server(tmp_path, listen=("systemd:http",))


def test_forwarded_for_only_from_trusted_proxies(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_toml='trusted_proxies = ["127.0.0.1"]')
    rel = f"{uuid.uuid4()}/p.txt"
    forwarded = ("-H", "X-Forwarded-For: 203.0.113.9", "-H", "X-Forwarded-Proto: https")
    assert upload(put_url(server.base, rel, 1), b"p", *forwarded) == 201
    assert stop_server(server) == 0
    assert any("203.0.113.9 (https) PUT" in line for line in server.log)
    (tmp_path / "other").mkdir()
    other = start_server(tmp_path / "other")
    rel = f"{uuid.uuid4()}/q.txt"
    assert upload(put_url(other.base, rel, 1), b"q", *forwarded) == 201
    assert stop_server(other) == 0
    assert any("127.0.0.1 PUT" in line for line in other.log)
    assert not any("203.0.113.9" in line or "(https)" in line for line in other.log)


def test_listen_failure_exits_nonzero(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    with pytest.raises(AssertionError, match="cannot listen"):
        start_server(tmp_path, listen=(f"127.0.0.1:{port}",))
    blocker.close()



def test_metrics_and_health(tmp_path: Path, workers: int) -> None:
    server = start_server(
        tmp_path, extra_toml='[metrics]\nlisten = ["127.0.0.1:0"]\n', workers=workers
    )
    metrics_address = next(a for a in server.addresses if a.endswith("(metrics)")).split()[0]
    metrics = f"http://{metrics_address}"
    rel = f"{uuid.uuid4()}/m.txt"
    assert upload(put_url(server.base, rel, 3), b"abc") == 201
    assert upload(f"{server.base}/upload/{rel}x?v=00", b"abc") == 403
    assert curl(f"{server.base}/upload/{rel}").stdout == b"abc"
    expected = [
        'hmacfs_uploads_total{scheme="v",status="201"} 1.0',
        'hmacfs_refusals_total{reason="signature",status="403"} 1.0',
        'hmacfs_downloads_total{status="200"} 1.0',
        "hmacfs_upload_bytes_total 3.0",
        "hmacfs_uploads_in_flight 0.0",
    ]
    # Each process hands its counts over within half a second; with workers, the one that
    # answers /metrics may not be the one that counted.
    deadline = time.monotonic() + 10
    while True:
        text = curl(f"{metrics}/metrics").stdout.decode()
        missing = [line for line in expected if line not in text]
        if not missing:
            break
        assert time.monotonic() < deadline, missing
        time.sleep(0.05)
    # The upload port does not serve metrics; both serve health.
    assert b"hmacfs_" not in curl(f"{server.base}/metrics").stdout
    for base in (metrics, server.base):
        health = curl("-w", " %{http_code}", f"{base}/health").stdout
        assert health.endswith(b" 200") and b'"storage": "ok"' in health
    assert stop_server(server) == 0


def test_ipv4_ipv6_and_unix_listeners_at_once(tmp_path: Path) -> None:
    path = tmp_path / "h.sock"
    server = start_server(tmp_path, listen=("127.0.0.1:0", "[::1]:0", f"unix:{path}"))
    v6 = next(a for a in server.addresses if a.startswith("[::1]:"))
    rel = f"{uuid.uuid4()}/six.txt"
    assert upload(f"http://{v6}/upload/{rel}?v={mac_v1(rel, 3)}", b"six") == 201
    assert curl(f"{server.base}/upload/{rel}").stdout == b"six"
    assert curl("--unix-socket", str(path), f"http://x/upload/{rel}").stdout == b"six"
    assert stop_server(server) == 0


def _loaded(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


def test_no_tls_listener_no_openssl_in_memory(tmp_path: Path, ca: TestCA) -> None:
    """pyOpenSSL and cryptography (about 8 MiB a process) stay out of a server that has no
    TLS listener; one with an https listener has them, and serves TLS."""
    (tmp_path / "plain").mkdir()
    plain = start_server(tmp_path / "plain")
    try:
        result = curl("-o", "/dev/null", "-w", "%{http_code}", plain.url("x/none"))
        assert result.stdout == b"404"
        assert not _loaded(plain.process.pid, "cryptography")
    finally:
        assert stop_server(plain) == 0
    (tmp_path / "tls").mkdir()
    secure, _, _ = tls_server(tmp_path / "tls", ca)
    try:
        url = f"{https_base(secure)}/upload/x/none"
        result = curl("--cacert", str(ca.path), "-o", "/dev/null", "-w", "%{http_code}", url)
        assert result.stdout == b"404", result.stderr
        assert _loaded(secure.process.pid, "cryptography")
    finally:
        assert stop_server(secure) == 0
