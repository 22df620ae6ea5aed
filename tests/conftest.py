"""Shared test helpers: settings, independent signers, an in-memory site."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import replace
from pathlib import Path

import pytest

from hmacfs.core.settings import Config, HmacSettings, HttpSettings, ServerSettings
from hmacfs.storage.local import Storage

SECRET = b"test-secret-0123456789"


def mac_v1(path: str, size: int, secret: bytes = SECRET) -> str:
    """Prosody v1 / ejabberd: HMAC-SHA256 over "path size", computed here independently."""
    return hmac.new(secret, f"{path} {size}".encode(), hashlib.sha256).hexdigest()


def mac_v2(path: str, size: int, content_type: str, secret: bytes = SECRET) -> str:
    """Prosody v2 / Metronome token: HMAC-SHA256 over "path\\0size\\0type"."""
    message = f"{path}\0{size}\0{content_type}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def make_config(storage_dir: Path, **server: object) -> Config:
    """A configuration for tests: one secret, everything else default unless given."""
    server_settings = replace(
        ServerSettings(storage_dir=storage_dir, listen=("127.0.0.1:0",)), **server
    )
    return Config(
        server=server_settings,
        hmac=HmacSettings(secrets=(SECRET,)),
        http=HttpSettings(),
    )


def visible_files(root: Path) -> list[str]:
    """Every file under `root` that a client could see (the bookkeeping directory excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".hmacfs" in dirnames:
            dirnames.remove(".hmacfs")
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def partial_files(storage: Storage) -> list[str]:
    """The partial files of uploads (the empty ones kept ready for new uploads left out).

    Named ones by their name; unnamed ones (O_TMPFILE) as "#<inode>", found among the open
    descriptors of this process (the storage's name for them, and what /proc shows).
    """
    partial = storage.root / ".hmacfs" / "partial"
    found = os.listdir(partial)
    unnamed = os.path.realpath(partial) + "/#"
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(unnamed) and target.endswith(" (deleted)"):
            found.append(target[len(unnamed) - 1 : -len(" (deleted)")])
    ready = storage.pooled_names()
    return sorted(name for name in found if name not in ready)


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"
