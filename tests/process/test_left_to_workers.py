"""What a supervisor leaves to its workers so that it loads nothing only serving needs: the
certificate check (a worker that refuses the configuration fails the start, or stops the
reload), and showing its sweeps' figures in /metrics. On the fake loop (and reactor) of
tests/process, the test playing the worker processes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from twisted.internet import defer

from hmacfs import cli
from hmacfs.core import config
from hmacfs.core.config import ConfigError
from hmacfs.process.listeners import activated_listener
from hmacfs.process.node import Node
from hmacfs.process.shared_metrics import FIGURES_FILE, SweepFigures
from hmacfs.process.supervisor import Supervisor
from hmacfs.process.systemd import ActivatedSockets
from hmacfs.process.worker import EXIT_CONFIG, ConfigRefused, WorkerPlan
from hmacfs.storage.backend import SweepReport
from tests.process.conftest import ConfigFile
from tests.process.fakes import (
    FakeLoop,
    FakeReactor,
    RecordingNotifier,
    RecordingWriter,
    at_once,
)

HTTPS = ("127.0.0.1:0", "https://127.0.0.1:0")


def missing_certificate(config_file: ConfigFile, workers: int) -> Path:
    directory = config_file.path.parent
    tls = f'[tls]\ncertificate = "{directory / "no.pem"}"\nkey = "{directory / "no.key"}"'
    return config_file.write(workers=workers, listen=HTTPS, extra=tls)


def supervisor_of(
    config_file: ConfigFile, loop: FakeLoop, writer: RecordingWriter | None = None
) -> Supervisor:
    supervisor = Supervisor(
        config.load(config_file.path, check_certificate=False),
        loop,
        count=2,
        notifier=RecordingNotifier(),
        writer=writer,
        run_blocking=at_once,
    )
    supervisor.start()
    return supervisor


def test_the_certificate_is_checked_only_when_asked(config_file: ConfigFile) -> None:
    path = missing_certificate(config_file, workers=2)
    with pytest.raises(ConfigError, match=r"\[tls\] certificate"):
        config.load(path)
    unchecked = config.load(path, check_certificate=False)
    with pytest.raises(ConfigError, match=r"\[tls\] certificate") as raised:
        config.check_certificate(unchecked)
    assert raised.value.path == path
    config_file.write(workers=2)  # no https listener: nothing to check
    config.check_certificate(config_file.load())


def test_a_single_process_still_refuses_a_certificate_that_does_not_load(
    config_file: ConfigFile, capsys: pytest.CaptureFixture[str]
) -> None:
    path = missing_certificate(config_file, workers=1)
    assert cli.main(["--config", str(path), "run"]) == cli.EXIT_CONFIG
    assert "[tls] certificate" in capsys.readouterr().err


def test_a_worker_that_refuses_the_configuration_fails_the_start(
    config_file: ConfigFile, loop: FakeLoop
) -> None:
    missing_certificate(config_file, workers=2)
    supervisor = supervisor_of(config_file, loop)  # (it has not read the certificate)
    first, second = loop.spawned
    first.exit(EXIT_CONFIG)
    with pytest.raises(ConfigRefused, match="found the configuration invalid"):
        supervisor.started.result()
    assert second.signals == ["KILL"]


def test_a_reload_stops_when_a_new_worker_refuses_the_configuration(
    config_file: ConfigFile, loop: FakeLoop, lines: RecordingWriter
) -> None:
    config_file.write(workers=2)
    supervisor = supervisor_of(config_file, loop, lines)
    for process in loop.spawned:
        process.say("ready")
    old = list(supervisor.workers)
    reloaded = supervisor.reload()
    loop.spawned[2].exit(EXIT_CONFIG)
    assert reloaded.result() is False
    assert lines.count("found the configuration invalid (its message says why); keeping the") == 1
    assert supervisor.workers == old


def test_the_workers_show_the_supervisors_sweeps(
    config_file: ConfigFile,
    loop: FakeLoop,
    reactor: FakeReactor,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    config_file.write(workers=2)
    supervisor = supervisor_of(config_file, loop)
    for process in loop.spawned:
        process.say("ready")
    assert supervisor.sweeper.running  # (it swept at once)
    figures = json.loads((shared / FIGURES_FILE).read_text())
    assert figures == {"files": 0, "bytes": 0, "kept": 0, "kept_bytes": 0}
    # A worker takes the figures with its beat.
    SweepFigures(shared).publish(SweepReport(files=7, bytes=700, kept=2, kept_bytes=20))
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    fd = os.dup(listening.fileno())
    plan = WorkerPlan(
        index=0,
        status_fd=-1,
        activated=ActivatedSockets(fds=[fd], names={"L0": fd}),
        listeners=(activated_listener("L0", tls=False),),
        metrics_listeners=(),
    )

    class Pipe:
        def send(self, line: str) -> None:
            pass

    node = Node(
        config_file.load(), reactor, worker=plan, reporter=Pipe(),
        run_blocking=defer.maybeDeferred,
    )
    node.startService()
    registry = node.site.metrics.registry
    assert registry.get_sample_value("hmacfs_storage_files") == 7
    assert registry.get_sample_value("hmacfs_storage_bytes") == 700
    assert registry.get_sample_value("hmacfs_resumable_partials") == 2
    listening.close()
