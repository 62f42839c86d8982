"""The API under the ASGI app: sync views answered in one hop to the request's thread, async
views on Django's path, each with the API's behaviour (auth, errors, metrics, the pool)."""

import asyncio

import httpx
import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from config.asgi import application, is_async_view
from memory_admin.models import Record
from memory_admin.services.tokens import issue_token


def test_only_async_operations_take_djangos_path():
    assert not is_async_view("/api/v1/records/plan", "PUT")
    assert not is_async_view("/api/v1/status", "GET")
    assert not is_async_view("/api/v1/no/such/thing", "GET")
    # An acquire that waits waits in the event loop; one that does not is answered in one hop.
    assert is_async_view("/api/v1/locks/printer", "POST", lambda: b'{"wait_seconds": 2}')
    assert is_async_view("/api/v1/locks/printer!", "POST", lambda: b'{"ttl_seconds": 5, "wait_seconds": 0.5}')
    assert is_async_view("/api/v1/locks/printer", "POST", lambda: b'{"\\u0077ait_seconds": 2}')
    assert not is_async_view("/api/v1/locks/printer", "POST")
    assert not is_async_view(
        "/api/v1/locks/printer!", "POST", lambda: b'{"ttl_seconds": 5, "wait_seconds": 0}'
    )
    assert not is_async_view("/api/v1/locks/printer", "POST", lambda: b'{"ttl_seconds": 5}')
    assert not is_async_view("/api/v1/locks/printer", "POST", lambda: b"{")  # answered: 400
    assert not is_async_view("/api/v1/locks/a/renew", "POST", lambda: b'{"wait_seconds": 2}')
    # Release and read share the acquire's path (so ninja's view for it is async) but are sync.
    assert not is_async_view("/api/v1/locks/printer", "DELETE")
    assert not is_async_view("/api/v1/locks/printer!", "DELETE")
    assert not is_async_view("/api/v1/locks/printer", "GET")
    assert not is_async_view("/api/v1/locks/printer", "PUT")  # no operation: the 405
    assert is_async_view("/api/v1/events", "POST")  # publishing waits for the relay's word
    assert is_async_view("/api/v1/events/stream", "GET")
    assert not is_async_view("/api/v1/records/" + "k" * 400, "GET")  # too long to cache, still resolved


@pytest.mark.django_db(transaction=True)
def test_sync_and_async_views_answer_through_the_asgi_app(alpha):
    token = issue_token(agent=alpha)[1]
    connections.close_all()  # the app's threads take their own connections from the pool

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver/api/v1") as api:
            return [
                await api.put(
                    "/records/plan", json={"value": {"v": 1}, "expected_version": 0}, headers=headers
                ),
                await api.get("/records/plan", headers=headers),
                await api.put("/records/plan", json={"value": 1, "expected_version": 0}, headers=headers),
                await api.get("/records/plan"),
                await api.post("/locks/printer", json={"ttl_seconds": 5}, headers=headers),
                await api.get("/metrics-nope", headers=headers),
                await api.get("/locks/printer", headers=headers),
                await api.delete("/locks/printer?fencing_token=0", headers=headers),
                await api.put("/locks/printer", headers=headers),
            ]

    (written, read, conflict, anonymous, locked, unknown, held, stranger, no_put) = asyncio.run(calls())
    assert (written.status_code, written.headers["ETag"]) == (201, '"1"')
    assert read.json()["value"] == {"v": 1}
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "version_conflict"
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    assert locked.status_code == 200 and locked.json()["owner"] == "alpha"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert held.status_code == 200 and held.json()["fencing_token"] == locked.json()["fencing_token"]
    assert stranger.status_code == 409 and stranger.json()["error"]["code"] == "not_lock_holder"
    assert no_put.status_code == 405
    assert Record.objects.get(ns=alpha.ns, key="plan").version == 1


