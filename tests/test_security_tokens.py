"""Agent tokens: 256 random bits, stored only as a hash, looked up by that hash (never compared
as a secret), and revoked at once on every web process."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx
import pytest

from memory_admin.models import Event, Token
from memory_admin.services import tokens
from tests.conftest import start_web


@pytest.mark.django_db
def test_tokens_carry_at_least_256_random_bits_and_never_repeat(alpha):
    raws = [tokens.issue_token(agent=alpha)[1] for _ in range(200)]
    assert len(set(raws)) == len(raws)
    for raw in raws:
        assert raw.startswith(tokens.PREFIX)
        secret = raw.removeprefix(tokens.PREFIX)
        assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) >= 32
    # Each character position varies: no fixed tail or head beyond the prefix.
    for position in range(len(tokens.PREFIX), len(raws[0])):
        assert len({raw[position] for raw in raws}) > 8, position


@pytest.mark.django_db
def test_only_a_hash_of_the_token_is_stored_anywhere(alpha):
    token, raw = tokens.issue_token(agent=alpha)
    row = Token.objects.get(pk=token.pk)
    assert row.digest == hashlib.sha256(raw.encode()).hexdigest()
    stored = json.dumps(list(Token.objects.values()), default=str) + json.dumps(
        list(Event.objects.values("payload", "subject", "actor")), default=str
    )
    assert raw not in stored and raw[len(row.prefix) :] not in stored
    assert len(row.prefix) <= 10  # what operators see: the prefix plus 7 characters of 43


@pytest.mark.django_db
def test_a_token_is_found_by_its_hash_alone(alpha):
    token, raw = tokens.issue_token(agent=alpha)
    assert tokens.authenticate(raw) == token
    # Lookup is an index probe on SHA-256(presented): the secret is never compared byte by
    # byte, so response time says nothing about how much of a guess was right.
    assert tokens.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert tokens.authenticate(token.digest) is None  # a leaked hash is not a token
    assert tokens.authenticate(raw.upper()) is None
    assert tokens.authenticate("") is None and tokens.authenticate("x" * 10_000) is None


@pytest.mark.django_db(transaction=True)
def test_revocation_takes_effect_at_once_on_every_web_process(alpha, web_server, tmp_path):
    second = start_web(tmp_path)
    try:
        token, raw = tokens.issue_token(agent=alpha)
        headers = {"Authorization": f"Bearer {raw}"}
        servers = [web_server.url, second.url]
        assert [httpx.get(f"{url}/api/v1/me", headers=headers).status_code for url in servers] == [200, 200]
        tokens.revoke_token(token=token)
        answers = [httpx.get(f"{url}/api/v1/me", headers=headers) for url in servers]
        assert [a.status_code for a in answers] == [401, 401]
        assert {a.json()["error"]["code"] for a in answers} == {"unauthenticated"}
        put = httpx.put(f"{second.url}/api/v1/records/k", json={"value": 1}, headers=headers)
        assert put.status_code == 401
    finally:
        second.process.stop()
