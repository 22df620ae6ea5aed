"""Fixtures for the object store tests: one throwaway Ceph cluster (a monitor, an OSD, radosgw)
for the whole session, in a directory of the session, and a fresh bucket for every test.

Nothing here skips: when the cluster cannot start (a missing package, a daemon that dies,
a timeout), every test that uses it fails with the end of the daemons' logs. The Debian
packages the tests need are listed in packages.txt.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ceph import CephCluster, CephGateway

HERE = Path(__file__).parent
_BUCKETS = itertools.count(1)
#: This session's part of every bucket name (the cluster is the session's own anyway).
_TOKEN = secrets.token_hex(3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The hook sees every item of the session, not only this directory's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test of this directory shows the end of the daemons' logs."""
    # An old-style wrapper: pytest 7.2 (Debian 12) has no `wrapper=True`.
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("ceph_cluster")
    if report.failed and report.when == "call" and isinstance(cluster, CephCluster):
        report.sections.append(("Ceph logs", cluster.logs()))


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    """The session's cluster, started (its gateway is `ceph`); stopped at the end."""
    cluster = CephCluster(tmp_path_factory.mktemp("ceph"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
    leftovers = cluster.leftovers()
    assert not leftovers, "Ceph processes left running:\n" + "\n".join(leftovers)


@pytest.fixture(scope="session")
def ceph(ceph_cluster: CephCluster) -> CephGateway:
    """The S3 gateway of the session's cluster: endpoint, keys, region, `client()`."""
    assert ceph_cluster.gateway is not None
    return ceph_cluster.gateway


@pytest.fixture
def bucket(ceph: CephGateway) -> str:
    """A new, empty bucket of its own for the test (left behind with the cluster)."""
    name = f"test-{_TOKEN}-{next(_BUCKETS)}"
    ceph.make_bucket(name)
    return name
