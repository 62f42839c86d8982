"""The event log: DESIGN.md rule 3 (no missed events) and the reserved types."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from memory_admin.errors import Invalid
from memory_admin.models import Event
from memory_admin.services.events import append_event, publish_event, read_events
from tests.conftest import actor


@pytest.mark.django_db(transaction=True)
def test_a_paging_reader_sees_every_event_once_in_order_while_writers_commit_out_of_order(ns, make_agent):
    writers, per_writer = 8, 200
    agents = [make_agent(f"writer-{i}") for i in range(writers)]
    done = threading.Event()

    def write(agent):
        try:
            for i in range(per_writer):
                with transaction.atomic():
                    # The transaction starts (takes an xid) well before it appends, as a service's does.
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_current_xact_id()")
                    time.sleep(random.uniform(0, 0.003))
                    append_event(ns=ns, type="test.tick", actor=actor(agent), payload={"i": i})
                    if random.random() < 0.1:
                        time.sleep(random.uniform(0, 0.002))  # a slow commit: later ids must wait for it
        finally:
            connection.close()

    seen: list[int] = []

    def read():
        cursor = 0
        try:
            while True:
                finished = done.is_set()  # decide before reading, so the last page is complete
                page = read_events(ns=ns, after=cursor, types=["test.tick"], limit=37)
                seen.extend(event.id for event in page)
                if page:
                    cursor = page[-1].id
                elif finished:
                    return
        finally:
            connection.close()

    with ThreadPoolExecutor(writers + 1) as pool:
        reader = pool.submit(read)
        list(pool.map(write, agents))
        done.set()
        reader.result()

    assert len(seen) == writers * per_writer
    assert seen == sorted(set(seen)), "an event was seen twice or out of order"
    assert set(seen) == set(Event.objects.filter(type="test.tick").values_list("id", flat=True))


@pytest.mark.django_db
def test_event_ids_have_no_gaps_even_after_a_rollback(ns, alpha):
    first = publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    with pytest.raises(RuntimeError), transaction.atomic():
        append_event(ns=ns, type="note", actor=actor(alpha))
        raise RuntimeError("rolled back")
    second = publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    assert second.id == first.id + 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "reserved", ["fact.stored", "record.written", "lock.acquired", "operator.x", "agent.y"]
)
def test_agents_cannot_publish_the_servers_own_event_types(ns, alpha, reserved):
    with pytest.raises(Invalid):
        publish_event(ns=ns, type=reserved, payload={}, actor=actor(alpha))
    assert not Event.objects.filter(type=reserved).exists()


@pytest.mark.django_db
def test_reading_filters_by_type_and_agent_and_stays_in_the_namespace(ns, alpha, beta, outsider):
    publish_event(ns=ns, type="a", payload={"n": 1}, actor=actor(alpha))
    publish_event(ns=ns, type="b", payload={"n": 2}, actor=actor(beta))
    publish_event(ns=outsider.ns, type="a", payload={"n": 3}, actor=actor(outsider))
    assert [e.payload["n"] for e in read_events(ns=ns, types=["a", "b"])] == [1, 2]
    assert [e.payload["n"] for e in read_events(ns=ns, types=["a"])] == [1]
    assert [e.payload["n"] for e in read_events(ns=ns, types=["a", "b"], agent_id="beta")] == [2]
