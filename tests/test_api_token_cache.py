"""Each web process keeps the tokens it looked up (memory_admin/api/auth.py TokenCache): a
revocation still reaches every worker of a running server before its next request, and a
worker that loses its Redis subscription forgets every token it kept.

The servers here keep tokens for a minute (TOKEN_CACHE_SECONDS=60), so a refusal within the
test's seconds comes from the revocation's message or the lost subscription, never the TTL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin.models import Token
from memory_admin.services.tokens import issue_token, revoke_token
from tests.conftest import start_web, wait_for, web_workers
from tests.test_web_workers import established_on

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def caching_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEN_CACHE_SECONDS", "60")
    server = start_web(tmp_path, workers=2)
    try:
        yield server, wait_for(lambda: len(found := web_workers(server.process.proc.pid)) == 2 and found)
    finally:
        server.process.stop()


@contextlib.contextmanager
def one_client_per_worker(server, workers: list[int], secret: str) -> Iterator[list[httpx.Client]]:
    """Clients whose kept-alive connections reach both workers, each having made one accepted
    request with `secret` (so each worker has looked the token up)."""
    port = int(server.url.rsplit(":", 1)[1])
    before = {pid: established_on(pid, port) for pid in workers}

    def on_both() -> bool:
        return all(established_on(pid, port) > before[pid] for pid in workers)

    with contextlib.ExitStack() as stack:
        clients: list[httpx.Client] = []
        while len(clients) < 40 and not on_both():
            client = stack.enter_context(
                httpx.Client(base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {secret}"})
            )
            assert client.get("/facts").status_code == 200
            clients.append(client)
        assert on_both(), "one worker holds every connection"
        yield clients


def statuses(clients: list[httpx.Client]) -> set[int]:
    return {client.get("/facts").status_code for client in clients}


def revoke_behind_the_services_back(token: Token) -> None:
    """The row revoked with no announcement: only a worker that reads Postgres sees it."""
    Token.objects.filter(pk=token.pk).update(revoked=now())


def test_each_worker_keeps_the_token_it_looked_up(caching_workers, alpha):
    server, workers = caching_workers
    secret = issue_token(agent=alpha)[1]
    with one_client_per_worker(server, workers, secret) as clients:
        revoke_behind_the_services_back(Token.objects.get(prefix=secret[:10]))
        # Both workers answer from their cache: the unannounced revocation is not seen yet.
        assert statuses(clients) == {200}
        # A token no worker has seen is still read from Postgres.
        fresh = issue_token(agent=alpha)[1]
        answer = httpx.get(f"{server.url}/api/v1/facts", headers={"Authorization": f"Bearer {fresh}"})
        assert answer.status_code == 200


def test_a_revocation_is_refused_by_every_worker_on_its_very_next_request(caching_workers, alpha):
    server, workers = caching_workers
    secret = issue_token(agent=alpha)[1]
    other = issue_token(agent=alpha)[1]
    with (
        one_client_per_worker(server, workers, secret) as clients,
        one_client_per_worker(server, workers, other) as others,
    ):
        revoke_token(token=Token.objects.get(prefix=secret[:10]))
        answers = [client.get("/facts") for client in clients]
        assert {answer.status_code for answer in answers} == {401}
        assert {answer.json()["error"]["code"] for answer in answers} == {"unauthenticated"}
        assert statuses(others) == {200}  # the other token stays kept and accepted


def _kill_this_databases_subscriptions() -> int:
    """Close every pub/sub connection to the test's Redis database (the web workers' and the
    relay's), as a Redis restart or a dropped link would."""
    client = r.client()
    db = client.connection_pool.connection_kwargs.get("db", 0)
    killed = 0
    for entry in client.client_list(_type="pubsub"):
        if int(entry["db"]) == db:
            killed += client.client_kill_filter(_id=entry["id"])
    return killed


def test_a_worker_that_loses_its_subscription_forgets_every_token(caching_workers, alpha):
    server, workers = caching_workers
    secret = issue_token(agent=alpha)[1]
    with one_client_per_worker(server, workers, secret) as clients:
        revoke_behind_the_services_back(Token.objects.get(prefix=secret[:10]))
        assert statuses(clients) == {200}  # kept: the revocation was not announced
        assert _kill_this_databases_subscriptions() >= 2  # one per worker at least
        # Each worker drops its cache when it notices (at once, on the closed connection), and
        # reads Postgres until it has subscribed again: the revoked token is refused on both.
        wait_for(lambda: statuses(clients) == {401}, message="both workers to forget the token")
        assert statuses(clients) == {401}
