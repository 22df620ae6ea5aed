"""The server as a Type=notify service under a real systemd (Debian 12 in systemd-nspawn).

The source tree is bind-mounted read-only at /srv/hmacfs and started through a two-line
/usr/bin/hmac-file-server, with the unit from systemd/ unchanged (a drop-in only shortens the
watchdog), as the Debian package will run it.
"""

from __future__ import annotations

import hashlib
import hmac
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import TestCA
from tests.system.nspawn import Container

REPO = Path(__file__).resolve().parents[2]
UNIT = "hmac-file-server.service"
SOCKET = "hmac-file-server.socket"
SECRET = "system-test-secret-0123456789"
CONFIG = "/etc/hmac-file-server/config.toml"

WRAPPER = """\
#!/bin/sh
PYTHONPATH=/srv/hmacfs exec /usr/bin/python3 -m hmacfs "$@"
"""


def config_text(listen: str = '"127.0.0.1:5050"', extra: str = "", size: str = "100M") -> str:
    return textwrap.dedent(
        f"""\
        [server]
        listen = [{listen}]
        storage_dir = "/var/lib/hmac-file-server/files"
        max_upload_size = "{size}"
        shutdown_timeout = "20s"
        [hmac]
        secret_file = "/etc/hmac-file-server/secret"
        """
    ) + extra


def mac(path: str, size: int) -> str:
    return hmac.new(SECRET.encode(), f"{path} {size}".encode(), hashlib.sha256).hexdigest()


def install(box: Container, config: str) -> None:
    """Install the service as the package would: user, files, unit (+ a test drop-in)."""
    box.run("adduser", "--system", "--group", "--quiet", "--home", "/var/lib/hmac-file-server",
            "--no-create-home", "hmac-file-server")
    box.write_file("/usr/bin/hmac-file-server", WRAPPER, 0o755)
    box.write_file("/etc/hmac-file-server/secret", SECRET + "\n", 0o640)
    box.write_file(CONFIG, config, 0o640)
    box.run("chown", "-R", "root:hmac-file-server", "/etc/hmac-file-server")
    box.run("chmod", "0750", "/etc/hmac-file-server")
    for unit in (UNIT, SOCKET):
        box.write_file(f"/etc/systemd/system/{unit}", (REPO / "systemd" / unit).read_text())
    box.write_file(
        f"/etc/systemd/system/{UNIT}.d/test.conf", "[Service]\nWatchdogSec=3\nRestartSec=1\n"
    )
    box.systemctl("daemon-reload")


def curl(box: Container, *args: str, check: bool = True) -> str:
    return box.run("curl", "-sS", "--max-time", "30", *args, check=check).stdout


def upload(
    box: Container, rel: str, body: str, base: str = "http://127.0.0.1:5050", *extra: str
) -> str:
    size = len(body.encode())
    box.write_file("/tmp/body", body)
    return curl(box, "-T", "/tmp/body", "-H", "Expect:", "-o", "/dev/null", "-w", "%{http_code}",
                *extra, f"{base}/upload/{rel}?v={mac(rel, size)}")


@pytest.fixture
def box(rootfs: Path) -> Iterator[Container]:
    with Container(rootfs, bind_ro={REPO: "/srv/hmacfs"}) as container:
        yield container