@pytest.mark.django_db(transaction=True)
def test_a_lock_acquire_that_does_not_wait_takes_one_hop(alpha, monkeypatch):
    """Acquire and release, keyed or not, are each answered in one hop to the request's thread;
    only an acquire that waits (`wait_seconds` > 0) waits in the event loop."""
    token = issue_token(agent=alpha)[1]
    connections.close_all()
    hops: list[str] = []
    call = SyncToAsync.__call__

    def counted(self, *args, **kwargs):
        hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)

    async def cycle(api: httpx.AsyncClient, resource: str, **post) -> tuple[int, int, int, int]:
        hops.clear()
        taken = await api.post(f"/locks/{resource}", **post)
        acquire_hops = len(hops)
        hops.clear()
        released = await api.delete(f"/locks/{resource}?fencing_token={taken.json()['fencing_token']}")
        return taken.status_code, acquire_hops, released.status_code, len(hops)

    async def calls() -> list[tuple[int, int, int, int]]:
        transport = httpx.ASGITransport(app=application)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver/api/v1", headers=headers
        ) as api:
            return [
                await cycle(api, "printer"),
                await cycle(api, "printer", json={"ttl_seconds": 5}),
                await cycle(api, "printer!", json={"ttl_seconds": 5, "wait_seconds": 0}),
                await cycle(api, "printer", json={"wait_seconds": 0.0}, headers={"Idempotency-Key": "k1"}),
            ]

    assert asyncio.run(calls()) == [(200, 1, 204, 1)] * 4


@pytest.mark.django_db(transaction=True)
def test_an_acquire_that_waits_or_is_refused_answers_as_before(alpha):
    token = issue_token(agent=alpha)[1]
    connections.close_all()

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver/api/v1", headers=headers
        ) as api:
            return [
                await api.post("/locks/printer", json={"wait_seconds": 0.2}),  # free: taken at once
                await api.post("/locks/printer", json={"wait_seconds": 0.1}),  # held: waits, then 409
                await api.post("/locks/printer"),  # held: 409 at once
                await api.post("/locks/printer", json={"wait_seconds": -1}),
                await api.post("/locks/printer", json={"wait_seconds": "0"}),
                await api.post("/locks/printer", json={"wait_seconds": False}),
                await api.post("/locks/printer", json={"ttl_seconds": 5, "nope": 1}),
                await api.post("/locks/printer", content=b"{", headers={"Content-Type": "application/json"}),
                await api.post("/locks/printer", content=b"[]", headers={"Content-Type": "application/json"}),
                await api.post(
                    "/locks/printer", json={"ttl_seconds": 5}, headers={"Authorization": "Bearer x"}
                ),
            ]

    taken, waited, busy, negative, text, boolean, unknown, broken, array, stranger = asyncio.run(calls())
    assert taken.status_code == 200 and taken.json()["owner"] == "alpha"
    assert waited.status_code == 409 and waited.json()["error"]["code"] == "lock_held"
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "lock_held"
    assert busy.json()["error"]["held_by"] == "alpha"
    for refused in (negative, text, boolean, unknown, array):
        assert refused.status_code == 422, refused.content
        assert refused.json()["error"]["code"] == "validation_error"
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "malformed_json"
    assert stranger.status_code == 401


@pytest.mark.django_db(transaction=True)
def test_an_acquire_answered_in_one_hop_keeps_its_idempotency_key(alpha):
    token = issue_token(agent=alpha)[1]
    connections.close_all()

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "take-1"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver/api/v1", headers=headers
        ) as api:
            taken = await api.post("/locks/printer", json={"ttl_seconds": 5})
            released = await api.delete(
                f"/locks/printer?fencing_token={taken.json()['fencing_token']}",
                headers={"Idempotency-Key": "release-1"},
            )
            return [taken, released, await api.post("/locks/printer", json={"ttl_seconds": 5})]

    taken, released, retried = asyncio.run(calls())
    assert taken.status_code == 200 and released.status_code == 204
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json() == taken.json()
