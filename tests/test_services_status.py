"""Status: heartbeats with a TTL (DESIGN.md rule 5)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin.errors import Invalid
from memory_admin.models import Event
from memory_admin.services.status import (
    agent_items,
    agent_state,
    count_agents,
    get_agent,
    heartbeat,
    list_agents,
    sweep_stale_agents,
)
from tests.conftest import actor, lapse_heartbeat, wait_for

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = pytest.mark.cluster


@pytest.mark.django_db
def test_a_heartbeat_is_live_until_its_ttl_lapses_then_stale(ns, alpha, beta):
    heartbeat(agent=alpha, status="researching", detail="market size", ttl_seconds=5, actor=actor(alpha))
    states = {s.agent.name: s.state for s in list_agents(ns=ns)}
    assert states == {"alpha": "live", "beta": "never_seen"}

    lapse_heartbeat(alpha)
    found = get_agent(ns=ns, agent_id="alpha")
    assert (found.state, found.status, found.detail) == ("stale", "researching", "market size")


@pytest.mark.django_db
def test_only_a_change_of_status_or_detail_makes_an_event(ns, alpha):
    for _ in range(3):
        heartbeat(agent=alpha, status="writing", ttl_seconds=60, actor=actor(alpha))
    heartbeat(agent=alpha, status="writing", detail="section 2", ttl_seconds=60, actor=actor(alpha))
    events = Event.objects.filter(type="status.changed")
    assert [e.payload["detail"] for e in events] == ["", "section 2"]


@pytest.mark.django_db
def test_bad_status_and_ttl_are_refused(alpha):
    for status, ttl in [("", 60), ("x" * 65, 60), ("ok", 4), ("ok", 86401)]:
        with pytest.raises(Invalid):
            heartbeat(agent=alpha, status=status, ttl_seconds=ttl, actor=actor(alpha))
    assert get_agent(ns=alpha.ns, agent_id="alpha").state == "never_seen"


@pytest.mark.django_db
def test_text_postgres_cannot_store_is_refused_before_redis_is_touched(alpha):
    heartbeat(agent=alpha, status="idle", actor=actor(alpha))
    for status, detail in [("working", "NUL \x00"), ("working", "lone \ud800"), ("a\x00b", "")]:
        with pytest.raises(Invalid):
            heartbeat(agent=alpha, status=status, detail=detail, actor=actor(alpha))
    assert r.client().hget(r.status_key("team", "alpha"), "status") == "idle"
    assert Event.objects.filter(type="status.changed").count() == 1


def _refuse_status(value: str) -> None:
    """A real Postgres refusal of one status, for this test's transaction only."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the fixtures' deferred checks run first
        cursor.execute(
            f"ALTER TABLE memory_admin_agent ADD CONSTRAINT no_{value} CHECK (status <> '{value}')"
        )


@pytest.mark.django_db
def test_a_change_whose_postgres_part_fails_leaves_redis_as_it_was(alpha):
    """Redis is written first (its script says whether this is a change), so a failure of the
    Postgres part must put Redis back: no live status that the log never recorded."""
    _refuse_status("refused")
    heartbeat(agent=alpha, status="idle", detail="before", ttl_seconds=300, actor=actor(alpha))
    key, index = r.status_key("team", "alpha"), r.heartbeats_index("team")
    before = (r.client().hgetall(key), r.client().zscore(index, "alpha"))
    with pytest.raises(IntegrityError):
        heartbeat(agent=alpha, status="refused", ttl_seconds=60, actor=actor(alpha))
    assert (r.client().hgetall(key), r.client().zscore(index, "alpha")) == before
    assert 0 < r.client().pttl(key) <= 300_000
    changes = Event.objects.filter(type="status.changed").values_list("payload__status", flat=True)
    assert list(changes) == ["idle"]


