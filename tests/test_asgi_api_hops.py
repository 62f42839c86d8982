"""The API under the ASGI app: sync views answered in one hop to the request's thread, async
views on Django's path, each with the API's behaviour (auth, errors, metrics, the pool)."""

import asyncio

import httpx
import pytest
from django.db import connections

from config.asgi import application, is_async_view
from memory_admin.models import Record
from memory_admin.services.tokens import issue_token


def test_only_paths_with_an_async_view_take_djangos_path():
    assert not is_async_view("/api/v1/records/plan")
    assert not is_async_view("/api/v1/status")
    assert not is_async_view("/api/v1/no/such/thing")
    assert is_async_view("/api/v1/locks/printer")  # acquire waits in the event loop
    assert is_async_view("/api/v1/events")  # publishing waits for the relay's word
    assert is_async_view("/api/v1/events/stream")
    assert not is_async_view("/api/v1/records/" + "k" * 400)  # too long to cache, still resolved


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
            ]

    written, read, conflict, anonymous, locked, unknown = asyncio.run(calls())
    assert (written.status_code, written.headers["ETag"]) == (201, '"1"')
    assert read.json()["value"] == {"v": 1}
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "version_conflict"
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    assert locked.status_code == 200 and locked.json()["owner"] == "alpha"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert Record.objects.get(ns=alpha.ns, key="plan").version == 1
