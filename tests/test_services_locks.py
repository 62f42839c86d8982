"""Locks: DESIGN.md rule 2 (mutual exclusion with fencing) and rule 5 (TTLs)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from memory_admin import redis as r
from memory_admin.errors import LockHeld, NotFound, NotLockHolder, StaleFence
from memory_admin.models import Event, HeldLock, LockFence, Record
from memory_admin.services import Actor
from memory_admin.services.events import doorbell_channel
from memory_admin.services.locks import (
    acquire_lock,
    force_release,
    get_lock,
    leave_queue,
    list_locks,
    new_waiter,
    release_lock,
    renew_lock,
    sweep_expired_locks,
    try_acquire,
    wake_channel,
    wakeup,
)
from memory_admin.services.records import Fence, get_record, write_record
from tests.conftest import actor, lapse_fence, lapse_lock, on_own_connection, wait_for, wait_for_waiters

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = pytest.mark.cluster


@pytest.mark.django_db(transaction=True)
def test_concurrent_acquirers_never_overlap_and_tokens_grow_in_acquisition_order(ns, make_agent):
    agents = [make_agent(f"worker-{i}") for i in range(16)]
    holds: list[tuple[float, float, int]] = []  # (start, end, token)
    record = threading.Lock()
    each = 3  # holds per agent: a count, not a time, so a slow machine only takes longer

    def work(agent):
        try:
            taken = 0
            while taken < each:
                try:
                    lock = acquire_lock(
                        ns=ns, resource="report", actor=actor(agent), ttl_seconds=2, wait_seconds=0.5
                    )
                except LockHeld:
                    continue
                start = time.monotonic()
                time.sleep(random.uniform(0, 0.02))
                end = time.monotonic()
                with record:
                    holds.append((start, end, lock.token))
                taken += 1
                release_lock(ns=ns, resource="report", token=lock.token, actor=actor(agent))
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, agents))

    holds.sort()
    assert len(holds) == each * len(agents)
    for (_, end, _), (next_start, _, _) in zip(holds, holds[1:], strict=False):
        assert end <= next_start, "two holders at once"
    tokens = [token for _, _, token in holds]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


@pytest.mark.django_db
def test_acquires_and_releases_are_planned_once_per_connection_not_per_call(ns, alpha):
    for _ in range(6):
        held = acquire_lock(ns=ns, resource="plan", actor=actor(alpha), ttl_seconds=30)
        release_lock(ns=ns, resource="plan", token=held.token, actor=actor(alpha))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE %s ORDER BY statement",
            ["%UPDATE memory_admin_lockfence%"],
        )
        plans = [row[0] for row in cursor.fetchall()]
    assert plans == [6, 6]  # the acquire's statement and the release's, each prepared once


@pytest.mark.django_db
def test_a_write_fenced_with_an_expired_holders_token_is_refused(ns, alpha, beta):
    first = acquire_lock(ns=ns, resource="section-1", actor=actor(alpha), ttl_seconds=1)
    lapse_lock(ns, "section-1")
    second = acquire_lock(ns=ns, resource="section-1", actor=actor(beta), ttl_seconds=30)
    assert second.token > first.token

    with pytest.raises(StaleFence):
        write_record(
            ns=ns, key="draft", value="old", fence=Fence("section-1", first.token), actor=actor(alpha)
        )
    write_record(ns=ns, key="draft", value="new", fence=Fence("section-1", second.token), actor=actor(beta))
    assert get_record(ns=ns, key="draft").value == "new"


@pytest.mark.django_db
def test_tokens_keep_growing_after_redis_loses_everything(ns, alpha, beta):
    first = acquire_lock(ns=ns, resource="section-1", actor=actor(alpha), ttl_seconds=30)
    # This database only: FLUSHALL would wipe every database of the server, the locks of any other
    # suite or service sharing it (a parallel run's leases vanished mid-test).
    r.client().flushdb()
    second = acquire_lock(ns=ns, resource="section-1", actor=actor(beta), ttl_seconds=30)
    assert second.token > first.token
    with pytest.raises(StaleFence):
        write_record(ns=ns, key="draft", value="x", fence=Fence("section-1", first.token), actor=actor(alpha))


@pytest.mark.django_db
def test_release_and_renew_need_the_holder_and_its_token(ns, alpha, beta):
    lock = acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=30)
    with pytest.raises(NotLockHolder):
        release_lock(ns=ns, resource="r", token=lock.token, actor=actor(beta))
    with pytest.raises(NotLockHolder):
        renew_lock(ns=ns, resource="r", token=lock.token, actor=actor(beta), ttl_seconds=30)
    with pytest.raises(NotLockHolder):
        release_lock(ns=ns, resource="r", token=lock.token - 1, actor=actor(alpha))
    assert get_lock(ns=ns, resource="r").owner == "alpha"
    assert not Event.objects.filter(type="lock.released").exists(), "a refused release left an event"

    renewed = renew_lock(ns=ns, resource="r", token=lock.token, actor=actor(alpha), ttl_seconds=60)
    assert renewed.expires > lock.expires
    release_lock(ns=ns, resource="r", token=lock.token, actor=actor(alpha))
    assert list_locks(ns=ns) == []
    with pytest.raises(NotLockHolder):
        release_lock(ns=ns, resource="r", token=lock.token, actor=actor(alpha))


@pytest.mark.django_db
def test_holding_a_lock_already_is_lock_held(ns, alpha):
    acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=30)
    with pytest.raises(LockHeld) as held:
        acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=30)
    assert held.value.details["held_by"] == "alpha"


@pytest.mark.django_db
def test_force_release_records_operator_and_reason_and_fences_out_the_old_holder(ns, alpha):
    lock = acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=30)
    force_release(ns=ns, resource="r", reason="agent hung", actor=Actor(name="operator:dana"))

    event = Event.objects.get(type="lock.force_released")
    assert event.actor == "operator:dana"
    assert event.payload == {
        "resource": "r",
        "holder": "alpha",
        "fencing_token": lock.token,
        "reason": "agent hung",
    }
    assert list_locks(ns=ns) == []
    with pytest.raises(StaleFence):
        write_record(ns=ns, key="k", value=1, fence=Fence("r", lock.token), actor=actor(alpha))
    assert not Record.objects.filter(key="k").exists()


@pytest.mark.django_db
def test_a_lapsed_lock_frees_itself_and_the_sweep_records_it_once(ns, alpha, beta):
    lock = acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=1)
    lapse_lock(ns, "r")
    assert list_locks(ns=ns) == []
    assert sweep_expired_locks() == 1
    assert sweep_expired_locks() == 0
    event = Event.objects.get(type="lock.expired")
    assert (event.subject, event.payload["fencing_token"], event.agent_id) == ("r", lock.token, "alpha")
    assert not LockFence.objects.get(resource="r").held


@pytest.mark.django_db
def test_the_sweep_leaves_a_renewed_lock_alone(ns, alpha):
    lock = acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=1)
    renew_lock(ns=ns, resource="r", token=lock.token, actor=actor(alpha), ttl_seconds=30)
    lapse_fence(ns, "r")  # the row still has the first lease; Redis has the renewed one
    assert sweep_expired_locks() == 0
    assert LockFence.objects.get(resource="r").held
    write_record(ns=ns, key="k", value=1, fence=Fence("r", lock.token), actor=actor(alpha))


@pytest.mark.django_db
def test_a_lapsed_lock_taken_before_the_sweep_still_gets_its_expiry_recorded_once(ns, alpha, beta):
    lock = acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=1)
    lapse_lock(ns, "r")
    taken = acquire_lock(ns=ns, resource="r", actor=actor(beta), ttl_seconds=30)
    assert sweep_expired_locks() == 0
    types = list(Event.objects.filter(subject="r").order_by("seq").values_list("type", "agent_id"))
    assert types == [("lock.acquired", "alpha"), ("lock.expired", "alpha"), ("lock.acquired", "beta")]
    assert Event.objects.get(type="lock.expired").payload["fencing_token"] == lock.token < taken.token


@pytest.mark.django_db
def test_a_refused_acquire_records_no_expiry_for_a_holder_that_renewed(ns, alpha, beta):
    lock = acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=1)
    renew_lock(ns=ns, resource="r", token=lock.token, actor=actor(alpha), ttl_seconds=30)
    lapse_fence(ns, "r")  # the fence row still says it lapsed; Redis knows better
    with pytest.raises(LockHeld):
        acquire_lock(ns=ns, resource="r", actor=actor(beta))
    assert not Event.objects.filter(type="lock.expired").exists()


@pytest.mark.django_db
def test_a_fence_counts_only_for_the_agent_holding_the_lock(ns, alpha, beta):
    lock = acquire_lock(ns=ns, resource="r", actor=actor(alpha), ttl_seconds=30)
    with pytest.raises(StaleFence):
        write_record(ns=ns, key="k", value="beta's", fence=Fence("r", lock.token), actor=actor(beta))
    assert not Record.objects.filter(key="k").exists()
    write_record(ns=ns, key="k", value="alpha's", fence=Fence("r", lock.token), actor=actor(alpha))


@pytest.mark.django_db(transaction=True)
def test_an_acquire_and_a_release_take_two_redis_calls_each_and_ring_the_relay(ns, alpha, monkeypatch):
    """Reserve, then confirm and ring; begin, then end, wake and ring: the relay's doorbell rides
    on the second script rather than costing a round trip of its own."""
    release_lock(ns=ns, resource="warm", token=acquire_lock(ns=ns, resource="warm", actor=actor(alpha)).token,
                 actor=actor(alpha))  # fmt: skip
    client = r.client()
    listener = client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(doorbell_channel())
    calls: list[str] = []
    execute = type(client).execute_command

    def counted(self, *args, **kwargs):
        calls.append(args[0])
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(type(client), "execute_command", counted)
    lock = acquire_lock(ns=ns, resource="report", actor=actor(alpha))
    acquired = list(calls)
    calls.clear()
    release_lock(ns=ns, resource="report", token=lock.token, actor=actor(alpha))
    released = list(calls)
    monkeypatch.undo()
    rings = []
    for _ in range(20):
        message = listener.get_message(timeout=0.25)
        if message is not None:
            rings.append(message["data"])
        if len(rings) == 2:
            break
    listener.close()
    assert (acquired, released) == (["EVALSHA"] * 2, ["EVALSHA"] * 2)
    assert len(rings) == 2


@pytest.mark.django_db(transaction=True)
def test_a_lock_handed_to_a_waiter_that_stopped_waiting_is_released_for_the_next(ns, alpha, beta, make_agent):
    """The release hands the lock to the first waiter; that waiter, leaving the line just as it
    came, gives it up, and the next waiter in line is handed it."""
    gamma = make_agent("gamma")
    held = acquire_lock(ns=ns, resource="r", actor=actor(alpha))
    first, second = new_waiter(actor(beta), 30), new_waiter(actor(gamma), 30)
    for waiter, who in ((first, beta), (second, gamma)):
        busy = try_acquire(ns=ns, resource="r", actor=actor(who), ttl_seconds=30, waiter=waiter, queue=True)
        assert not isinstance(busy, HeldLock)
    release_lock(ns=ns, resource="r", token=held.token, actor=actor(alpha))
    assert (get_lock(ns=ns, resource="r").owner, get_lock(ns=ns, resource="r").token) == (
        "beta",
        held.token + 1,
    )

    leave_queue(ns=ns, resource="r", waiter=first)
    assert (get_lock(ns=ns, resource="r").owner, get_lock(ns=ns, resource="r").token) == (
        "gamma",
        held.token + 2,
    )
    mine = try_acquire(ns=ns, resource="r", actor=actor(gamma), ttl_seconds=30, waiter=second, queue=True)
    assert isinstance(mine, HeldLock) and mine.token == held.token + 2
    log = list(Event.objects.filter(subject="r").order_by("seq").values_list("type", "actor"))
    assert log == [
        ("lock.acquired", "alpha"),
        ("lock.released", "alpha"),
        ("lock.acquired", "beta"),
        ("lock.released", "beta"),
        ("lock.acquired", "gamma"),
    ]
    assert LockFence.objects.get(resource="r").holder == "gamma"


@pytest.mark.django_db(transaction=True)
def test_a_waiter_that_leaves_the_line_while_its_handover_is_recorded_is_granted_nothing(
    ns, alpha, beta, make_agent
):
    """The release names the first waiter and records the handover in Postgres; the waiter leaves
    the line meanwhile (it stopped waiting, or a busy process kept it from looking until its place
    lapsed). No wake-up may then grant it the lock, which is freed for the next in line: a grant
    answered the waiter's request with a token whose lock was released under it."""
    gamma = make_agent("gamma")
    held = acquire_lock(ns=ns, resource="r", actor=actor(alpha))
    first, second = new_waiter(actor(beta), 30), new_waiter(actor(gamma), 30)
    for waiter, who in ((first, beta), (second, gamma)):
        try_acquire(ns=ns, resource="r", actor=actor(who), ttl_seconds=30, waiter=waiter, queue=True)
    listener = r.client().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(wake_channel())
    wait_for(lambda: listener.get_message(timeout=0.1) is None and listener.subscribed, message="subscribed")
    with transaction.atomic():
        LockFence.objects.select_for_update().get(ns=ns, resource="r")  # the handover waits here
        release = lambda: release_lock(ns=ns, resource="r", token=held.token, actor=actor(alpha))  # noqa: E731
        releasing, outcome = on_own_connection(release, deadlock_timeout="1s")
        wait_for_waiters(1)
        leave_queue(ns=ns, resource="r", waiter=first)  # beta stops waiting
    releasing.join(timeout=30)
    assert outcome == [None]

    wakeups: list = []

    def gamma_woken() -> bool:  # what came before gamma's wake-up includes any grant to beta
        if (message := listener.get_message(timeout=0.1)) is not None:
            wakeups.append(wakeup(message["data"]))
        return second in [who for who, _ in wakeups]

    wait_for(gamma_woken, message="gamma, next in line, woken to look")
    listener.close()
    assert [who for who, grant in wakeups if grant is not None] == []  # nobody was granted it
    with pytest.raises(NotFound):  # free: beta was handed nothing it could hold
        get_lock(ns=ns, resource="r")
    mine = try_acquire(ns=ns, resource="r", actor=actor(gamma), ttl_seconds=30, waiter=second, queue=True)
    assert isinstance(mine, HeldLock) and mine.token == held.token + 2
    log = list(Event.objects.filter(subject="r").order_by("seq").values_list("type", "actor"))
    assert log == [
        ("lock.acquired", "alpha"),
        ("lock.released", "alpha"),
        ("lock.acquired", "beta"),  # recorded with the handover, then ended at once
        ("lock.released", "beta"),
        ("lock.acquired", "gamma"),
    ]
