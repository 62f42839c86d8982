"""GET /metrics: Prometheus' text format, the same sums from whichever web worker answers,
refused to strangers, and the numbers move with what agents do."""

from __future__ import annotations

import httpx
import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from memory_admin.services.tokens import issue_token
from tests.conftest import start_web, wait_for

RECORD = "api/v1/records/<path:key>"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: dict, name: str, **labels) -> float:
    """The sum of `name` over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, got), value in found.items() if sample == name and wanted <= set(got))


@pytest.fixture(scope="module")
def two_workers(django_db_setup, django_db_blocker, tmp_path_factory):
    server = start_web(tmp_path_factory.mktemp("metrics-web"), workers=2)
    yield server
    server.process.stop()


def scrape(url: str) -> dict:
    # a new connection each time, so the kernel may hand it to either worker
    response = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


@pytest.mark.django_db(transaction=True)
def test_a_multi_worker_server_counts_requests_writes_and_locks_across_its_workers(two_workers, alpha, beta):
    url = two_workers.url
    before = scrape(url)
    a = {"Authorization": f"Bearer {issue_token(agent=alpha)[1]}", "Connection": "close"}
    b = {"Authorization": f"Bearer {issue_token(agent=beta)[1]}", "Connection": "close"}
    for i in range(10):
        assert httpx.put(f"{url}/api/v1/records/plan", json={"value": i}, headers=a).status_code in (200, 201)
    stale = httpx.put(f"{url}/api/v1/records/plan", json={"value": 0, "expected_version": 1}, headers=b)
    assert stale.status_code == 409
    assert httpx.post(f"{url}/api/v1/locks/printer", json={}, headers=a).status_code == 200
    assert httpx.post(f"{url}/api/v1/locks/printer!", json={}, headers=b).status_code == 409
    assert httpx.put(f"{url}/api/v1/status", json={"status": "busy"}, headers=b).status_code == 200

    after = scrape(url)
    moved = [
        total(after, name, **labels) - total(before, name, **labels)
        for name, labels in [
            ("memory_admin_http_requests_total", {"route": RECORD, "method": "PUT", "status": "200"}),
            ("memory_admin_http_requests_total", {"route": RECORD, "method": "PUT", "status": "409"}),
            ("memory_admin_record_writes_total", {"outcome": "ok"}),
            ("memory_admin_record_writes_total", {"outcome": "conflict"}),
            ("memory_admin_lock_acquisitions_total", {"result": "acquired"}),
            ("memory_admin_lock_acquisitions_total", {"result": "held"}),
            ("memory_admin_lock_wait_seconds_count", {"result": "held"}),
        ]
    ]
    assert moved == [9, 1, 10, 1, 1, 1, 1]
    assert total(after, "memory_admin_http_request_duration_seconds_count", route=RECORD, method="PUT") >= 11
    assert total(after, "memory_admin_locks_held", namespace="team") == 1
    assert total(after, "memory_admin_agents", namespace="team", state="live") == 1
    assert total(after, "memory_admin_agents", namespace="team", state="never_seen") == 1
    assert total(after, "memory_admin_events_total") >= total(before, "memory_admin_events_total") + 12
    assert total(after, "memory_admin_postgres_up") == total(after, "memory_admin_redis_up") == 1
    assert total(after, "memory_admin_postgres_pool_connections", state="size") >= 1
    # no relay runs beside this server: what was appended waits to be published
    assert total(after, "memory_admin_relay_lag_events") >= 12
    assert total(after, "memory_admin_relay_lag_seconds") > 0

    # Every worker reads every worker's counters: the same sums, whichever one answers.
    again = [scrape(url) for _ in range(8)]
    assert {total(s, "memory_admin_record_writes_total", outcome="ok") for s in again} == {
        total(after, "memory_admin_record_writes_total", outcome="ok")
    }


@pytest.mark.django_db(transaction=True)
def test_an_event_stream_whose_client_left_ends_on_the_server(two_workers, alpha):
    url, token = two_workers.url, issue_token(agent=alpha)[1]

    def open_streams() -> float:
        return total(scrape(url), "memory_admin_event_streams_open")

    def leave(*, after_first_frame: bool) -> None:
        with (
            httpx.Client(timeout=10) as client,
            client.stream(
                "GET", f"{url}/api/v1/events/stream", headers={"Authorization": f"Bearer {token}"}
            ) as sse,
        ):
            assert sse.status_code == 200
            frames = sse.iter_raw()  # kept: a dropped iterator closes the response
            next(frames)  # its first frame: the stream runs on the server
            if not after_first_frame:
                wait_for(lambda: open_streams() == 1, message="the stream counted")
        # The client has left (its connection closed): the server's side of the stream ends.
        wait_for(lambda: open_streams() == 0, message="the server to end the abandoned stream")

    leave(after_first_frame=False)  # while the stream waits for Redis to wake it
    for _ in range(5):  # at once: the cancel lands in the stream's first reads
        leave(after_first_frame=True)


@pytest.mark.django_db
def test_metrics_are_refused_to_other_addresses_unless_they_bring_the_token():
    client = Client(REMOTE_ADDR="10.9.8.7")
    refused = client.get("/metrics")
    assert refused.status_code == 403 and b"memory_admin" not in refused.content
    with override_settings(METRICS_TOKEN="scrape-secret"):
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
        allowed = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert allowed.status_code == 200 and b"memory_admin_postgres_up 1.0" in allowed.content
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
