"""Fixtures for every test; the helpers themselves live in tests.helpers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"
