"""Every valid key and resource is reachable (API.md: Reaching every key), including ones that
end in `/versions` or `/renew`, which the older sub-resource paths take."""

import pytest

from memory_admin.models import Record
from tests.api_support import api_for, error

pytestmark = pytest.mark.django_db


def test_a_key_ending_in_versions_is_written_read_listed_and_deleted(alpha):
    api = api_for(alpha)
    assert api.put("/records/plan/versions", {"value": "the plan's own"}).status_code == 201
    assert api.get("/records/plan/versions!").json()["value"] == "the plan's own"
    assert api.get("/records/plan/versions!versions").json()["items"][0]["value"] == "the plan's own"
    assert api.put("/records/plan/versions!", {"value": 2, "expected_version": 1}).status_code == 200
    assert [r["key"] for r in api.get("/records?prefix=plan").json()["items"]] == ["plan/versions"]
    assert api.delete("/records/plan/versions!?expected_version=2").status_code == 204
    error(api.get("/records/plan/versions!"), 404, "not_found")


def test_the_older_versions_path_still_reads_the_versions_of_the_key_before_it(alpha):
    api = api_for(alpha)
    api.put("/records/plan", {"value": 1})
    api.put("/records/plan/versions", {"value": "other"})
    assert [v["value"] for v in api.get("/records/plan/versions").json()["items"]] == [1]
    assert [v["value"] for v in api.get("/records/plan!versions").json()["items"]] == [1]
    assert api.delete("/records/plan/versions").status_code == 204
    error(api.get("/records/plan/versions!"), 404, "not_found")
    assert api.get("/records/plan").json()["value"] == 1


def test_keys_with_colons_are_not_mistaken_for_sub_resources(alpha):
    api = api_for(alpha)
    api.put("/records/plan:versions", {"value": "colon"})
    assert api.get("/records/plan:versions").json()["value"] == "colon"
    assert api.get("/records/plan:versions!").json()["key"] == "plan:versions"
    assert api.get("/records/plan:versions!versions").json()["items"][0]["value"] == "colon"


def test_a_bang_inside_a_key_is_a_bad_key_not_a_sub_resource(alpha):
    api = api_for(alpha)
    error(api.get("/records/plan!history"), 422, "validation_error")
    error(api.put("/records/a!b!", {"value": 1}), 422, "validation_error")
    assert not Record.objects.exists()


def test_a_resource_ending_in_renew_is_acquired_read_renewed_and_released(alpha, beta):
    api = api_for(alpha)
    lock = api.post("/locks/printer/renew!", {"ttl_seconds": 30}).json()
    assert lock["resource"] == "printer/renew"
    assert api.get("/locks/printer/renew").json()["fencing_token"] == lock["fencing_token"]
    assert api.get("/locks/printer/renew!").json()["owner"] == "alpha"
    renewed = api.post(
        "/locks/printer/renew!renew", {"fencing_token": lock["fencing_token"], "ttl_seconds": 60}
    )
    assert renewed.status_code == 200 and renewed.json()["resource"] == "printer/renew"
    error(api_for(beta).post("/locks/printer/renew!", {}), 409, "lock_held")
    assert api.delete(f"/locks/printer/renew?fencing_token={lock['fencing_token']}").status_code == 204
    error(api.get("/locks/printer/renew!"), 404, "not_found")


def test_the_older_renew_path_still_renews_the_resource_before_it(alpha):
    api = api_for(alpha)
    lock = api.post("/locks/printer", {}).json()
    renewed = api.post("/locks/printer/renew", {"fencing_token": lock["fencing_token"], "ttl_seconds": 90})
    assert renewed.status_code == 200 and renewed.json()["resource"] == "printer"
    again = api.post("/locks/printer!renew", {"fencing_token": lock["fencing_token"], "ttl_seconds": 90})
    assert again.json()["resource"] == "printer"
    assert api.delete(f"/locks/printer!?fencing_token={lock['fencing_token']}").status_code == 204


def test_an_agent_whose_name_has_a_slash_is_found(make_agent, alpha):
    make_agent("crew/scout")
    assert api_for(alpha).get("/agents/crew/scout").json()["agent_id"] == "crew/scout"


def test_a_group_whose_name_ends_in_read_or_ack_is_configured_and_read(alpha):
    api = api_for(alpha)
    for name in ("jobs/read", "jobs/ack"):
        configured = api.put(f"/events/groups/{name}", {"max_deliveries": 3})
        assert configured.status_code == 200 and configured.json()["group"] == name, configured.content
        assert api.get(f"/events/groups/{name}").json()["group"] == name
        assert api.get(f"/events/groups/{name}!").json()["group"] == name
    assert api.put("/events/groups/jobs!", {"max_deliveries": 2}).json()["group"] == "jobs"
