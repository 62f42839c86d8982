"""AsyncMemoryClient: the same surface, awaited, against a real server."""

from __future__ import annotations

import asyncio

import pytest
from memory_admin_client import (
    AgentEvent,
    AgentMismatch,
    AsyncMemoryClient,
    ConflictError,
    LockHeld,
    StaleFence,
    Unavailable,
)

from memory_admin.services import Actor
from memory_admin.services.locks import force_release
from memory_admin.services.tokens import issue_token
from tests.client_support import FAST, LEASE, outlive_lease_async
from tests.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def connect(url: str, agent, **options) -> AsyncMemoryClient:
    return AsyncMemoryClient(url, issue_token(agent=agent)[1], backoff=FAST, **options)


def test_facts_status_events_and_records_awaited(web_server, alpha, beta):
    a, b = connect(web_server.url, alpha), connect(web_server.url, beta)  # tokens: before the loop

    async def run():
        async with a, b:
            await a.connect()
            assert a.agent_id == "alpha"
            fact_id = await a.store_fact("alpha", "async fact", "async")
            assert [f["id"] for f in await b.get_facts_by_category("async")] == [fact_id]
            assert (await b.get_fact(fact_id))["fact"] == "async fact"
            assert (await a.query_facts(category="async"))["items"][0]["timestamp"]
            await a.set_agent_status("alpha", "awaiting", "tests")
            assert (await b.get_agent_status("alpha"))["status"] == "awaiting"
            assert await b.get_agent_status("nobody") is None
            assert any(x["agent_id"] == "alpha" for x in await b.list_agents())
            with pytest.raises(AgentMismatch):
                await a.publish(AgentEvent("fact_discovered", "beta", {}))

            start = (await a.read_events(since=0, count=10_000))[-1]["id"]
            first = await a.publish(AgentEvent("fact_discovered", "alpha", {"n": 1}))
            await b.publish("section_written", {"n": 2})
            assert [e["event_id"] for e in await b.read_events(since=start)][0] == first
            stream = b.subscribe(after=start)
            assert [(await anext(stream))["payload"]["n"] for _ in range(2)] == [1, 2]
            await stream.aclose()

            assert await a.read("doc") is None
            await a.write("doc", {"v": 1}, "alpha")
            with pytest.raises(ConflictError) as lost:
                await b.write("doc", {"v": 0}, expected_version=0)
            assert lost.value.current["value"] == {"v": 1}
            assert [v["version"] for v in await a.versions("doc")] == [1]
            assert [c["key"] for c in await b.conflicts()] == ["doc"]
            assert (await a.list_records(prefix="do"))["items"][0]["key"] == "doc"
            await a.delete("doc", expected_version=1)
            assert await a.read("doc") is None

            assert await a.acquire_lock("res", "alpha")
            assert not await b.acquire_lock("res", "beta")
            assert (await a.renew_lock("res", 10))["owner"] == "alpha"
            assert [lock["resource"] for lock in await b.list_locks()] == ["res"]
            assert (await b.get_lock("res"))["fencing_token"] == a.fencing_token("res")
            assert await a.release_lock("res", "alpha") is True

            assert await a.read_group("g", "c1") == []
            assert await a.ack("g", []) == 0
            assert (await a.health())["status"] == "ok"
            assert (await a.me())["namespace"] == "team"

    asyncio.run(run())


def test_concurrent_async_updates_lose_nothing(web_server, make_agent):
    clients = [connect(web_server.url, make_agent(f"async{i}")) for i in range(4)]

    async def run():

        async def work(client):
            for _ in range(5):
                await client.update("counter", lambda n: (n or 0) + 1, retries=100)

        await asyncio.gather(*(work(c) for c in clients))
        record = await clients[0].read("counter")
        for client in clients:
            await client.aclose()
        return record

    record = asyncio.run(run())
    assert record["value"] == 20 and record["version"] == 20


def test_async_lock_renews_past_its_ttl_and_stops_fenced_writes_once_force_released(web_server, alpha, beta):
    a, b = connect(web_server.url, alpha), connect(web_server.url, beta)

    async def run():
        async with a, b:
            async with a.lock("section/2", ttl=LEASE) as lock:
                await outlive_lease_async(lock)
                with pytest.raises(LockHeld):
                    await b.lock("section/2").acquire()
                assert (await lock.write("draft", {"s": 2}))["version"] == 1
                assert (await lock.update("draft", lambda v: {**v, "t": 1}))["version"] == 2
                await asyncio.to_thread(
                    force_release,
                    ns=alpha.ns,
                    resource="section/2",
                    reason="test",
                    actor=Actor(name="operator:ops"),
                )
                with pytest.raises(StaleFence):
                    await lock.write("draft", {"s": "late"})
                assert lock.lost
                with pytest.raises(StaleFence, match="not sent"):
                    await lock.write("draft", {"s": "later"})
            assert (await a.read("draft"))["value"] == {"s": 2, "t": 1}

    asyncio.run(run())


def test_async_offline_log_queues_and_flushes(tmp_path, alpha):
    async def run():
        client = AsyncMemoryClient(
            f"http://127.0.0.1:{free_port()}", "ma_x", wal_path=tmp_path / "a.wal", flush_interval=None
        )
        assert await client.store_fact(None, "kept", "offline") is None
        assert await client.publish("offline_event", {"i": 1}) is None
        assert [p["kind"] for p in client.pending()] == ["fact", "event"]
        with pytest.raises(Unavailable):
            await client.flush()
        with pytest.raises(Unavailable, match="never queued"):
            await client.write("k", 1)
        await client.aclose()

    asyncio.run(run())
