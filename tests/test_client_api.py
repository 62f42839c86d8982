"""Every MemoryClient method against a real running server: results and errors."""

from __future__ import annotations

import threading
import time

import pytest
from memory_admin_client import (
    AgentEvent,
    AgentMismatch,
    ConflictError,
    Forbidden,
    InvalidRequest,
    LockHeld,
    MemoryClient,
    NotFound,
    NotLockHolder,
    RateLimited,
    Unauthenticated,
    Unavailable,
)

from memory_admin.models import Conflict, Event, Fact
from memory_admin.services.tokens import issue_token, revoke_token
from tests.client_support import FAST, FaultProxy, client_for
from tests.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def a(web_server, alpha):
    with client_for(web_server.url, alpha) as client:
        yield client


@pytest.fixture
def b(web_server, beta):
    with client_for(web_server.url, beta) as client:
        yield client


def test_me_and_health_name_the_agent_and_the_stores(a):
    assert a.me() == {"agent_id": "alpha", "namespace": "team", "scopes": ["read", "write"]}
    assert a.agent_id == "alpha" and a.namespace == "team"
    assert a.health()["status"] == "ok"


def test_facts_are_stored_found_by_category_text_and_id(a, b):
    first = a.store_fact("alpha", "Market size is $4.2B", "market", {"source": "report_xyz"})
    second = b.store_fact("beta", "Two competitors lead", "competitors")
    third = a.store_fact(None, "Growth is 12% a year", "market")
    assert isinstance(first, int) and first < second < third
    market = b.get_facts_by_category("market")
    assert [f["fact"] for f in market] == ["Growth is 12% a year", "Market size is $4.2B"]
    assert market[1]["agent_id"] == "alpha" and market[1]["metadata"] == {"source": "report_xyz"}
    assert market[1]["category"] == "market" and market[1]["timestamp"] == market[1]["created_at"]
    assert b.get_facts_by_category("nothing here") == []
    assert [f["id"] for f in a.query_facts(q="competitors")["items"]] == [second]
    assert a.query_facts(agent_id="alpha", limit=1)["next"] is not None
    assert a.get_fact(first)["fact"] == "Market size is $4.2B"
    with pytest.raises(NotFound):
        a.get_fact(10**12)


def test_get_facts_by_category_pages_through_more_than_one_page(a):
    for i in range(7):
        a.store_fact(None, f"f{i}", "many")
    assert len(a.get_facts_by_category("many")) == 7
    assert [f["fact"] for f in a.get_facts_by_category("many", limit=3)] == ["f6", "f5", "f4"]


def test_naming_another_agent_is_refused_before_anything_is_sent(a):
    before = Fact.objects.count()
    with pytest.raises(AgentMismatch, match="speaks for agent 'alpha'"):
        a.store_fact("beta", "not mine to say", "market")
    with pytest.raises(AgentMismatch):
        a.set_agent_status("beta", "working")
    with pytest.raises(AgentMismatch):
        a.publish(AgentEvent("fact_discovered", "beta", {}))
    with pytest.raises(AgentMismatch):
        a.acquire_lock("report", "beta")
    with pytest.raises(AgentMismatch):
        a.write("k", 1, "beta")
    assert Fact.objects.count() == before


def test_status_is_set_read_renewed_and_listed(a, b):
    body = a.set_agent_status("alpha", "researching", "market size", ttl_seconds=30)
    assert body["status"] == "researching" and body["expires_at"]
    seen = b.get_agent_status("alpha")
    assert (seen["status"], seen["detail"], seen["state"]) == ("researching", "market size", "live")
    a.heartbeat("researching", "market size")
    assert b.get_agent_status("beta") is None  # exists, never reported
    assert b.get_agent_status("nobody") is None
    assert {x["agent_id"]: x["state"] for x in b.list_agents()}["alpha"] == "live"
    changes = Event.objects.filter(type="status.changed", agent_id="alpha").count()
    assert changes == 1  # the heartbeat with the same status made no event


def test_acquire_lock_keeps_the_token_releases_only_its_own_and_renews(a, b):
    assert a.acquire_lock("report", "alpha", ttl_seconds=30)
    token = a.fencing_token("report")
    assert isinstance(token, int)
    assert not b.acquire_lock("report", "beta")
    assert b.release_lock("report", "beta") is False  # beta holds nothing: nothing happens
    assert a.get_lock("report")["owner"] == "alpha"
    assert [lock["resource"] for lock in b.list_locks()] == ["report"]
    assert a.renew_lock("report", ttl_seconds=60)["fencing_token"] == token
    assert a.release_lock("report", "alpha") is True
    assert a.get_lock("report") is None and a.fencing_token("report") is None
    assert a.release_lock("report", "alpha") is False
    with pytest.raises(NotLockHolder):
        a.renew_lock("report")
    assert b.acquire_lock("report", "beta", wait_seconds=1)
    assert b.fencing_token("report") > token


