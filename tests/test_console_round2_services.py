"""The services behind the console's cascade and consumer-group pages, on real Postgres, Redis
and a relay: what a stopped agent left behind, releasing it, parking and replaying events."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils.timezone import now

from memory_admin import positions
from memory_admin import redis as r
from memory_admin.errors import Invalid, NotFound
from memory_admin.models import Agent, ConsumerGroup, Event, LockFence, ParkedEvent
from memory_admin.services import Actor, groups
from memory_admin.services.events import publish_event
from memory_admin.services.leftovers import agent_leftovers, release_and_reassign, stale_with_leftovers
from memory_admin.services.locks import acquire_lock, list_locks
from tests.conftest import actor, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
OPERATOR = Actor(name="operator:otto")


def publish(agent, n: int) -> list[int]:
    """Publish n "job" events; their ids in the log once the relay has them in the stream."""
    tag = uuid.uuid4().hex
    for i in range(n):
        publish_event(ns=agent.ns, type="job", payload={"i": i, "tag": tag}, actor=actor(agent))
    mine = positions.log(agent.ns).filter(type="job", payload__tag=tag).order_by(positions.FIELD)
    wait_for(lambda: mine.count() == n, message="the events' positions")
    ids = list(mine.values_list(positions.FIELD, flat=True))
    wait_for(lambda: _in_stream(agent.ns.name, ids[-1]), message="the relay")
    return ids


def _in_stream(ns: str, event_id: int) -> bool:
    newest = r.client().xrevrange(r.stream_key(ns), count=1)
    return bool(newest) and int(newest[0][0].split("-")[0]) >= event_id


def read(agent, consumer: str, group: str = "workers", **options) -> list[int]:
    batch = groups.read_group(
        ns=agent.ns, group=group, consumer=consumer, count=options.pop("count", 10), agent_id=agent.name,
        **options,
    )  # fmt: skip
    # Only "job" events fail in these tests: the consumer acks everything else at once.
    others = [item["id"] for item in batch.items if item["type"] != "job"]
    if others:
        groups.ack_group(ns=agent.ns, group=group, ids=others)
    return [item["id"] for item in batch.items if item["type"] == "job"]


def age(ns, group: str, ms: int) -> None:
    """Move the clock for a group's deliveries: each looks `ms` old (XCLAIM IDLE, same consumer)."""
    client, key = r.client(), r.stream_key(ns.name)
    for p in client.xpending_range(key, group, min="-", max="+", count=1000):
        client.xclaim(key, group, p["consumer"], 0, [p["message_id"]], idle=ms, justid=True)


def make_stale(agent: Agent) -> None:
    """The agent's heartbeat lapsed: no status in Redis, its last expiry in the past."""
    r.client().delete(r.status_key(agent.ns.name, agent.name))
    Agent.objects.filter(pk=agent.pk).update(
        seen=now() - timedelta(minutes=5), expires=now() - timedelta(minutes=4)
    )


def test_a_stale_agent_shows_its_locks_deliveries_and_conflicts_and_release_all_frees_them(
    relay, alpha, beta
):
    ns = alpha.ns
    read(alpha, "alpha-1")  # the group starts after the newest event
    ids = publish(alpha, 2)
    assert read(alpha, "alpha-1") == ids
    held = [acquire_lock(ns=ns, resource=res, actor=actor(alpha), ttl_seconds=300) for res in ("a", "b")]
    make_stale(alpha)

    left = agent_leftovers(ns=ns, agent=alpha)
    assert {lock.resource for lock in left.locks} == {"a", "b"}
    assert [d.event for d in left.deliveries] == ids
    assert {d.consumer for d in left.deliveries} == {"alpha-1"}
    assert left.status.state == "stale"
    [row] = stale_with_leftovers(ns=ns)
    assert (row.status.agent.name, row.locks, row.deliveries) == ("alpha", 2, 2)

    done = release_and_reassign(ns=ns, agent=alpha, reason="alpha crashed", actor=OPERATOR)
    assert sorted(h.token for h in done.locks) == sorted(h.token for h in held)
    assert done.deliveries == 2
    assert list_locks(ns=ns) == []
    assert not LockFence.objects.filter(ns=ns, held=True).exists()
    # Another consumer's next read takes the deliveries over at once, whatever its reclaim_after_ms.
    assert read(beta, "beta-1", reclaim_after_ms=86_400_000) == ids
    assert stale_with_leftovers(ns=ns) == []
    types = list(Event.objects.filter(ns=ns).values_list("type", flat=True))
    assert types.count("lock.force_released") == 2
    assert "group.handed_back" in types
    summary = Event.objects.get(ns=ns, type="agent.released")
    assert summary.actor == "operator:otto" and summary.payload["deliveries"] == 2
    assert summary.payload["reason"] == "alpha crashed"


def test_release_all_needs_a_reason_and_changes_nothing_without_one(alpha):
    acquire_lock(ns=alpha.ns, resource="a", actor=actor(alpha), ttl_seconds=300)
    with pytest.raises(Invalid):
        release_and_reassign(ns=alpha.ns, agent=alpha, reason="  ", actor=OPERATOR)
    assert [lock.resource for lock in list_locks(ns=alpha.ns)] == ["a"]


def test_a_live_agent_is_not_listed_as_stale_with_leftovers(alpha):
    from memory_admin.services.status import heartbeat

    heartbeat(agent=alpha, status="working", ttl_seconds=60, actor=actor(alpha))
    acquire_lock(ns=alpha.ns, resource="a", actor=actor(alpha), ttl_seconds=300)
    Agent.objects.filter(pk=alpha.pk).update(expires=now() - timedelta(minutes=1))  # Postgres' copy lags
    assert stale_with_leftovers(ns=alpha.ns) == []


