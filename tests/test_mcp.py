"""The MCP endpoint (/mcp) through the official `mcp` client over HTTP, against a running server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from memory_admin import redis as r
from memory_admin.api import auth
from memory_admin.models import Event, Fact, Record
from memory_admin.services.tokens import issue_token

pytestmark = pytest.mark.django_db(transaction=True)

TOOLS = {
    "store_fact": "write",
    "search_facts": "read",
    "get_record": "read",
    "write_record": "destructive",
    "record_history": "read",
    "acquire_lock": "write",
    "release_lock": "destructive",
    "set_status": "destructive",
    "list_agents": "read",
    "publish_event": "write",
    "read_events": "read",
}


async def session(url: str, headers: dict[str, str], work):
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url + "/mcp", http_client=http)) as client,
    ):
        return await work(client)


def run(web_server, headers, work):
    return asyncio.run(session(web_server.url, headers, work))


def data(result) -> dict[str, Any]:
    assert not result.is_error, result.content
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def error_text(result) -> str:
    assert result.is_error, result
    return result.content[0].text


@pytest.fixture
def bearer(alpha) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(agent=alpha)[1]}"}


def test_the_client_lists_every_tool_with_a_schema_and_annotations(web_server, bearer):
    listed = run(web_server, bearer, lambda c: c.list_tools())
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == set(TOOLS)
    for name, kind in TOOLS.items():
        tool = tools[name]
        assert tool.input_schema["type"] == "object", name
        assert tool.description, name
        hints = tool.annotations
        assert hints.read_only_hint is (kind == "read"), name
        assert hints.destructive_hint is (kind == "destructive"), name
    assert tools["write_record"].input_schema["required"] == ["key", "value"]
    assert "expected_version" in tools["write_record"].input_schema["properties"]


def test_every_tool_works_for_the_tokens_agent(web_server, bearer, alpha, beta):
    async def work(client):
        out = {}
        out["fact"] = data(
            await client.call_tool("store_fact", {"fact": "the sky is blue", "category": "colour"})
        )
        out["facts"] = data(await client.call_tool("search_facts", {"q": "sky"}))
        out["w1"] = data(await client.call_tool("write_record", {"key": "plan", "value": {"step": 1}}))
        out["w2"] = data(
            await client.call_tool(
                "write_record", {"key": "plan", "value": {"step": 2}, "expected_version": 1}
            )
        )
        out["get"] = data(await client.call_tool("get_record", {"key": "plan"}))
        out["history"] = data(await client.call_tool("record_history", {"key": "plan"}))
        out["lock"] = data(await client.call_tool("acquire_lock", {"resource": "printer", "ttl_seconds": 30}))
        out["release"] = data(
            await client.call_tool(
                "release_lock", {"resource": "printer", "fencing_token": out["lock"]["fencing_token"]}
            )
        )
        out["status"] = data(
            await client.call_tool("set_status", {"status": "writing", "detail": "section 2"})
        )
        out["agents"] = data(await client.call_tool("list_agents", {}))
        out["event"] = data(
            await client.call_tool("publish_event", {"type": "note.taken", "payload": {"n": 1}})
        )
        out["events"] = data(await client.call_tool("read_events", {"type": "note.taken"}))
        return out

    out = run(web_server, bearer, work)
    assert out["fact"]["agent_id"] == "alpha"
    assert [f["fact"] for f in out["facts"]["items"]] == ["the sky is blue"]
    assert (out["w1"]["version"], out["w2"]["version"], out["get"]["value"]) == (1, 2, {"step": 2})
    assert [v["version"] for v in out["history"]["items"]] == [2, 1]
    assert out["lock"]["owner"] == "alpha" and out["lock"]["fencing_token"] > 0
    assert out["release"]["released"] is True
    assert out["status"]["status"] == "writing" and out["status"]["state"] == "live"
    assert {a["agent_id"] for a in out["agents"]["items"]} == {"alpha", "beta"}
    assert out["event"]["type"] == "note.taken"
    assert [e["payload"] for e in out["events"]["items"]] == [{"n": 1}]
    assert Record.objects.get(key="plan").updated_by == "alpha"
    assert Fact.objects.get().agent == alpha


def test_a_version_conflict_is_a_tool_error_naming_the_current_version(web_server, bearer):
    async def work(client):
        await client.call_tool("write_record", {"key": "plan", "value": 1})
        await client.call_tool("write_record", {"key": "plan", "value": 2})
        return await client.call_tool("write_record", {"key": "plan", "value": 3, "expected_version": 1})

    text = error_text(run(web_server, bearer, work))
    assert "version_conflict" in text
    assert "current version: 2" in text
    assert Record.objects.get(key="plan").value == 2


def test_bad_arguments_are_tool_errors_naming_the_argument_and_the_session_goes_on(web_server, bearer):
    async def work(client):
        results = [
            await client.call_tool("write_record", {"key": "bad key!", "value": 1}),
            await client.call_tool("acquire_lock", {"resource": "printer", "ttl_seconds": "soon"}),
            await client.call_tool("store_fact", {"category": "colour"}),
            await client.call_tool("publish_event", {"type": "record.written", "payload": {}}),
            await client.call_tool("release_lock", {"resource": "printer", "fencing_token": 99}),
        ]
        after = await client.call_tool("write_record", {"key": "ok", "value": 1})
        return results, after

    results, after = run(web_server, bearer, work)
    texts = [error_text(result) for result in results]
    assert "key" in texts[0]
    assert "ttl_seconds" in texts[1]
    assert "fact" in texts[2]
    assert "type" in texts[3]
    assert "not_lock_holder" in texts[4]
    assert data(after)["version"] == 1
    assert not Record.objects.filter(key="bad key!").exists()


def test_x_api_key_works_and_a_read_only_token_cannot_write(web_server, alpha):
    read_only = {"x-api-key": issue_token(agent=alpha, read_only=True)[1]}

    async def work(client):
        return (
            await client.call_tool("list_agents", {}),
            await client.call_tool("write_record", {"key": "plan", "value": 1}),
        )

    listed, refused = run(web_server, read_only, work)
    assert data(listed)["items"][0]["agent_id"] == "alpha"
    assert "read-only" in error_text(refused)
    assert not Record.objects.exists()


def test_without_a_valid_token_mcp_is_401_and_nothing_runs(web_server, alpha):
    before = Event.objects.count()
    for headers in ({}, {"Authorization": "Bearer ma_nope"}, {"x-api-key": "ma_nope"}):
        response = httpx.post(
            web_server.url + "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream", **headers},
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    assert Event.objects.count() == before


def test_each_token_sees_only_its_own_namespace(web_server, bearer, outsider):
    other = {"Authorization": f"Bearer {issue_token(agent=outsider)[1]}"}
    run(web_server, bearer, lambda c: c.call_tool("write_record", {"key": "secret", "value": 1}))
    result = run(web_server, other, lambda c: c.call_tool("get_record", {"key": "secret"}))
    assert "not_found" in error_text(result)


def test_mcp_counts_against_the_tokens_rate_limit(web_server, alpha):
    token, raw = issue_token(agent=alpha)
    window = int(time.time() // auth.WINDOW)
    for w in (window, window + 1):  # the minute may turn over before the call
        r.client().set(r.rate_key(alpha.ns.name, token.pk, w), 10**9, ex=300)
    response = httpx.post(
        web_server.url + "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream", "x-api-key": raw},
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1
