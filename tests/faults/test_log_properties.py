"""The log's promises under load (DESIGN.md rule 3): 16 writers in three namespaces, the active
relay killed mid-run, and Postgres crashed after the writers stop.

Checked per namespace: a cursor reader, an SSE subscriber and a consumer group each see every
committed event (the readers exactly once, in order); the Redis stream holds each event once, in
order; positions are dense; one key's versions appear in ascending order; and every write the
service acknowledged is still there after the Postgres crash.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from tests.faults import checks
from tests.faults.cluster import wait_for
from tests.faults.load import Load

WRITERS, NAMESPACES = 16, 3


class Observer:
    """One namespace's readers, each a thread: a cursor reader, an SSE subscriber, a group consumer."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.headers = f"{url}/api/v1", {"Authorization": f"Bearer {token}"}
        self.paged: list[int] = []
        self.streamed: list[int] = []
        self.grouped: list[int] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=f, daemon=True) for f in (self._page, self._stream, self._group)
        ]

    def start(self) -> Observer:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            # The group starts before any event of the run: it must get every one of them.
            read = {"consumer": "observer", "count": 100, "block_ms": 0, "start": "earliest"}
            first = client.post("/events/groups/observers/read", json=read)
            first.raise_for_status()
            self.grouped += [event["id"] for event in first.json()["items"]]
            client.post("/events/groups/observers/ack", json={"ids": self.grouped})
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _page(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            while not self.stopping.is_set():
                after = self.paged[-1] if self.paged else 0
                try:
                    page = client.get(f"/events?after={after}&limit=500").json()["items"]
                except (httpx.HTTPError, KeyError, ValueError):
                    page = []
                self.paged += [event["id"] for event in page]
                if not page:
                    time.sleep(0.02)

    def _stream(self) -> None:
        while not self.stopping.is_set():
            headers = dict(self.headers)
            headers["Last-Event-ID"] = str(self.streamed[-1] if self.streamed else 0)
            try:
                with httpx.stream("GET", f"{self.url}/events/stream", headers=headers, timeout=5) as response:
                    for line in response.iter_lines():
                        if self.stopping.is_set():
                            return
                        if line.startswith("data: "):
                            self.streamed.append(json.loads(line[6:])["id"])
            except httpx.HTTPError:
                time.sleep(0.1)

    def _group(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            read = {"consumer": "observer", "count": 100, "block_ms": 500}
            while not self.stopping.is_set():
                try:
                    items = client.post("/events/groups/observers/read", json=read).json()["items"]
                    if items:
                        ids = [event["id"] for event in items]
                        client.post("/events/groups/observers/ack", json={"ids": ids})
                        self.grouped += ids
                except (httpx.HTTPError, KeyError, ValueError):
                    time.sleep(0.1)


def versions_in_log_order(cluster, ns: str) -> dict[str, list[int]]:
    rows = cluster.sql(
        "SELECT e.subject, (e.payload->>'version')::bigint FROM memory_admin_event e "
        "JOIN memory_admin_namespace n ON n.id = e.ns_id WHERE n.name = %s "
        "AND e.type IN ('record.written', 'record.deleted') AND e.position IS NOT NULL ORDER BY e.position",
        [ns],
    )
    versions: dict[str, list[int]] = {}
    for key, version in rows:
        versions.setdefault(key, []).append(version)
    return versions


def test_no_reader_misses_an_event_with_16_writers_in_3_namespaces_and_the_relay_killed(cluster, ns):
    names = [f"{ns[:55]}-{k}" for k in range(NAMESPACES)]
    tokens = {
        name: cluster.provision(name, [f"agent-{i:02d}" for i in range(k, WRITERS, NAMESPACES)])
        for k, name in enumerate(names)
    }
    observers = {name: Observer(cluster.url, next(iter(tokens[name].values()))).start() for name in names}
    active = cluster.active_relay()
    standby = cluster.start_relay()
    loads = [Load(cluster.url, tokens[name]).start() for name in names]
    try:
        time.sleep(3)
        active.kill(signal.SIGKILL)
        wait_for(lambda: cluster.active_relay() is standby, timeout=6, message="the standby to take over")
        time.sleep(3)
    finally:
        for load in loads:
            load.stop()

    for name in names:
        checks.wait_for_relay(cluster, name)
        logged = checks.event_ids(cluster, name)
        assert logged == list(range(1, len(logged) + 1)), f"{name}: positions are not dense"
        observer = observers[name]
        wait_for(
            lambda o=observer, n=logged[-1]: (
                o.paged[-1:] == [n] and o.streamed[-1:] == [n] and n in o.grouped
            ),
            timeout=30,
            message=f"{name}: the readers to reach {logged[-1]}",
        )
        observer.stop()
        assert observer.paged == logged, f"{name}: the cursor reader skipped or repeated"
        assert observer.streamed == logged, f"{name}: the SSE subscriber skipped or repeated"
        assert set(observer.grouped) == set(logged), f"{name}: the consumer group missed events"
        assert checks.stream_ids(cluster, name) == logged, f"{name}: the stream lost or repeated one"
        for key, versions in versions_in_log_order(cluster, name).items():
            assert versions == sorted(versions), f"{name}: versions of {key} out of order: {versions}"
        assert checks.half_written(cluster, name) == []

    # Every write the service acknowledged survives a Postgres crash.
    acknowledged = {
        (name, op.target, op.body["version"])
        for name, load in zip(names, loads, strict=True)
        for op in load.history.ops
        if op.kind == "write" and op.status in (200, 201)
    }
    assert acknowledged
    cluster.crash_postgres()
    cluster.start_postgres()
    stored = set(
        wait_for(
            lambda: cluster.sql(
                "SELECT n.name, r.key, v.version FROM memory_admin_recordversion v "
                "JOIN memory_admin_record r ON r.id = v.record_id "
                "JOIN memory_admin_namespace n ON n.id = r.ns_id WHERE n.name = ANY(%s)",
                [names],
            ),
            timeout=30,
            message="Postgres back",
        )
    )
    assert acknowledged - stored == set()