def test_lock_held_names_the_holder_and_a_waiter_gets_the_lock_when_it_is_freed(a, b):
    with a.lock("section/1", ttl=5):
        with pytest.raises(LockHeld) as held, b.lock("section/1", wait=0.2):
            pass
        assert held.value.held_by == "alpha" and held.value.expires_at
        waiter: list = []
        thread = threading.Thread(target=lambda: waiter.append(b.lock("section/1", ttl=5, wait=10).acquire()))
        thread.start()
    thread.join(15)
    assert waiter and waiter[0].held
    waiter[0].release()


def test_events_are_published_and_read_after_a_cursor_with_filters(a, b):
    start = a.read_events(since="0-0", count=10_000)[-1]["event_id"]
    first = a.publish(AgentEvent("fact_discovered", "alpha", {"topic": "market_size", "value": "$4.2B"}))
    second = b.publish("section_written", {"section": 1})
    third = a.publish("fact_discovered", {"topic": "growth"})
    events = b.read_events(since=start)
    assert [e["event_id"] for e in events] == [first, second, third]
    assert events[0]["event_type"] == "fact_discovered" and events[0]["agent_id"] == "alpha"
    assert events[0]["payload"] == {"topic": "market_size", "value": "$4.2B"}
    assert events[0]["timestamp"] == events[0]["created_at"]
    assert [e["id"] for e in b.read_events(since=start, types=["section_written"])] == [second]
    assert [e["id"] for e in b.read_events(since=start, agent_id="alpha")] == [first, third]
    assert [e["id"] for e in b.read_events(since=str(first), count=1)] == [second]
    assert [e["id"] for e in b.read_events(since=f"{first}-0")] == [second, third]
    with pytest.raises(InvalidRequest) as bad:
        a.publish("lock.acquired", {})
    assert "type" in bad.value.fields


def test_read_events_stops_at_count_or_when_caught_up(a):
    start = a.read_events(since=0, count=10_000)[-1]["id"]
    for i in range(5):
        a.publish("tick", {"i": i})
    assert [e["payload"]["i"] for e in a.read_events(since=start, count=3)] == [0, 1, 2]
    assert [e["payload"]["i"] for e in a.read_events(since=start, count=600)] == [0, 1, 2, 3, 4]


def test_consumer_groups_give_each_event_to_one_consumer_and_ack(web_server, relay, a, b):
    assert a.read_group("writers", "w1", block_ms=0) == []  # creates the group at the log's end
    ids = [a.publish("task", {"n": n}) for n in range(4)]
    got: list[dict] = []
    while len(got) < 4:
        batch = a.read_group("writers", "w1", count=2, block_ms=2000) + b.read_group("writers", "w2", count=2)
        got += batch
    assert sorted(e["id"] for e in got) == ids
    assert a.ack("writers", [e["id"] for e in got]) == 4


def test_records_write_read_conflict_and_history(a, b):
    assert a.read("plan") is None
    created = a.write("plan", {"steps": 1}, "alpha")
    assert (created["version"], created["value"], created["updated_by"]) == (1, {"steps": 1}, "alpha")
    assert b.write("plan", {"steps": 2}, expected_version=1)["version"] == 2
    with pytest.raises(ConflictError) as lost:
        a.write("plan", {"steps": 3}, "alpha", expected_version=1)
    assert lost.value.current["version"] == 2 and lost.value.current["value"] == {"steps": 2}
    assert lost.value.expected_version == 1 and lost.value.conflict_id
    assert [c["id"] for c in a.conflicts()] == [lost.value.conflict_id]
    assert a.write("plan", {"steps": 3}, expected_version=2)["version"] == 3  # closes the conflict
    assert a.conflicts() == [] and a.conflicts("resolved")[0]["id"] == lost.value.conflict_id
    with pytest.raises(ConflictError) as absent:
        a.write("plan", {"x": 1}, expected_version=0)
    assert absent.value.current["version"] == 3
    assert a.read("plan")["value"] == {"steps": 3}
    assert [v["version"] for v in a.versions("plan")] == [3, 2, 1]
    a.write("plan/sub:1@x", [1, 2])
    assert [r["key"] for r in a.list_records(prefix="plan")["items"]] == ["plan", "plan/sub:1@x"]
    with pytest.raises(ConflictError):
        a.delete("plan", expected_version=1)
    a.delete("plan", expected_version=3)
    assert a.read("plan") is None
    with pytest.raises(NotFound):
        a.delete("plan")


