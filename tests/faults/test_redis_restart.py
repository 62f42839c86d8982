"""Redis dies and comes back empty (no persistence) under a mixed load of 16 agents."""

from __future__ import annotations

import time

from tests.faults import checks
from tests.faults.history import check
from tests.faults.load import AREAS, REDIS_AREAS, Load

AGENTS = 16
GRACE = 3.0  # seconds after Redis answers again in which a call may still meet the old outage


def test_a_redis_restart_costs_only_503s_on_redis_calls_and_the_service_heals_itself(cluster, ns):
    tokens = cluster.provision(ns, [f"agent-{i:02d}" for i in range(AGENTS)])
    web_pid, relay = cluster.web.pid, cluster.active_relay()
    load = Load(cluster.url, tokens).start()
    try:
        time.sleep(3)
        killed = load.history.note("redis killed")
        cluster.kill_redis()
        published_before = checks.published(cluster, ns)  # the relay cannot move it without Redis
        time.sleep(3)
        cluster.start_redis()
        back = load.history.note("redis started again, empty")
        time.sleep(5)
    finally:
        load.stop()

    # During the outage: 503 with Retry-After, and only where Redis is needed.
    print(load.summary(since=killed), "outage", back - killed)
    failed = [call for call in load.calls if call.failed]
    assert [str(c) for c in failed if c.area not in REDIS_AREAS] == []
    assert [str(c) for c in failed if c.status != 503 or not c.retry_after] == []
    assert {c.area for c in failed} >= {"locks", "status"}, "the outage was not seen"
    assert [str(c) for c in failed if c.ret < killed or c.invoke >= back + GRACE] == [], (killed, back)
    # Afterwards every kind of call works again, with the same web and relay processes.
    assert load.areas_ok_after(back + GRACE) == AREAS
    assert cluster.web.pid == web_pid and cluster.web.alive()
    assert relay is not None and relay.alive() and cluster.active_relay() is relay

    # Every event committed after what Redis lost is in the stream once, in order. (The stream
    # may also hold older events: consumer groups re-seed what Redis lost after their floor.)
    checks.wait_for_relay(cluster, ns)
    stream, logged = checks.stream_ids(cluster, ns), checks.event_ids(cluster, ns)
    assert stream == sorted(set(stream)), "out of order or twice"
    assert set(stream) <= set(logged)
    assert [i for i in logged if i > published_before and i not in set(stream)] == []

    # Fencing tokens kept growing across the lost lock keys (each lock counts its own).
    acquires = [op for op in load.history.ops if op.kind == "acquire" and op.ok]
    grew = []
    for resource in {op.target for op in acquires}:
        before = [op.body["fencing_token"] for op in acquires if op.target == resource and op.ret < killed]
        after = [op.body["fencing_token"] for op in acquires if op.target == resource and op.invoke > back]
        if before and after:
            grew.append(min(after) > max(before))
    assert grew and all(grew)

    assert check(load.history, "redis-restart", lease_breaks=[killed]) == []
    assert checks.half_written(cluster, ns) == []
    assert checks.lock_events_match(cluster, ns) == []
