"""Postgres crashes (immediate stop) and starts again under a mixed load of 16 agents."""

from __future__ import annotations

import time

from tests.faults import checks
from tests.faults.history import check
from tests.faults.load import AREAS, Load

AGENTS = 16
GRACE = 3.0
POOL_MAX = 20  # DB_POOL_MAX's default, which the cluster's web runs with
# A relay holds its own LISTEN/advisory-lock connection, plus its Django pool for the sweeps,
# which keeps DB_POOL_MIN (2) open even though the sweeps use one at a time.
PER_RELAY = 1 + 2


def connections(cluster) -> int:
    """Client connections to the service's database, other than this query's own."""
    rows = cluster.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    return rows[0][0]


def test_a_postgres_crash_costs_only_503s_leaves_nothing_half_written_and_heals(cluster, ns):
    tokens = cluster.provision(ns, [f"agent-{i:02d}" for i in range(AGENTS)])
    web_pid, relay = cluster.web.pid, cluster.active_relay()
    load = Load(cluster.url, tokens).start()
    try:
        time.sleep(3)
        down = load.history.note("postgres crashed")
        cluster.crash_postgres()
        time.sleep(3)
        cluster.start_postgres()
        back = load.history.note("postgres started again")
        time.sleep(5)
    finally:
        load.stop()

    print(load.summary(since=down), "outage", back - down)
    failed = [call for call in load.calls if call.failed]
    assert [str(c) for c in failed if c.status != 503 or not c.retry_after] == []
    assert {c.area for c in failed} >= {"records", "locks"}, "the outage was not seen"
    assert [str(c) for c in failed if c.ret < down or c.invoke >= back + GRACE] == [], (down, back)
    assert load.areas_ok_after(back + GRACE) == AREAS
    assert cluster.web.pid == web_pid and cluster.web.alive()
    assert relay is not None and relay.alive()

    # No half-written state: every change has its event and every event its change.
    assert checks.half_written(cluster, ns) == []
    assert checks.lock_events_match(cluster, ns) == []
    checks.wait_for_relay(cluster, ns)
    stream, logged = checks.stream_ids(cluster, ns), checks.event_ids(cluster, ns)
    assert stream == logged, "the stream lost or repeated an event across the Postgres restart"
    assert check(load.history, "postgres-restart") == []

    # The pool did not leak: a second load runs clean within the pool's size.
    again = Load(cluster.url, tokens)
    again.run_for(3)
    assert [str(c) for c in again.calls if c.failed] == []
    assert again.areas_ok_after(0) == AREAS
    relays = sum(relay.alive() for relay in cluster.relays)
    # The decisive check is above: a second load runs clean, which a pool that lost track of
    # its connections could not do (it would run out). The count is a sampled view: a backend
    # whose client just closed (this suite's own checks) can linger in pg_stat_activity, so
    # allow two of those and a few seconds to settle; a leak would not settle.
    bound = POOL_MAX + PER_RELAY * relays + 2
    deadline = time.monotonic() + 5
    while (count := connections(cluster)) > bound and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count <= bound
