"""curl, as the end-to-end tests run it: quiet, errors shown, every run bounded in time."""

from __future__ import annotations

import subprocess


def curl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run curl; `-w` output is on stdout's last line when the test asks for it."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "120", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=600,
    )
