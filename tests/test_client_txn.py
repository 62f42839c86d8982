"""client.txn() and client.batch(), sync and async, against a real running server."""

from __future__ import annotations

import asyncio

import pytest
from memory_admin_client import AsyncMemoryClient, Forbidden, Op, TxnAborted

from memory_admin.models import Conflict
from memory_admin.services.tokens import issue_token
from tests.client_support import FAST, client_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_txn_built_with_the_client_runs_the_branch_its_compares_choose(web_server, alpha):
    with client_for(web_server.url, alpha) as client:
        client.write("a", 1)
        done = (
            client.txn()
            .if_version("a", 1)
            .if_version("a", "<", 5)
            .if_exists("a")
            .if_absent("b")
            .then(Op.put("a", 2, expected_version=1), Op.put("b", "new", 0), Op.get("a"))
            .otherwise(Op.get("a"))
            .commit()
        )
        assert done["succeeded"] is True
        assert [r["status"] for r in done["results"]] == [200, 201, 200]
        assert done["results"][2]["body"]["value"] == 2
        other = client.txn().if_version("a", 1).then(Op.delete("a")).otherwise(Op.get("b")).commit()
        assert other["succeeded"] is False and other["results"][0]["body"]["value"] == "new"


def test_a_txn_that_fails_raises_txn_aborted_with_the_failed_operation(web_server, alpha):
    with client_for(web_server.url, alpha) as client:
        with pytest.raises(TxnAborted) as raised:
            client.txn().then(Op.put("x", 1), Op.delete("nothing")).commit()
        assert raised.value.failed_op == 1 and raised.value.error["code"] == "not_found"
        assert raised.value.conflict_group == raised.value.txn
        assert client.read("x") is None
        assert Conflict.objects.get(key="x").group == raised.value.txn


def test_a_txn_can_compare_on_a_held_lock(web_server, alpha):
    with client_for(web_server.url, alpha) as client, client.lock("section-3", ttl=30) as lock:
        held = client.txn().if_holding(lock).then(Op.put("s3", "mine")).commit()
        assert held["succeeded"] is True
        stale = client.txn().if_holding("section-3", lock.fencing_token - 1).commit()
        assert stale["succeeded"] is False


def test_a_batch_answers_each_operation_in_order(web_server, alpha):
    with client_for(web_server.url, alpha) as client:
        results = client.batch(
            [
                Op.put("k", 1, 0),
                Op.put("k", 2, 0),
                Op.fact("f", "c", {"m": 1}),
                Op.event("work.done", {"n": 1}),
                Op.status("busy", "batching", 30),
                Op.get("k"),
                {"get": {"key": "nothing"}},  # the wire shape itself
            ]
        )
        assert [r["status"] for r in results] == [201, 409, 201, 201, 200, 200, 404]
        assert client.get_agent_status("alpha")["status"] == "busy"


def test_a_read_only_token_batches_gets_but_no_writes(web_server, alpha):
    from memory_admin_client import MemoryClient

    with MemoryClient(web_server.url, issue_token(agent=alpha, read_only=True)[1], backoff=FAST) as reader:
        assert reader.batch([Op.get("k")])[0]["status"] == 404
        with pytest.raises(Forbidden):
            reader.batch([Op.put("k", 1)])


def test_the_async_client_builds_and_awaits_the_same_txn_and_batch(web_server, alpha):
    client = AsyncMemoryClient(web_server.url, issue_token(agent=alpha)[1], backoff=FAST)

    async def run():
        async with client:
            done = await client.txn().if_absent("a").then(Op.put("a", 1, 0)).commit()
            assert done["succeeded"] is True and done["results"][0]["status"] == 201
            results = await client.batch([Op.get("a"), Op.put("a", 2, 1)])
            assert [r["status"] for r in results] == [200, 200]
            with pytest.raises(TxnAborted) as raised:
                await client.txn().then(Op.put("a", 3, 1)).commit()
            assert raised.value.error["code"] == "version_conflict"

    asyncio.run(run())
