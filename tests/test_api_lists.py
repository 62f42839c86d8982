"""The full lists GET /agents and GET /locks (API.md: every item, no paging).

The shape tests pin the full lists byte for byte to what the documented shape gives, built here
from the model objects (status_body, lock_body), so a faster way of building them cannot change a
field, a time format, the order or `state`.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin.api.agents import status_body
from memory_admin.api.locks import lock_body
from memory_admin.models import Agent, LockFence
from memory_admin.services import locks, status
from tests.conftest import actor
from tests.test_api_support import api_for

pytestmark = pytest.mark.django_db

AGENT_FIELDS = ["agent_id", "status", "detail", "updated_at", "expires_at", "state"]
LOCK_FIELDS = ["resource", "owner", "fencing_token", "acquired_at", "expires_at"]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}000)?Z$")  # iso_ms: no fraction at .000


def _live_status_in_redis(ns: str, name: str, status_: str, detail: str, updated_ms: int, ttl_ms: int):
    """A heartbeat as the HEARTBEAT script leaves it, with times chosen by the test."""
    key = r.status_key(ns, name)
    r.client().hset(
        key,
        mapping={"status": status_, "detail": detail, "updated": updated_ms, "expires": updated_ms + ttl_ms},
    )
    r.client().pexpire(key, ttl_ms)
    r.client().zadd(r.heartbeats_index(ns), {name: updated_ms + ttl_ms})


@pytest.fixture
def crowd(alpha, beta, make_agent):
    """Agents in every state, with the time formats' edge cases: whole seconds (no fraction),
    microseconds below the millisecond (cut), non-ASCII and quotes in `detail`."""
    api_for(alpha).put("/status", {"status": "working", "detail": 'café "quoted" \\ ünï', "ttl_seconds": 60})
    api_for(beta).put("/status", {"status": "idle", "ttl_seconds": 5})
    r.client().delete(r.status_key("team", "beta"))  # its TTL lapsed: stale, from Postgres
    make_agent("gamma")  # never seen
    whole = make_agent("delta")
    second = now().replace(microsecond=0)
    Agent.objects.filter(pk=whole.pk).update(
        status="done", detail="", seen=second, expires=second + timedelta(seconds=30), stale=True
    )
    odd = make_agent("epsilon")
    Agent.objects.filter(pk=odd.pk).update(
        status="done", seen=second.replace(microsecond=123456), expires=second.replace(microsecond=999)
    )
    stamp = int(second.timestamp()) * 1000
    _live_status_in_redis("team", make_agent("zeta").name, "busy", "", stamp, 60_000)  # .000 ms
    _live_status_in_redis("team", make_agent("eta").name, "busy", "x", stamp + 7, 61_001)
    make_agent("agent-9")
    make_agent("Agent_10")  # upper case and `_`: the database's order, whatever its collation
    return ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "agent-9", "Agent_10"]


def _expected_agents(ns) -> list[dict]:
    return [status_body(found) for found in status.list_agents(ns=ns)]


def test_full_agent_list_is_the_documented_shape_byte_for_byte(alpha, crowd):
    response = api_for(alpha).get("/agents")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    expected = _expected_agents(alpha.ns)
    # ninja's renderer: json.dumps with its defaults (", ", ": ", non-ASCII escaped)
    assert response.content == json.dumps(expected).encode()
    body = response.json()
    assert [a["agent_id"] for a in body] == list(
        Agent.objects.filter(ns=alpha.ns).values_list("name", flat=True)
    )
    assert sorted(a["agent_id"] for a in body) == sorted(crowd)
    assert all(list(a) == AGENT_FIELDS for a in body)
    agents = {a["agent_id"]: a for a in body}
    assert {name: agents[name]["state"] for name in crowd} == {
        "alpha": "live",
        "beta": "stale",
        "gamma": "never_seen",
        "delta": "stale",
        "epsilon": "stale",
        "zeta": "live",
        "eta": "live",
        "agent-9": "never_seen",
        "Agent_10": "never_seen",
    }
    assert agents["alpha"]["detail"] == 'café "quoted" \\ ünï'
    assert agents["beta"]["status"] == "idle"
    assert agents["gamma"] == {
        "agent_id": "gamma",
        "status": "",
        "detail": "",
        "updated_at": None,
        "expires_at": None,
        "state": "never_seen",
    }
    assert "." not in agents["delta"]["updated_at"]  # a whole second has no fraction
    assert agents["epsilon"]["updated_at"].endswith(".123000Z")  # cut to the millisecond
    assert "." not in agents["epsilon"]["expires_at"]  # 999 microseconds: below a millisecond
    assert "." not in agents["zeta"]["updated_at"]
    assert agents["eta"]["updated_at"].endswith(".007000Z")
    assert agents["eta"]["expires_at"].endswith(".008000Z")
    times = [a[f] for a in body for f in ("updated_at", "expires_at") if a[f] is not None]
    assert all(TIME.match(t) for t in times), times


def test_one_agent_is_the_same_item_as_in_the_list(alpha, crowd):
    listed = {a["agent_id"]: a for a in api_for(alpha).get("/agents").json()}
    for name in crowd:
        assert api_for(alpha).get(f"/agents/{name}").json() == listed[name]


def _hold(ns, resource: str, owner: str, token: int, acquired_ms: int, ttl_ms: int):
    """A held lock as ACQUIRE leaves it, with times chosen by the test."""
    key = r.lock_key(ns.name, resource)
    expires = acquired_ms + ttl_ms
    r.client().hset(
        key, mapping={"owner": owner, "token": token, "acquired": acquired_ms, "expires": expires}
    )
    r.client().pexpire(key, ttl_ms)
    r.client().zadd(r.locks_index(ns.name), {resource: expires})
    LockFence.objects.create(
        ns=ns,
        resource=resource,
        token=token,
        holder=owner,
        held=True,
        acquired=r.from_ms(acquired_ms),
        expires=r.from_ms(expires),
    )


@pytest.fixture
def held(alpha, beta):
    """Locks of two holders with different TTLs (so expiry order is not name order), one whose
    lease lapsed in Redis before the sweep saw it, one released, and whole-second times."""
    for resource, ttl, who in [("res/b", 300, alpha), ("res/a", 600, beta), ("z.last", 30, alpha)]:
        locks.acquire_lock(ns=alpha.ns, resource=resource, actor=actor(who), ttl_seconds=ttl)
    released = locks.acquire_lock(ns=alpha.ns, resource="gone", actor=actor(beta), ttl_seconds=60)
    locks.release_lock(ns=alpha.ns, resource="gone", token=released.token, actor=actor(beta))
    lapsed = locks.acquire_lock(ns=alpha.ns, resource="lapsed", actor=actor(beta), ttl_seconds=60)
    r.client().delete(r.lock_key("team", "lapsed"))  # expired in Redis; index and fence say held
    assert lapsed.token
    second = int(now().timestamp()) * 1000
    _hold(alpha.ns, "A:upper", "alpha", 10**12, second, 120_000)
    _hold(alpha.ns, "m@same-expiry", "beta", 10**12 + 1, second - 60_000, 180_000)  # same expiry as A:upper
    return ["res/b", "res/a", "z.last", "A:upper", "m@same-expiry"]


def _expected_locks(ns) -> dict:
    return {"items": [lock_body(lock) for lock in locks.list_locks(ns=ns)]}


def test_full_lock_list_is_the_documented_shape_byte_for_byte(alpha, held):
    response = api_for(alpha).get("/locks")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    expected = _expected_locks(alpha.ns)
    assert response.content == json.dumps(expected).encode()
    body = response.json()
    assert list(body) == ["items"]
    items = body["items"]
    assert sorted(lock["resource"] for lock in items) == sorted(held)  # not `gone`, not `lapsed`
    assert all(list(lock) == LOCK_FIELDS for lock in items)
    assert [lock["expires_at"] for lock in items] == sorted(lock["expires_at"] for lock in items)
    assert [lock["resource"] for lock in items][:1] == ["z.last"]  # soonest to expire first
    same = [lock["resource"] for lock in items if lock["resource"] in ("A:upper", "m@same-expiry")]
    assert same == ["A:upper", "m@same-expiry"]  # equal expiry: by resource, as Redis orders them
    upper = next(lock for lock in items if lock["resource"] == "A:upper")
    assert "." not in upper["acquired_at"] and upper["fencing_token"] == 10**12
    assert all(TIME.match(lock[f]) for lock in items for f in ("acquired_at", "expires_at"))
    for lock in items:
        assert api_for(alpha).get(f"/locks/{lock['resource']}").json() == lock


def test_an_empty_namespace_lists_nothing(outsider):
    assert api_for(outsider).get("/agents").json() == [
        {
            "agent_id": "outsider",
            "status": "",
            "detail": "",
            "updated_at": None,
            "expires_at": None,
            "state": "never_seen",
        }
    ]
    assert api_for(outsider).get("/locks").content == b'{"items": []}'
