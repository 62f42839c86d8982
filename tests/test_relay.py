"""The relay: every committed event reaches Redis once, in order, whatever dies when; and one
namespace that cannot be published never stalls another."""

from __future__ import annotations

import json
import re
import signal
import time
from datetime import UTC, datetime

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client

from memory_admin import live, sql
from memory_admin import redis as r
from memory_admin.models import Event, Namespace
from memory_admin.relay import CALL_SIZE, STATUS_KEY, Relay, call_texts
from memory_admin.services import records
from memory_admin.services.events import append_event, find_position, in_txn, positions_channel, publish_event
from tests.conftest import actor, start_relay, wait_for

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = pytest.mark.cluster


def stream_ids(ns) -> list[int]:
    return [int(entry_id.split("-")[0]) for entry_id, _ in r.client().xrange(r.stream_key(ns.name))]


def publish(ns, agent, count: int) -> list[int]:
    """Publish `count` events; their positions (sequenced here if no relay did yet)."""
    published = [
        publish_event(ns=ns, type="tick", payload={"i": i}, actor=actor(agent)) for i in range(count)
    ]
    return [wait_for(lambda e=e: find_position(e).position, message="a position") for e in published]


def one_pass() -> Relay:
    """A relay in this process, for one pass: it sequences, then publishes what waits."""

    async def run() -> Relay:
        relay = Relay(name="relay-under-test")
        assert await relay._become_active()
        try:
            await relay.sequence()
            await relay.publish_pending()
        finally:
            await relay._close()
            await relay.redis.aclose()
        return relay

    return async_to_sync(run)()


@pytest.mark.django_db(transaction=True)
def test_a_new_relay_publishes_what_a_killed_one_left_each_event_exactly_once_in_order(ns, alpha, tmp_path):
    first = start_relay(tmp_path, "relay-1")
    try:
        ids = publish(ns, alpha, 30)
        wait_for(lambda: stream_ids(ns)[-1:] == ids[-1:], message="first batch published")
        first.proc.send_signal(signal.SIGSTOP)
        ids += publish(ns, alpha, 70)  # committed, not published
    finally:
        first.stop(signal.SIGKILL)
    # And as if it had died between XADD and storing its cursor: the cursor lags the stream.
    Namespace.objects.filter(pk=ns.pk).update(published=ids[10])

    second = start_relay(tmp_path, "relay-2")
    try:
        wait_for(lambda: stream_ids(ns)[-1:] == ids[-1:], message="the rest published")
        time.sleep(0.5)
        every = list(Event.objects.filter(ns=ns).order_by("position").values_list("position", flat=True))
        assert every == list(range(1, len(every) + 1)), "positions are dense"
        assert stream_ids(ns) == every
        assert Namespace.objects.get(pk=ns.pk).published == ids[-1]
    finally:
        second.stop()


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_first_events_the_stream_has_adds_only_the_rest_each_once(ns, alpha):
    ids = publish(ns, alpha, 6)
    # As if a relay had added the log up to the first three of these and died before storing
    # its cursor.
    added = range(1, ids[3])
    for position in added:
        r.client().xadd(r.stream_key(ns.name), {"event": "added before"}, id=f"{position}-0")

    relay = one_pass()
    assert not relay.stalls
    entries = dict(r.client().xrange(r.stream_key(ns.name)))
    assert stream_ids(ns) == list(range(1, ids[-1] + 1))
    assert [entries[f"{p}-0"]["event"] for p in added] == ["added before"] * len(added)
    assert [json.loads(entries[f"{p}-0"]["event"])["id"] for p in ids[3:]] == ids[3:]

    one_pass()  # its cursor was never stored: the next relay publishes the batch again
    assert dict(r.client().xrange(r.stream_key(ns.name))) == entries


