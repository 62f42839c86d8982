"""The web process is SIGKILLed mid-request; clients retry with the same Idempotency-Key."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import httpx

from tests.faults import checks
from tests.faults.cluster import wait_for

AGENTS = 6
OPS = 40


class Retrier(threading.Thread):
    """Writes OPS times, each with a key of its own, retrying a lost answer until one comes."""

    def __init__(self, url: str, name: str, token: str) -> None:
        super().__init__(name=name, daemon=True)
        self.url, self.agent, self.token = url, name, token
        self.done: list[tuple[str, str, int]] = []  # (kind, op id, final status)
        self.lost = 0  # requests that got no answer and were retried
        self.replayed = 0

    def run(self) -> None:
        with httpx.Client(base_url=f"{self.url}/api/v1", timeout=10) as client:
            for i in range(OPS):
                op = uuid.uuid4().hex
                kind, method, path, body = [
                    ("event", "POST", "/events", {"type": "job.done", "payload": {"op": op}}),
                    ("record", "PUT", f"/records/job-{op}", {"value": {"op": op}}),
                    ("fact", "POST", "/facts", {"fact": op, "category": "jobs"}),
                ][i % 3]
                headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": op}
                deadline = time.monotonic() + 60
                while True:
                    try:
                        response = client.request(method, path, json=body, headers=headers)
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code < 500:
                        break
                    self.lost += 1
                    assert time.monotonic() < deadline, f"{self.agent}: no answer for a minute"
                    time.sleep(0.1)
                self.replayed += response.headers.get("Idempotent-Replayed") == "true"
                self.done.append((kind, op, response.status_code))


def test_a_killed_web_process_writes_nothing_partial_and_retries_with_the_same_key_take_effect_once(
    cluster, ns
):
    tokens = cluster.provision(ns, [f"agent-{i}" for i in range(AGENTS)])
    clients = [Retrier(cluster.url, name, token) for name, token in tokens.items()]
    for client in clients:
        client.start()
    # A quarter of the way through, however fast the machine (a fixed second was past the end of
    # all 240 writes on a fast one): each client has a request in flight.
    quarter = AGENTS * OPS // 4
    wait_for(lambda: sum(len(client.done) for client in clients) >= quarter, message="a quarter done")
    cluster.web.kill()  # SIGKILL, with requests in flight
    time.sleep(0.3)
    cluster.start_web()
    for client in clients:
        client.join(120)
    assert not any(client.is_alive() for client in clients)

    lost = sum(client.lost for client in clients)
    replayed = sum(client.replayed for client in clients)
    print(f"{lost} requests lost to the kill and retried, {replayed} answered from the stored first response")
    assert lost > 0, "the kill interrupted no request"
    done = [entry for client in clients for entry in client.done]
    assert len(done) == AGENTS * OPS
    assert {status for _, _, status in done} <= {200, 201}

    # Each operation took effect exactly once.
    ops = {kind: {op for k, op, _ in done if k == kind} for kind in ("event", "record", "fact")}
    events = Counter(
        op
        for (op,) in cluster.sql(
            "SELECT e.payload->>'op' FROM memory_admin_event e "
            "JOIN memory_admin_namespace n ON n.id = e.ns_id WHERE n.name = %s AND e.type = 'job.done'",
            [ns],
        )
    )
    assert events == Counter(ops["event"])
    versions = dict(
        cluster.sql(
            "SELECT r.key, count(v.id) FROM memory_admin_record r "
            "JOIN memory_admin_namespace n ON n.id = r.ns_id "
            "JOIN memory_admin_recordversion v ON v.record_id = r.id WHERE n.name = %s GROUP BY r.key",
            [ns],
        )
    )
    assert versions == {f"job-{op}": 1 for op in ops["record"]}
    facts = Counter(
        fact
        for (fact,) in cluster.sql(
            "SELECT f.fact FROM memory_admin_fact f "
            "JOIN memory_admin_namespace n ON n.id = f.ns_id WHERE n.name = %s",
            [ns],
        )
    )
    assert facts == Counter(ops["fact"])
    assert checks.half_written(cluster, ns) == []
