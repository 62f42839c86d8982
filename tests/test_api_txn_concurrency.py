"""/txn through a real running server: 16 clients moving value between two records keep the
sum, and no reader (of the records or of the log) ever sees half a transaction."""

import random
import threading
import time

import pytest

from memory_admin.models import Event
from memory_admin.services.events import sequence
from tests.conftest import api_clients, run_together

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = 16
MOVES = 6
TOTAL = 1000


def move(client, amount: int) -> dict | None:
    """Read both, then move `amount` from a to b if neither moved meanwhile; the txn's answer."""
    read = client.post("/txn", json={"success": [{"get": {"key": "a"}}, {"get": {"key": "b"}}]}).json()
    a, b = (result["body"] for result in read["results"])
    response = client.post(
        "/txn",
        json={
            "compare": [{"key": "a", "version": a["version"]}, {"key": "b", "version": b["version"]}],
            "success": [
                {"put": {"key": "a", "value": a["value"] - amount, "expected_version": a["version"]}},
                {"put": {"key": "b", "value": b["value"] + amount, "expected_version": b["version"]}},
            ],
            "failure": [{"get": {"key": "a"}}],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    return body if body["succeeded"] else None


def move_by_versions(client, amount: int) -> dict | None:
    """The same move by the puts' own expected versions, no compares: one statement that keeps
    both writes or neither (a refused move is 409 txn_aborted)."""
    read = client.post("/txn", json={"success": [{"get": {"key": "a"}}, {"get": {"key": "b"}}]}).json()
    a, b = (result["body"] for result in read["results"])
    response = client.post(
        "/txn",
        json={
            "success": [
                {"put": {"key": "a", "value": a["value"] - amount, "expected_version": a["version"]}},
                {"put": {"key": "b", "value": b["value"] + amount, "expected_version": b["version"]}},
            ]
        },
    )
    if response.status_code == 409:
        assert response.json()["error"]["code"] == "txn_aborted", response.text
        return None
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("move", [move, move_by_versions], ids=["compares", "versions"])
def test_16_clients_moving_value_between_two_records_keep_the_sum_and_show_no_half_txn(
    web_server, make_agent, move
):
    clients = api_clients(web_server, [make_agent(f"mover{i}") for i in range(CLIENTS)])
    reader = api_clients(web_server, [make_agent("auditor")])[0]
    first = clients[0].post(
        "/txn",
        json={"success": [{"put": {"key": "a", "value": TOTAL}}, {"put": {"key": "b", "value": 0}}]},
    )
    assert first.json()["succeeded"]
    log_start = max(e["id"] for e in reader.get("/events?limit=500").json()["items"])
    committed: list[dict] = []
    retries = [0]
    guard = threading.Lock()
    done = threading.Event()
    sums: list[int] = []

    def read_until_done():
        while not done.is_set():
            both = reader.post("/txn", json={"success": [{"get": {"key": "a"}}, {"get": {"key": "b"}}]})
            a, b = (result["body"] for result in both.json()["results"])
            sums.append(a["value"] + b["value"])

    def work(i, client):
        for _ in range(MOVES):
            attempt = 0
            while (body := move(client, random.randint(1, 10))) is None:
                attempt += 1
                with guard:
                    retries[0] += 1
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
            with guard:
                committed.append(body)

    auditing = threading.Thread(target=read_until_done)
    auditing.start()
    seconds = run_together(clients, work)
    done.set()
    auditing.join(30)

    a, b = (reader.get(f"/records/{key}").json() for key in "ab")
    assert a["value"] + b["value"] == TOTAL
    assert a["version"] == b["version"] == CLIENTS * MOVES + 1  # no lost update, no half move
    assert sums and set(sums) == {TOTAL}  # no reader saw one side moved without the other
    # The log: each committed move appended both its writes, and they are next to each other.
    sequence()  # every committed move's events take their place in the log
    written = list(
        Event.objects.filter(ns__name="team", type="record.written", position__gt=log_start).order_by(
            "position"
        )
    )
    assert len(written) == 2 * CLIENTS * MOVES
    for first_half, second_half in zip(written[::2], written[1::2], strict=True):
        assert (first_half.subject, second_half.subject) == ("a", "b")
        assert first_half.payload["version"] == second_half.payload["version"]
        assert first_half.txn == second_half.txn != ""  # one move, one txn id
    assert {event.txn for event in written} == {body["txn"] for body in committed}
    moves = CLIENTS * MOVES
    print(f"\ntxn moves: {moves} in {seconds:.1f}s = {moves / seconds:.0f}/s, {retries[0]} retries")
