"""Consumer groups through a real server and relay: the stream they read is the relay's."""

import threading
import time

import httpx
import pytest

from memory_admin import redis as r
from memory_admin.models import ConsumerGroup, Event
from memory_admin.services import Actor
from memory_admin.services.events import find_position, publish_event
from memory_admin.services.tokens import issue_token
from tests.api_support import api_for, error
from tests.conftest import wait_for

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]


def _client(web_server, agent) -> httpx.Client:
    token = issue_token(agent=agent)[1]
    return httpx.Client(
        base_url=web_server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _publish(agent, n: int, type: str = "job") -> list[int]:
    """Publish `n` events; their positions (sequenced here if no relay did yet)."""
    published = [
        publish_event(ns=agent.ns, type=type, payload={"i": i}, actor=Actor.of_agent(agent)) for i in range(n)
    ]
    return [wait_for(lambda e=e: find_position(e).position) for e in published]


def _in_stream(ns: str, event_id: int) -> bool:
    newest = r.client().xrevrange(r.stream_key(ns), count=1)
    return bool(newest) and int(newest[0][0].split("-")[0]) >= event_id


def test_three_consumers_share_300_events_none_delivered_twice(web_server, relay, alpha):
    clients = [_client(web_server, alpha) for _ in range(3)]
    clients[0].post("/events/groups/workers/read", json={"consumer": "c0", "count": 1, "start": "latest"})
    ids = _publish(alpha, 300)
    got: dict[str, list[int]] = {f"c{i}": [] for i in range(3)}

    def consume(i: int) -> None:
        name, deadline = f"c{i}", time.monotonic() + 30
        while sum(len(v) for v in got.values()) < 300 and time.monotonic() < deadline:
            response = clients[i].post(
                "/events/groups/workers/read", json={"consumer": name, "count": 7, "block_ms": 300}
            )
            assert response.status_code == 200, response.text
            batch = [item["id"] for item in response.json()["items"] if item["type"] == "job"]
            got[name].extend(batch)
            if batch:
                acked = clients[i].post("/events/groups/workers/ack", json={"ids": batch}).json()["acked"]
                assert acked == len(batch)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    delivered = [i for batch in got.values() for i in batch]
    assert sorted(delivered) == ids  # every event once, to one consumer
    assert all(got.values()), {k: len(v) for k, v in got.items()}  # shared
    assert ConsumerGroup.objects.get(name="workers").floor >= ids[-1]


def test_events_a_dead_consumer_left_unacked_are_redelivered_to_another(web_server, relay, alpha):
    dead, alive = _client(web_server, alpha), _client(web_server, alpha)
    dead.post("/events/groups/g/read", json={"consumer": "dead", "count": 1})
    ids = _publish(alpha, 5)
    wait_for(lambda: _in_stream("team", ids[-1]), message="the relay")
    taken = dead.post("/events/groups/g/read", json={"consumer": "dead", "count": 5}).json()["items"]
    assert [e["id"] for e in taken] == ids
    soon = alive.post(
        "/events/groups/g/read", json={"consumer": "alive", "count": 5, "reclaim_after_ms": 60_000}
    )
    assert soon.json()["items"] == []  # not idle long enough yet
    time.sleep(0.3)
    later = alive.post(
        "/events/groups/g/read", json={"consumer": "alive", "count": 5, "reclaim_after_ms": 200}
    ).json()["items"]
    assert [e["id"] for e in later] == ids
    assert alive.post("/events/groups/g/ack", json={"ids": ids}).json() == {"acked": 5}
    assert dead.post("/events/groups/g/ack", json={"ids": ids}).json() == {"acked": 0}


def test_read_blocks_until_an_event_arrives(web_server, relay, alpha):
    client = _client(web_server, alpha)
    client.post("/events/groups/g/read", json={"consumer": "c", "count": 1})
    timer = threading.Timer(0.5, lambda: _publish(alpha, 1, type="late"))
    timer.start()
    started = time.monotonic()
    items = client.post("/events/groups/g/read", json={"consumer": "c", "count": 5, "block_ms": 5000}).json()[
        "items"
    ]
    assert [e["type"] for e in items] == ["late"]
    assert time.monotonic() - started > 0.4  # it waited for the event


def test_read_with_nothing_new_returns_an_empty_list_after_block_ms(web_server, alpha):
    client = _client(web_server, alpha)
    started = time.monotonic()
    response = client.post("/events/groups/g/read", json={"consumer": "c", "block_ms": 400})
    assert response.json() == {"items": []}
    assert time.monotonic() - started > 0.35


def test_earliest_starts_at_the_oldest_event_in_the_stream(web_server, relay, alpha):
    ids = _publish(alpha, 3)
    wait_for(lambda: _in_stream("team", ids[-1]), message="the relay")
    items = (
        _client(web_server, alpha)
        .post("/events/groups/early/read", json={"consumer": "c", "count": 100, "start": "earliest"})
        .json()["items"]
    )
    assert [e["id"] for e in items if e["type"] == "job"] == ids


def test_a_group_redis_lost_is_recreated_from_the_log_and_loses_nothing(web_server, relay, alpha):
    client = _client(web_server, alpha)
    client.post("/events/groups/g/read", json={"consumer": "c", "count": 1})
    first = _publish(alpha, 6)
    wait_for(lambda: _in_stream("team", first[-1]), message="the relay")
    taken = [
        e["id"]
        for e in client.post("/events/groups/g/read", json={"consumer": "c", "count": 3}).json()["items"]
    ]
    assert taken == first[:3]
    client.post("/events/groups/g/ack", json={"ids": taken[:2]})  # first[2] stays unacked
    r.client().flushdb()  # Redis loses the stream and the group
    later = _publish(alpha, 4)
    wait_for(lambda: _in_stream("team", later[-1]), message="the relay after the flush")
    delivered: list[int] = []
    for _ in range(10):
        items = client.post("/events/groups/g/read", json={"consumer": "c", "count": 100}).json()["items"]
        delivered += [e["id"] for e in items if e["type"] == "job"]
        if set(first[2:] + later) <= set(delivered):
            break
    assert sorted(set(delivered)) == first[2:] + later  # the unacked one, the undelivered and the new
    assert len(delivered) == len(set(delivered))


def test_group_and_consumer_names_follow_the_key_rules(alpha):
    api = api_for(alpha)
    error(api.post("/events/groups/bad name/read", {"consumer": "c"}), 422, "validation_error")
    error(api.post("/events/groups/g/read", {"consumer": "bad consumer"}), 422, "validation_error")
    error(api.post("/events/groups/g/read", {"consumer": "c", "count": 101}), 422, "validation_error")
    error(api.post("/events/groups/g/read", {"consumer": "c", "block_ms": 30001}), 422, "validation_error")
    error(api.post("/events/groups/g/read", {"consumer": "c", "start": "middle"}), 422, "validation_error")
    error(api.post("/events/groups/g/ack", {"ids": ["1"]}), 422, "validation_error")
    assert not ConsumerGroup.objects.exists()
    assert api.post("/events/groups/unknown/ack", {"ids": [1]}).json() == {"acked": 0}
    assert Event.objects.filter(type__startswith="group").count() == 0


def test_a_groups_park_limit_is_set_through_the_api_and_bad_limits_are_refused(web_server, alpha):
    client = _client(web_server, alpha)
    assert client.get("/events/groups/nobody").status_code == 404
    for bad in (0, 1001, "two"):
        response = client.put("/events/groups/g", json={"max_deliveries": bad})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
    assert not ConsumerGroup.objects.filter(name="g").exists()
    body = client.put("/events/groups/g", json={"max_deliveries": 3}).json()
    assert (body["group"], body["max_deliveries"], body["parked"], body["consumers"]) == ("g", 3, 0, [])
    assert client.get("/events/groups/g").json()["max_deliveries"] == 3
    assert client.put("/events/groups/g", json={"max_deliveries": None}).json()["max_deliveries"] is None
    assert list(
        Event.objects.filter(type="group.configured").values_list("payload__max_deliveries", flat=True)
    ) == [
        3,
        None,
    ]


def test_agents_cannot_publish_group_events(web_server, alpha):
    response = _client(web_server, alpha).post("/events", json={"type": "group.parked", "payload": {}})
    assert response.status_code == 422