def test_start_is_ready_status_user_and_journal(box: Container) -> None:
    install(box, config_text())
    box.systemctl("start", UNIT)
    # `systemctl start` returned: READY=1 came, so the port answers right away.
    rel = f"{uuid.uuid4()}/first.txt"
    assert upload(box, rel, "hello") == "201"
    assert curl(box, f"http://127.0.0.1:5050/upload/{rel}") == "hello"
    state = box.show(UNIT, "ActiveState", "SubState", "MainPID", "Type")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    assert state["Type"] == "notify"
    user = box.run("ps", "-o", "user=", "-p", state["MainPID"]).stdout.strip()
    assert user == "hmac-file-server"
    status = box.status_text(UNIT)
    assert status.startswith("listening on 127.0.0.1:5050")
    assert "upload" in status
    # A signature that matches no secret (the XMPP server has another one): a warning with
    # what to compare, besides the request's own line.
    wrong = f"{uuid.uuid4()}/wrong.txt"
    box.write_file("/tmp/body", "hello")
    assert curl(box, "-T", "/tmp/body", "-o", "/dev/null", "-w", "%{http_code}",
                f"http://127.0.0.1:5050/upload/{wrong}?v={'0' * 64}") == "403"
    hints = box.wait_until(
        lambda: [e for e in box.journal(UNIT) if "matches no secret" in e.get("MESSAGE", "")],
        timeout=20,
        what="the signature warning in the journal",
    )
    assert hints[0]["PRIORITY"] == "4"
    assert "(v scheme, paths under /upload/)" in hints[0]["MESSAGE"]
    # Journal: priorities per level, no timestamps of our own, the upload line's facts.
    box.write_file(CONFIG, config_text(size="5Q"), 0o640)
    box.systemctl("reload", UNIT)
    entries = box.wait_until(
        lambda: [e for e in box.journal(UNIT) if "reload failed" in e.get("MESSAGE", "")],
        timeout=20,
        what="the reload error in the journal",
    )
    assert entries[0]["PRIORITY"] == "3"
    assert CONFIG in entries[0]["MESSAGE"] and "max_upload_size" in entries[0]["MESSAGE"]
    # (the unit's processes: the supervisor and its workers)
    messages = [e for e in box.journal(UNIT) if e.get("_PID") != "1"]
    put = [e for e in messages if " PUT " in e.get("MESSAGE", "")]
    assert put and put[0]["PRIORITY"] == "6"
    assert rel in put[0]["MESSAGE"] and "201" in put[0]["MESSAGE"] and "[v]" in put[0]["MESSAGE"]
    assert not any(e["MESSAGE"][:4].isdigit() for e in messages)
    assert not any(mac(rel, 5) in e["MESSAGE"] or SECRET in e["MESSAGE"] for e in messages)
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"


def test_reload_applies_a_new_limit_and_a_renewed_certificate(
    box: Container, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path)
    first, renewed = ca.issue("first"), ca.issue("renewed")
    tls = '[tls]\ncertificate = "/etc/hmac-file-server/cert.pem"\n' \
          'key = "/etc/hmac-file-server/key.pem"\n'
    listen = '"127.0.0.1:5050", "https://127.0.0.1:5443"'
    install(box, config_text(listen=listen, extra=tls))
    for name, leaf in (("cert.pem", first), ("key.pem", first)):
        source = leaf.certificate if name == "cert.pem" else leaf.key
        box.write_file(f"/etc/hmac-file-server/{name}", source.read_text(), 0o640)
    box.write_file("/etc/hmac-file-server/ca.pem", ca.path.read_text())
    box.run("chown", "-R", "root:hmac-file-server", "/etc/hmac-file-server")
    box.systemctl("start", UNIT)
    serial_probe = (
        "import ssl; from cryptography import x509; "
        "pem = ssl.get_server_certificate(('127.0.0.1', 5443)); "
        "print(x509.load_pem_x509_certificate(pem.encode()).serial_number)"
    )
    assert int(box.run("python3", "-c", serial_probe).stdout) == first.serial
    rel = f"{uuid.uuid4()}/tls.txt"
    status = upload(
        box, rel, "over tls", "https://localhost:5443", "--cacert", "/etc/hmac-file-server/ca.pem"
    )
    assert status == "201"
    # A new limit and a renewed certificate, then `systemctl reload`.
    box.write_file(CONFIG, config_text(listen=listen, extra=tls, size="4"), 0o640)
    box.write_file("/etc/hmac-file-server/cert.pem", renewed.certificate.read_text(), 0o640)
    box.write_file("/etc/hmac-file-server/key.pem", renewed.key.read_text(), 0o640)
    box.run("chown", "-R", "root:hmac-file-server", "/etc/hmac-file-server")
    pid = box.show(UNIT, "MainPID")["MainPID"]
    box.systemctl("reload", UNIT)
    box.wait_until(
        lambda: int(box.run("python3", "-c", serial_probe).stdout) == renewed.serial,
        timeout=20,
        what="the renewed certificate",
    )
    assert upload(box, f"{uuid.uuid4()}/big.txt", "more than four") == "413"
    assert box.show(UNIT, "MainPID")["MainPID"] == pid  # reloaded in place, not restarted


