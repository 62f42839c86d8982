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
from memory_admin.services.events import append_event, find_position, publish_event, read_events
from tests.conftest import actor, wait_for


@pytest.mark.django_db(transaction=True)
def test_a_paging_reader_sees_every_event_once_in_order_while_writers_commit_out_of_order(ns, make_agent):
    writers, per_writer = 8, 200
    agents = [make_agent(f"writer-{i}") for i in range(writers)]

    def write(agent):
        try:
            for i in range(per_writer):
                with transaction.atomic():
                    # The transaction takes its xid well before it appends, as a service's may.
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_current_xact_id()")
                    time.sleep(random.uniform(0, 0.003))
                    append_event(ns=ns, type="test.tick", actor=actor(agent), payload={"i": i})
                    if random.random() < 0.1:
                        time.sleep(random.uniform(0, 0.002))  # a slow commit: later ones must wait for it
        finally:
            connection.close()

    seen: list[int] = []

    def read():
        cursor = 0
        deadline = time.monotonic() + 60
        try:
            # Until every event is seen: a transaction anywhere in the cluster may still hold the
            # horizon back for a moment after the writers are done.
            while len(seen) < writers * per_writer and time.monotonic() < deadline:
                page = read_events(ns=ns, after=cursor, types=["test.tick"], limit=37)
                seen.extend(event.position for event in page)
                if page:
                    cursor = page[-1].position
                else:
                    time.sleep(0.001)
        finally:
            connection.close()

    with ThreadPoolExecutor(writers + 1) as pool:
        reader = pool.submit(read)
        list(pool.map(write, agents))
        reader.result()

    assert len(seen) == writers * per_writer
    assert seen == sorted(set(seen)), "an event was seen twice or out of order"
    stored = Event.objects.filter(type="test.tick").values_list("position", flat=True)
    assert set(seen) == set(stored)
    assert seen == list(range(seen[0], seen[0] + len(seen))), "positions are dense"


@pytest.mark.django_db(transaction=True)
def test_positions_have_no_gaps_even_after_a_rollback(ns, alpha):
    first = publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    first = wait_for(lambda: find_position(first).position and first)
    with pytest.raises(RuntimeError), transaction.atomic():
        append_event(ns=ns, type="note", actor=actor(alpha))
        raise RuntimeError("rolled back")
    second = publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    second = wait_for(lambda: find_position(second).position and second)
    assert second.position == first.position + 1
    assert second.seq > first.seq + 1, "the sequence itself did skip the rolled-back number"


@pytest.mark.django_db(transaction=True)
def test_an_event_waits_for_older_open_transactions_and_then_keeps_its_place(ns, alpha, beta):
    """The horizon: an event committed while an older transaction is open gets no position
    until that one ends, so no reader can pass the older one's events by."""
    older_started, newer_committed, older_may_commit = threading.Event(), threading.Event(), threading.Event()

    def older():
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_current_xact_id()")
                older_started.set()
                older_may_commit.wait(10)
                append_event(ns=ns, type="older", actor=actor(alpha))
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(older)
        older_started.wait(10)
        newer = publish_event(ns=ns, type="newer", payload={}, actor=actor(beta))
        newer_committed.set()
        assert find_position(newer).position is None, "positioned past an open older transaction"
        assert read_events(ns=ns, types=["newer"]) == []
        older_may_commit.set()
        done.result()
    logged = wait_for(lambda: len(found := read_events(ns=ns, types=["older", "newer"])) == 2 and found)
    assert [e.type for e in logged] == ["older", "newer"]


@pytest.mark.django_db(transaction=True)
def test_one_keys_versions_appear_in_the_log_in_ascending_order(ns, make_agent):
    """Writers take their xid before they wait for the record's row lock, so xid order and
    version order disagree often; the log must still show each key's versions in order."""
    from memory_admin.services.records import write_record

    agents = [make_agent(f"w{i}") for i in range(8)]

    def write(agent):
        try:
            for _ in range(40):
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_current_xact_id()")
                    time.sleep(random.uniform(0, 0.002))
                    write_record(
                        ns=ns, key=random.choice(["a", "b"]), value={"by": agent.name}, actor=actor(agent)
                    )
        finally:
            connection.close()

    with ThreadPoolExecutor(len(agents)) as pool:
        list(pool.map(write, agents))
    logged = wait_for(
        lambda: len(found := read_events(ns=ns, types=["record.written"], limit=500)) == 320 and found
    )
    for key in ("a", "b"):
        versions = [e.payload["version"] for e in logged if e.subject == key]
        assert versions == list(range(1, len(versions) + 1))


@pytest.mark.django_db
@pytest.mark.parametrize(
    "reserved", ["fact.stored", "record.written", "lock.acquired", "operator.x", "agent.y"]
)
def test_agents_cannot_publish_the_servers_own_event_types(ns, alpha, reserved):
    with pytest.raises(Invalid):
        publish_event(ns=ns, type=reserved, payload={}, actor=actor(alpha))
    assert not Event.objects.filter(type=reserved).exists()


@pytest.mark.django_db(transaction=True)
def test_reading_filters_by_type_and_agent_and_stays_in_the_namespace(ns, alpha, beta, outsider):
    publish_event(ns=ns, type="a", payload={"n": 1}, actor=actor(alpha))
    publish_event(ns=ns, type="b", payload={"n": 2}, actor=actor(beta))
    publish_event(ns=outsider.ns, type="a", payload={"n": 3}, actor=actor(outsider))
    wait_for(lambda: len(read_events(ns=ns, types=["a", "b"])) == 2)
    assert [e.payload["n"] for e in read_events(ns=ns, types=["a", "b"])] == [1, 2]
    assert [e.payload["n"] for e in read_events(ns=ns, types=["a"])] == [1]
    assert [e.payload["n"] for e in read_events(ns=ns, types=["a", "b"], agent_id="beta")] == [2]
