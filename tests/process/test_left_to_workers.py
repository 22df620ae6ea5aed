"""What a supervisor leaves to its workers so that it loads nothing only serving needs: the
certificate check (a worker that refuses the configuration fails the start, or stops the
reload), the sweeps (worker 0's, whose figures every worker shows in /metrics) and the
storage (a worker that cannot use it fails the start). On the fake loop (and reactor) of
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
from hmacfs.process import planner
from hmacfs.process.listeners import activated_listener
from hmacfs.process.node import Node
from hmacfs.process.shared_metrics import FIGURES_FILE, SweepFigures
from hmacfs.process.supervisor import Supervisor, SupervisorPlan
from hmacfs.process.systemd import ActivatedSockets
from hmacfs.process.worker import (
    EXIT_CONFIG,
    WORKER_ENV,
    ConfigRefused,
    StorageRefused,
    WorkerPlan,
    start_failed,
)
from hmacfs.storage.backend import SweepReport
from tests.process.conftest import ConfigFile
from tests.process.fakes import (
    FakeLoop,
    FakeReactor,
    RecordingNotifier,
    RecordingWriter,
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
        SupervisorPlan(planner.supervisor_plan(config.load(config_file.path,
                                                           check_certificate=False))),
        loop,
        count=2,
        notifier=RecordingNotifier(),
        writer=writer,
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


def worker_plan_on(listening: socket.socket, *, sweeps: bool, recount: bool = False) -> WorkerPlan:
    fd = os.dup(listening.fileno())  # (the worker's inherited descriptor, closed by the node)
    return WorkerPlan(
        index=0 if sweeps else 1,
        status_fd=-1,
        activated=ActivatedSockets(fds=[fd], names={"L0": fd}),
        listeners=(activated_listener("L0", tls=False),),
        metrics_listeners=(),
        sweeps=sweeps,
        recount=recount,
    )


class Pipe:
    """A worker's status pipe, as the lines it got."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def send(self, line: str) -> None:
        self.lines.append(line)


def test_the_sweeping_worker_shows_its_sweeps_to_the_others_and_to_the_supervisor(
    config_file: ConfigFile,
    loop: FakeLoop,
    reactor: FakeReactor,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    config_file.write(workers=2, extra='[quota]\ntotal_limit = "1G"')
    stored = config_file.storage / "a" / "b.bin"
    supervisor = supervisor_of(config_file, loop)
    plans = [json.loads(process.env[WORKER_ENV]) for process in loop.spawned]
    # Worker 0 sweeps, and counts the stored files for the quotas; worker 1 does neither.
    assert [(p.get("sweeps", False), p.get("recount", False)) for p in plans] == [
        (True, True), (False, False)
    ]
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    loaded = config_file.load()
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"x" * 100)
    pipe, other_pipe = Pipe(), Pipe()
    sweeping = Node(
        loaded, reactor, worker=worker_plan_on(listening, sweeps=True, recount=True),
        reporter=pipe, run_blocking=defer.maybeDeferred,
    )
    other = Node(
        loaded, reactor, worker=worker_plan_on(listening, sweeps=False), reporter=other_pipe,
        run_blocking=defer.maybeDeferred,
    )
    sweeping.startService()
    other.startService()
    assert sweeping.sweeper.running and not other.sweeper.running
    assert "counted" in pipe.lines and "swept 1 100" in pipe.lines
    assert not any(line.startswith(("swept", "counted")) for line in other_pipe.lines)
    figures = json.loads((shared / FIGURES_FILE).read_text())
    assert figures == {"files": 1, "bytes": 100, "kept": 0, "kept_bytes": 0}
    # The other workers take the figures with their beat.
    SweepFigures(shared).publish(SweepReport(files=7, bytes=700, kept=2, kept_bytes=20))
    reactor.advance(1.0)
    registry = other.site.metrics.registry
    assert registry.get_sample_value("hmacfs_storage_files") == 7
    assert registry.get_sample_value("hmacfs_storage_bytes") == 700
    assert registry.get_sample_value("hmacfs_resumable_partials") == 2
    # What worker 0 reports is what the supervisor's status line shows; the count is done.
    first = loop.spawned[0]
    first.say("ready")
    loop.spawned[1].say("ready")
    assert not supervisor.status_text().endswith("files stored")
    assert supervisor.recount_pending
    for line in pipe.lines:
        first.say(line)
    assert supervisor.status_text().endswith("; 1 files stored")
    assert not supervisor.recount_pending
    listening.close()


def test_a_worker_that_cannot_use_the_storage_fails_the_start_with_its_message(
    config_file: ConfigFile, loop: FakeLoop
) -> None:
    config_file.write(workers=2)
    supervisor = supervisor_of(config_file, loop)
    first, second = loop.spawned
    second.say("ready")
    first.say("refused cannot use storage_dir /srv/files: Permission denied")
    first.exit(1)
    errors: list[BaseException] = []
    supervisor.started.then(lambda _: None, errors.append)
    assert len(errors) == 1 and isinstance(errors[0], StorageRefused)
    assert str(errors[0]) == "cannot use storage_dir /srv/files: Permission denied"
    assert second.signals == ["KILL"]
    notifier = RecordingNotifier()
    status = start_failed(errors[0], notifier)
    assert status == cli.EXIT_FAILURE
    assert notifier.sent == [{"STATUS": "cannot use storage_dir /srv/files: Permission denied"}]


def test_a_worker_asked_to_count_says_it_has_even_when_there_is_nothing_to_count(
    config_file: ConfigFile, reactor: FakeReactor
) -> None:
    config_file.write(workers=2)  # (no limit on stored bytes: nothing to count)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    pipe = Pipe()
    node = Node(
        config_file.load(), reactor, worker=worker_plan_on(listening, sweeps=True, recount=True),
        reporter=pipe, run_blocking=defer.maybeDeferred,
    )
    node.startService()
    assert pipe.lines.count("counted") == 1
    listening.close()
