"""The fault suite's fixtures: one cluster of its own (Postgres, Redis, web, relay) for the
session, made whole again before and after each test, and a namespace per test.

The tests that use `cluster` run when FAULTS=1 (`.ci/run` sets it); elsewhere its tests are skipped, so that
`make test` stays quick. On a failure the cluster's logs go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from tests.faults.cluster import Cluster, remove, start_cluster
from tests.faults.history import ARTIFACTS

ENABLED = os.environ.get("FAULTS") == "1"


def pytest_collection_modifyitems(config, items) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        # Only tests that run a cluster; the history checker's own tests are quick and always run.
        if str(item.fspath).startswith(here) and "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.faults)
            if not ENABLED:
                item.add_marker(
                    pytest.mark.skip(reason="the fault suite runs with FAULTS=1 (.ci/run sets it)")
                )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def whole_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    yield cluster
    remove(cluster)


@pytest.fixture
def cluster(whole_cluster: Cluster, request) -> Iterator[Cluster]:
    whole_cluster.ensure_running()
    yield whole_cluster
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        (ARTIFACTS / f"faults-{name}.log").write_text(whole_cluster.logs())
    whole_cluster.ensure_running()


@pytest.fixture
def ns(request) -> str:
    """A namespace of the test's own: its stream and records are nobody else's."""
    return re.sub(r"[^a-z0-9]", "-", request.node.name.lower())[:60]
