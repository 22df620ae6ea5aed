"""TLS for the https rows: one self-signed certificate for 127.0.0.1, shared by both servers,
and a look at what each server negotiates with it.

Both servers get the same certificate and key and the same protocol and cipher settings (our
server's defaults, given to nginx as well), so the https rows compare the servers' TLS
record work and nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.common import HOST, BenchError, clean_env

OPENSSL = "openssl"
#: Our server's `[tls]` defaults (etc/config.toml: min_version, ciphers), given to nginx too.
MIN_VERSION = "1.2"
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TlsFiles:
    """A certificate and its key, PEM files."""

    certificate: Path
    key: Path


def make_certificate(directory: Path) -> TlsFiles:
    """A self-signed ECDSA P-256 certificate for IP 127.0.0.1 (valid 2 days) in ``directory``.

    Raises BenchError if the ``openssl`` command fails or is missing.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    cmd = [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-nodes", "-keyout", str(files.key), "-out", str(files.certificate), "-days", "2",
           "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"cannot make a certificate with `{OPENSSL} req`: {exc}") from None
    if proc.returncode != 0 or not files.certificate.exists():
        raise BenchError(f"`{OPENSSL} req` failed ({proc.returncode}): {proc.stderr.strip()}")
    files.key.chmod(0o600)
    return files


def client_context(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only ``cafile`` (and checks the name, an IP here)."""
    return ssl.create_default_context(cafile=str(cafile))


def negotiated(port: int, cafile: Path) -> str:
    """"TLSv1.3 TLS_AES_256_GCM_SHA384": what a handshake with HOST:port settles on, or
    "failed: ..." (never raises)."""
    try:
        with contextlib.closing(socket.create_connection((HOST, port),
                                                         timeout=HANDSHAKE_TIMEOUT_S)) as raw, \
                client_context(cafile).wrap_socket(raw, server_hostname=HOST) as conn:
            cipher = conn.cipher()
            return f"{conn.version()} {cipher[0] if cipher else '?'}"
    except (OSError, ssl.SSLError) as exc:
        return f"failed: {exc}"
