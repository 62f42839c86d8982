"""Code written for the three-class pattern (RedisAgentMemory, EventStore + AgentEvent,
SharedAgentDB) runs unchanged against the client once its import and constructors change."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from memory_admin.models import Conflict
from memory_admin.services.tokens import issue_token

pytestmark = pytest.mark.django_db(transaction=True)

# Agent code as it was written for the three classes. Nothing below the marker changes.
BEFORE = """
from shared_memory import AgentEvent, ConflictError, EventStore, RedisAgentMemory, SharedAgentDB

memory = RedisAgentMemory("redis://localhost:6379/0", namespace="agents")
store = EventStore("redis://localhost:6379/0")
db = SharedAgentDB("postgresql://localhost/agents")
"""
AFTER = """
from memory_admin_client import AgentEvent, AsyncMemoryClient as SharedAgentDB, ConflictError
from memory_admin_client import MemoryClient

memory = MemoryClient(URL, TOKEN)
store = MemoryClient(URL, TOKEN)
db = SharedAgentDB(URL, TOKEN)
"""
AGENT_CODE = """
# --- unchanged agent code ---
memory.set_agent_status("research_agent_1", "researching", "market size")
fact_id = memory.store_fact(
    "research_agent_1", "The market is worth $4.2B", "market_size", metadata={"source": "report_xyz"}
)
memory.store_fact("research_agent_1", "Growth is 12% a year", "market_size")
facts = memory.get_facts_by_category("market_size")
status = memory.get_agent_status("research_agent_1")

if memory.acquire_lock("report_section_1", "research_agent_1", ttl_seconds=30):
    try:
        got_it_twice = memory.acquire_lock("report_section_1", "research_agent_1")
    finally:
        memory.release_lock("report_section_1", "research_agent_1")

first = store.publish(AgentEvent(
    event_type="fact_discovered",
    agent_id="research_agent_1",
    payload={"topic": "market_size", "value": "$4.2B", "source": "report_xyz"},
))
store.publish(AgentEvent(event_type="task_completed", agent_id="research_agent_1", payload={"task": 1}))
events = store.read_events(since="0-0", count=100)
topics = [e["payload"].get("topic") for e in events if e["event_type"] == "fact_discovered"]
for event in store.subscribe(last_id=first):
    next_event = event
    break


async def shared_db():
    await db.connect()
    await db.write("report/outline", {"sections": ["intro"]}, "research_agent_1")
    row = await db.read("report/outline")
    await db.write("report/outline", {"sections": ["intro", "market"]}, "research_agent_1",
                   expected_version=row["version"])
    try:
        await db.write("report/outline", {}, "research_agent_1", expected_version=row["version"])
        lost = None
    except ConflictError as exc:
        lost = exc
    return row, await db.read("report/outline"), lost

row, latest, lost = asyncio.run(shared_db())
"""


def test_three_class_code_runs_after_changing_only_the_import_and_constructors(web_server, make_agent):
    agent = make_agent("research_agent_1")
    scope = {"URL": web_server.url, "TOKEN": issue_token(agent=agent)[1], "asyncio": asyncio}
    exec(compile(textwrap.dedent(AFTER) + AGENT_CODE, "agent.py", "exec"), scope)

    assert isinstance(scope["fact_id"], int)
    assert {f["fact"] for f in scope["facts"]} == {"The market is worth $4.2B", "Growth is 12% a year"}
    assert all(f["category"] == "market_size" and f["agent_id"] == "research_agent_1" for f in scope["facts"])
    assert scope["status"]["status"] == "researching" and scope["status"]["detail"] == "market size"
    assert scope["got_it_twice"] is False  # not re-entrant: the second acquire is refused
    assert scope["memory"].get_lock("report_section_1") is None  # released
    assert scope["topics"] == ["market_size"]
    assert scope["next_event"]["event_type"] == "task_completed"
    assert scope["next_event"]["payload"] == {"task": 1}
    assert scope["row"]["value"] == {"sections": ["intro"]} and scope["row"]["version"] == 1
    assert scope["latest"] == {**scope["latest"], "value": {"sections": ["intro", "market"]}, "version": 2}
    assert scope["lost"].current["version"] == 2
    assert Conflict.objects.filter(key="report/outline", status="open").count() == 1


def test_the_change_is_the_import_and_the_constructors_only():
    before = [line for line in BEFORE.strip().splitlines() if line]
    after = [line for line in AFTER.strip().splitlines() if line]
    assert all(line.startswith(("from ", "memory =", "store =", "db =")) for line in before + after)


def test_an_agent_id_other_than_the_tokens_is_refused(web_server, make_agent):
    from memory_admin_client import AgentMismatch, MemoryClient

    memory = MemoryClient(web_server.url, issue_token(agent=make_agent("research_agent_1"))[1])
    with pytest.raises(AgentMismatch, match="research_agent_1"):
        memory.store_fact("writing_agent_1", "posing as someone else", "market_size")
