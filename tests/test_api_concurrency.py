"""DESIGN.md rules 1-3 through a real running server: 32 HTTP clients at once.

Each prints its throughput (pytest -s) so a slowdown shows in the log.
"""

import threading
import time

import pytest

from memory_admin.models import Event
from tests.conftest import api_clients, increment_record, run_together

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = 32
ROUNDS = 1


def test_32_clients_incrementing_one_record_lose_no_update(web_server, make_agent):
    clients = api_clients(web_server, [make_agent(f"inc{i}") for i in range(CLIENTS)])
    clients[0].put("/records/counter", json={"value": 0, "expected_version": 0})
    rounds, requests, conflicts = 1, [0], [0]
    lock = threading.Lock()

    def increment(i, client):
        for _ in range(rounds):
            met = increment_record(client, "counter")
            with lock:
                requests[0] += 2 * (met + 1)  # a read and a write per try
                conflicts[0] += met

    seconds = run_together(clients, increment)
    final = clients[0].get("/records/counter").json()
    assert final["value"] == CLIENTS * rounds
    assert final["version"] == CLIENTS * rounds + 1
    rate = requests[0] / seconds
    print(f"\nlost-update: {requests[0]} requests in {seconds:.1f}s = {rate:.0f}/s, {conflicts[0]} conflicts")


def test_32_clients_taking_one_lock_never_overlap_and_tokens_only_grow(web_server, make_agent):
    clients = api_clients(web_server, [make_agent(f"locker{i}") for i in range(CLIENTS)])
    holding, overlaps, tokens = [0], [0], []
    guard = threading.Lock()

    def critical_section(i, client):
        for _ in range(ROUNDS):
            response = client.post("/locks/mutex", json={"ttl_seconds": 10, "wait_seconds": 30})
            assert response.status_code == 200, response.text
            token = response.json()["fencing_token"]
            with guard:
                holding[0] += 1
                overlaps[0] += holding[0] > 1
                tokens.append(token)
            time.sleep(0.005)
            with guard:
                holding[0] -= 1
            released = client.delete(f"/locks/mutex?fencing_token={token}")
            assert released.status_code == 204, released.text

    seconds = run_together(clients, critical_section)
    assert overlaps[0] == 0
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens) == CLIENTS * ROUNDS
    pairs = CLIENTS * ROUNDS
    print(f"\nlocks: {pairs} acquire/release pairs in {seconds:.1f}s = {pairs / seconds:.0f} pairs/s")


def test_a_reader_paging_events_while_32_clients_write_misses_none(web_server, make_agent):
    writers = api_clients(web_server, [make_agent(f"writer{i}") for i in range(CLIENTS)])
    reader = api_clients(web_server, [make_agent("reader")])[0]
    start = reader.get("/events?limit=500").json()["items"]
    cursor = start[-1]["id"] if start else 0
    per_writer, done = 8, threading.Event()
    seen: list[int] = []

    def read_until_done():
        nonlocal cursor
        while True:
            finished = done.is_set()
            items = reader.get(f"/events?after={cursor}&limit=100").json()["items"]
            seen.extend(e["id"] for e in items)
            if items:
                cursor = items[-1]["id"]
            elif finished:
                return

    def write(i, client):
        for n in range(per_writer):
            assert client.post("/events", json={"type": "work.done", "payload": {"n": n}}).status_code == 201

    paging = threading.Thread(target=read_until_done)
    paging.start()
    seconds = run_together(writers, write)
    done.set()
    paging.join(30)
    expected = list(
        Event.objects.filter(ns__name="team", position__gte=seen[0]).values_list("position", flat=True)
    )
    assert seen == expected  # in order, none skipped, none twice
    assert Event.objects.filter(type="work.done").count() == CLIENTS * per_writer
    written = CLIENTS * per_writer
    print(f"\nevents: {written} writes in {seconds:.1f}s = {written / seconds:.0f}/s while paging")
