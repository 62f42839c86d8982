"""`x-api-key: <token>` (what langgraph-sdk and MCP clients send) works wherever a bearer token does."""

import httpx
import pytest

from memory_admin.models import Record
from memory_admin.services.tokens import issue_token
from tests.api_support import Api, error, state

pytestmark = pytest.mark.django_db


def _key_headers(token: str) -> dict[str, str]:
    return {"x-api-key": token}


def test_x_api_key_names_the_agent_as_a_bearer_token_does(alpha, make_token):
    response = Api().get("/me", headers=_key_headers(make_token(alpha)))
    assert response.status_code == 200
    assert response.json()["agent_id"] == "alpha"


def test_x_api_key_writes_records(alpha, make_token):
    response = Api().put("/records/plan", {"value": {"step": 1}}, headers=_key_headers(make_token(alpha)))
    assert response.status_code == 201
    assert Record.objects.get(key="plan").updated_by == "alpha"


def test_an_idempotent_retry_with_x_api_key_is_replayed(alpha, make_token):
    headers = {**_key_headers(make_token(alpha)), "Idempotency-Key": "k1"}
    first = Api().post("/facts", {"fact": "sky is blue", "category": "colour"}, headers=headers)
    again = Api().post("/facts", {"fact": "sky is blue", "category": "colour"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


def test_a_read_only_x_api_key_cannot_write(alpha, make_token):
    token = make_token(alpha, read_only=True)
    before = state()
    response = Api().put("/records/plan", {"value": 1}, headers=_key_headers(token))
    error(response, 403, "forbidden")
    assert state() == before


def test_an_unknown_x_api_key_is_401(alpha):
    error(Api().get("/me", headers=_key_headers("ma_not-a-token")), 401, "unauthenticated")


def test_authorization_counts_when_both_headers_come(alpha, beta, make_token):
    response = Api(make_token(alpha)).get("/me", headers=_key_headers(make_token(beta)))
    assert response.json()["agent_id"] == "alpha"


@pytest.mark.django_db(transaction=True)
def test_x_api_key_takes_locks_over_http(alpha, web_server):
    token = issue_token(agent=alpha)[1]
    response = httpx.post(
        f"{web_server.url}/api/v1/locks/printer", json={}, headers=_key_headers(token), timeout=10
    )
    assert response.status_code == 200
    assert response.json()["owner"] == "alpha"
