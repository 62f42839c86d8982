"""Helpers for the agent API tests (no tests here): a client that speaks for one token,
and the checks every error answer must pass."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.test import Client

from memory_admin import redis as r
from memory_admin.api import auth
from memory_admin.models import Agent, Conflict, Event, Fact, Idempotency, Record, RecordVersion
from memory_admin.services.tokens import issue_token

_UNSET = object()


class Api:
    """Django's test client on /api/v1/, with the token's Authorization header."""

    def __init__(self, token: str | None = None) -> None:
        self.client = Client()
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = _UNSET,
        *,
        raw: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ):
        kwargs: dict[str, Any] = {}
        if self.token is not None:
            kwargs["HTTP_AUTHORIZATION"] = f"Bearer {self.token}"
        for name, value in (headers or {}).items():
            kwargs["HTTP_" + name.upper().replace("-", "_")] = value
        if raw is not None:
            kwargs.update(data=raw, content_type="application/json")
        elif body is not _UNSET:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        elif method.upper() in ("POST", "PUT"):
            kwargs.update(data=b"", content_type="application/json")  # no body, as agents send it
        return getattr(self.client, method.lower())("/api/v1" + path, **kwargs)

    def get(self, path: str, **kwargs):
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: Any = _UNSET, **kwargs):
        return self.call("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = _UNSET, **kwargs):
        return self.call("PUT", path, body, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.call("DELETE", path, **kwargs)


def api_for(agent: Agent, read_only: bool = False) -> Api:
    return Api(issue_token(agent=agent, read_only=read_only)[1])


def error(response, status: int, code: str) -> dict:
    """The response is the one error shape of API.md with this status and code."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def state() -> dict[str, int]:
    """Row counts of everything an API call could change, to show a refusal changed nothing."""
    return {
        "events": Event.objects.count(),
        "facts": Fact.objects.count(),
        "records": Record.objects.count(),
        "versions": RecordVersion.objects.count(),
        "conflicts": Conflict.objects.count(),
        "idempotency": Idempotency.objects.count(),
    }


@contextmanager
def redis_down(settings, url: str = "redis://127.0.0.1:1/0") -> Iterator[None]:
    """Point the app at a port where no Redis (or no cluster node) listens, then back (clients
    and scripts are cached)."""
    original = settings.REDIS_URL
    settings.REDIS_URL = url
    r.client.cache_clear()
    r.script.cache_clear()
    try:
        yield
    finally:
        settings.REDIS_URL = original
        r.client.cache_clear()
        r.script.cache_clear()
        auth._redis_down_until = 0.0  # the rate limit's pause after a failure