def test_an_event_failed_max_deliveries_times_is_parked_then_replayed_to_the_group(relay, alpha, beta):
    ns = alpha.ns
    groups.configure_group(ns=ns, group="workers", max_deliveries=2, actor=OPERATOR)
    [event_id] = publish(alpha, 1)
    assert read(alpha, "c1") == [event_id]  # delivery 1, never acked
    age(ns, "workers", 120_000)
    assert read(alpha, "c2") == [event_id]  # delivery 2, never acked
    age(ns, "workers", 120_000)
    assert read(alpha, "c3") == []  # a third delivery would exceed 2: parked instead
    parked = ParkedEvent.objects.get()
    assert (parked.event, parked.deliveries, parked.consumer) == (event_id, 2, "c2")
    assert parked.body["id"] == event_id
    assert groups.pending_deliveries(ns=ns, group="workers") == []
    assert Event.objects.get(ns=ns, type="group.parked").payload["event_id"] == event_id
    [state] = groups.list_groups(ns=ns)
    assert (state.parked, state.pending, state.row.max_deliveries) == (1, 0, 2)

    groups.replay_parked(ns=ns, parked_id=parked.pk, actor=OPERATOR)
    assert not ParkedEvent.objects.exists()
    assert read(beta, "c4") == [event_id]  # delivered again, once
    assert read(beta, "c4") == []
    assert groups.ack_group(ns=ns, group="workers", ids=[event_id]) == 1  # its id acks the replay
    assert groups.pending_deliveries(ns=ns, group="workers") == []
    assert Event.objects.get(ns=ns, type="group.replayed").actor == "operator:otto"


def test_a_replay_goes_to_its_group_only(relay, alpha):
    ns = alpha.ns
    groups.configure_group(ns=ns, group="workers", max_deliveries=1, actor=OPERATOR)
    read(alpha, "other-1", group="others")
    [event_id] = publish(alpha, 1)
    assert read(alpha, "c1") == [event_id]
    assert read(alpha, "other-1", group="others") == [event_id]
    groups.ack_group(ns=ns, group="others", ids=[event_id])
    age(ns, "workers", 120_000)
    assert read(alpha, "c2") == []  # parked
    groups.replay_parked(ns=ns, parked_id=ParkedEvent.objects.get().pk, actor=OPERATOR)
    assert read(alpha, "other-1", group="others") == []
    assert groups.pending_deliveries(ns=ns, group="others") == []
    assert read(alpha, "c2") == [event_id]


def test_a_discarded_parked_event_is_never_delivered_again(relay, alpha):
    ns = alpha.ns
    groups.configure_group(ns=ns, group="workers", max_deliveries=1, actor=OPERATOR)
    [event_id] = publish(alpha, 1)
    assert read(alpha, "c1") == [event_id]
    age(ns, "workers", 120_000)
    assert read(alpha, "c1") == []
    parked = ParkedEvent.objects.get()
    groups.discard_parked(ns=ns, parked_id=parked.pk, actor=OPERATOR)
    age(ns, "workers", 120_000)
    assert read(alpha, "c1") == [] and not ParkedEvent.objects.exists()
    assert Event.objects.get(ns=ns, type="group.discarded").payload["event_id"] == event_id
    with pytest.raises(NotFound):
        groups.discard_parked(ns=ns, parked_id=parked.pk, actor=OPERATOR)


def test_resetting_a_groups_cursor_delivers_the_events_after_it_again(relay, alpha):
    ns = alpha.ns
    read(alpha, "c1")
    ids = publish(alpha, 3)
    assert read(alpha, "c1") == ids
    groups.ack_group(ns=ns, group="workers", ids=ids)
    groups.reset_group(ns=ns, group="workers", after=ids[0], actor=OPERATOR)
    assert read(alpha, "c1") == ids[1:]
    assert ConsumerGroup.objects.get(name="workers").floor == ids[0]
    [state] = groups.list_groups(ns=ns)
    assert state.lag == positions.behind(ns, state.cursor)
    with pytest.raises(Invalid):
        groups.reset_group(ns=ns, group="workers", after=positions.head(ns) + 5, actor=OPERATOR)


def test_a_group_shows_its_lag_and_pending_deliveries_per_consumer(relay, alpha):
    ns = alpha.ns
    read(alpha, "c1")
    ids = publish(alpha, 4)
    assert read(alpha, "c1", count=1) == ids[:1]
    [state] = groups.list_groups(ns=ns)
    assert state.cursor == ids[0]
    assert state.lag == positions.behind(ns, ids[0]) >= 3
    assert [(c.name, c.agent, c.pending) for c in state.consumers] == [("c1", "alpha", 1)]
    [delivery] = groups.pending_deliveries(ns=ns, group="workers")
    assert (delivery.event, delivery.consumer, delivery.deliveries) == (ids[0], "c1", 1)


def test_max_deliveries_must_be_between_1_and_1000_or_null(alpha):
    for bad in (0, 1001, -1):
        with pytest.raises(Invalid):
            groups.configure_group(ns=alpha.ns, group="g", max_deliveries=bad, actor=OPERATOR)
    assert (
        groups.configure_group(ns=alpha.ns, group="g", max_deliveries=None, actor=OPERATOR).max_deliveries
        is None
    )
