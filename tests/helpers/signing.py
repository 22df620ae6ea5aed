"""The test secret and the signature schemes, computed here independently of hmacfs.core.auth."""

from __future__ import annotations

import hashlib
import hmac

SECRET = b"test-secret-0123456789"


def mac_v1(path: str, size: int, secret: bytes = SECRET) -> str:
    """Prosody v1 / ejabberd: HMAC-SHA256 over "path size", computed here independently."""
    return hmac.new(secret, f"{path} {size}".encode(), hashlib.sha256).hexdigest()


def mac_v2(path: str, size: int, content_type: str, secret: bytes = SECRET) -> str:
    """Prosody v2 / Metronome token: HMAC-SHA256 over "path\\0size\\0type"."""
    message = f"{path}\0{size}\0{content_type}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
