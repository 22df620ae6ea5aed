"""Which Debian packages the machine has (the tests that need real systems name theirs)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable


def installed(package: str) -> bool:
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return "install ok installed" in status


def missing(packages: Iterable[str]) -> list[str]:
    """Those of `packages` that are not installed, in their order."""
    return [package for package in packages if not installed(package)]