def test_watchdog_restarts_a_frozen_process(box: Container) -> None:
    install(box, config_text())
    box.systemctl("start", UNIT)
    before = box.show(UNIT, "MainPID", "NRestarts")
    box.systemctl("kill", "-s", "STOP", "--kill-who=main", UNIT)
    after = box.wait_until(
        lambda: (
            (s := box.show(UNIT, "MainPID", "NRestarts", "ActiveState"))
            and s["NRestarts"] != before["NRestarts"]
            and s["ActiveState"] == "active"
            and s["MainPID"] not in ("0", before["MainPID"])
            and s
        ),
        timeout=30,
        what="the watchdog to restart the service",
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    watchdog = [e for e in box.journal(UNIT) if "atchdog" in e.get("MESSAGE", "")]
    assert watchdog, "systemd did not log a watchdog timeout"
    assert upload(box, f"{uuid.uuid4()}/after.txt", "back") == "201"


def activated_upload(box: Container, body: str) -> None:
    """With only the socket unit started: the first connection starts the service, which
    takes over the socket and stores the upload."""
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    rel = f"{uuid.uuid4()}/activated.txt"
    assert upload(box, rel, body) == "201"
    # (with several workers, the first one may answer before the last is ready)
    box.wait_until(
        lambda: box.show(UNIT, "ActiveState")["ActiveState"] == "active",
        timeout=30,
        what="the activated service to be ready",
    )
    assert curl(box, f"http://127.0.0.1:5050/upload/{rel}") == body


def test_socket_activation(box: Container) -> None:
    install(box, config_text(listen='"systemd:http"'))
    box.systemctl("start", SOCKET)
    activated_upload(box, "activated")
    assert "systemd:http" in box.status_text(UNIT) or "5050" in box.status_text(UNIT)


def test_socket_activation_with_the_configured_address(box: Container) -> None:
    # The shipped socket unit and the shipped listen entry name the same address: the
    # service adopts systemd's socket instead of binding it again (it used to fail to bind,
    # restart in a loop and leave the first connection hanging).
    install(box, config_text())
    box.systemctl("start", SOCKET)
    activated_upload(box, "by address")
    assert box.show(UNIT, "NRestarts")["NRestarts"] == "0"
    # One socket, systemd's: the service holds a duplicate of it, bound nowhere else.
    table = box.run("cat", "/proc/net/tcp").stdout.splitlines()[1:]
    listening = [f for f in (line.split() for line in table) if f[3] == "0A"]
    assert [f[1] for f in listening if f[1].endswith(":13BA")] == ["0100007F:13BA"], table


SLOW_UPLOAD = """\
import hashlib, hmac, socket, sys, time
rel, secret = sys.argv[1], sys.argv[2].encode()
body = b"x" * 100
mac = hmac.new(secret, f"{rel} {len(body)}".encode(), hashlib.sha256).hexdigest()
sock = socket.create_connection(("127.0.0.1", 5050))
sock.sendall(f"PUT /upload/{rel}?v={mac} HTTP/1.1\\r\\nHost: x\\r\\n"
             f"Content-Length: {len(body)}\\r\\n\\r\\n".encode() + body[:50])
open("/tmp/slow-started", "w").close()
time.sleep(3)
sock.sendall(body[50:])
open("/tmp/slow-response", "wb").write(sock.recv(4096))
"""


def start_slow_upload(box: Container) -> str:
    """Start SLOW_UPLOAD in the container, as a unit of its own, and wait until half of its
    body is sent; the path it uploads to."""
    rel = f"{uuid.uuid4()}/in-flight.bin"
    box.write_file("/tmp/slow.py", SLOW_UPLOAD)
    box.run("systemd-run", "--unit", "slow-upload", "--collect",
            "python3", "/tmp/slow.py", rel, SECRET)
    box.wait_until(lambda: box.run("test", "-e", "/tmp/slow-started", check=False).returncode == 0,
                   timeout=20, what="the slow upload to start")
    return rel


def test_stop_lets_an_upload_in_flight_finish(box: Container) -> None:
    install(box, config_text())
    box.systemctl("start", UNIT)
    rel = start_slow_upload(box)
    started = time.monotonic()
    box.systemctl("stop", UNIT)  # returns once the service has exited
    assert time.monotonic() - started >= 1.5  # it waited for the upload
    response = box.wait_until(
        lambda: box.run("cat", "/tmp/slow-response", check=False).stdout,
        timeout=20,
        what="the slow upload's response",
    )
    assert response.startswith("HTTP/1.1 201")
    state = box.show(UNIT, "ActiveState", "Result", "ExecMainStatus")
    assert (state["ActiveState"], state["Result"], state["ExecMainStatus"]) == (
        "inactive", "success", "0"
    )
    stored = box.run("cat", f"/var/lib/hmac-file-server/files/{rel}").stdout
    assert stored == "x" * 100
    stopping = [e for e in box.journal(UNIT) if "waiting up to" in e.get("MESSAGE", "")]
    assert stopping


def test_a_killed_supervisor_is_restarted_and_nothing_partial_is_left(box: Container) -> None:
    install(box, config_text().replace("[hmac]", "workers = 2\n[hmac]"))
    box.systemctl("start", UNIT)
    before = box.show(UNIT, "MainPID", "NRestarts")
    kept = f"{uuid.uuid4()}/kept.txt"
    assert upload(box, kept, "stored before") == "201"
    rel = start_slow_upload(box)
    box.systemctl("kill", "-s", "KILL", "--kill-who=main", UNIT)
    # KillMode=mixed: systemd kills the workers with their supervisor (the upload under way
    # is cut, as by a crash) and starts the service again after RestartSec.
    box.wait_until(
        lambda: (
            (s := box.show(UNIT, "MainPID", "NRestarts", "ActiveState"))
            and s["ActiveState"] == "active"
            and s["MainPID"] not in ("0", before["MainPID"])
            and int(s["NRestarts"]) == int(before["NRestarts"]) + 1
        ),
        timeout=30,
        what="systemd to start the service again",
    )
    box.wait_until(
        lambda: box.show("slow-upload.service", "ActiveState")["ActiveState"] != "active",
        timeout=20,
        what="the slow upload to end",
    )
    assert box.run("test", "-e", f"/var/lib/hmac-file-server/files/{rel}",
                   check=False).returncode != 0
    assert curl(box, f"http://127.0.0.1:5050/upload/{kept}") == "stored before"
    assert upload(box, rel, "x" * 100) == "201"  # the client's retry
    assert box.run("cat", f"/var/lib/hmac-file-server/files/{rel}").stdout == "x" * 100
    partial = box.run("ls", "-A", "/var/lib/hmac-file-server/files/.hmacfs/partial").stdout
    assert partial.split() == [], partial


def test_invalid_config_fails_the_start_with_its_error(box: Container) -> None:
    install(box, config_text(extra="[http]\ncors_origins = \"*\"\n"))
    result = box.systemctl("start", UNIT, check=False)
    assert result.returncode != 0
    entries = box.journal(UNIT)
    messages = [e.get("MESSAGE", "") for e in entries]
    errors = [e for e in entries if "cors_origins" in e.get("MESSAGE", "")]
    assert errors and CONFIG in errors[0]["MESSAGE"]
    assert errors[0]["PRIORITY"] == "3"
    # A configuration error is not retried in a loop: the admin has to fix it.
    assert len(errors) == 1
    assert box.show(UNIT, "Result")["Result"] == "exit-code"
    assert not any("Traceback" in m for m in messages)
    box.wait_until(
        lambda: "cors_origins"
        in box.systemctl("status", "--no-pager", "-l", "-n", "20", UNIT, check=False).stdout,
        timeout=10,
        what="the config error in systemctl status",
    )

