"""Revocation reaches open connections: a revoked token's event stream ends and its blocking
group read answers 401, instead of delivering events until the client hangs up."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from memory_admin import redis as r
from memory_admin.models import Token
from memory_admin.services.tokens import issue_token, revoke_token
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _frames(response: httpx.Response, into: list, opened: threading.Event) -> None:
    """Collect the stream's event ids until it ends."""
    for line in response.iter_lines():
        if line.startswith("id: "):
            opened.set()
        if line.startswith("data: "):
            into.append(line)


def test_a_revoked_tokens_open_stream_ends_and_delivers_nothing_more(web_server, relay, alpha, beta):
    secret = issue_token(agent=alpha)[1]
    token = Token.objects.get(prefix=secret[:10])
    writer = httpx.Client(
        base_url=web_server.url + "/api/v1", headers={"Authorization": f"Bearer {issue_token(agent=beta)[1]}"}
    )
    delivered: list[str] = []
    opened = threading.Event()
    # The stream closes before the pool waits for its reader (which then stops, if still reading).
    with (
        ThreadPoolExecutor(1) as pool,
        httpx.stream(
            "GET",
            f"{web_server.url}/api/v1/events/stream",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=httpx.Timeout(30),
        ) as stream,
    ):
        reading = pool.submit(_frames, stream, delivered, opened)
        assert opened.wait(10)
        writer.post("/events", json={"type": "before.revoke", "payload": {}})
        wait_for(lambda: delivered, message="the first event on the stream")
        revoke_token(token=token)
        reading.result(timeout=15)  # the stream ended: the server closed it
    assert len(delivered) == 1 and "before.revoke" in delivered[0]
    # Reconnecting is refused like any request with a revoked token.
    again = httpx.get(f"{web_server.url}/api/v1/events/stream", headers={"Authorization": f"Bearer {secret}"})
    assert again.status_code == 401 and again.json()["error"]["code"] == "unauthenticated"
    writer.close()


def test_a_blocking_group_read_of_a_revoked_token_answers_401_instead_of_events(web_server, relay, alpha):
    secret = issue_token(agent=alpha)[1]
    token = Token.objects.get(prefix=secret[:10])
    reader = httpx.Client(
        base_url=web_server.url + "/api/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=60
    )
    reader.post("/events/groups/g/read", json={"consumer": "c"})  # the group starts here
    with ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(
            reader.post, "/events/groups/g/read", json={"consumer": "c", "count": 10, "block_ms": 30_000}
        )
        wait_for(_blocked_on_redis, message="the read to block")
        revoke_token(token=token)
        answer = blocked.result(timeout=40)
    assert answer.status_code == 401, answer.content
    assert answer.json()["error"]["code"] == "unauthenticated"
    reader.close()


def _blocked_on_redis() -> bool:
    """Whether a client of the tests' Redis database is blocked waiting for a stream entry."""
    db = r.client().connection_pool.connection_kwargs.get("db", 0)
    return any(
        c.get("cmd") == "xread" and "b" in c.get("flags", "") and int(c.get("db", -1)) == db
        for c in r.client().client_list()
    )
