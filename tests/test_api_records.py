import pytest

from memory_admin.models import Conflict, Event, Record
from memory_admin.services import Actor
from memory_admin.services.locks import acquire_lock
from tests.api_support import api_for, error, state

pytestmark = pytest.mark.django_db


def test_put_creates_with_201_then_updates_with_200_and_the_etag_is_the_version(alpha):
    api = api_for(alpha)
    created = api.put("/records/plan", {"value": {"steps": 1}})
    assert created.status_code == 201 and created["ETag"] == '"1"'
    assert created.json() == {
        "key": "plan",
        "value": {"steps": 1},
        "version": 1,
        "updated_by": "alpha",
        "updated_at": created.json()["updated_at"],
    }
    updated = api.put("/records/plan", {"value": {"steps": 2}})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    got = api.get("/records/plan")
    assert got.json()["value"] == {"steps": 2} and got["ETag"] == '"2"'


def test_any_json_value_round_trips(alpha):
    api = api_for(alpha)
    for i, value in enumerate([None, 0, -1.5, "text ✓", [1, [2, {"a": None}]], {"nested": {"deep": [True]}}]):
        assert api.put(f"/records/v{i}", {"value": value}).status_code == 201
        assert api.get(f"/records/v{i}").json()["value"] == value


def test_keys_may_contain_slashes_colons_and_at_signs(alpha):
    api = api_for(alpha)
    assert api.put("/records/team/plan:v2@alpha", {"value": 1}).status_code == 201
    assert api.get("/records/team/plan:v2@alpha").json()["key"] == "team/plan:v2@alpha"
    assert api.get("/records/team/plan:v2@alpha/versions").json()["items"][0]["version"] == 1