def test_update_retries_on_conflict_so_no_increment_is_lost(web_server, make_agent):
    clients = [client_for(web_server.url, make_agent(f"inc{i}")) for i in range(4)]

    def work(client):
        for _ in range(6):
            client.update("counter", lambda n: (n or 0) + 1, retries=100)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    record = clients[0].read("counter")
    assert record["value"] == 24 and record["version"] == 24
    assert Conflict.objects.filter(key="counter", status="open").count() == 0  # every loser retried
    for client in clients:
        client.close()


def test_errors_map_to_their_kinds(web_server, alpha, a):
    with pytest.raises(Unauthenticated):
        MemoryClient(web_server.url, "ma_not_a_token").read("x")
    with MemoryClient(web_server.url, issue_token(agent=alpha, read_only=True)[1]) as reader:
        assert reader.read("x") is None
        with pytest.raises(Forbidden):
            reader.write("x", 1)
    with pytest.raises(InvalidRequest) as bad:
        a.write("bad key!", 1)
    assert bad.value.status == 422 and bad.value.code == "validation_error"
    with pytest.raises(InvalidRequest):
        a.store_fact(None, "", "market")
    with pytest.raises(ValueError):
        a.read_events(since="yesterday")


def test_an_unreachable_server_is_unavailable_after_the_retries(alpha):
    client = MemoryClient(f"http://127.0.0.1:{free_port()}", "ma_x", retries=2, backoff=FAST)
    with pytest.raises(Unavailable, match="cannot reach"):
        client.read("x")
    with pytest.raises(Unavailable):
        client.store_fact(None, "nowhere to go", "market")  # without a wal_path nothing is kept


def test_a_retry_after_a_lost_answer_never_doubles_a_write(web_server, alpha):
    proxy = FaultProxy(web_server.url)
    try:
        client = client_for(proxy.url, alpha)
        client.me()
        proxy.drop = 1  # the server stores the fact; its answer never arrives
        fact_id = client.store_fact(None, "said once", "idem")
        assert proxy.seen["POST /api/v1/facts"] == 2 and proxy.keys[-1] == proxy.keys[-2]
        assert Fact.objects.filter(category="idem").count() == 1
        assert client.get_fact(fact_id)["fact"] == "said once"
        proxy.drop = 1
        assert client.write("once", {"n": 1}, expected_version=0)["version"] == 1  # replayed, not a conflict
        proxy.busy = 1  # 503 with Retry-After
        assert client.publish("after_busy", {})
        assert proxy.seen["POST /api/v1/events"] == 2
    finally:
        proxy.close()


def test_an_offline_log_replayed_after_a_token_rotation_does_not_double_a_write(web_server, alpha, tmp_path):
    proxy = FaultProxy(web_server.url)
    old = issue_token(agent=alpha)
    try:
        with MemoryClient(proxy.url, old[1], wal_path=tmp_path / "a.wal", flush_interval=None) as client:
            client.me()
            proxy.drop = 1  # the server stores the fact; its answer never arrives
            assert client.store_fact(None, "said once", "rotated") is None  # kept in the log
            assert Fact.objects.filter(category="rotated").count() == 1
        revoke_token(token=old[0])
        with MemoryClient(web_server.url, issue_token(agent=alpha)[1], wal_path=tmp_path / "a.wal") as client:
            assert client.flush() == 1
        assert Fact.objects.filter(category="rotated").count() == 1
    finally:
        proxy.close()


def test_429_is_retried_after_retry_after_and_raised_once_the_retries_are_spent(web_server, alpha):
    proxy = FaultProxy(web_server.url)
    proxy.busy_status = 429
    try:
        client = client_for(proxy.url, alpha)
        proxy.busy = 1
        started = time.monotonic()
        assert client.read("nothing") is None
        assert time.monotonic() - started >= 0.2  # waited as Retry-After said
        impatient = client_for(proxy.url, alpha, retries=0)
        proxy.busy = 1
        with pytest.raises(RateLimited) as limited:
            impatient.store_fact(None, "too fast", "limits")
        assert limited.value.retry_after == 0.2
        assert not Fact.objects.filter(category="limits").exists()
    finally:
        proxy.close()