@pytest.mark.django_db(transaction=True)
def test_a_batch_too_big_for_one_script_call_is_added_in_several_in_order(ns, alpha):
    blob = "x" * (CALL_SIZE // 3)
    appended = [
        publish_event(ns=ns, type="big", payload={"i": i, "blob": blob}, actor=actor(alpha)) for i in range(5)
    ]
    ids = [wait_for(lambda e=e: find_position(e).position) for e in appended]
    with connection.cursor() as cursor:
        cursor.execute(sql.RELAY_FETCH, [ns.pk, ids[0] - 1, ids[-1]])
        assert len(call_texts(cursor.fetchall())) == 3  # two events a call

    relay = one_pass()
    assert not relay.stalls
    entries = r.client().xrange(r.stream_key(ns.name))
    assert [int(entry_id.split("-")[0]) for entry_id, _ in entries[-5:]] == ids
    assert [json.loads(fields["event"])["payload"]["i"] for _, fields in entries[-5:]] == list(range(5))


@pytest.mark.django_db(transaction=True)
def test_the_relay_publishes_to_a_redis_that_forgot_its_script(ns, alpha):
    ids = publish(ns, alpha, 2)
    r.client().script_flush()  # what a restarted Redis, or one failed over to a replica, knows
    relay = one_pass()
    assert not relay.stalls
    assert stream_ids(ns)[-2:] == ids


@pytest.mark.django_db(transaction=True)
def test_a_standby_relay_takes_over(ns, alpha, tmp_path):
    active = start_relay(tmp_path, "relay-a")
    standby = None
    try:
        publish(ns, alpha, 1)
        wait_for(lambda: stream_ids(ns), message="relay-a active")
        standby = start_relay(tmp_path, "relay-b", standby=True)
        assert "relay-b active" not in standby.output()
        active.stop(signal.SIGKILL)
        ids = publish(ns, alpha, 5)
        # How soon is the fault suite's to measure (tests/faults); here: that it does.
        wait_for(lambda: stream_ids(ns)[-5:] == ids, timeout=30, message="standby publishing")
        assert "relay-b active" in standby.output()
    finally:
        active.stop(signal.SIGKILL)
        if standby:
            standby.stop()


@pytest.mark.django_db(transaction=True)
def test_each_namespace_group_hears_its_own_log_grow(ns, alpha, outsider, relay):
    async def hear():
        # One event loop throughout: a pub/sub layer's channels belong to the loop that made them.
        layer = get_channel_layer()
        mine, theirs = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(live.group_name(ns.pk), mine)
        await layer.group_add(live.group_name(outsider.ns.pk), theirs)
        [position] = await sync_to_async(publish)(ns, alpha, 1)
        # The doorbells of what the namespace logged before (its agents') may ring first.
        messages = [await layer.receive(mine)]
        while messages[-1]["event"]["id"] < position:
            messages.append(await layer.receive(mine))
        other = await sync_to_async(publish_event)(
            ns=outsider.ns, type="tick", payload={}, actor=actor(outsider)
        )
        theirs_at = await sync_to_async(lambda: find_position(other).position)()
        heard = [await layer.receive(theirs)]
        while heard[-1]["event"]["id"] < theirs_at:
            heard.append(await layer.receive(theirs))
        return messages, heard, position, other

    messages, heard, position, other = async_to_sync(hear)()
    assert messages[-1] == {"type": "memory.changed", "ns": ns.name, "event": {"id": position}}
    assert {m["ns"] for m in messages} == {ns.name}
    assert heard[-1]["event"]["id"] == find_position(other).position
    assert {m["ns"] for m in heard} == {outsider.ns.name}


@pytest.mark.django_db(transaction=True)
def test_the_stream_carries_each_event_as_the_api_shows_it(ns, alpha, relay):
    deep = {"n": 18446744073709551615, "text": "naïve ✓", "nested": [[[{"a": None}]]]}
    event = publish_event(ns=ns, type="odd", payload=deep, actor=actor(alpha))
    position = wait_for(lambda: find_position(event).position)
    wait_for(lambda: position in stream_ids(ns), message="published")
    [(_, fields)] = r.client().xrange(r.stream_key(ns.name), f"{position}-0", f"{position}-0")
    assert json.loads(fields["event"]) == json.loads(json.dumps(Event.objects.get(seq=event.seq).body()))


@pytest.mark.django_db(transaction=True)
def test_the_stream_carries_odd_text_times_and_txns_as_the_api_shows_them(ns, alpha):
    odd = 'q" b\\ n\n t\t c\x01\x1e\x1f\x7f é ✓ \u2028 😀 </'  # \x1e: redis.ADD_EVENTS' separator
    with transaction.atomic():
        appended = [
            append_event(ns=ns, type=f"odd.{odd}", actor=odd, agent_id="", subject=odd, payload={odd: [odd]}),
            append_event(ns=ns, type="plain", actor="system", agent_id=odd, subject=""),
        ]
    with transaction.atomic(), in_txn(f"txn {odd}"):
        appended += [append_event(ns=ns, type="in.txn", actor=actor(alpha), payload={"n": 10**30})]
    times = [
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no fraction in the API's form
        datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    for event, moment in zip(appended, times, strict=True):
        Event.objects.filter(seq=event.seq).update(created=moment)

    one_pass()
    entries = dict(r.client().xrange(r.stream_key(ns.name)))
    events = [Event.objects.get(seq=e.seq) for e in appended]
    published = [json.loads(entries[f"{event.position}-0"]["event"]) for event in events]
    assert published == [json.loads(json.dumps(event.body())) for event in events]
    assert [body["created_at"] for body in published] == [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.000007Z",
        "0999-12-31T23:59:59.999999Z",
    ]
    assert [body.get("txn") for body in published] == [None, None, f"txn {odd}"]


@pytest.mark.django_db(transaction=True)
def test_a_namespace_that_cannot_be_published_does_not_stall_the_others(ns, alpha, outsider, relay):
    # Namespace B's stream key holds something that is not a stream: every XADD to it fails.
    r.client().set(r.stream_key(outsider.ns.name), "not a stream")
    stuck = publish(outsider.ns, outsider, 3)
    wait_for(lambda: r.client().hgetall(STATUS_KEY), message="the stalled namespace reported")
    assert "WRONGTYPE" in json.loads(r.client().hget(STATUS_KEY, str(outsider.ns.pk)))["error"]

    ids = publish(ns, alpha, 5)
    wait_for(lambda: stream_ids(ns)[-5:] == ids, timeout=5, message="namespace A still published")
    assert relay.proc.poll() is None, "the relay is alive"
    operator = Client()
    operator.force_login(User.objects.create_user("olga"))
    assert (
        "The relay cannot publish this namespace" in operator.get(f"/ns/{outsider.ns.name}/").content.decode()
    )
    assert "The relay cannot publish this namespace" not in operator.get(f"/ns/{ns.name}/").content.decode()

    r.client().delete(r.stream_key(outsider.ns.name))  # repaired: B catches up, and is no longer reported
    wait_for(lambda: stream_ids(outsider.ns)[-3:] == stuck, timeout=40, message="B published after repair")
    wait_for(lambda: not r.client().exists(STATUS_KEY), message="the report cleared")


@pytest.mark.django_db(transaction=True)
def test_the_relay_says_which_position_each_event_it_published_got(ns, alpha, outsider, relay):
    pubsub = r.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(positions_channel())
    try:
        wait_for(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, message="subscribed")
        appended = [publish_event(ns=ns, type="tick", payload={}, actor=actor(alpha))]
        # The server's own events, which no publisher waits for, are not said.
        records.write_record(ns=ns, key="unsaid", value=1, expected_version=None, actor=actor(alpha))
        unsaid = Event.objects.get(ns=ns, type="record.written", subject="unsaid").seq
        appended += [
            publish_event(ns=outsider.ns, type="tick", payload={}, actor=actor(outsider)),
            publish_event(ns=ns, type="tick", payload={}, actor=actor(alpha)),
        ]
        heard: dict[int, int] = {}

        def all_heard() -> bool:
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                heard.update(
                    (int(s), int(p)) for s, _, p in (pair.partition(":") for pair in message["data"].split())
                )
            return all(event.seq in heard for event in appended)

        wait_for(all_heard, message="every position said")
        assert {event.seq: heard[event.seq] for event in appended} == {
            event.seq: Event.objects.get(seq=event.seq).position for event in appended
        }
        # published in order: the last tick was said after the record's event went out
        assert Event.objects.get(seq=unsaid).position < heard[appended[-1].seq]
        assert unsaid not in heard
    finally:
        pubsub.close()


def test_the_relay_keeps_what_it_loaded_out_of_full_collections(relay):
    loaded = re.search(r"loaded \((\d+) objects kept out of full collections\)", relay.output())
    assert loaded is not None and int(loaded.group(1)) > 10_000


@pytest.mark.django_db(transaction=True)
def test_the_relays_pass_runs_statements_planned_once_per_connection(ns, alpha):
    """As simple queries, the pass's statements were parsed and planned on every pass (SEQUENCE's
    planning alone took longer than its run); the relay prepares them when it connects."""
    publish(ns, alpha, 2)

    async def three_passes() -> list[tuple]:
        relay = Relay(name="relay-under-test")
        assert await relay._become_active()
        try:
            for _ in range(3):
                await relay.sequence()
            found = await relay.conn.execute(
                "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements ORDER BY name"
            )
            return await found.fetchall()
        finally:
            await relay._close()

    assert async_to_sync(three_passes)() == [
        ("ma_relay_mark", 0),  # nothing published by this relay: no marks to store
        ("ma_relay_pending", 3),
        ("ma_relay_waiting", 3),
        ("ma_sequence", 3),
    ]
