"""Fixtures for every test; the helpers themselves live in tests.helpers.

The names below stay importable from here for the test modules that still do so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.config import make_config
from tests.helpers.files import partial_files, visible_files
from tests.helpers.signing import SECRET, mac_v1, mac_v2

__all__ = ["SECRET", "mac_v1", "mac_v2", "make_config", "partial_files", "visible_files"]


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"
