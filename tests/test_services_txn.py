"""services/txn.py under real concurrency: threads with their own Postgres connections."""

import logging
import threading

import pytest
from django.db import connection

from memory_admin.services import txn
from tests.conftest import actor

pytestmark = pytest.mark.django_db(transaction=True)


def test_txns_and_batches_creating_the_same_keys_in_opposite_orders_queue_and_never_deadlock(
    make_agent, caplog
):
    agents = [make_agent(f"creator{i}") for i in range(8)]
    keys = [f"new-{n}" for n in range(8)]
    barrier = threading.Barrier(len(agents))
    failures = []

    def work(i, agent):
        try:
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
        except Exception as exc:  # reported below, with the thread's index
            failures.append((i, exc))
            barrier.abort()
        finally:
            connection.close()

    caplog.set_level(logging.INFO, logger="memory_admin.txn")
    threads = [threading.Thread(target=work, args=(i, agent)) for i, agent in enumerate(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == [], [(i, str(e)[:300], str(e.__cause__)[:100]) for i, e in failures]
    assert [r.getMessage() for r in caplog.records if "retried" in r.getMessage()] == []
