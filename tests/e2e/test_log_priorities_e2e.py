"""What the journal shows an admin: a signature that matches no secret is a warning with a
hint (once a minute, never the MAC), a storage failure is a warning, an upload its client
broke off is logged, a preflight names its path."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from tests.helpers import resumable as rufh
from tests.helpers.server import Server, start_server, stop_server, wait_for, wait_logged
from tests.helpers.signing import SECRET, mac_v1, mac_v2

JOURNAL = (
    "sh", "-c", 'export JOURNAL_STREAM="$(stat -L -c %d:%i /proc/self/fd/2)"; exec "$@"', "sh",
)


def journal_server(tmp_path: Path) -> Server:
    # The server compares JOURNAL_STREAM with its own stderr, as under systemd: its lines
    # then carry sd-daemon priorities.
    return start_server(tmp_path, argv_prefix=JOURNAL, log_level="info")


def test_a_signature_mismatch_is_a_warning_with_a_hint_once_a_minute(tmp_path: Path) -> None:
    server = journal_server(tmp_path)
    other = b"not-the-xmpp-servers-secret"
    macs = []
    for n in range(3):
        rel = f"{uuid.uuid4()}/{n}.jpg"
        mac = mac_v2(rel, 4, "image/jpeg", secret=other)
        macs.append(mac)
        response = rufh.request(
            "PUT", f"{server.base}/upload/{rel}?v2={mac}", [("Content-Type", "image/jpeg")],
            body=b"jpeg",
        )
        assert response.status == 403
    # (each answer goes out before its line is logged: wait for all three lines)
    def logged_refusals() -> list[str] | None:
        found = [line for line in list(server.log) if "refused: signature mismatch" in line]
        return found if len(found) >= 3 else None

    refusals = wait_for(logged_refusals, 10, "three refusals logged")
    hints = [line for line in server.log if "matches no secret" in line]
    assert len(hints) == 1, server.log_tail()
    assert hints[0].startswith("<4>hmacfs.http: 1 upload(s) with a signature that matches no")
    assert "(v2 scheme, paths under /upload/)" in hints[0]
    assert len(refusals) == 3 and all(line.startswith("<6>") for line in refusals)
    # Neither the MACs sent nor the secret appear anywhere.
    for secret_text in (*macs, SECRET.decode(), other.decode()):
        assert not any(secret_text in line for line in server.log)
    # A signature that matches is no warning; an expired one is no mismatch.
    rel = f"{uuid.uuid4()}/ok.txt"
    assert rufh.request("PUT", f"{server.base}/upload/{rel}?v={mac_v1(rel, 2)}", body=b"ok"
                        ).status == 201
    assert stop_server(server) == 0
    assert len([line for line in server.log if line.startswith("<4>")]) == 1


def test_an_upload_broken_off_by_its_client_is_logged(tmp_path: Path) -> None:
    server = journal_server(tmp_path)
    rel = f"{uuid.uuid4()}/cut.bin"
    transfer = rufh.start_request(
        "PUT", f"{server.base}/upload/{rel}?v={mac_v1(rel, 100_000)}",
        [("Content-Length", "100000")], b"c" * 100_000,
    )
    transfer.send(40_000)
    assert transfer.settle()
    transfer.connection.sock.shutdown(socket.SHUT_RDWR)
    transfer.connection.close()
    [line] = wait_logged(server, "broke off")
    assert line.startswith("<6>hmacfs.http: 127.0.0.1 PUT ")
    assert line.endswith(f"{rel} broke off after 40000 of 100000 bytes")
    assert stop_server(server) == 0


def test_a_preflight_line_names_its_path(tmp_path: Path) -> None:
    server = journal_server(tmp_path)
    rel = f"{uuid.uuid4()}/ph%C3%B6to.jpg"
    response = rufh.request(
        "OPTIONS", f"{server.base}/upload/{rel}",
        [("Origin", "https://chat.example"), ("Access-Control-Request-Method", "PUT"),
         ("Access-Control-Request-Headers", "content-type")],
    )
    assert response.status == 200
    [line] = wait_logged(server, " OPTIONS ")
    assert f" OPTIONS {rel.replace('ph%C3%B6to', 'phöto')} -> 200 " in line, line
    assert stop_server(server) == 0
