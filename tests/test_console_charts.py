"""The last hour's activity behind the console's charts, counted from the real log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils.timezone import now

from memory_admin import positions
from memory_admin import redis as r
from memory_admin.errors import VersionConflict
from memory_admin.models import Event
from memory_admin.services import activity
from memory_admin.services.events import publish_event, sequence
from memory_admin.services.locks import acquire_lock
from memory_admin.services.records import write_record
from tests.conftest import actor

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_current_minute_counts_events_writes_conflicts_and_locks(alpha, beta):
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
    sequence()  # no relay runs here
    events = list(positions.log(ns).order_by(positions.FIELD))
    for i, event in enumerate(events):
        Event.objects.filter(pk=event.pk).update(created=now() - timedelta(minutes=20 - i))
    tenth = positions.of(events[10])
    assert activity.first_position_since(ns, now() - timedelta(minutes=10, seconds=30)) == tenth
    assert activity.first_position_since(ns, now() + timedelta(minutes=1)) == positions.head(ns) + 1


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


def test_a_busy_hour_is_counted_over_several_loads_newest_minutes_first(alpha, monkeypatch):
    ns = alpha.ns
    for i in range(30):
        publish_event(ns=ns, type="note", payload={"i": i}, actor=actor(alpha))
    sequence()  # no relay runs here
    ordered = list(positions.log(ns).order_by(positions.FIELD))
    for i, event in enumerate(ordered):  # three events a minute over the last ten minutes or so
        Event.objects.filter(pk=event.pk).update(created=now() - timedelta(minutes=10 - i // 3, seconds=-1))
    monkeypatch.setattr(activity, "BUDGET", 6)  # a page load counts about six events
    first = activity.last_hour(ns)
    assert first[-1].events is not None and any(b.events is None for b in first)
    for _ in range(20):
        buckets = activity.last_hour(ns)
        if all(b.events is not None for b in buckets):
            break
    assert sum(b.events for b in buckets) == len(ordered)
