"""The metrics site driven with raw HTTP bytes through a StringTransport, on a fake clock."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import server

from hmacfs.metrics import HealthReport, HealthResource, Metrics, MetricsResource

HEALTHY = HealthReport(ok=True, checks={"storage": "ok", "listeners": "ok"})
SICK = HealthReport(ok=False, checks={"storage": "low disk space: 3 MiB free", "listeners": "ok"})


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse(raw: bytes) -> Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split()[1]), headers, body)


class Harness:
    """A site for one MetricsResource; `request()` sends raw bytes, returns what came back."""

    def __init__(self, health: object = HEALTHY) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.health = health
        self.calls = 0
        self.site = server.Site(MetricsResource(self.metrics, self.report), reactor=Clock())

    def report(self) -> HealthReport | defer.Deferred[HealthReport]:
        self.calls += 1
        if isinstance(self.health, Exception):
            raise self.health
        assert isinstance(self.health, HealthReport | defer.Deferred)
        return self.health

    def connect(self) -> tuple[object, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def send(self, raw: bytes) -> tuple[object, StringTransport]:
        channel, transport = self.connect()
        channel.dataReceived(raw)  # type: ignore[attr-defined]
        return channel, transport

    def request(self, method: str, target: str, *extra: str) -> Response:
        lines = [f"{method} {target} HTTP/1.1", "Host: metrics.example", *extra]
        _, transport = self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        return parse(transport.value())


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_metrics(harness: Harness) -> None:
    harness.metrics.upload_started()
    harness.metrics.bytes_received(42)
    harness.metrics.upload_finished(201, "v2", 42, 0.5)

    response = harness.request("GET", "/metrics")

    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert int(response.headers["content-length"]) == len(response.body)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.body.decode("utf-8"))
        for s in family.samples
    }
    assert samples[("hmacfs_uploads_total", (("scheme", "v2"), ("status", "201")))] == 1
    assert samples[("hmacfs_upload_bytes_total", ())] == 42


def test_metrics_ignores_a_query_string(harness: Harness) -> None:
    assert harness.request("GET", "/metrics?name[]=x").status == 200


def test_metrics_head_has_the_headers_and_no_body(harness: Harness) -> None:
    get = harness.request("GET", "/metrics")
    head = harness.request("HEAD", "/metrics")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == str(len(get.body))


def test_health_ok(harness: Harness) -> None:
    response = harness.request("GET", "/health")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert json.loads(response.body) == {
        "status": "ok",
        "checks": {"storage": "ok", "listeners": "ok"},
    }
    assert harness.calls == 1


def test_health_failing_is_503_with_the_same_shape() -> None:
    response = Harness(SICK).request("GET", "/health")
    assert response.status == 503
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert json.loads(response.body) == {
        "status": "fail",
        "checks": {"storage": "low disk space: 3 MiB free", "listeners": "ok"},
    }


@pytest.mark.parametrize(("report", "status"), [(HEALTHY, 200), (SICK, 503)])
def test_health_head(report: HealthReport, status: int) -> None:
    response = Harness(report).request("HEAD", "/health")
    assert response.status == status
    assert response.body == b""
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(report.to_json()))


def test_health_check_that_raises_is_503() -> None:
    harness = Harness(RuntimeError("boom"))
    response = harness.request("GET", "/health")
    assert response.status == 503
    assert json.loads(response.body) == {"status": "fail", "checks": {"health": "check failed"}}
    assert b"boom" not in response.body


def test_health_answers_when_a_deferred_check_finishes() -> None:
    pending: defer.Deferred[HealthReport] = defer.Deferred()
    harness = Harness(pending)
    _, transport = harness.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value() == b""
    pending.callback(SICK)
    response = parse(transport.value())
    assert response.status == 503
    assert json.loads(response.body)["status"] == "fail"
    assert int(response.headers["content-length"]) == len(response.body)


def test_health_deferred_check_that_fails_is_503() -> None:
    pending: defer.Deferred[HealthReport] = defer.Deferred()
    harness = Harness(pending)
    _, transport = harness.send(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    pending.errback(Failure(OSError("stale NFS handle")))
    response = parse(transport.value())
    assert response.status == 503
    assert response.body == b""


def test_health_client_gone_before_a_deferred_check_finishes() -> None:
    pending: defer.Deferred[HealthReport] = defer.Deferred()
    harness = Harness(pending)
    channel, transport = harness.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    channel.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
    pending.callback(HEALTHY)  # must not write to the closed connection, nor raise
    assert transport.value() == b""


@pytest.mark.parametrize(
    "target", ["/", "/metrics/", "/metrics/x", "/health/", "//metrics", "/Metrics", "/upload/a/b"]
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_unknown_path_is_404(harness: Harness, method: str, target: str) -> None:
    response = harness.request(method, target)
    assert response.status == 404
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.body == (b"not found\n" if method == "GET" else b"")
    assert harness.calls == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
@pytest.mark.parametrize("target", ["/metrics", "/health", "/elsewhere"])
def test_other_methods_are_405(harness: Harness, method: str, target: str) -> None:
    response = harness.request(method, target, "Content-Length: 0")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.body == b"method not allowed\n"
    assert harness.calls == 0


def test_post_with_a_body_is_405(harness: Harness) -> None:
    head = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    channel, transport = harness.send(head + b"x" * 60)
    assert transport.value() == b""  # Twisted renders once the whole body is in
    channel.dataReceived(b"x" * 40)  # type: ignore[attr-defined]
    response = parse(transport.value())
    assert response.status == 405
    assert response.body == b"method not allowed\n"


def test_two_requests_on_one_connection(harness: Harness) -> None:
    _, transport = harness.send(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    raw = transport.value()
    assert raw.count(b"HTTP/1.1 200 OK") == 2


def test_health_resource_alone_answers_wherever_it_is_mounted() -> None:
    # As the upload site would use it at [metrics] health_path: render() called directly.
    calls = []

    def report() -> HealthReport:
        calls.append(1)
        return SICK

    site = server.Site(HealthResource(report), reactor=Clock())
    for method, status, body in [
        ("GET", 503, SICK.to_json()),
        ("HEAD", 503, b""),
        ("PUT", 405, b"method not allowed\n"),
    ]:
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(
            f"{method} /anything HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        )
        response = parse(transport.value())
        assert (response.status, response.body) == (status, body)
        assert response.headers["cache-control"] == "no-store"
    assert len(calls) == 2
