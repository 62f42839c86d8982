import pytest

from memory_admin import redis as r
from memory_admin.models import Event
from tests.api_support import api_for, error, state

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = [pytest.mark.django_db, pytest.mark.cluster]


def test_put_status_returns_it_with_expiry_and_only_a_change_makes_an_event(alpha):
    api = api_for(alpha)
    response = api.put("/status", {"status": "researching", "detail": "reading papers", "ttl_seconds": 30})
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= {"agent_id", "status", "detail", "updated_at", "expires_at"}
    assert (body["agent_id"], body["status"], body["detail"]) == ("alpha", "researching", "reading papers")
    assert body["expires_at"] > body["updated_at"]
    api.put("/status", {"status": "researching", "detail": "reading papers", "ttl_seconds": 30})
    assert Event.objects.filter(type="status.changed").count() == 1
    api.put("/status", {"status": "writing"})
    assert Event.objects.filter(type="status.changed").count() == 2


def test_agents_lists_live_stale_and_never_seen(alpha, beta, make_agent):
    make_agent("gamma")
    api_for(alpha).put("/status", {"status": "working"})
    api_for(beta).put("/status", {"status": "idle", "ttl_seconds": 5})
    r.client().delete(r.status_key("team", "beta"))  # its TTL lapsed
    agents = {a["agent_id"]: a for a in api_for(alpha).get("/agents").json()}
    assert {name: a["state"] for name, a in agents.items()} == {
        "alpha": "live",
        "beta": "stale",
        "gamma": "never_seen",
    }
    assert agents["beta"]["status"] == "idle"
    assert set(agents["alpha"]) >= {"agent_id", "status", "detail", "updated_at", "expires_at", "state"}


def test_one_agent_and_a_missing_agent(alpha):
    api = api_for(alpha)
    assert api.get("/agents/alpha").json()["state"] == "never_seen"
    error(api.get("/agents/nobody"), 404, "not_found")
    error(api.get("/agents/bad name"), 422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": ""},
        {"status": "x" * 65},
        {"status": "ok", "ttl_seconds": 4},
        {"status": "ok", "ttl_seconds": 86401},
        {"status": "ok", "detail": 5},
        {"status": "ok", "agent_id": "beta"},
    ],
)
def test_bad_status_is_422_and_changes_nothing(alpha, body):
    api = api_for(alpha)
    before = state()
    error(api.put("/status", body), 422, "validation_error")
    assert state() == before
    assert not r.client().exists(r.status_key("team", "alpha"))
