import asyncio
import re
import threading
import time
import uuid

import httpx
import pytest

from memory_admin import redis as r
from memory_admin.api.events import _positions
from memory_admin.models import Event
from memory_admin.services.tokens import issue_token
from memory_admin.services.wakeups import subscribed
from memory_admin.validation import reserved_event_type
from tests.api_support import api_for, error, state
from tests.conftest import ROOT

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = pytest.mark.cluster


@pytest.mark.django_db(transaction=True)
def test_publishing_an_event_returns_201_with_the_event(alpha):
    response = api_for(alpha).post("/events", {"type": "draft.ready", "payload": {"section": 2}})
    assert response.status_code == 201
    event = response.json()
    assert set(event) >= {"id", "type", "agent_id", "actor", "payload", "created_at"}
    assert (event["type"], event["agent_id"], event["actor"], event["payload"]) == (
        "draft.ready",
        "alpha",
        "alpha",
        {"section": 2},
    )
    assert Event.objects.get(ns=alpha.ns, position=event["id"]).type == "draft.ready"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"type": "record.written", "payload": {}},
        {"type": "lock.acquired"},
        {"type": "operator.did"},
        {"type": "Upper.case"},
        {"type": ""},
        {"type": "x" * 65},
        {"type": "ok.type", "payload": []},
        {"type": "ok.type", "payload": {"n": "\u0000"}},
        {"payload": {}},
    ],
)
def test_reserved_or_bad_event_types_are_422_and_change_nothing(alpha, body):
    """Types of the families the server writes are reserved; probed with each below."""
    api = api_for(alpha)
    before = state()
    error(api.post("/events", body), 422, "validation_error")
    assert state() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "type",
    ["conflict", "fact", "record", "lock", "operator", "status", "agent", "group", "relay", "token",
     "namespace", "conflict.opened", "status.x", "agent.token_revoked", "relay.parked", "group.parked"],
)  # fmt: skip
def test_every_family_the_server_writes_is_reserved_with_or_without_a_dot(alpha, type):
    api = api_for(alpha)
    before = state()
    failure = error(
        api.post("/events", {"type": type, "payload": {"conflict_id": "not-a-number"}}),
        422,
        "validation_error",
    )
    assert failure["fields"] == {"type": "reserved type"}
    assert state() == before


@pytest.mark.django_db
def test_types_that_only_begin_like_a_reserved_family_are_the_agents_own(alpha):
    api = api_for(alpha)
    for type in ["conflicts", "locker.opened", "facts.found", "record_keeper", "statusx.y"]:
        assert api.post("/events", {"type": type, "payload": {}}).status_code == 201, type


def test_the_reserved_families_cover_every_type_the_server_writes():
    """Every `type="…"` an event is appended with in memory_admin/ is of a reserved family."""
    written = set()
    for path in (ROOT / "memory_admin").rglob("*.py"):
        written |= set(re.findall(r'\btype="([a-z0-9_.-]+)"', path.read_text()))
    assert written, "no event types found"
    assert {t for t in written if not reserved_event_type(t)} == set()


