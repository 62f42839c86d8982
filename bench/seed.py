"""Scale data for the benchmark, written with set-based SQL and a Redis pipeline (not the API):
10,000 agents, 1,000,000 facts, 1,000,000 events (the last 10,000 of them `lock.acquired`),
10,000 records and 10,000 held locks, all in one namespace.
"""

from __future__ import annotations

import os
import time

import psycopg
import redis

# BENCH_SCALE shrinks the data for checking the harness quickly (e.g. 0.01); 1 is the benchmark.
_SCALE = float(os.environ.get("BENCH_SCALE", "1"))
AGENTS = 10_000
FACTS = int(1_000_000 * _SCALE)
EVENTS = max(20_000, int(1_000_000 * _SCALE))
RECORDS = 10_000
LOCKS = 10_000
CATEGORIES = 100


def seed(dsn: str, redis_url: str, ns: str, log=print) -> dict[str, float]:
    """Fill namespace `ns`; returns seconds per step. Must run before any event is appended."""
    timings: dict[str, float] = {}

    def step(name: str, sql: str, params=()) -> None:
        t0 = time.perf_counter()
        conn.execute(sql, params)
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"  seeded {name} in {timings[name]} s")

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        ns_id = conn.execute(
            "INSERT INTO memory_admin_namespace (name, created) VALUES (%s, now()) "
            "ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
            [ns],
        ).fetchone()[0]
        if conn.execute("SELECT count(*) FROM memory_admin_event").fetchone()[0]:
            raise RuntimeError("seed must run on an empty event log")
        step(
            "agents",
            """INSERT INTO memory_admin_agent (ns_id, name, created, status, detail, seen, expires, stale)
               SELECT %s, 'agent-' || lpad(i::text, 5, '0'), now(), 'working', 'seeded',
                      now(), now() + interval '1 day', false
               FROM generate_series(0, %s - 1) i""",
            [ns_id, AGENTS],
        )
        first_agent = conn.execute(
            "SELECT min(id) FROM memory_admin_agent WHERE ns_id = %s", [ns_id]
        ).fetchone()[0]
        # Words from a small vocabulary so full-text search has realistic hit rates.
        step(
            "facts",
            """INSERT INTO memory_admin_fact (ns_id, agent_id, fact, category, metadata, created)
               SELECT %s, %s + (i %% %s),
                      'observation ' || i || ' ' || (ARRAY['alpha','budget','customer','deadline',
                        'error','forecast','growth','hypothesis','invoice','latency'])[1 + i %% 10]
                      || ' ' || (ARRAY['market','network','outage','pricing','quality','revenue',
                        'schema','travel','upgrade','vendor','weather'])[1 + i %% 11],
                      'cat-' || lpad((i %% %s)::text, 2, '0'), '{}'::jsonb,
                      now() - (%s - i) * interval '10 ms'
               FROM generate_series(1, %s) i""",
            [ns_id, first_agent, AGENTS, CATEGORIES, FACTS, FACTS],
        )
        step(
            "events",
            """INSERT INTO memory_admin_event
                 (seq, position, ord, txn, ns_id, type, actor, agent_id, subject, payload, created)
               SELECT i, i, 0, '', %s,
                      CASE WHEN i > %s THEN 'lock.acquired'
                           ELSE (ARRAY['record.written','fact.stored','status.changed',
                                       'lock.released','custom.note'])[1 + i %% 5] END,
                      'agent-' || lpad((i %% %s)::text, 5, '0'),
                      'agent-' || lpad((i %% %s)::text, 5, '0'),
                      CASE WHEN i > %s THEN 'res-' || lpad((i - %s - 1)::text, 5, '0')
                           ELSE 'rec-' || lpad((i %% %s)::text, 5, '0') END,
                      jsonb_build_object('n', i),
                      now() - (%s - i) * interval '10 ms'
               FROM generate_series(1, %s) i""",
            [ns_id, EVENTS - LOCKS, AGENTS, AGENTS, EVENTS - LOCKS, EVENTS - LOCKS, RECORDS, EVENTS, EVENTS],
        )
        step(
            "records",
            """WITH r AS (
                 INSERT INTO memory_admin_record
                   (ns_id, key, value, version, deleted, updated_by, updated, created)
                 SELECT %s, 'rec-' || lpad(i::text, 5, '0'),
                        jsonb_build_object('n', i, 'text', 'seeded value'),
                        1, false, 'agent-' || lpad((i %% %s)::text, 5, '0'), now(), now()
                 FROM generate_series(0, %s - 1) i
                 RETURNING id, value, updated_by, updated)
               INSERT INTO memory_admin_recordversion
                 (record_id, version, value, deleted, updated_by, updated)
               SELECT id, 1, value, false, updated_by, updated FROM r""",
            [ns_id, AGENTS, RECORDS],
        )
        step(
            "lock fences",
            """INSERT INTO memory_admin_lockfence (ns_id, resource, token, holder, held, acquired, expires)
               SELECT %s, 'res-' || lpad(i::text, 5, '0'), %s + i + 1,
                      'agent-' || lpad((i %% %s)::text, 5, '0'), true, now(), now() + interval '1 hour'
               FROM generate_series(0, %s - 1) i""",
            [ns_id, EVENTS - LOCKS, AGENTS, LOCKS],
        )
        # The namespace's log starts after the seeded events (sequenced and published): the relay
        # publishes only what the benchmark appends. The sequence goes on after them.
        conn.execute(
            "UPDATE memory_admin_namespace SET head = %s, published = %s WHERE id = %s",
            [EVENTS, EVENTS, ns_id],
        )
        conn.execute("SELECT setval(pg_get_serial_sequence('memory_admin_event', 'seq'), %s)", [EVENTS])
        step("analyze", "ANALYZE")

    t0 = time.perf_counter()
    client = redis.Redis.from_url(redis_url)
    now_ms = int(time.time() * 1000)
    tag = f"ma:{{{ns}}}"
    pipe = client.pipeline(transaction=False)
    for i in range(LOCKS):
        resource = f"res-{i:05d}"
        key = f"{tag}:lock:{resource}"
        expires = now_ms + 3_600_000
        pipe.hset(
            key,
            mapping={"owner": f"agent-{i % AGENTS:05d}", "token": EVENTS - LOCKS + i + 1,
                     "acquired": now_ms, "expires": expires},
        )  # fmt: skip
        pipe.pexpire(key, 3_600_000)
        pipe.zadd(f"{tag}:locks", {resource: expires})
        if i % 2000 == 1999:
            pipe.execute()
    for i in range(AGENTS):
        name = f"agent-{i:05d}"
        key = f"{tag}:status:{name}"
        expires = now_ms + 86_400_000
        pipe.hset(
            key, mapping={"status": "working", "detail": "seeded", "updated": now_ms, "expires": expires}
        )
        pipe.pexpire(key, 86_400_000)
        pipe.zadd(f"{tag}:heartbeats", {name: expires})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    client.close()
    timings["redis locks+status"] = round(time.perf_counter() - t0, 2)
    log(f"  seeded redis locks+status in {timings['redis locks+status']} s")
    return timings
