"""An agent sees and touches only its namespace, and acts only as itself."""

import pytest

from memory_admin.models import Event
from tests.api_support import api_for, error, state

pytestmark = pytest.mark.django_db


def test_an_agent_of_another_namespace_cannot_read_anything_of_team(alpha, outsider):
    team, other = api_for(alpha), api_for(outsider)
    fact = team.post("/facts", {"fact": "secret", "category": "c"}).json()
    team.put("/records/plan", {"value": "secret"})
    team.put("/status", {"status": "busy"})
    team.post("/locks/printer")
    team.post("/events", {"type": "secret.note", "payload": {}})
    error(other.get(f"/facts/{fact['id']}"), 404, "not_found")
    assert other.get("/facts").json()["items"] == []
    assert other.get("/facts?q=secret").json()["items"] == []
    error(other.get("/records/plan"), 404, "not_found")
    error(other.get("/records/plan/versions"), 404, "not_found")
    assert other.get("/records").json()["items"] == []
    assert [a["agent_id"] for a in other.get("/agents").json()] == ["outsider"]
    error(other.get("/agents/alpha"), 404, "not_found")
    error(other.get("/locks/printer"), 404, "not_found")
    assert other.get("/locks").json()["items"] == []
    assert all(e["type"] != "secret.note" for e in other.get("/events?limit=500").json()["items"])
    assert {e["agent_id"] for e in other.get("/events?limit=500").json()["items"]} <= {"outsider", None}


def test_an_agent_of_another_namespace_writes_only_its_own(alpha, outsider):
    team, other = api_for(alpha), api_for(outsider)
    team.put("/records/plan", {"value": "team"})
    assert other.put("/records/plan", {"value": "other"}).status_code == 201  # its own key
    assert team.get("/records/plan").json()["value"] == "team"
    error(other.delete("/records/plan?expected_version=5"), 409, "version_conflict")
    assert team.get("/records/plan").json()["version"] == 1


def test_nobody_can_release_or_renew_a_lock_of_another_agent_or_namespace(alpha, beta, outsider):
    team = api_for(alpha)
    lock = team.post("/locks/printer").json()
    token = lock["fencing_token"]
    others = [api_for(beta), api_for(outsider)]
    before = state()
    for api in others:
        error(api.delete(f"/locks/printer?fencing_token={token}"), 409, "not_lock_holder")
        error(api.post("/locks/printer/renew", {"fencing_token": token}), 409, "not_lock_holder")
    assert state() == before
    assert team.get("/locks/printer").json() == {**lock, "waiting": []}
    assert api_for(outsider).post("/locks/printer").status_code == 200  # a different lock: its namespace's


def test_the_body_cannot_name_another_agent(alpha, beta):
    api = api_for(alpha)
    error(api.post("/facts", {"fact": "x", "category": "c", "agent_id": "beta"}), 422, "validation_error")
    error(api.put("/status", {"status": "x", "agent_id": "beta"}), 422, "validation_error")
    error(api.post("/events", {"type": "t", "actor": "beta"}), 422, "validation_error")
    event = api.post("/events", {"type": "t", "payload": {"agent_id": "beta"}}).json()
    assert event["agent_id"] == "alpha" and Event.objects.get(ns=alpha.ns, type="t").actor == "alpha"