@pytest.mark.django_db
def test_a_first_heartbeat_whose_postgres_part_fails_leaves_no_status(alpha):
    _refuse_status("refused")
    with pytest.raises(IntegrityError):
        heartbeat(agent=alpha, status="refused", actor=actor(alpha))
    assert not r.client().exists(r.status_key("team", "alpha"))
    assert r.client().zscore(r.heartbeats_index("team"), "alpha") is None
    assert get_agent(ns=alpha.ns, agent_id="alpha").state == "never_seen"


@pytest.mark.django_db(transaction=True)
def test_the_relay_records_agent_stale_once_after_the_ttl_lapses(ns, alpha, relay):
    heartbeat(agent=alpha, status="working", ttl_seconds=60, actor=actor(alpha))
    assert not Event.objects.filter(type="agent.stale").exists()
    lapse_heartbeat(alpha)
    wait_for(lambda: Event.objects.filter(type="agent.stale").exists(), timeout=10, message="agent.stale")
    assert sweep_stale_agents() == 0  # a later sweep finds nothing more to record
    stale = Event.objects.filter(type="agent.stale")
    assert stale.count() == 1 and stale[0].agent_id == "alpha"
    assert get_agent(ns=ns, agent_id="alpha").state == "stale"


@pytest.mark.django_db
def test_the_sweep_does_not_mark_an_agent_that_keeps_heartbeating(ns, alpha):
    heartbeat(agent=alpha, status="working", ttl_seconds=5, actor=actor(alpha))
    assert sweep_stale_agents() == 0
    assert get_agent(ns=ns, agent_id="alpha").state == "live"


@pytest.mark.django_db
def test_the_sweep_drops_an_agent_from_the_heartbeat_index_only_while_its_status_is_gone(ns, alpha):
    """The sweep's removal checks and removes in one step: a heartbeat that lands between the
    sweep's look at the index and its removal must keep the agent in the index."""
    heartbeat(agent=alpha, status="working", ttl_seconds=5, actor=actor(alpha))
    keys = [r.status_key(ns.name, "alpha"), r.heartbeats_index(ns.name)]
    drop = r.script(r.DROP_LAPSED)
    assert drop(keys=keys, args=["alpha"]) == 0  # heartbeating: stays
    assert r.client().zscore(keys[1], "alpha") is not None
    r.client().delete(keys[0])  # its TTL lapsed
    assert drop(keys=keys, args=["alpha"]) == 1
    assert r.client().zscore(keys[1], "alpha") is None


@pytest.mark.django_db
def test_the_sweep_leaves_an_agent_whose_heartbeat_brought_it_back_in_postgres(ns, alpha):
    """The index said lapsed and the status was gone, but Postgres already has the heartbeat
    that brought it back (a later expiry): no agent.stale for it."""
    heartbeat(agent=alpha, status="working", ttl_seconds=5, actor=actor(alpha))
    r.client().delete(r.status_key(ns.name, "alpha"))
    r.client().zadd(r.heartbeats_index(ns.name), {"alpha": r.to_ms(now() - timedelta(seconds=1))})
    assert sweep_stale_agents() == 0
    assert not Event.objects.filter(type="agent.stale").exists()


@pytest.mark.django_db
def test_the_api_list_the_console_and_the_counts_agree_on_each_agents_state(ns, alpha, beta, make_agent):
    """One rule (status.agent_state) decides live, stale and never_seen wherever a state is shown."""
    gamma = make_agent("gamma")
    for agent in (alpha, beta):
        heartbeat(agent=agent, status="working", ttl_seconds=60, actor=actor(agent))
    lapse_heartbeat(beta)
    expected = {"alpha": "live", "beta": "stale", "gamma": "never_seen"}
    assert {s.agent.name: s.state for s in list_agents(ns=ns)} == expected  # the console, get_agent
    assert {item["agent_id"]: item["state"] for item in agent_items(ns=ns)} == expected  # GET /agents
    assert count_agents(ns=ns) == {"live": 1, "stale": 1, "never_seen": 1}  # the overview
    assert get_agent(ns=ns, agent_id=gamma.name).state == agent_state(live=False, seen=None)
