"""The API under the ASGI app: sync views answered in one hop to the request's thread, async
views on Django's path, each with the API's behaviour (auth, errors, metrics, the pool)."""

import asyncio

import httpx
import pytest
from django.db import connections

from config.asgi import application, is_async_view
from memory_admin.models import Record
from memory_admin.services.tokens import issue_token


def test_only_async_operations_take_djangos_path():
    assert not is_async_view("/api/v1/records/plan", "PUT")
    assert not is_async_view("/api/v1/status", "GET")
    assert not is_async_view("/api/v1/no/such/thing", "GET")
    assert is_async_view("/api/v1/locks/printer", "POST")  # acquire waits in the event loop
    assert is_async_view("/api/v1/locks/printer!", "POST")
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
