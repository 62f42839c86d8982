"""Agent isolation, table-driven over every operation of the API: an agent of another
namespace cannot read, change, lock, release, subscribe to or learn the existence of
anything of `team`; an agent of `team` cannot act as another agent of `team`.

"Cannot learn the existence": asking for a thing of `team` gets byte for byte the answer
that asking for a thing nobody has gets. The table must name every operation of the
OpenAPI schema, so a new endpoint cannot ship without its row.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from memory_admin.api import api as ninja_api
from memory_admin.services.tokens import issue_token
from tests.api_support import api_for, state

pytestmark = pytest.mark.django_db(transaction=True)


def body(response) -> dict:
    return json.loads(response.content) if response.content else {}


def same_answer(ask, real: str, missing: str) -> None:
    """Asking about `real` (team's) answers exactly as asking about `missing` (nobody's)."""
    a, b = ask(real), ask(missing)
    assert a.status_code == b.status_code and a.status_code in (404, 409), (a.status_code, a.content)
    text_a = a.content.decode().replace(real, "<x>")
    text_b = b.content.decode().replace(missing, "<x>")
    assert text_a == text_b


@pytest.fixture
def world(alpha, beta):
    team = api_for(alpha)
    fact = team.post("/facts", {"fact": "team secret", "category": "secret"}).json()
    team.put("/records/plan", {"value": "team secret", "expected_version": 0})
    api_for(beta).put("/records/plan", {"value": "beta's", "expected_version": 0})  # a conflict of beta's
    lock = team.post("/locks/printer", {"ttl_seconds": 60}).json()
    team.put("/status", {"status": "busy", "detail": "team secret"})
    team.post("/events", {"type": "secret.note", "payload": {"s": "team secret"}})
    team.post("/events/groups/workers/read", {"consumer": "c1", "start": "earliest", "count": 100})
    team.put("/store/items", {"namespace": ["users", "alpha"], "key": "k", "value": {"s": "team secret"}})
    return {"team": team, "fact": fact, "lock": lock}


def team_item(world) -> dict:
    return body(world["team"].get("/store/items?namespace=users.alpha&key=k"))["value"]


def leaks(response) -> bool:
    return b"team secret" in response.content or b'"alpha"' in response.content


def test_every_operation_is_in_the_table():
    schema = ninja_api.get_openapi_schema()
    operations = {(m.upper(), p.removeprefix("/api/v1")) for p, ops in schema["paths"].items() for m in ops}
    assert operations == set(ROWS) | {("GET", "/health")}


def row_get_me(other, world):
    assert body(other.get("/me"))["namespace"] == "other"


def row_post_facts(other, world):
    assert body(other.post("/facts", {"fact": "mine", "category": "c"}))["agent_id"] == "outsider"


def row_get_facts(other, world):
    for query in ("", "?category=secret", "?q=secret", "?agent_id=alpha"):
        response = other.get(f"/facts{query}")
        assert response.status_code == 200 and not leaks(response), query


def row_get_fact(other, world):
    same_answer(
        lambda i: other.get(f"/facts/{i}"), str(world["fact"]["id"]), str(world["fact"]["id"] + 10**6)
    )


def row_get_records(other, world):
    for query in ("", "?prefix=pl"):
        response = other.get(f"/records{query}")
        assert response.status_code == 200 and body(response)["items"] == [], query


def row_get_record(other, world):
    same_answer(lambda k: other.get(f"/records/{k}"), "plan", "nothing-here")


def row_get_versions(other, world):
    same_answer(lambda k: other.get(f"/records/{k}/versions"), "plan", "nothing-here")


def row_put_record(other, world):
    assert other.put("/records/plan", {"value": "theirs", "expected_version": 0}).status_code == 201
    assert body(world["team"].get("/records/plan"))["value"] == "team secret"


def row_delete_record(other, world):
    same_answer(lambda k: other.delete(f"/records/{k}"), "plan", "nothing-here")
    same_answer(lambda k: other.delete(f"/records/{k}?expected_version=1"), "plan", "nothing-here")


def row_get_record_exact(other, world):
    same_answer(lambda k: other.get(f"/records/{k}!"), "plan", "nothing-here")


def row_get_versions_exact(other, world):
    same_answer(lambda k: other.get(f"/records/{k}!versions"), "plan", "nothing-here")


def row_delete_record_exact(other, world):
    same_answer(lambda k: other.delete(f"/records/{k}!"), "plan", "nothing-here")


def row_put_record_exact(other, world):
    assert other.put("/records/plan!", {"value": "theirs again"}).status_code in (200, 201)
    assert body(world["team"].get("/records/plan!"))["value"] == "team secret"


def row_get_conflicts(other, world):
    for query in ("", "?status=open", "?status=resolved"):
        response = other.get(f"/conflicts{query}")
        assert response.status_code == 200 and body(response)["items"] == [], query


def row_put_status(other, world):
    assert body(other.put("/status", {"status": "x"}))["agent_id"] == "outsider"


def row_get_agents(other, world):
    assert [a["agent_id"] for a in body(other.get("/agents"))] == ["outsider"]


def row_get_agent(other, world):
    same_answer(lambda a: other.get(f"/agents/{a}"), "alpha", "nobody")


def row_get_locks(other, world):
    assert body(other.get("/locks"))["items"] == []


def row_get_lock(other, world):
    same_answer(lambda r: other.get(f"/locks/{r}"), "printer", "nothing-here")


def row_post_lock(other, world):
    mine = other.post("/locks/printer", {"ttl_seconds": 5})
    assert mine.status_code == 200 and body(mine)["owner"] == "outsider"  # its own namespace's lock
    assert body(world["team"].get("/locks/printer")) == {**world["lock"], "waiting": []}
    other.delete(f"/locks/printer?fencing_token={body(mine)['fencing_token']}")


def row_renew_lock(other, world):
    token = world["lock"]["fencing_token"]
    same_answer(
        lambda r: other.post(f"/locks/{r}/renew", {"fencing_token": token}), "printer", "nothing-here"
    )


def row_get_lock_exact(other, world):
    same_answer(lambda r: other.get(f"/locks/{r}!"), "printer", "nothing-here")


def row_post_lock_exact(other, world):
    mine = other.post("/locks/printer!", {"ttl_seconds": 5})
    assert mine.status_code == 200 and body(mine)["owner"] == "outsider"
    assert body(world["team"].get("/locks/printer!")) == {**world["lock"], "waiting": []}
    other.delete(f"/locks/printer!?fencing_token={body(mine)['fencing_token']}")


def row_renew_lock_exact(other, world):
    token = world["lock"]["fencing_token"]
    same_answer(
        lambda r: other.post(f"/locks/{r}!renew", {"fencing_token": token}), "printer", "nothing-here"
    )


def row_delete_lock_exact(other, world):
    token = world["lock"]["fencing_token"]
    same_answer(lambda r: other.delete(f"/locks/{r}!?fencing_token={token}"), "printer", "nothing-here")


def row_delete_lock(other, world):
    token = world["lock"]["fencing_token"]
    same_answer(lambda r: other.delete(f"/locks/{r}?fencing_token={token}"), "printer", "nothing-here")


def row_post_event(other, world):
    assert body(other.post("/events", {"type": "mine", "payload": {}}))["agent_id"] == "outsider"


def row_get_events(other, world):
    for query in ("?limit=500", "?type=secret.note", "?agent_id=alpha", "?after=0&limit=500"):
        response = other.get(f"/events{query}")
        assert response.status_code == 200 and not leaks(response), query
        assert all(e["agent_id"] in ("outsider", None) for e in body(response)["items"]), query


def row_event_stream(other, world):
    """Read the replay of the stream from 0 on a live server, for a moment."""
    chunks: list[bytes] = []
    url = f"{world['server'].url}/api/v1/events/stream?after=0"

    def read() -> None:
        headers = {"Authorization": f"Bearer {world['outsider_token']}"}
        with httpx.stream("GET", url, headers=headers, timeout=5) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if b"mine" in b"".join(chunks):
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    seen = b"".join(chunks)
    assert b"secret" not in seen and b'"alpha"' not in seen


def row_read_group(other, world):
    read = other.post("/events/groups/workers/read", {"consumer": "c1", "start": "earliest", "count": 100})
    assert read.status_code == 200 and not leaks(read)


def row_ack_group(other, world):
    team_ids = [e["id"] for e in body(world["team"].get("/events?limit=500"))["items"]]
    assert body(other.post("/events/groups/workers/ack", {"ids": team_ids}))["acked"] == 0


def row_txn(other, world):
    token = world["lock"]["fencing_token"]
    response = other.post(
        "/txn",
        {
            "compare": [{"lock": "printer", "fencing_token": token}],  # team's lock, team's token
            "success": [{"put": {"key": "plan", "value": "hijack"}}],
            "failure": [{"get": {"key": "plan"}}, {"get": {"key": "secret.note"}}],
        },
    )
    assert response.status_code == 200 and body(response)["succeeded"] is False and not leaks(response)
    aborted = other.post("/txn", {"success": [{"delete": {"key": "plan", "expected_version": 7}}]})
    assert aborted.status_code == 409 and not leaks(aborted)


def row_batch(other, world):
    response = other.post(
        "/batch",
        {"ops": [{"get": {"key": "plan"}}, {"put": {"key": "plan", "value": "mine", "expected_version": 1}}]},
    )
    assert response.status_code == 200 and not leaks(response)


def row_get_group(other, world):
    assert world["team"].put("/events/groups/team-only", {"max_deliveries": 3}).status_code == 200
    same_answer(lambda group: other.get(f"/events/groups/{group}"), "team-only", "nobody-group")


def row_get_group_exact(other, world):
    same_answer(lambda group: other.get(f"/events/groups/{group}!"), "team-only", "nobody-group")


def row_put_group_exact(other, world):
    mine = other.put("/events/groups/team-only!", {"max_deliveries": 6})
    assert mine.status_code == 200 and not leaks(mine)
    assert body(world["team"].get("/events/groups/team-only!"))["max_deliveries"] == 3


def row_put_group(other, world):
    mine = other.put("/events/groups/team-only", {"max_deliveries": 5})
    assert mine.status_code == 200 and not leaks(mine) and body(mine)["consumers"] == []
    assert body(world["team"].get("/events/groups/team-only"))["max_deliveries"] == 3


def row_get_ok(other, world):
    assert body(other.get("/ok")) == {"ok": True}


def row_get_store_item(other, world):
    same_answer(lambda k: other.get(f"/store/items?namespace=users.alpha&key={k}"), "k", "nobodys")


def row_search_store(other, world):
    for prefix in ([], ["users"], ["users", "alpha"]):
        response = other.post("/store/items/search", {"namespace_prefix": prefix, "query": "team secret"})
        assert body(response)["items"] == [], prefix


def row_store_namespaces(other, world):
    assert body(other.post("/store/namespaces", {}))["namespaces"] == []


def row_store_batch(other, world):
    ops = [{"get": {"namespace": ["users", "alpha"], "key": "k"}}, {"search": {"namespace_prefix": []}}]
    results = body(other.post("/store/batch", {"ops": ops}))["results"]
    assert [r["status"] for r in results] == [404, 200]
    assert results[1]["body"]["items"] == []


def row_delete_store_item(other, world):
    assert (
        other.call("DELETE", "/store/items", {"namespace": ["users", "alpha"], "key": "k"}).status_code == 204
    )
    assert team_item(world) == {"s": "team secret"}


def row_put_store_item(other, world):
    put = other.put("/store/items", {"namespace": ["users", "alpha"], "key": "k", "value": {"s": "mine"}})
    assert put.status_code == 204
    assert team_item(world) == {"s": "team secret"}
    assert body(other.get("/store/items?namespace=users.alpha&key=k"))["value"] == {"s": "mine"}


ROWS = {
    ("GET", "/me"): row_get_me,
    ("POST", "/facts"): row_post_facts,
    ("GET", "/facts"): row_get_facts,
    ("GET", "/facts/{fact_id}"): row_get_fact,
    ("GET", "/records"): row_get_records,
    ("GET", "/records/{key}"): row_get_record,
    ("GET", "/records/{key}/versions"): row_get_versions,
    ("GET", "/records/{key}!"): row_get_record_exact,
    ("GET", "/records/{key}!versions"): row_get_versions_exact,
    ("DELETE", "/records/{key}"): row_delete_record,  # before PUT makes "plan" its own
    ("DELETE", "/records/{key}!"): row_delete_record_exact,
    ("PUT", "/records/{key}"): row_put_record,
    ("PUT", "/records/{key}!"): row_put_record_exact,
    ("GET", "/conflicts"): row_get_conflicts,
    ("PUT", "/status"): row_put_status,
    ("GET", "/agents"): row_get_agents,
    ("GET", "/agents/{agent_id}"): row_get_agent,
    ("GET", "/locks"): row_get_locks,
    ("GET", "/locks/{resource}"): row_get_lock,
    ("POST", "/locks/{resource}"): row_post_lock,
    ("POST", "/locks/{resource}/renew"): row_renew_lock,
    ("DELETE", "/locks/{resource}"): row_delete_lock,
    ("GET", "/locks/{resource}!"): row_get_lock_exact,
    ("POST", "/locks/{resource}!"): row_post_lock_exact,
    ("POST", "/locks/{resource}!renew"): row_renew_lock_exact,
    ("DELETE", "/locks/{resource}!"): row_delete_lock_exact,
    ("POST", "/events"): row_post_event,
    ("GET", "/events"): row_get_events,
    ("GET", "/events/stream"): row_event_stream,
    ("POST", "/events/groups/{group}/read"): row_read_group,
    ("POST", "/events/groups/{group}/ack"): row_ack_group,
    ("POST", "/txn"): row_txn,
    ("POST", "/batch"): row_batch,
    ("GET", "/events/groups/{group}"): row_get_group,
    ("GET", "/events/groups/{group}!"): row_get_group_exact,
    ("PUT", "/events/groups/{group}"): row_put_group,  # after GET made team's group
    ("PUT", "/events/groups/{group}!"): row_put_group_exact,
    ("GET", "/ok"): row_get_ok,
    ("GET", "/store/items"): row_get_store_item,
    ("POST", "/store/items/search"): row_search_store,
    ("POST", "/store/namespaces"): row_store_namespaces,
    ("POST", "/store/batch"): row_store_batch,
    ("DELETE", "/store/items"): row_delete_store_item,  # before PUT makes the item its own
    ("PUT", "/store/items"): row_put_store_item,
}


def test_an_agent_of_another_namespace_reaches_nothing_of_team_through_any_operation(
    world, outsider, web_server
):
    raw = issue_token(agent=outsider)[1]
    world |= {"server": web_server, "outsider_token": raw}
    other = api_for(outsider)
    other.token = raw
    team_before = {k: v for k, v in state().items()}
    for operation, row in ROWS.items():
        row(other, world)
        assert body(world["team"].get("/records/plan"))["version"] == 1, operation
        assert body(world["team"].get("/locks/printer")) == {**world["lock"], "waiting": []}, operation
    assert state()["records"] >= team_before.get("records", 0)
    # team's things are as they were
    team = world["team"]
    assert body(team.get("/locks/printer")) == {**world["lock"], "waiting": []}
    assert body(team.get("/agents/alpha"))["detail"] == "team secret"


def test_an_agent_cannot_act_as_another_agent_of_its_own_namespace(world, beta):
    mate = api_for(beta)
    token = world["lock"]["fencing_token"]
    before = state()
    assert mate.delete(f"/locks/printer?fencing_token={token}").status_code == 409
    assert mate.post("/locks/printer/renew", {"fencing_token": token}).status_code == 409
    assert state() == before
    for path, payload in [
        ("/facts", {"fact": "x", "category": "c", "agent_id": "alpha"}),
        ("/events", {"type": "t", "payload": {}, "agent_id": "alpha"}),
        ("/events", {"type": "t", "payload": {}, "actor": "alpha"}),
    ]:
        assert mate.post(path, payload).status_code == 422
    assert mate.put("/status", {"status": "x", "agent_id": "alpha"}).status_code == 422
    assert mate.put("/records/plan", {"value": "x", "updated_by": "alpha"}).status_code == 422
    assert [c["agent_id"] for c in body(mate.get("/conflicts"))["items"]] in ([], ["beta"])
    assert body(world["team"].get("/conflicts"))["items"] == [] or all(
        c["agent_id"] == "alpha" for c in body(world["team"].get("/conflicts"))["items"]
    )
