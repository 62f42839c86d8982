import threading
from datetime import timedelta

import httpx
import pytest
from django.utils.timezone import now

from memory_admin.models import Conflict, Event, Fact, Idempotency, Record
from memory_admin.services.tokens import issue_token, revoke_token
from tests.api_support import Api, api_for, error, redis_down, state

FACT = {"fact": "sky is blue", "category": "colour"}


@pytest.mark.django_db
def test_a_retried_post_makes_one_fact_and_replays_the_first_response(alpha):
    api = api_for(alpha)
    first = api.post("/facts", FACT, headers={"Idempotency-Key": "k-1"})
    again = api.post("/facts", FACT, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert "Idempotent-Replayed" not in first and again["Idempotent-Replayed"] == "true"
    assert Fact.objects.count() == 1 and Event.objects.filter(type="fact.stored").count() == 1


@pytest.mark.django_db
def test_the_same_key_with_a_different_request_is_422_and_changes_nothing(alpha):
    api = api_for(alpha)
    api.post("/facts", FACT, headers={"Idempotency-Key": "k-1"})
    before = state()
    error(
        api.post("/facts", {**FACT, "fact": "other"}, headers={"Idempotency-Key": "k-1"}),
        422,
        "idempotency_key_reused",
    )
    error(
        api.put("/records/x", {"value": 1}, headers={"Idempotency-Key": "k-1"}), 422, "idempotency_key_reused"
    )
    assert state() == before


@pytest.mark.django_db
def test_keys_belong_to_the_agent_so_a_retry_with_a_rotated_token_is_replayed(alpha):
    old, new = issue_token(agent=alpha), issue_token(agent=alpha)
    first = Api(old[1]).post("/facts", FACT, headers={"Idempotency-Key": "same"})
    revoke_token(token=old[0])
    replay = Api(new[1]).post("/facts", FACT, headers={"Idempotency-Key": "same"})
    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json() and Fact.objects.count() == 1


@pytest.mark.django_db
def test_keys_of_different_agents_never_meet(alpha, beta):
    assert api_for(alpha).post("/facts", FACT, headers={"Idempotency-Key": "same"}).status_code == 201
    other = api_for(beta).post("/facts", FACT, headers={"Idempotency-Key": "same"})
    assert other.status_code == 201 and "Idempotent-Replayed" not in other
    assert Fact.objects.count() == 2


@pytest.mark.django_db
def test_a_version_conflict_is_stored_and_replayed_with_its_one_conflict(alpha):
    api = api_for(alpha)
    api.put("/records/plan", {"value": 1})
    body = {"value": 2, "expected_version": 0}
    first = error(api.put("/records/plan", body, headers={"Idempotency-Key": "w"}), 409, "version_conflict")
    replay = api.put("/records/plan", body, headers={"Idempotency-Key": "w"})
    assert error(replay, 409, "version_conflict") == first and replay["Idempotent-Replayed"] == "true"
    assert Conflict.objects.count() == 1


@pytest.mark.django_db
def test_put_delete_and_lock_acquire_replay_their_first_response(alpha):
    api = api_for(alpha)
    created = api.put("/records/plan", {"value": 1}, headers={"Idempotency-Key": "p"})
    replay = api.put("/records/plan", {"value": 1}, headers={"Idempotency-Key": "p"})
    assert (replay.status_code, replay.json(), replay["ETag"]) == (201, created.json(), '"1"')
    assert Record.objects.get(key="plan").version == 1
    assert api.delete("/records/plan", headers={"Idempotency-Key": "d"}).status_code == 204
    replay = api.delete("/records/plan", headers={"Idempotency-Key": "d"})
    assert replay.status_code == 204 and replay["Idempotent-Replayed"] == "true"
    lock = api.post("/locks/printer", {}, headers={"Idempotency-Key": "l"})
    again = api.post("/locks/printer", {}, headers={"Idempotency-Key": "l"})
    assert again.status_code == 200 and again.json() == lock.json() and again["Idempotent-Replayed"] == "true"
    assert Event.objects.filter(type="lock.acquired").count() == 1


@pytest.mark.django_db
def test_refusals_before_the_call_and_store_failures_are_not_stored(alpha, settings):
    read_only = api_for(alpha, read_only=True)
    error(read_only.post("/facts", FACT, headers={"Idempotency-Key": "k"}), 403, "forbidden")
    api = api_for(alpha)
    with redis_down(settings):
        error(api.post("/locks/printer", {}, headers={"Idempotency-Key": "k"}), 503, "unavailable")
    assert not Idempotency.objects.exists()
    assert api.post("/locks/printer", {}, headers={"Idempotency-Key": "k"}).status_code == 200  # runs now


@pytest.mark.django_db
def test_a_key_older_than_24_hours_runs_again(alpha):
    api = api_for(alpha)
    api.post("/facts", FACT, headers={"Idempotency-Key": "old"})
    Idempotency.objects.update(created=now() - timedelta(hours=25))
    assert "Idempotent-Replayed" not in api.post("/facts", FACT, headers={"Idempotency-Key": "old"})
    assert Fact.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tkey", "ключ"])
def test_a_bad_idempotency_key_is_422_and_changes_nothing(alpha, key):
    api = api_for(alpha)
    before = state()
    failure = error(api.post("/facts", FACT, headers={"Idempotency-Key": key}), 422, "validation_error")
    assert "Idempotency-Key" in failure["fields"]
    assert state() == before


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_through_a_real_server_make_one_fact(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    responses = []
    barrier = threading.Barrier(8)

    def send():
        barrier.wait()
        responses.append(
            httpx.post(
                f"{web_server.url}/api/v1/facts",
                json=FACT,
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "race"},
                timeout=30,
            )
        )

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in responses] == [201] * 8
    assert len({response.text for response in responses}) == 1
    assert sum(response.headers.get("Idempotent-Replayed") == "true" for response in responses) == 7
    assert Fact.objects.count() == 1