@pytest.mark.django_db(transaction=True)
def test_events_read_after_a_cursor_oldest_first_with_type_and_agent_filters(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    start = a.get("/events?limit=500").json()["items"][-1]["id"]
    a.post("/events", {"type": "step.done", "payload": {"n": 1}})
    b.post("/events", {"type": "step.done", "payload": {"n": 2}})
    a.post("/events", {"type": "note.taken", "payload": {"n": 3}})
    items = a.get(f"/events?after={start}").json()["items"]
    assert [e["payload"]["n"] for e in items] == [1, 2, 3]
    assert [e["payload"]["n"] for e in a.get(f"/events?after={start}&type=step.done").json()["items"]] == [
        1,
        2,
    ]
    by_type = a.get(f"/events?after={start}&type=step.done&type=note.taken").json()["items"]
    assert len(by_type) == 3
    assert len(a.get(f"/events?after={start}&type=step.done,note.taken").json()["items"]) == 3
    assert [e["payload"]["n"] for e in a.get(f"/events?after={start}&agent_id=beta").json()["items"]] == [2]


@pytest.mark.django_db(transaction=True)
def test_events_page_with_next_until_caught_up(alpha):
    api = api_for(alpha)
    for i in range(5):
        api.post("/events", {"type": "tick", "payload": {"i": i}})
    seen, after = [], 0
    while True:
        page = api.get(f"/events?after={after}&type=tick&limit=2").json()
        seen += [e["payload"]["i"] for e in page["items"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == list(range(5))


# --- Server-Sent Events, through a real server ----------------------------------------


def _read_sse(response, until_id: int, timeout: float) -> list[dict]:
    """Parse frames until one with id >= until_id arrives."""
    import json

    frames, frame = [], {}
    deadline = time.monotonic() + timeout
    for line in response.iter_lines():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; got {len(frames)} frames")
        if line == "":
            if "data" in frame:
                frames.append(frame)
                if int(frame["id"]) >= until_id:
                    return frames
            frame = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            frame[field] = json.loads(value) if field == "data" else value
    raise AssertionError("stream ended")


@pytest.mark.django_db(transaction=True)
def test_sse_with_last_event_id_gets_exactly_the_events_after_it_across_the_replay_to_live_seam(
    web_server, relay, alpha, beta
):
    token = issue_token(agent=alpha)[1]
    auth = {"Authorization": f"Bearer {token}"}
    writer = httpx.Client(base_url=web_server.url + "/api/v1", headers=auth)
    ids = [writer.post("/events", json={"type": "tick", "payload": {"i": i}}).json()["id"] for i in range(20)]
    cursor = ids[9]

    stop = threading.Event()
    written: list[int] = []

    def keep_writing():
        with httpx.Client(
            base_url=web_server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}
        ) as c:
            for i in range(20, 60):
                written.append(c.post("/events", json={"type": "tick", "payload": {"i": i}}).json()["id"])
                time.sleep(0.01)
        stop.set()

    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(cursor)}
    with httpx.stream(
        "GET", f"{web_server.url}/api/v1/events/stream?type=tick", headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        thread = threading.Thread(target=keep_writing)
        thread.start()
        stop.wait(30)
        frames = _read_sse(r, until_id=written[-1], timeout=20)
    thread.join()
    got = [int(f["id"]) for f in frames]
    assert got == ids[10:] + written  # none missing, none twice, in order
    assert all(f["event"] == "tick" and f["data"]["id"] == int(f["id"]) for f in frames)
    writer.close()


@pytest.mark.django_db(transaction=True)
def test_sse_after_parameter_replays_and_other_namespaces_stay_out(web_server, alpha, outsider):
    token = issue_token(agent=alpha)[1]
    other = issue_token(agent=outsider)[1]
    base = web_server.url + "/api/v1"
    first = httpx.post(f"{base}/events", json={"type": "mine"}, headers={"Authorization": f"Bearer {token}"})
    httpx.post(f"{base}/events", json={"type": "theirs"}, headers={"Authorization": f"Bearer {other}"})
    last = httpx.post(f"{base}/events", json={"type": "mine"}, headers={"Authorization": f"Bearer {token}"})
    after = first.json()["id"] - 1
    with httpx.stream(
        "GET", f"{base}/events/stream?after={after}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as r:
        frames = _read_sse(r, until_id=last.json()["id"], timeout=10)
    assert [f["event"] for f in frames] == ["mine", "mine"]


@pytest.mark.django_db(transaction=True)
def test_sse_opens_with_the_id_it_starts_after_from_now_or_from_a_cursor(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    base = web_server.url + "/api/v1"
    newest = httpx.post(f"{base}/events", json={"type": "mine"}, headers={"Authorization": f"Bearer {token}"})
    for query, expected in (("", newest.json()["id"]), ("?after=3", 3)):
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", f"{base}/events/stream{query}", headers=headers, timeout=10) as r:
            lines = r.iter_lines()
            opening = [next(lines) for _ in range(3)]
        # No data: browsers and our client set their last event id from it and dispatch nothing.
        assert opening == ["retry: 1000", f"id: {expected}", ""]


@pytest.mark.django_db(transaction=True)
def test_sse_refuses_a_bad_last_event_id_and_a_missing_token(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    url = f"{web_server.url}/api/v1/events/stream"
    bad = httpx.get(url, headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "abc"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert httpx.get(url).json()["error"]["code"] == "unauthenticated"


def test_the_positions_nobody_waited_for_are_the_newest_kept_and_a_waiter_gets_its_own():
    channel = f"ma:test-positions:{uuid.uuid4().hex}"

    async def scenario() -> tuple[list[str], int | None, int | None]:
        positions = await subscribed(channel, _positions, keep=100)
        waiting = positions.arm("150")  # armed before the relay speaks: never kept
        for start in range(1, 301, 30):  # the relay's messages, 30 positions each
            await r.async_client().publish(
                channel, " ".join(f"{n}:{n + 1000}" for n in range(start, start + 30))
            )
        while "300" not in positions.heard:
            await asyncio.sleep(0.01)
        kept = list(positions.heard)
        mine = await positions.wait(waiting, 1)
        gone = await positions.wait(positions.arm("200"), 0.05)  # 201..300 are the newest 100 kept
        positions.task.cancel()
        return kept, mine, gone

    kept, mine, gone = asyncio.run(scenario())
    assert kept == [str(n) for n in range(201, 301)]
    assert mine == 1150 and gone is None


def test_a_publisher_that_listens_after_the_relay_spoke_still_hears_its_position():
    # The relay may announce a position before the request that committed the event is back from
    # its thread to listen: the process's subscription keeps what nobody waited for.
    channel = f"ma:test-positions:{uuid.uuid4().hex}"

    async def scenario() -> tuple[int | None, int | None]:
        positions = await subscribed(channel, _positions, keep=10)
        await r.async_client().publish(channel, "41:7 42:8")
        while "42" not in positions.heard:
            await asyncio.sleep(0.01)
        late = await positions.wait(positions.arm("42"), 1)
        never = await positions.wait(positions.arm("43"), 0.05)
        positions.task.cancel()
        return late, never

    assert asyncio.run(scenario()) == (8, None)
