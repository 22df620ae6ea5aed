"""Metrics: what each event moves, bounded labels, the exposition, the storage health check."""

from __future__ import annotations

import os
import random
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from hmacfs.core.refusals import Reason
from hmacfs.core.settings import HEADER_SCHEMES, QUERY_SCHEMES
from hmacfs.metrics import (
    DISCONNECTED,
    REASONS,
    SCHEMES,
    HealthReport,
    Metrics,
)
from hmacfs.storage.local import check_storage


@pytest.fixture
def metrics() -> Metrics:
    # A bare registry: only this server's metrics, no process collector.
    return Metrics(CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series that was never touched."""
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def label_values(m: Metrics, sample_name: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in m.registry.collect()
        for sample in family.samples
        if sample.name == sample_name
    }


def test_everything_starts_at_zero(metrics: Metrics) -> None:
    for name in (
        "hmacfs_upload_bytes_total",
        "hmacfs_uploads_in_flight",
        "hmacfs_upload_duration_seconds_count",
        "hmacfs_upload_duration_seconds_sum",
        "hmacfs_download_bytes_total",
        "hmacfs_storage_files",
        "hmacfs_storage_bytes",
    ):
        assert metrics.registry.get_sample_value(name) == 0.0, name
    assert label_values(metrics, "hmacfs_uploads_total", "status") == set()


def test_an_upload_moves_in_flight_counters_and_histograms(metrics: Metrics) -> None:
    metrics.upload_started()
    metrics.upload_started()
    assert value(metrics, "hmacfs_uploads_in_flight") == 2
    metrics.bytes_received(1000)
    metrics.bytes_received(24)
    assert value(metrics, "hmacfs_upload_bytes_total") == 1024

    metrics.upload_finished(201, "v2", 1024, 0.3)
    assert value(metrics, "hmacfs_uploads_in_flight") == 1
    assert value(metrics, "hmacfs_uploads_total", status="201", scheme="v2") == 1
    assert value(metrics, "hmacfs_upload_duration_seconds_count") == 1
    assert value(metrics, "hmacfs_upload_duration_seconds_sum") == pytest.approx(0.3)
    assert value(metrics, "hmacfs_upload_duration_seconds_bucket", le="0.25") == 0
    assert value(metrics, "hmacfs_upload_duration_seconds_bucket", le="0.5") == 1
    assert value(metrics, "hmacfs_upload_duration_seconds_bucket", le="+Inf") == 1
    assert value(metrics, "hmacfs_upload_size_bytes_count") == 1
    assert value(metrics, "hmacfs_upload_size_bytes_sum") == 1024
    assert value(metrics, "hmacfs_upload_size_bytes_bucket", le="1024.0") == 1

    metrics.upload_finished(DISCONNECTED, "jwt", 5, 12.0)
    assert value(metrics, "hmacfs_uploads_in_flight") == 0
    assert value(metrics, "hmacfs_uploads_total", status="499", scheme="jwt") == 1
    assert value(metrics, "hmacfs_uploads_total", status="201", scheme="v2") == 1
    assert value(metrics, "hmacfs_upload_duration_seconds_count") == 2
    # Bytes are counted as they arrive, never again when the upload ends.
    assert value(metrics, "hmacfs_upload_bytes_total") == 1024


def test_duration_buckets_span_a_millisecond_to_half_an_hour(metrics: Metrics) -> None:
    metrics.upload_started()
    metrics.upload_finished(201, "v", 1, 0.0005)
    metrics.upload_started()
    metrics.upload_finished(201, "v", 1, 1700.0)
    assert value(metrics, "hmacfs_upload_duration_seconds_bucket", le="0.001") == 1
    assert value(metrics, "hmacfs_upload_duration_seconds_bucket", le="1200.0") == 1
    assert value(metrics, "hmacfs_upload_duration_seconds_bucket", le="1800.0") == 2


def test_a_clock_going_backwards_is_no_negative_duration(metrics: Metrics) -> None:
    metrics.upload_started()
    metrics.upload_finished(201, "v", 1, -0.5)
    assert value(metrics, "hmacfs_upload_duration_seconds_sum") == 0.0
    assert value(metrics, "hmacfs_upload_duration_seconds_bucket", le="0.001") == 1


def test_refusals_by_status_and_reason(metrics: Metrics) -> None:
    metrics.refused(403, "signature", "v")
    metrics.refused(403, "signature", None)
    metrics.refused(411, "length_required", None)
    assert value(metrics, "hmacfs_refusals_total", status="403", reason="signature") == 2
    assert value(metrics, "hmacfs_refusals_total", status="411", reason="length_required") == 1
    # A refusal is not an upload: neither counted there nor in flight.
    assert label_values(metrics, "hmacfs_uploads_total", "status") == set()
    assert value(metrics, "hmacfs_uploads_in_flight") == 0


def test_downloads(metrics: Metrics) -> None:
    metrics.download_finished(200, 5000)
    metrics.download_finished(206, 100)
    metrics.download_finished(304, 0)
    metrics.download_finished(200, 1)
    assert value(metrics, "hmacfs_downloads_total", status="200") == 2
    assert value(metrics, "hmacfs_downloads_total", status="206") == 1
    assert value(metrics, "hmacfs_downloads_total", status="304") == 1
    assert value(metrics, "hmacfs_download_bytes_total") == 5101


def test_storage_gauges_follow_the_last_sweep(metrics: Metrics) -> None:
    metrics.set_storage(10, 123_456)
    metrics.set_storage(7, 2**40)
    assert value(metrics, "hmacfs_storage_files") == 7
    assert value(metrics, "hmacfs_storage_bytes") == 2**40


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.bytes_received(-1),
        lambda m: m.download_finished(200, -1),
        lambda m: m.upload_finished(201, "v", -1, 1.0),
    ],
)
def test_negative_amounts_are_refused(metrics: Metrics, call: object) -> None:
    with pytest.raises(ValueError):
        call(metrics)  # type: ignore[operator]


def test_hostile_label_values_collapse_to_the_fixed_sets(metrics: Metrics) -> None:
    rng = random.Random(363)

    def junk() -> str:
        alphabet = string.printable + 'é\x00{}"\\'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))

    for _ in range(300):
        metrics.upload_started()
        metrics.upload_finished(201, junk(), 1, 0.1)
        metrics.refused(403, junk(), junk())
        metrics.refused(rng.randint(-(10**6), 10**6), "signature", None)
        metrics.download_finished(rng.choice([0, 99, 600, 10**9, -1]), 1)
    for scheme in SCHEMES:
        metrics.upload_started()
        metrics.upload_finished(201, scheme, 1, 0.1)

    assert label_values(metrics, "hmacfs_uploads_total", "scheme") == SCHEMES | {"other"}
    assert label_values(metrics, "hmacfs_refusals_total", "reason") <= REASONS
    assert label_values(metrics, "hmacfs_refusals_total", "status") <= {
        str(code) for code in range(100, 600)
    } | {"other"}
    assert label_values(metrics, "hmacfs_downloads_total", "status") == {"other"}
    assert value(metrics, "hmacfs_uploads_total", status="201", scheme="other") == 300
    assert value(metrics, "hmacfs_refusals_total", status="403", reason="other") == 300


def test_the_scheme_set_is_every_signing_scheme() -> None:
    assert {*QUERY_SCHEMES, *HEADER_SCHEMES} == SCHEMES
    assert {"v", "v2", "v3", "token", "jwt", "basic", "cookie", "x-hmac"} <= SCHEMES


def test_render_parses_as_the_text_format(metrics: Metrics) -> None:
    metrics.upload_started()
    metrics.bytes_received(10)
    metrics.upload_finished(201, "v", 10, 0.02)
    metrics.refused(413, "too_large", "v")
    metrics.download_finished(200, 10)
    metrics.set_storage(1, 10)

    body, content_type = metrics.render()

    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body.decode("utf-8"))}
    expected_types = {
        "hmacfs_uploads": "counter",
        "hmacfs_upload_bytes": "counter",
        "hmacfs_uploads_in_flight": "gauge",
        "hmacfs_upload_duration_seconds": "histogram",
        "hmacfs_upload_size_bytes": "histogram",
        "hmacfs_refusals": "counter",
        "hmacfs_downloads": "counter",
        "hmacfs_download_bytes": "counter",
        "hmacfs_storage_files": "gauge",
        "hmacfs_storage_bytes": "gauge",
    }
    for name, kind in expected_types.items():
        assert families[name].type == kind, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("hmacfs_uploads_total", (("scheme", "v"), ("status", "201")))] == 1
    assert samples[("hmacfs_refusals_total", (("reason", "too_large"), ("status", "413")))] == 1
    assert samples[("hmacfs_upload_bytes_total", ())] == 10


def test_a_fresh_registry_carries_the_standard_collectors() -> None:
    metrics = Metrics()
    names = {f.name for f in text_string_to_metric_families(metrics.render()[0].decode())}
    assert "hmacfs_uploads_in_flight" in names
    assert "python_info" in names
    if os.path.exists("/proc/self/stat"):
        assert "process_cpu_seconds" in names


def test_servers_do_not_share_numbers() -> None:
    a, b = Metrics(), Metrics()
    a.bytes_received(5)
    assert value(a, "hmacfs_upload_bytes_total") == 5
    assert value(b, "hmacfs_upload_bytes_total") == 0


def test_two_metrics_on_one_registry_is_an_error() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)


# -- reasons --------------------------------------------------------------------------------


def test_the_reason_labels_are_the_refusal_reasons() -> None:
    assert {reason.value for reason in Reason} | {"other"} == REASONS


def test_a_refusal_is_counted_under_its_reason(metrics: Metrics) -> None:
    metrics.refused(403, Reason.EXPIRED, "v3")
    assert value(metrics, "hmacfs_refusals_total", status="403", reason="expired") == 1


def test_health_report_from_checks() -> None:
    assert HealthReport.from_checks({"storage": "ok", "listeners": "ok"}).ok
    assert HealthReport.from_checks({}).ok
    failing = HealthReport.from_checks({"storage": "low disk space: 3 MiB free", "x": "ok"})
    assert not failing.ok
    assert failing.to_json() == (
        b'{"checks": {"storage": "low disk space: 3 MiB free", "x": "ok"}, "status": "fail"}\n'
    )


# -- check_storage ------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    storage = tmp_path / "files"
    partial = storage / ".hmacfs" / "partial"
    partial.mkdir(parents=True)
    return storage, partial


def test_check_storage_ok_and_leaves_nothing_behind(dirs: tuple[Path, Path]) -> None:
    storage, partial = dirs
    assert check_storage(storage, partial, min_free_bytes=0, min_free_fraction=0.0) == "ok"
    assert os.listdir(partial) == []


def test_check_storage_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert check_storage(missing, missing / "partial") == "storage directory does not exist"


def test_check_storage_file_in_place_of_the_storage_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "files"
    not_a_dir.write_bytes(b"")
    assert check_storage(not_a_dir, not_a_dir / "p") == "storage directory is not a directory"


def test_check_storage_partial_directory_not_writable(dirs: tuple[Path, Path]) -> None:
    # Tests run as root, who may write into a read-only directory: a file where the
    # directory should be makes creating anything in it fail just the same.
    storage, partial = dirs
    partial.rmdir()
    partial.write_bytes(b"")
    result = check_storage(storage, partial, min_free_bytes=0, min_free_fraction=0.0)
    assert result == "partial directory is not writable: Not a directory"


def test_check_storage_partial_directory_missing(dirs: tuple[Path, Path]) -> None:
    storage, partial = dirs
    partial.rmdir()
    result = check_storage(storage, partial, min_free_bytes=0, min_free_fraction=0.0)
    assert result == "partial directory is not writable: No such file or directory"


def test_check_storage_low_space(dirs: tuple[Path, Path]) -> None:
    storage, partial = dirs
    assert check_storage(storage, partial, min_free_bytes=2**62).startswith("low disk space: ")
    assert check_storage(storage, partial, min_free_bytes=0, min_free_fraction=1.0).startswith(
        "low disk space: "
    )


def fake_statvfs(
    monkeypatch: pytest.MonkeyPatch, *, blocks: int, bavail: int, files: int = 0, favail: int = 0
) -> None:
    """Make os.statvfs report a filesystem of 4 KiB blocks with these counts."""
    # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, f_flag,
    # f_namemax
    result = os.statvfs_result((4096, 4096, blocks, bavail, bavail, files, favail, favail, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda _: result)


def test_check_storage_threshold_is_a_share_or_a_floor(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, partial = dirs
    gib, mib = 2**30 // 4096, 2**20 // 4096  # in blocks
    # 1 TiB filesystem: 1% is 10 GiB, above the floor.
    fake_statvfs(monkeypatch, blocks=1024 * gib, bavail=10 * gib)
    assert check_storage(storage, partial) == "low disk space: 10240 MiB free"
    fake_statvfs(monkeypatch, blocks=1024 * gib, bavail=11 * gib)
    assert check_storage(storage, partial) == "ok"
    # 100 MiB filesystem: 1% is 1 MiB, below the 16 MiB floor.
    fake_statvfs(monkeypatch, blocks=100 * mib, bavail=15 * mib)
    assert check_storage(storage, partial) == "low disk space: 15 MiB free"
    fake_statvfs(monkeypatch, blocks=100 * mib, bavail=17 * mib)
    assert check_storage(storage, partial) == "ok"


def test_check_storage_no_free_inodes(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, partial = dirs
    fake_statvfs(monkeypatch, blocks=2**30, bavail=2**29, files=1000, favail=0)
    assert check_storage(storage, partial) == "no free inodes"
    # Filesystems that keep no inode count (btrfs) report zero of zero: that is fine.
    fake_statvfs(monkeypatch, blocks=2**30, bavail=2**29, files=0, favail=0)
    assert check_storage(storage, partial) == "ok"


def _exposition(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], Any]:
    """Every sample (sums only to their last digits: they are added up in another order)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): (
            pytest.approx(sample.value, rel=1e-12) if sample.name.endswith("_sum") else sample.value
        )
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_counts_kept_until_a_flush_add_up_as_prometheus_would() -> None:
    """Whatever is collected sees the same numbers as if each event had gone to the metrics
    at once (every bucket boundary included)."""
    from prometheus_client import Counter, Gauge, Histogram

    from hmacfs.metrics import DURATION_BUCKETS, SIZE_BUCKETS

    rng = random.Random(0x363)
    batched = Metrics(CollectorRegistry())
    direct = CollectorRegistry()
    uploads = Counter("hmacfs_uploads", "", ("status", "scheme"), registry=direct)
    upload_bytes = Counter("hmacfs_upload_bytes", "", registry=direct)
    in_flight = Gauge("hmacfs_uploads_in_flight", "", registry=direct)
    duration = Histogram("hmacfs_upload_duration_seconds", "", buckets=DURATION_BUCKETS,
                         registry=direct)
    size_h = Histogram("hmacfs_upload_size_bytes", "", buckets=SIZE_BUCKETS, registry=direct)
    downloads = Counter("hmacfs_downloads", "", ("status",), registry=direct)
    download_bytes = Counter("hmacfs_download_bytes", "", registry=direct)
    open_uploads = 0
    for round_no in range(300):
        event = rng.choice(["start", "finish", "bytes", "download"])
        if event == "start" or (event == "finish" and open_uploads == 0):
            batched.upload_started()
            in_flight.inc()
            open_uploads += 1
        elif event == "finish":
            status = rng.choice([201, 409, 413, DISCONNECTED])
            scheme = rng.choice(["v", "v2", "token"])
            size = rng.choice([0, 1, 1024, 4096, 4097, *map(int, SIZE_BUCKETS), 10**10])
            seconds = rng.choice([0.0, 0.001, 0.0011, *DURATION_BUCKETS, 5000.0, -1.0])
            batched.upload_finished(status, scheme, size, seconds)
            in_flight.dec()
            uploads.labels(str(status), scheme).inc()
            duration.observe(max(seconds, 0.0))
            size_h.observe(size)
            open_uploads -= 1
        elif event == "bytes":
            n = rng.randrange(0, 70000)
            batched.bytes_received(n)
            upload_bytes.inc(n)
        else:
            status, n = rng.choice([200, 206, 304, 404]), rng.randrange(0, 5000)
            batched.download_finished(status, n)
            downloads.labels(str(status)).inc()
            download_bytes.inc(n)
        if round_no % 50 == 0:
            got = _exposition(batched.registry)
            assert {k: v for k, v in got.items() if k in _exposition(direct)} == _exposition(
                direct
            )
    got = _exposition(batched.registry)
    want = _exposition(direct)
    assert {k: v for k, v in got.items() if k in want} == want
    assert want[("hmacfs_uploads_in_flight", ())] == open_uploads


def test_another_process_sees_the_counts_once_flushed(tmp_path: Path) -> None:
    """With workers, a count reaches the shared files at a flush, not before."""
    script = """
import sys
from prometheus_client import CollectorRegistry, multiprocess
from hmacfs.metrics import Metrics

def uploads():
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=sys.argv[1])
    return combined.get_sample_value(
        "hmacfs_uploads_total", {"status": "201", "scheme": "v"}) or 0.0

m = Metrics()
m.upload_started()
m.bytes_received(3)
m.upload_finished(201, "v", 3, 0.01)
before = uploads()
m.flush()
print(before, uploads())
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True,
        text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    ).stdout.split()
    assert out == ["0.0", "1.0"]
