"""Configurations built in memory, for tests that run the site or the storage in-process.

(The TOML file a server process reads is written by `tests.helpers.server.config_text`.)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hmacfs.core.settings import Config, HmacSettings, HttpSettings, ServerSettings
from tests.helpers.signing import SECRET


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
