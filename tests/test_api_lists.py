"""The full lists GET /agents and GET /locks (API.md: every item, no paging) and their keyset pages
(`limit`, `after`: an addition to API.md, see docs/API.md).

The shape tests pin the full lists byte for byte to what the documented shape gives, built here
from the model objects (status_body, locks.held_item), so a faster way of building them cannot change a
field, a time format, the order or `state`.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin.api.agents import status_body
from memory_admin.models import Agent, LockFence, iso_ms
from memory_admin.services import locks, status
from tests.api_support import api_for, error
from tests.conftest import actor

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
    return {"items": [locks.held_item(lock) for lock in locks.list_locks(ns=ns)]}


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
        assert api_for(alpha).get(f"/locks/{lock['resource']}").json() == {**lock, "waiting": []}


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


def test_times_read_back_from_redis_milliseconds_are_the_model_path_formats():
    """The list's millisecond formatter agrees with iso_ms(from_ms(...)) (the model objects' path)."""
    base = int(datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000)
    samples = [0, 1, 999, 1000, 86_399_999, base, base + 1, base + 999, base + 1000, 4_102_444_799_999]
    samples += [1_700_000_000_000 + i * 7_919 for i in range(2_000)]
    for ms in samples:
        assert r.iso_from_ms(str(ms)) == iso_ms(r.from_ms(str(ms))), ms


# --- pages ------------------------------------------------------------------------------


def _next_of(response) -> dict | None:
    """The query of the `Link: <...>; rel="next"` header, or None on the last page."""
    link = response.get("Link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, link
    url = urlsplit(match.group(1))
    assert url.path == "/api/v1/agents"
    return {name: values[0] for name, values in parse_qs(url.query).items()}


def _walk_agents(api, limit: int) -> list[list[dict]]:
    pages = []
    query = f"?limit={limit}"
    while True:
        response = api.get("/agents" + query)
        assert response.status_code == 200
        pages.append(response.json())
        following = _next_of(response)
        if following is None:
            return pages
        assert following["limit"] == str(limit)
        query = f"?limit={limit}&after={following['after']}"
        assert len(pages) < 100


@pytest.mark.parametrize("limit", [1, 2, 4, 9, 10, 500])
def test_agent_pages_walk_every_agent_once_in_order(alpha, crowd, limit):
    api = api_for(alpha, read_only=True)
    full = api.get("/agents").json()
    pages = _walk_agents(api, limit)
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit or full == []
    assert [agent for page in pages for agent in page] == full  # every agent once, in order, same items
    assert {a["state"] for page in pages for a in page} == {"live", "stale", "never_seen"}


def test_agent_page_has_no_link_when_nothing_follows(alpha, crowd):
    api = api_for(alpha)
    total = len(crowd)
    assert _next_of(api.get(f"/agents?limit={total}")) is None
    assert _next_of(api.get(f"/agents?limit={total - 1}")) is not None
    last = api.get("/agents").json()[-1]["agent_id"]
    response = api.get(f"/agents?limit=3&after={last}")
    assert response.json() == [] and _next_of(response) is None


def test_agent_page_after_a_name_that_is_not_an_agent_starts_after_where_it_would_be(alpha, crowd):
    names = [a["agent_id"] for a in api_for(alpha).get("/agents").json()]
    page = api_for(alpha).get("/agents?limit=50&after=beta0").json()
    assert [a["agent_id"] for a in page] == names[names.index("beta") + 1 :]


def _walk_locks(api, limit: int) -> list[dict]:
    pages = []
    query = f"?limit={limit}"
    while True:
        response = api.get("/locks" + query)
        assert response.status_code == 200
        body = response.json()
        assert list(body) == ["items", "next"]
        pages.append(body)
        if body["next"] is None:
            return pages
        assert body["next"] == body["items"][-1]["resource"]
        query = f"?limit={limit}&after={body['next']}"
        assert len(pages) < 100


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 500])
def test_lock_pages_walk_every_held_lock_once_by_resource(alpha, held, limit):
    api = api_for(alpha, read_only=True)
    full = api.get("/locks").json()["items"]
    pages = _walk_locks(api, limit)
    assert all(len(page["items"]) == limit for page in pages[:-1])  # lapsed/released do not thin a page
    walked = [lock for page in pages for lock in page["items"]]
    database_order = list(
        LockFence.objects.filter(ns=alpha.ns, resource__in=held)
        .order_by("resource")
        .values_list("resource", flat=True)
    )
    assert [lock["resource"] for lock in walked] == database_order
    assert sorted(walked, key=lambda lock: lock["resource"]) == sorted(
        full, key=lambda lock: lock["resource"]
    )


def test_a_lock_acquired_after_the_cursor_shows_on_a_later_page_and_a_released_one_leaves(alpha, beta, held):
    api = api_for(alpha)
    first = api.get("/locks?limit=2").json()
    locks.acquire_lock(ns=alpha.ns, resource="zz-new", actor=actor(beta), ttl_seconds=60)
    z = locks.get_lock(ns=alpha.ns, resource="z.last")
    locks.release_lock(ns=alpha.ns, resource="z.last", token=z.token, actor=actor(alpha))
    rest = _walk_locks(api, 2)
    after = api.get(f"/locks?limit=500&after={first['next']}").json()["items"]
    assert "zz-new" in [lock["resource"] for lock in after]
    assert "z.last" not in [lock["resource"] for page in rest for lock in page["items"]]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/agents?limit=0", "limit"),
        ("/agents?limit=501", "limit"),
        ("/agents?limit=ten", "limit"),
        ("/agents?limit=-1", "limit"),
        ("/agents?limit=5&after=bad%20name", "after"),
        ("/agents?limit=5&after=", "after"),
        ("/agents?limit=5&after=" + "a" * 201, "after"),
        ("/agents?after=alpha", "limit"),
        ("/locks?limit=0", "limit"),
        ("/locks?limit=501", "limit"),
        ("/locks?limit=1.5", "limit"),
        ("/locks?limit=5&after=no%0Anewline", "after"),
        ("/locks?limit=5&after=", "after"),
        ("/locks?after=res/a", "limit"),
    ],
)
def test_bad_paging_parameters_are_422_naming_the_field(alpha, path, field):
    body = error(api_for(alpha).get(path), 422, "validation_error")
    assert any(field in name for name in body["fields"]), body


def test_a_token_pages_only_its_own_namespace(alpha, outsider, make_agent, crowd, held):
    make_agent("zz-other", namespace="other")
    locks.acquire_lock(ns=outsider.ns, resource="res/a", actor=actor(outsider), ttl_seconds=60)
    api = api_for(outsider, read_only=True)
    assert [a["agent_id"] for a in api.get("/agents").json()] == ["outsider", "zz-other"]
    assert [a["agent_id"] for page in _walk_agents(api, 1) for a in page] == ["outsider", "zz-other"]
    assert [a["agent_id"] for a in api.get("/agents?limit=50&after=alpha").json()] == ["outsider", "zz-other"]
    their = [lock["resource"] for page in _walk_locks(api, 1) for lock in page["items"]]
    assert their == ["res/a"]
    assert [lock["owner"] for lock in api.get("/locks").json()["items"]] == ["outsider"]
    mine = [a["agent_id"] for page in _walk_agents(api_for(alpha, read_only=True), 2) for a in page]
    assert "outsider" not in mine and "zz-other" not in mine and len(mine) == len(crowd)


def test_full_lists_are_unchanged_by_paging_parameters_other_endpoints_ignore(alpha, crowd, held):
    """Unknown query parameters are ignored (API.md); without `limit` the lists are as before."""
    api = api_for(alpha)
    assert api.get("/agents?cursor=x").content == api.get("/agents").content
    assert api.get("/agents").get("Link") is None
    assert list(api.get("/locks?page=2").json()) == ["items"]


def test_an_empty_namespace_has_one_empty_page(outsider):
    assert api_for(outsider).get("/locks?limit=5").json() == {"items": [], "next": None}
    response = api_for(outsider).get("/agents?limit=5&after=outsider")
    assert response.json() == [] and response.get("Link") is None
