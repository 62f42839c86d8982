"""The last hour's activity behind the console's charts, counted from the real log."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils.timezone import now

from memory_admin import positions
from memory_admin import redis as r
from memory_admin.errors import LockHeld, VersionConflict
from memory_admin.models import Event, Fact, Namespace
from memory_admin.services import activity
from memory_admin.services.events import publish_event, sequence
from memory_admin.services.locks import acquire_lock
from memory_admin.services.records import write_record
from tests.conftest import actor, clear_of_a_minute_boundary, wait_for

# Also on a Redis Cluster (conftest: redis_store): minutes are counted and kept in Redis.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def sequence_all(ns: Namespace) -> None:
    """What the relay would do, here where none runs: every committed event of `ns` in the log. A
    transaction of another database (a parallel run's) can hold the horizon back for a moment."""

    def all_in_log() -> bool:
        sequence()
        return not Event.objects.filter(ns=ns, position__isnull=True).exists()

    wait_for(all_in_log, message="every event in the log")


def test_the_current_minute_counts_events_writes_conflicts_and_locks(alpha, beta):
    clear_of_a_minute_boundary(5)
    ns = alpha.ns
    write_record(ns=ns, key="plan", value=1, actor=actor(alpha))
    with pytest.raises(VersionConflict):
        write_record(ns=ns, key="plan", value=2, expected_version=0, actor=actor(beta))
    acquire_lock(ns=ns, resource="draft", actor=actor(alpha))
    publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    buckets = activity.last_hour(ns, sample_agents=3)
    assert len(buckets) == activity.MINUTES
    last = buckets[-1]
    total = positions.log(ns).count()
    assert (last.events, last.writes, last.conflicts, last.locks, last.agents) == (total, 1, 1, 1, 3)
    assert sum(b.events for b in buckets) == total
    mine = activity.last_hour(ns, agent="alpha")[-1]
    assert mine.events == positions.log(ns).filter(agent_id="alpha").count()


def test_finished_minutes_are_counted_once_and_kept(alpha):
    ns = alpha.ns
    for _ in range(3):
        publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    # Those events happened five minutes ago (the clock moved back for them, not waited out).
    moved = Event.objects.filter(ns=ns).update(created=now() - timedelta(minutes=5))
    buckets = activity.last_hour(ns)
    assert buckets[-6].events == moved and buckets[-1].events == 0
    kept = r.client().hgetall(r.activity_key(ns.name))
    assert len(kept) == activity.MINUTES - 1  # every finished minute of the hour
    Event.objects.filter(ns=ns).delete()  # a finished minute is not counted again
    assert activity.last_hour(ns)[-6].events == moved


def test_the_first_position_of_a_minute_is_found_by_bisection(alpha):
    ns = alpha.ns
    for i in range(20):
        publish_event(ns=ns, type="note", payload={"i": i}, actor=actor(alpha))
    sequence_all(ns)
    events = list(positions.log(ns).order_by(positions.FIELD))
    for i, event in enumerate(events):
        Event.objects.filter(pk=event.pk).update(created=now() - timedelta(minutes=20 - i))
    tenth = positions.of(events[10])
    assert activity.first_position_since(ns, now() - timedelta(minutes=10, seconds=30)) == tenth
    assert activity.first_position_since(ns, now() + timedelta(minutes=1)) == positions.head(ns) + 1


def test_an_event_created_exactly_at_a_minutes_start_counts_in_that_minute(alpha):
    ns = alpha.ns
    minute = now().replace(second=0, microsecond=0) - timedelta(minutes=30)
    tick = timedelta(microseconds=1)
    # Each event's time, in log order: the last instant of a minute, its next minute's first.
    times = [
        minute - tick,
        minute,
        minute + tick,
        minute + timedelta(minutes=1) - tick,
        minute + timedelta(minutes=1),
    ]
    for i in range(len(times)):
        publish_event(ns=ns, type="note", payload={"i": i}, actor=actor(alpha))
    sequence_all(ns)
    events = list(positions.log(ns).order_by(positions.FIELD))[-len(times) :]
    for event, created in zip(events, times, strict=True):
        Event.objects.filter(pk=event.pk).update(created=created)
    first = positions.of(events[0])
    found = activity.first_positions_since(ns, [minute, minute + timedelta(minutes=1), minute + tick])
    assert found == [first + 1, first + 4, first + 2]


def test_charts_are_svg_polylines_scaled_to_the_largest_value(alpha):
    buckets = activity.last_hour(alpha.ns)
    drawn = activity.chart(buckets, ("writes", "conflicts"))
    assert [s.name for s in drawn["series"]] == ["writes", "conflicts"]
    assert len(drawn["series"][0].points.split()) == activity.MINUTES
    assert activity.chart(buckets, ("agents",))["series"][0].points == ""  # never sampled: no line


@pytest.fixture
def viewer(client, db):
    client.force_login(User.objects.create_user("vera"))
    return client


def test_the_overview_and_agent_pages_draw_their_charts(viewer, alpha):
    write_record(ns=alpha.ns, key="plan", value=1, actor=actor(alpha))
    page = viewer.get("/ns/team/").content.decode()
    assert page.count('<svg class="chart"') == 4 and "<polyline" in page and "style=" not in page
    assert '<svg class="chart"' in viewer.get("/ns/team/agents/alpha").content.decode()
    fragment = viewer.get("/ns/team/?fragment=charts").content.decode()
    assert fragment.lstrip().startswith('<section id="charts"')
    assert Permission  # viewers see charts too (no operate permission)


def test_one_search_finds_facts_by_words_records_by_key_prefix_and_agents_by_name(viewer, alpha, make_agent):
    from memory_admin.services.facts import store_fact

    make_agent("planner-2")
    store_fact(ns=alpha.ns, fact="The plan slipped a week", category="notes", actor=actor(alpha))
    store_fact(ns=alpha.ns, fact="Budget approved", category="notes", actor=actor(alpha))
    write_record(ns=alpha.ns, key="plan/q3", value=1, actor=actor(alpha))
    write_record(ns=alpha.ns, key="other", value=1, actor=actor(alpha))
    page = viewer.get("/ns/team/search/?q=plan").content.decode()
    assert "The plan slipped a week" in page and "Budget approved" not in page
    assert "plan/q3" in page and ">other<" not in page
    assert "planner-2" in page and ">alpha<" not in page
    for q in ("", "&&!!", "'", "a" * 500, "\\"):
        assert viewer.get("/ns/team/search/", {"q": q}).status_code == 200


def test_a_busy_hour_is_counted_in_one_load_a_minute_a_range_of_positions(alpha, beta):
    ns = alpha.ns
    for i in range(30):
        write_record(ns=ns, key=f"k{i % 4}", value=i, actor=actor(alpha if i % 2 else beta))
    sequence_all(ns)
    ordered = list(positions.log(ns).order_by(positions.FIELD))
    # Three events a minute over the last ten minutes, each in the middle of its minute: a slow
    # machine's updates then never straddle a minute's boundary.
    middle = now().replace(second=30, microsecond=0)
    for i, event in enumerate(ordered):
        Event.objects.filter(pk=event.pk).update(created=middle - timedelta(minutes=10 - i // 3))
    per_minute = Counter(e.created.replace(second=0, microsecond=0) for e in positions.log(ns))
    buckets = activity.last_hour(ns)
    assert {b.minute: b.events for b in buckets if b.events} == per_minute
    assert sum(b.writes for b in buckets) == 30
    mine = activity.last_hour(ns, agent="alpha")
    assert sum(b.writes for b in mine) == 15
    assert sum(b.events for b in mine) == positions.log(ns).filter(agent_id="alpha").count()


def waits_this_hour(ns) -> int:
    return sum(b.waits for b in activity.last_hour(ns))  # a wait may begin just before a minute ends


def test_an_acquire_that_waits_for_a_held_lock_is_charted_once_and_a_refusal_is_not(alpha, beta):
    ns = alpha.ns
    acquire_lock(ns=ns, resource="draft", actor=actor(alpha), ttl_seconds=60)
    with pytest.raises(LockHeld):  # refused at once: no wait
        acquire_lock(ns=ns, resource="draft", actor=actor(beta))
    assert waits_this_hour(ns) == 0
    with pytest.raises(LockHeld):  # waits, looking again every 50 ms, then gives up
        acquire_lock(ns=ns, resource="draft", actor=actor(beta), wait_seconds=0.3)
    assert waits_this_hour(ns) == 1
    assert activity.last_hour(ns, agent="beta")[-1].waits is None  # waits are the namespace's
    other = Namespace.objects.create(name="elsewhere")
    assert waits_this_hour(other) == 0


def test_lock_waits_through_the_api_are_charted_and_drawn_beside_acquisitions(
    alpha, beta, make_token, viewer
):
    holder = Client(headers={"Authorization": f"Bearer {make_token(alpha)}"})
    waiter = Client(headers={"Authorization": f"Bearer {make_token(beta)}"})
    assert (
        holder.post("/api/v1/locks/draft", {"ttl_seconds": 60}, content_type="application/json").status_code
        == 200
    )
    waited = waiter.post("/api/v1/locks/draft", {"wait_seconds": 0.2}, content_type="application/json")
    assert waited.status_code == 409
    assert waits_this_hour(alpha.ns) == 1
    fragment = viewer.get("/ns/team/?fragment=charts").content.decode()
    waits = fragment[fragment.index('<li class="key key-waits">') :]
    assert 'class="line line-waits"' in fragment and "peak 1<" in waits


def test_a_wait_whose_time_is_up_before_its_first_look_still_queues_and_is_charted(alpha, beta, make_token):
    """On a loaded machine a short wait can run out before the waiter first looks at the lock
    (the API subscribes to wake-ups first): that look still counts as a wait."""
    acquire_lock(ns=alpha.ns, resource="draft", actor=actor(alpha), ttl_seconds=60)
    with pytest.raises(LockHeld):
        acquire_lock(ns=alpha.ns, resource="draft", actor=actor(beta), wait_seconds=1e-9)
    waiter = Client(headers={"Authorization": f"Bearer {make_token(beta)}"})
    refused = waiter.post("/api/v1/locks/draft", {"wait_seconds": 1e-6}, content_type="application/json")
    assert refused.status_code == 409
    assert waits_this_hour(alpha.ns) == 2


def test_a_minute_of_lock_waits_is_kept_a_little_over_an_hour(alpha, beta):
    acquire_lock(ns=alpha.ns, resource="draft", actor=actor(alpha), ttl_seconds=60)
    with pytest.raises(LockHeld):
        acquire_lock(ns=alpha.ns, resource="draft", actor=actor(beta), wait_seconds=0.1)
    client = r.client()
    minute = int(time.time() // 60)  # KEYS would ask one node of a cluster: look where it must be
    [counter] = [key for m in (minute - 1, minute) if client.exists(key := r.lock_waits_key("team", m))]
    assert activity.MINUTES * 60 < client.ttl(counter) <= activity.WAIT_COUNTER_SECONDS


def test_the_charts_are_counted_once_per_new_event_and_reused_meanwhile(alpha):
    ns = alpha.ns
    publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    sequence_all(ns)
    total = positions.log(ns).count()
    first = activity.recent_hour(ns, live_agents=lambda: 7)
    assert (first[-1].events, first[-1].agents) == (total, 7)
    # The clock moves for those events; while the head stays, the page draws what it counted.
    Event.objects.filter(ns=ns).update(created=now() - timedelta(minutes=5))
    assert activity.recent_hour(ns, live_agents=lambda: 9) == first
    publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    sequence()
    moved = activity.recent_hour(ns, live_agents=lambda: 9)  # counted again: only the new event is now
    assert (moved[-1].events, moved[-1].agents) == (1, 9)


def test_events_of_the_last_minute_are_counted_from_positions(alpha):
    ns = alpha.ns
    for _ in range(5):
        publish_event(ns=ns, type="note", payload={}, actor=actor(alpha))
    sequence_all(ns)
    total = positions.log(ns).count()
    oldest = positions.log(ns).order_by(positions.FIELD)[:3]
    Event.objects.filter(pk__in=[e.pk for e in oldest]).update(created=now() - timedelta(minutes=2))
    assert activity.last_minute(ns) == total - 3


def test_big_counts_are_postgres_estimates_marked_as_such_small_ones_exact(alpha, viewer, monkeypatch):
    from memory_admin.services import counts
    from memory_admin.services.facts import store_fact

    for n in range(6):
        store_fact(ns=alpha.ns, fact=f"fact {n}", category="notes", actor=actor(alpha))
    assert counts.tally(Fact.objects.filter(ns=alpha.ns)) == counts.Tally(6)
    monkeypatch.setattr(counts, "COUNT_CAP", 4)
    big = counts.tally(Fact.objects.filter(ns=alpha.ns))
    assert not big.exact and big.value >= 5 and str(big).startswith("≈")
    page = viewer.get("/ns/team/").content.decode()
    assert f'<b title="{big.note}">≈' in page.replace("&#x27;", "'")
    assert str(counts.Tally(1_234_567, exact=False)) == "≈1.2M" and str(counts.Tally(12_345)) == "12,345"
