"""Checks the fault tests share: what the stream holds, what the log holds, and whether
Postgres' state is whole (every change with its event, every event with its change)."""

from __future__ import annotations

from tests.faults.cluster import Cluster, wait_for


def event_ids(cluster: Cluster, ns: str, after: int = 0) -> list[int]:
    """The positions of the namespace's log (events not yet sequenced are not in it)."""
    rows = cluster.sql(
        "SELECT e.position FROM memory_admin_event e JOIN memory_admin_namespace n ON n.id = e.ns_id "
        "WHERE n.name = %s AND e.position > %s ORDER BY e.position",
        [ns, after],
    )
    return [row[0] for row in rows]


def unsequenced(cluster: Cluster, ns: str) -> int:
    rows = cluster.sql(
        "SELECT count(*) FROM memory_admin_event e JOIN memory_admin_namespace n ON n.id = e.ns_id "
        "WHERE n.name = %s AND e.position IS NULL",
        [ns],
    )
    return rows[0][0]


def stream_ids(cluster: Cluster, ns: str) -> list[int]:
    entries = cluster.redis_client().xrange(f"ma:{{{ns}}}:log")
    return [int(entry_id.split("-")[0]) for entry_id, _ in entries if entry_id.endswith("-0")]


def published(cluster: Cluster, ns: str) -> int:
    """The last position the relay has published of the namespace."""
    rows = cluster.sql("SELECT published FROM memory_admin_namespace WHERE name = %s", [ns])
    return rows[0][0] if rows else 0


def wait_for_relay(cluster: Cluster, ns: str, timeout: float = 15) -> None:
    """Until every committed event of the namespace is sequenced and published."""
    wait_for(lambda: unsequenced(cluster, ns) == 0, timeout=timeout, message="the sequencer to catch up")
    newest = event_ids(cluster, ns)[-1]
    wait_for(lambda: newest in set(stream_ids(cluster, ns)), timeout=timeout, message="the relay to catch up")


def half_written(cluster: Cluster, ns: str) -> list[str]:
    """Changes without their event, or events without their change, in namespace `ns`."""
    problems = []
    versions = set(
        cluster.sql(
            "SELECT r.key, v.version FROM memory_admin_recordversion v "
            "JOIN memory_admin_record r ON r.id = v.record_id "
            "JOIN memory_admin_namespace n ON n.id = r.ns_id WHERE n.name = %s",
            [ns],
        )
    )
    written = cluster.sql(
        "SELECT e.payload->>'key', (e.payload->>'version')::bigint FROM memory_admin_event e "
        "JOIN memory_admin_namespace n ON n.id = e.ns_id "
        "WHERE n.name = %s AND e.type IN ('record.written', 'record.deleted')",
        [ns],
    )
    events = set(written)
    if len(events) != len(written):
        problems.append("a record version has more than one event")
    problems += [f"record version {v} has no event" for v in sorted(versions - events)]
    problems += [f"event for record version {v} that does not exist" for v in sorted(events - versions)]
    facts = cluster.sql(
        "SELECT f.id FROM memory_admin_fact f JOIN memory_admin_namespace n ON n.id = f.ns_id "
        "WHERE n.name = %s",
        [ns],
    )
    stored = cluster.sql(
        "SELECT (e.payload->>'fact_id')::bigint FROM memory_admin_event e "
        "JOIN memory_admin_namespace n ON n.id = e.ns_id WHERE n.name = %s AND e.type = 'fact.stored'",
        [ns],
    )
    if sorted(f for (f,) in facts) != sorted(f for (f,) in stored):
        problems.append("facts and fact.stored events differ")
    records = cluster.sql(
        "SELECT r.key, r.version, max(v.version) FROM memory_admin_record r "
        "JOIN memory_admin_namespace n ON n.id = r.ns_id "
        "LEFT JOIN memory_admin_recordversion v ON v.record_id = r.id WHERE n.name = %s GROUP BY r.id",
        [ns],
    )
    problems += [f"record {k} is at version {v}, its newest version row {m}" for k, v, m in records if v != m]
    return problems


def lock_events_match(cluster: Cluster, ns: str) -> list[str]:
    """Every lock held in Redis carries the token of a committed `lock.acquired` event."""
    client = cluster.redis_client()
    problems = []
    acquired = {
        (resource, int(token))
        for resource, token in cluster.sql(
            "SELECT e.subject, (e.payload->>'fencing_token')::bigint FROM memory_admin_event e "
            "JOIN memory_admin_namespace n ON n.id = e.ns_id WHERE n.name = %s AND e.type = 'lock.acquired'",
            [ns],
        )
    }
    for key in client.scan_iter(f"ma:{{{ns}}}:lock:*"):
        token = client.hget(key, "token")
        resource = key.split(":lock:", 1)[1]
        if token is not None and (resource, int(token)) not in acquired:
            problems.append(f"lock {resource} held with token {token} that no committed event issued")
    return problems
