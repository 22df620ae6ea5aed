"""Fixtures for the system tests: a cached Debian 12 root and containers booted from it.

Everything under tests/system carries the `system` marker (deselect with `-m "not system"`).
They need root and the host packages in `nspawn.HOST_PACKAGES`; the first run builds the root
(about a minute, from the configured Debian mirror), later runs unpack the cached tarball.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.nspawn import Container, ensure_rootfs, remove_rootfs

SYSTEM_TESTS = Path(__file__).parent
MARKER = "system"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here as well as in pyproject.toml, so that --strict-markers accepts it
    # whichever is read first.
    config.addinivalue_line(
        "markers", f"{MARKER}: runs under a real systemd in a systemd-nspawn container (root)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only this directory's.
    for item in items:
        if item.path.is_relative_to(SYSTEM_TESTS):
            item.add_marker(MARKER)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Debian 12 root with systemd and the runtime dependencies (read-only for tests)."""
    root = ensure_rootfs(workdir=tmp_path_factory.mktemp("rootfs") / "root", tmpfs=True)
    yield root
    remove_rootfs(root)


@pytest.fixture
def container(rootfs: Path) -> Iterator[Container]:
    """A container booted from `rootfs` (running or degraded), powered off afterwards."""
    with Container(rootfs) as box:
        yield box