def test_expected_version_zero_creates_only_if_absent(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    assert a.put("/records/plan", {"value": 1, "expected_version": 0}).status_code == 201
    before = state()
    failure = error(b.put("/records/plan", {"value": 2, "expected_version": 0}), 409, "version_conflict")
    assert failure["expected_version"] == 0
    assert failure["current"]["version"] == 1 and failure["current"]["value"] == 1
    assert Conflict.objects.get(pk=failure["conflict_id"]).proposed_value == 2
    assert Record.objects.get(key="plan").value == 1
    assert state()["versions"] == before["versions"]


def test_a_stale_expected_version_is_409_kept_as_a_conflict_and_closed_by_a_later_write(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    a.put("/records/plan", {"value": "v1"})
    a.put("/records/plan", {"value": "v2"})
    failure = error(b.put("/records/plan", {"value": "mine", "expected_version": 1}), 409, "version_conflict")
    assert failure["current"]["value"] == "v2" and failure["current"]["version"] == 2
    conflicts = b.get("/conflicts").json()["items"]
    assert [
        (c["id"], c["key"], c["expected_version"], c["current_version"], c["status"]) for c in conflicts
    ] == [(failure["conflict_id"], "plan", 1, 2, "open")]
    assert conflicts[0]["proposed_value"] == "mine" and conflicts[0]["agent_id"] == "beta"
    assert a.get("/conflicts").json()["items"] == []  # only the caller's own
    assert b.put("/records/plan", {"value": "mine", "expected_version": 2}).status_code == 200
    assert b.get("/conflicts").json()["items"] == []
    assert b.get("/conflicts?status=resolved").json()["items"][0]["resolution"] == "superseded"
    assert len(b.get("/conflicts?status=all").json()["items"]) == 1
    error(b.get("/conflicts?status=maybe"), 422, "validation_error")


def test_a_versioned_write_to_a_missing_key_is_a_conflict_with_null_current(alpha):
    failure = error(
        api_for(alpha).put("/records/nope", {"value": 1, "expected_version": 3}), 409, "version_conflict"
    )
    assert failure["current"] is None


def test_delete_returns_204_keeps_history_and_a_rewrite_is_201_with_the_next_version(alpha):
    api = api_for(alpha)
    api.put("/records/plan", {"value": 1})
    response = api.delete("/records/plan?expected_version=1")
    assert response.status_code == 204 and response.content == b""
    error(api.get("/records/plan"), 404, "not_found")
    assert api.get("/records").json()["items"] == []
    recreated = api.put("/records/plan", {"value": 3})
    assert recreated.status_code == 201 and recreated.json()["version"] == 3
    versions = api.get("/records/plan/versions").json()["items"]
    assert [(v["version"], v["value"], v["deleted"]) for v in versions] == [
        (3, 3, False),
        (2, None, True),
        (1, 1, False),
    ]
    assert Event.objects.filter(type="record.deleted").count() == 1


def test_delete_with_a_stale_version_is_409_and_a_missing_key_404(alpha):
    api = api_for(alpha)
    api.put("/records/plan", {"value": 1})
    before = state()
    failure = error(api.delete("/records/plan?expected_version=7"), 409, "version_conflict")
    assert failure["current"]["version"] == 1
    assert Record.objects.get(key="plan").deleted is False
    assert state()["versions"] == before["versions"]
    error(api.delete("/records/ghost"), 404, "not_found")
    error(api.delete("/records/plan?expected_version=x"), 422, "validation_error")


def test_missing_records_and_versions_are_404(alpha):
    api = api_for(alpha)
    error(api.get("/records/ghost"), 404, "not_found")
    error(api.get("/records/ghost/versions"), 404, "not_found")


def test_records_list_by_prefix_and_page_by_key(alpha):
    api = api_for(alpha)
    for key in ["a/1", "a/2", "a/3", "b/1", "a/4"]:
        api.put(f"/records/{key}", {"value": key})
    first = api.get("/records?prefix=a/&limit=3").json()
    assert [r["key"] for r in first["items"]] == ["a/1", "a/2", "a/3"] and first["next"] == "a/3"
    second = api.get("/records?prefix=a/&limit=3&after=a/3").json()
    assert [r["key"] for r in second["items"]] == ["a/4"] and second["next"] is None


def test_versions_are_newest_first_and_limited(alpha):
    api = api_for(alpha)
    for i in range(5):
        api.put("/records/plan", {"value": i})
    assert [v["version"] for v in api.get("/records/plan/versions?limit=2").json()["items"]] == [5, 4]


def test_a_fenced_write_with_the_current_token_succeeds_and_a_stale_one_is_409(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    first = a.post("/locks/plan-lock", {"ttl_seconds": 30}).json()["fencing_token"]
    assert (
        a.put("/records/plan", {"value": 1, "fence": {"lock": "plan-lock", "token": first}}).status_code
        == 201
    )
    assert a.delete(f"/locks/plan-lock?fencing_token={first}").status_code == 204
    second = b.post("/locks/plan-lock", {}).json()["fencing_token"]
    assert second > first
    before = state()
    failure = error(
        a.put("/records/plan", {"value": "late", "fence": {"lock": "plan-lock", "token": first}}),
        409,
        "stale_fencing_token",
    )
    assert failure["current_token"] == second
    assert Record.objects.get(key="plan").value == 1 and state() == before
    error(
        a.put("/records/plan", {"value": 1, "fence": {"lock": "never-taken", "token": 1}}),
        409,
        "stale_fencing_token",
    )


def test_a_non_holder_using_the_holders_fence_is_told_it_is_not_the_holder(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    token = a.post("/locks/plan-lock", {"ttl_seconds": 30}).json()["fencing_token"]
    before = state()
    failure = error(
        b.put("/records/plan", {"value": "mine", "fence": {"lock": "plan-lock", "token": token}}),
        409,
        "stale_fencing_token",
    )
    assert failure["current_token"] == token
    assert "not the holder" in failure["message"] and "no longer current" not in failure["message"]
    assert state() == before


def test_a_fence_on_an_expired_lock_is_refused_once_a_newer_token_exists(alpha, beta, ns):
    a = api_for(alpha)
    old = acquire_lock(ns=ns, resource="l", actor=Actor.of_agent(alpha), ttl_seconds=1).token
    from memory_admin import redis as r

    r.client().delete(r.lock_key("team", "l"))  # as if its TTL lapsed
    acquire_lock(ns=ns, resource="l", actor=Actor.of_agent(beta), ttl_seconds=30)
    error(a.put("/records/k", {"value": 1, "fence": {"lock": "l", "token": old}}), 409, "stale_fencing_token")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"value": 1, "expected_version": -1},
        {"value": 1, "expected_version": "1"},
        {"value": 1, "expected_version": 1.5},
        {"value": 1, "fence": {"lock": "l"}},
        {"value": 1, "fence": {"lock": "l", "token": 1, "extra": 1}},
        {"value": 1, "expectedVersion": 1},
        {"value": {"bad": "\u0000"}},
        {"value": "\ud800"},
    ],
)
def test_bad_record_writes_are_422_and_change_nothing(alpha, body):
    api = api_for(alpha)
    before = state()
    error(api.put("/records/plan", body), 422, "validation_error")
    assert state() == before
