"""services/txn.py under real concurrency: threads with their own Postgres connections."""

import logging
import random
import threading

import pytest
from django.db import connection

from memory_admin.models import Event, Record
from memory_admin.services import txn
from memory_admin.services.events import sequence
from tests.conftest import actor

pytestmark = pytest.mark.django_db(transaction=True)


def run_on_threads(agents, work, caplog) -> None:
    """Run `work(i, agent, barrier)` on a thread per agent, each with its own Postgres connection
    and all meeting at `barrier`; fails with every thread's error, or if a transaction was retried
    (a deadlock or serialization failure Postgres broke)."""
    barrier = threading.Barrier(len(agents))
    failures = []

    def run(i, agent):
        try:
            work(i, agent, barrier)
        except Exception as exc:  # reported below, with the thread's index
            failures.append((i, exc))
            barrier.abort()
        finally:
            connection.close()

    caplog.set_level(logging.INFO, logger="memory_admin.txn")
    threads = [threading.Thread(target=run, args=(i, agent)) for i, agent in enumerate(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == [], [(i, str(e)[:300], str(e.__cause__)[:100]) for i, e in failures]
    assert [r.getMessage() for r in caplog.records if "retried" in r.getMessage()] == []  # no deadlock


def test_txns_and_batches_creating_the_same_keys_in_opposite_orders_queue_and_never_deadlock(
    make_agent, caplog
):
    agents = [make_agent(f"creator{i}") for i in range(8)]
    keys = [f"new-{n}" for n in range(8)]

    def work(i, agent, barrier):
        for round in range(6):
            order = keys if (i + round) % 2 else keys[::-1]
            ops = [txn.Op("put", {"key": f"{key}-{round}", "value": i}) for key in order]
            barrier.wait()
            if i % 2:
                done = txn.run_txn(
                    ns=agent.ns, agent=agent, actor=actor(agent), compare=[], success=ops, failure=[]
                )
                assert done.succeeded
            else:
                results = txn.run_batch(ns=agent.ns, agent=agent, actor=actor(agent), ops=ops)
                assert all(result.error is None for result in results)

    run_on_threads(agents, work, caplog)


def test_16_clients_batching_overlapping_keys_lose_no_update_never_deadlock_and_log_each_key_in_order(
    make_agent, caplog
):
    agents = [make_agent(f"batcher{i}") for i in range(16)]
    keys = [f"shared-{n}" for n in range(12)]
    ns = agents[0].ns
    create = [txn.Op("put", {"key": key, "value": 0}) for key in keys]
    txn.run_batch(ns=ns, agent=agents[0], actor=actor(agents[0]), ops=create)
    rounds = 8
    won: dict[str, int] = dict.fromkeys(keys, 0)
    guard = threading.Lock()

    def work(i, agent, barrier):
        rng = random.Random(i)
        for _ in range(rounds):
            # Each client increments its own overlapping subset, in its own order, over the
            # versions it read: a write over a version another client moved is refused.
            mine = rng.sample(keys, 6)
            current = {r.key: r for r in Record.objects.filter(ns=ns, key__in=mine)}
            ops = [
                txn.Op("put", {"key": key, "value": record.value + 1, "expected_version": record.version})
                for key, record in ((key, current[key]) for key in mine)
            ]
            barrier.wait()
            results = txn.run_batch(ns=ns, agent=agent, actor=actor(agent), ops=ops)
            with guard:
                for key, result in zip(mine, results, strict=True):
                    if result.error is None:
                        won[key] += 1
                    else:
                        assert result.error.code == "version_conflict", result.error

    run_on_threads(agents, work, caplog)
    assert sum(won.values()) > 0
    for record in Record.objects.filter(ns=ns, key__in=keys):
        # Every increment that was answered as written is in the value: none was lost.
        assert (record.value, record.version) == (won[record.key], won[record.key] + 1)
    sequence()
    for key in keys:
        versions = list(
            Event.objects.filter(ns=ns, type="record.written", subject=key)
            .order_by("position")
            .values_list("payload__version", flat=True)
        )
        assert versions == list(range(1, won[key] + 2))  # the log shows each key's versions in order
