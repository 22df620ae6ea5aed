"""Fixtures for the in-process tests of the node and the supervisor: a fake reactor (and a
fake loop), the log, and configuration files to start from and to reload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hmacfs.core import config
from hmacfs.core.settings import Config
from hmacfs.process import planner
from hmacfs.process.supervisor import SupervisorPlan
from tests.helpers.signing import SECRET
from tests.process.fakes import (
    FakeLoop,
    FakeReactor,
    LogCapture,
    RecordingNotifier,
    RecordingWriter,
    capture_logs,
)


@pytest.fixture
def reactor() -> Iterator[FakeReactor]:
    fake = FakeReactor()
    fake.advance(1_700_000_000)  # a plausible now, for the storage's expiry times
    yield fake
    fake.close_ports()


@pytest.fixture
def loop() -> Iterator[FakeLoop]:
    fake = FakeLoop()
    yield fake
    assert fake.raised == [], "a call on the loop raised"


@pytest.fixture
def lines() -> RecordingWriter:
    """The supervisor's log."""
    return RecordingWriter()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    yield from capture_logs()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


class ConfigFile:
    """A configuration file under a test's directory, rewritten to reload it."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "config.toml"
        self.storage = directory / "files"

    def write(
        self,
        *,
        workers: int = 1,
        listen: tuple[str, ...] = ("127.0.0.1:0",),
        server: str = "",
        log_level: str = "debug",
        extra: str = "",
        mode: int = 0o600,
        raw: str | None = None,
    ) -> Path:
        """Write the file (`raw` as it is, if given) with `mode`; `server` goes into
        [server], `extra` after [hmac]."""
        text = raw if raw is not None else "\n".join(
            [
                "[server]",
                f"listen = {json.dumps(list(listen))}",
                f"storage_dir = {json.dumps(str(self.storage))}",
                f"workers = {workers}",
                f"log_level = {json.dumps(log_level)}",
                server,
                "[hmac]",
                f"secret = {json.dumps(SECRET.decode())}",
                extra,
            ]
        )
        self.path.write_text(text)
        self.path.chmod(mode)
        return self.path

    def load(self) -> Config:
        return config.load(self.path)

    def plan(self) -> SupervisorPlan:
        """The supervisor's plan for it (as the starting command makes it)."""
        return SupervisorPlan(planner.supervisor_plan(self.load()))


@pytest.fixture
def config_file(tmp_path: Path) -> ConfigFile:
    return ConfigFile(tmp_path)
