"""Activity over the last hour, a bucket a minute, for the console's charts: events, record
writes, conflicts and lock acquisitions from the log, live agents from samples.

The log has no index on time, but positions follow commit order and commit order follows time
closely: the first event of a minute is found by bisecting positions (one index probe each),
and a minute's counts come from one index range. A minute that has ended does not change, so
its counts are kept in Redis; a page load counts only the minutes it has not seen (at first the
hour: ~360,000 events at the benchmark's rate, then the current minute). Live agents are not
in the log: each count of the overview samples them into the same minute buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils.timezone import now

from memory_admin import positions
from memory_admin import redis as r
from memory_admin.models import Event, Namespace

MINUTES = 60
KINDS = ("events", "writes", "conflicts", "locks")


@dataclass(frozen=True)
class Bucket:
    minute: datetime
    events: int
    writes: int
    conflicts: int
    locks: int
    agents: int | None  # live agents sampled in that minute (None: nobody looked)


_TABLE = Event._meta.db_table
_FIRST_AT_OR_AFTER = f"SELECT {positions.FIELD}, created FROM {_TABLE} WHERE ns_id = %s AND {positions.FIELD} >= %s ORDER BY {positions.FIELD} LIMIT 1"  # noqa: E501


def first_position_since(ns: Namespace, moment: datetime) -> int:
    """The position of the first event created at or after `moment` (head + 1 if none): a bisection
    over positions, one index probe a step."""
    head = positions.head(ns)
    lo, hi = 1, head + 1
    with connection.cursor() as cursor:
        while lo < hi:
            mid = (lo + hi) // 2
            cursor.execute(_FIRST_AT_OR_AFTER, [ns.pk, mid])
            row = cursor.fetchone()
            if row is None or row[1] >= moment:
                hi = mid
            else:
                lo = row[0] + 1
    return lo


_COUNTS = f"""
SELECT floor(extract(epoch from created) / 60)::bigint AS minute,
       count(*),
       count(*) FILTER (WHERE type = 'record.written'),
       count(*) FILTER (WHERE type = 'conflict.opened'),
       count(*) FILTER (WHERE type = 'lock.acquired')
FROM {_TABLE}
WHERE ns_id = %s AND {positions.FIELD} >= %s {{agent}}
GROUP BY 1
"""


def last_hour(ns: Namespace, *, agent: str = "", sample_agents: int | None = None) -> list[Bucket]:
    """The last MINUTES minutes, oldest first (the current minute so far last); of one agent's
    events with `agent`. `sample_agents` records the live agents now into the current minute."""
    client, key = r.client(), r.activity_key(ns.name, agent)
    current = int(now().timestamp() // 60)
    first = current - MINUTES + 1
    kept = {int(m): v for m, v in client.hgetall(key).items()}
    missing = next((m for m in range(first, current) if m not in kept), current)
    start = first_position_since(ns, datetime.fromtimestamp(missing * 60, tz=now().tzinfo))
    sql = _COUNTS.format(agent="AND agent_id = %s" if agent else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [ns.pk, start, *([agent] if agent else [])])
        counted = {m: rest for m, *rest in cursor.fetchall()}
    agents_now = {}
    if sample_agents is not None:
        agents_now[current] = sample_agents
    fresh = {}
    for m in range(missing, current + 1):
        counts = counted.get(m, (0, 0, 0, 0))
        sampled = agents_now.get(m, _agents(kept.get(m)))
        fresh[m] = ",".join(str(c) for c in counts) + ("" if sampled is None else f",{sampled}")
    done = {m: v for m, v in fresh.items() if m < current}
    pipe = client.pipeline(transaction=False)
    if done:
        pipe.hset(key, mapping=done)
    if sample_agents is not None or current in kept:
        pipe.hset(key, current, fresh[current])  # the samples of the running minute
    stale = [m for m in kept if m < first]
    if stale:
        pipe.hdel(key, *stale)
    pipe.expire(key, 2 * 3600)
    pipe.execute()
    values = {**kept, **fresh}
    out = []
    for m in range(first, current + 1):
        parts = [int(x) for x in values.get(m, "0,0,0,0").split(",")]
        out.append(
            Bucket(
                minute=datetime.fromtimestamp(m * 60, tz=now().tzinfo),
                events=parts[0],
                writes=parts[1],
                conflicts=parts[2],
                locks=parts[3],
                agents=parts[4] if len(parts) > 4 else None,
            )
        )
    return out


def _agents(value: str | None) -> int | None:
    if not value:
        return None
    parts = value.split(",")
    return int(parts[4]) if len(parts) > 4 else None


# --- SVG -----------------------------------------------------------------------------------

WIDTH, HEIGHT, PAD = 600, 120, 4


@dataclass(frozen=True)
class Series:
    name: str  # also its CSS class
    label: str
    points: str  # an SVG polyline's points
    last: int | None
    peak: int


def chart(buckets: list[Bucket], kinds: tuple[str, ...]) -> dict:
    """Polylines for `kinds` on one scale (the largest value of them all), for charts.html."""
    peak = max([getattr(b, k) or 0 for b in buckets for k in kinds] + [1])
    step = (WIDTH - 2 * PAD) / max(1, len(buckets) - 1)
    series = []
    for kind in kinds:
        points = []
        for i, b in enumerate(buckets):
            value = getattr(b, kind)
            if value is None:
                continue
            x = PAD + i * step
            y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * value / peak
            points.append(f"{x:.1f},{y:.1f}")
        values = [getattr(b, kind) for b in buckets if getattr(b, kind) is not None]
        series.append(
            Series(
                name=kind,
                label=LABELS[kind],
                points=" ".join(points),
                last=values[-1] if values else None,
                peak=max(values) if values else 0,
            )
        )
    return {"series": series, "peak": peak, "width": WIDTH, "height": HEIGHT}


LABELS = {
    "events": "events a minute",
    "writes": "record writes",
    "conflicts": "conflicts",
    "locks": "lock acquisitions",
    "agents": "live agents",
}
