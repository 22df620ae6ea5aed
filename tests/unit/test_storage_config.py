"""`[storage]`: what an s3 backend needs, and what it cannot be combined with, each refused in
one line that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import MINIMAL, error_of, load_text, write


def s3(tmp_path: Path, extra: str = "", *, endpoint: bool = True, bucket: bool = True) -> str:
    credentials = write(
        tmp_path / "credentials", "[default]\naws_access_key_id = a\naws_secret_access_key = b\n",
        0o640,
    )
    lines = ["[storage]", 'backend = "s3"', f'credentials_file = "{credentials}"']
    if endpoint:
        lines.append('endpoint = "http://127.0.0.1:7480"')
    if bucket:
        lines.append('bucket = "uploads"')
    return "\n".join(lines) + "\n" + extra + "\n" + MINIMAL


def test_an_s3_backend_loads(tmp_path: Path) -> None:
    text = s3(tmp_path, 'redirect_downloads = true\nredirect_lifetime = "1h"')
    config = load_text(tmp_path, text)
    assert config.storage.backend == "s3"
    assert config.storage.redirect_downloads is True
    assert config.storage.redirect_lifetime == 3600.0


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("", "endpoint", 'backend "s3" needs endpoint'),
        ("", "bucket", 'backend "s3" needs bucket'),
        ('part_size = "4M"', "part_size", "out of range"),
        ('part_size = "6G"', "part_size", "out of range"),
        ("parts_in_flight = 0", "parts_in_flight", ""),
        ('redirect_lifetime = "8d"', "redirect_lifetime", "at most 7 days"),
        ('redirect_lifetime = "0s"', "redirect_lifetime", ""),
    ],
)
def test_s3_errors_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    config = s3(tmp_path, text, endpoint=key != "endpoint", bucket=key != "bucket")
    message = error_of(tmp_path, config)
    assert f"[storage] {key}" in message and reason in message


def test_byte_quotas_work_with_s3_free_space_is_ignored(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, s3(tmp_path) + '[quota]\ntotal_limit = "1G"\nmin_free_space = "1G"\n'
    )
    assert config.quota.total_limit == 2**30
    assert any("[quota] min_free_space" in w and "ignored" in w for w in config.warnings)


def test_a_redirect_needs_a_store(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[storage]\nredirect_downloads = true\n" + MINIMAL)
    assert "[storage] redirect_downloads" in message and '"s3"' in message


def test_credentials_every_user_may_read_are_refused(tmp_path: Path) -> None:
    config = s3(tmp_path)
    (tmp_path / "credentials").chmod(0o644)
    assert "[storage] credentials_file" in error_of(tmp_path, config)
