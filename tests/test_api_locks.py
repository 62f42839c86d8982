import threading
import time

import pytest

from memory_admin import redis as r
from memory_admin.models import Event
from tests.api_support import api_for, error, state
from tests.conftest import api_clients, shorten_lease, wait_for

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = [pytest.mark.django_db, pytest.mark.cluster]


def test_acquire_returns_the_lock_with_a_growing_fencing_token(alpha):
    api = api_for(alpha)
    response = api.post("/locks/printer", {"ttl_seconds": 10})
    assert response.status_code == 200
    lock = response.json()
    assert set(lock) >= {"resource", "owner", "fencing_token", "acquired_at", "expires_at"}
    assert (lock["resource"], lock["owner"]) == ("printer", "alpha")
    assert api.get("/locks/printer").json() == {**lock, "waiting": []}
    assert api.get("/locks").json()["items"] == [lock]
    assert api.delete(f"/locks/printer?fencing_token={lock['fencing_token']}").status_code == 204
    again = api.post("/locks/printer").json()
    assert again["fencing_token"] > lock["fencing_token"]


def test_an_empty_body_takes_the_defaults(alpha):
    lock = api_for(alpha).post("/locks/printer", raw="").json()
    assert lock["owner"] == "alpha"


def test_a_held_lock_is_409_lock_held_with_holder_and_expiry_and_not_reentrant(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    lock = a.post("/locks/printer").json()
    before = state()
    failure = error(b.post("/locks/printer"), 409, "lock_held")
    assert failure["held_by"] == "alpha" and failure["expires_at"]
    error(a.post("/locks/printer"), 409, "lock_held")
    assert state() == before
    assert a.get("/locks/printer").json() == {**lock, "waiting": []}


def test_acquire_waits_for_the_holder_to_release(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    token = a.post("/locks/printer").json()["fencing_token"]
    holder = r.client()

    def release_soon():
        time.sleep(0.3)
        holder.delete(r.lock_key("team", "printer"))  # the holder's TTL lapses

    threading.Thread(target=release_soon).start()
    started = time.monotonic()
    response = b.post("/locks/printer", {"wait_seconds": 5})
    assert response.status_code == 200, response.content  # within wait_seconds
    assert time.monotonic() - started > 0.25
    assert response.json()["fencing_token"] > token


def test_acquire_gives_up_after_wait_seconds(alpha, beta):
    api_for(alpha).post("/locks/printer", {"ttl_seconds": 30})
    started = time.monotonic()
    error(api_for(beta).post("/locks/printer", {"wait_seconds": 0.4}), 409, "lock_held")
    assert time.monotonic() - started > 0.35


def test_renew_extends_and_only_the_holder_with_its_token_may(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    lock = a.post("/locks/printer", {"ttl_seconds": 5}).json()
    renewed = a.post("/locks/printer/renew", {"fencing_token": lock["fencing_token"], "ttl_seconds": 60})
    assert renewed.status_code == 200
    assert renewed.json()["expires_at"] > lock["expires_at"]
    assert renewed.json()["fencing_token"] == lock["fencing_token"]
    before = state()
    error(b.post("/locks/printer/renew", {"fencing_token": lock["fencing_token"]}), 409, "not_lock_holder")
    error(
        a.post("/locks/printer/renew", {"fencing_token": lock["fencing_token"] + 1}), 409, "not_lock_holder"
    )
    error(a.post("/locks/other/renew", {"fencing_token": 1}), 409, "not_lock_holder")
    assert state() == before
    assert a.get("/locks/printer").json()["expires_at"] == renewed.json()["expires_at"]


def test_release_by_another_agent_or_with_a_wrong_token_is_409_and_keeps_the_lock(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    lock = a.post("/locks/printer").json()
    before = state()
    error(b.delete(f"/locks/printer?fencing_token={lock['fencing_token']}"), 409, "not_lock_holder")
    error(a.delete(f"/locks/printer?fencing_token={lock['fencing_token'] + 1}"), 409, "not_lock_holder")
    error(a.delete("/locks/never?fencing_token=1"), 409, "not_lock_holder")
    assert state() == before
    assert a.get("/locks/printer").json() == {**lock, "waiting": []}
    assert not Event.objects.filter(type="lock.released").exists()


def test_a_lock_nobody_holds_is_404(alpha):
    error(api_for(alpha).get("/locks/printer"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/locks/printer", {"ttl_seconds": 0}),
        ("POST", "/locks/printer", {"ttl_seconds": 3601}),
        ("POST", "/locks/printer", {"wait_seconds": 31}),
        ("POST", "/locks/printer", {"wait_seconds": -1}),
        ("POST", "/locks/printer", {"owner": "beta"}),
        ("POST", "/locks/printer/renew", {}),
        ("POST", "/locks/printer/renew", {"fencing_token": "1"}),
        ("DELETE", "/locks/printer", None),
        ("DELETE", "/locks/printer?fencing_token=abc", None),
    ],
)
def test_bad_lock_requests_are_422_and_change_nothing(alpha, method, path, body):
    api = api_for(alpha)
    before = state()
    response = api.call(method, path, body) if body is not None else api.call(method, path)
    error(response, 422, "validation_error")
    assert state() == before
    assert not r.client().exists(r.lock_key("team", "printer"))


# --- waiting: first come, first served, woken when freed --------------------------------


@pytest.mark.django_db(transaction=True)
def test_waiters_are_served_first_come_first_served_and_woken_by_each_release(web_server, make_agent):
    holder, *waiters = api_clients(web_server, [make_agent(n) for n in ("holder", "w1", "w2", "w3")])
    first = holder.post("/locks/queue/printer", json={"ttl_seconds": 60}).json()
    order: list[str] = []
    tokens: dict[str, int] = {}
    releases: dict[str, threading.Event] = {}

    def wait_and_hold(client, name):
        response = client.post("/locks/queue/printer", json={"ttl_seconds": 60, "wait_seconds": 20})
        assert response.status_code == 200, response.text
        order.append(name)
        tokens[name] = response.json()["fencing_token"]
        releases[name].wait(20)
        client.delete(f"/locks/queue/printer?fencing_token={tokens[name]}")

    threads = []
    for client, name in zip(waiters, ("w1", "w2", "w3"), strict=True):
        releases[name] = threading.Event()
        threads.append(threading.Thread(target=wait_and_hold, args=(client, name)))
        threads[-1].start()
        # Queued in this order: each is in the lock's waiting list before the next one asks.
        wait_for(
            lambda n=name: n in holder.get("/locks/queue/printer").json()["waiting"], message=f"{name} queued"
        )
    assert holder.get("/locks/queue/printer").json()["waiting"] == ["w1", "w2", "w3"]

    holder.delete(f"/locks/queue/printer?fencing_token={first['fencing_token']}")
    for name in ("w1", "w2", "w3"):
        wait_for(lambda n=name: n in order, message=f"{name} served")
        releases[name].set()
    for thread in threads:
        thread.join(30)
    assert order == ["w1", "w2", "w3"]
    assert [tokens[n] for n in order] == sorted(tokens.values()) and tokens["w1"] > first["fencing_token"]


@pytest.mark.django_db(transaction=True)
def test_a_waiter_gets_a_lock_whose_holder_died_when_its_lease_lapses(web_server, make_agent):
    dead, waiter = api_clients(web_server, [make_agent("dead"), make_agent("waiter")])
    taken = dead.post("/locks/lease", json={"ttl_seconds": 30}).json()  # and never released
    shorten_lease(make_agent("dead").ns, "lease", 200)  # its lease ends in 0.2 s, not 30
    response = waiter.post("/locks/lease", json={"ttl_seconds": 30, "wait_seconds": 15})
    assert response.status_code == 200, response.text
    assert response.json()["owner"] == "waiter"
    assert response.json()["fencing_token"] == taken["fencing_token"] + 1


@pytest.mark.django_db(transaction=True)
def test_a_waiter_that_gives_up_leaves_the_queue_and_gets_lock_held(web_server, make_agent):
    holder, waiter = api_clients(web_server, [make_agent("holder"), make_agent("waiter")])
    holder.post("/locks/busy", json={"ttl_seconds": 60})
    refused = waiter.post("/locks/busy", json={"wait_seconds": 0.3})
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "lock_held")
    assert holder.get("/locks/busy").json()["waiting"] == []


# --- a release hands the lock to the first waiter -----------------------------------------


def _wait_in_thread(client, path: str, **headers) -> tuple[threading.Thread, list]:
    answers: list = []

    def wait() -> None:
        answers.append(client.post(path, json={"ttl_seconds": 45, "wait_seconds": 20}, headers=headers))

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, answers


@pytest.mark.django_db(transaction=True)
def test_a_release_hands_the_lock_to_the_waiter_in_the_same_statement(web_server, make_agent):
    holder, waiter = api_clients(web_server, [make_agent("holder"), make_agent("waiter")])
    held = holder.post("/locks/handed", json={"ttl_seconds": 60}).json()
    thread, answers = _wait_in_thread(waiter, "/locks/handed")
    wait_for(lambda: holder.get("/locks/handed").json()["waiting"] == ["waiter"], message="queued")

    assert holder.delete(f"/locks/handed?fencing_token={held['fencing_token']}").status_code == 204
    # Held by the waiter as soon as the release answers: no look of the waiter's in between.
    now_held = holder.get("/locks/handed").json()
    thread.join(30)
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    lock = answer.json()
    assert (lock["owner"], lock["fencing_token"]) == ("waiter", held["fencing_token"] + 1)
    assert {k: now_held[k] for k in lock} == lock and now_held["waiting"] == []
    released, acquired = Event.objects.filter(subject="handed").order_by("seq")[1:]
    assert (released.type, released.actor, released.payload["fencing_token"]) == (
        "lock.released",
        "holder",
        held["fencing_token"],
    )
    assert (acquired.type, acquired.actor, acquired.payload["fencing_token"]) == (
        "lock.acquired",
        "waiter",
        lock["fencing_token"],
    )
    # (The log keeps the expiry to the microsecond, the lock in Redis to the millisecond.)
    assert (
        acquired.payload["ttl_seconds"] == 45
        and acquired.payload["expires_at"][:23] == lock["expires_at"][:23]
    )
    assert released.created == acquired.created and released.ord == acquired.ord  # one statement


@pytest.mark.django_db(transaction=True)
def test_a_waiter_with_an_idempotency_key_keeps_the_lock_it_was_handed(web_server, make_agent):
    holder, waiter = api_clients(web_server, [make_agent("holder"), make_agent("waiter")])
    held = holder.post("/locks/kept", json={"ttl_seconds": 60}).json()
    thread, answers = _wait_in_thread(waiter, "/locks/kept", **{"Idempotency-Key": "take-kept"})
    wait_for(lambda: holder.get("/locks/kept").json()["waiting"] == ["waiter"], message="queued")
    holder.delete(f"/locks/kept?fencing_token={held['fencing_token']}")
    thread.join(30)
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    again = waiter.post(
        "/locks/kept", json={"ttl_seconds": 45, "wait_seconds": 20}, headers={"Idempotency-Key": "take-kept"}
    )
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == answer.json()
    assert holder.get("/locks/kept").json()["fencing_token"] == answer.json()["fencing_token"]


@pytest.mark.django_db(transaction=True)
def test_waiters_handed_the_lock_in_turn_never_overlap_and_the_log_alternates(web_server, make_agent):
    names = [f"a{n}" for n in range(5)]
    clients = api_clients(web_server, [make_agent(name) for name in names])
    holding: list[str] = []
    overlaps: list[tuple] = []
    tokens: list[int] = []

    def take_turns(client, name):
        for _ in range(4):
            answer = client.post("/locks/turns", json={"ttl_seconds": 30, "wait_seconds": 25})
            assert answer.status_code == 200, answer.text
            if holding:
                overlaps.append((name, list(holding)))
            holding.append(name)
            tokens.append(answer.json()["fencing_token"])
            time.sleep(0.005)
            holding.remove(name)
            client.delete(f"/locks/turns?fencing_token={answer.json()['fencing_token']}")

    threads = [threading.Thread(target=take_turns, args=pair) for pair in zip(clients, names, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not overlaps and tokens == list(range(1, 21))
    log = list(Event.objects.filter(subject="turns").order_by("seq").values_list("type", "actor", "payload"))
    assert [t for t, _, _ in log] == ["lock.acquired", "lock.released"] * 20
    for (_, taker, taken), (_, releaser, released) in zip(log[::2], log[1::2], strict=True):
        assert (taker, taken["fencing_token"]) == (releaser, released["fencing_token"])
