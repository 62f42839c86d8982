"""Activity over the last hour, a bucket a minute, for the console's charts: events, record
writes, conflicts and lock acquisitions from the log, lock waits from counters the lock service
keeps in Redis (waits make no event), live agents from samples.

The log has no index on time, but positions follow commit order and commit order follows time
closely: the first event of each minute is found by bisecting positions (all minutes in one
statement), so a minute is a range of positions. Its events are the width of that range; its
writes, conflicts and lock acquisitions are counted in the (namespace, type, position) index
alone (an hour of 360,000 events at the benchmark's rate holds 80,000 of those). A minute that
has ended does not change, so its counts are kept in Redis; a page load counts only the minutes
it has not seen (at first the hour, then the current minute). Live agents are not in the log:
each count of the overview samples them into the same minute buckets.

Every console page load and every live push of the overview draws the charts: the buckets last
counted are kept a few seconds per namespace and reused while the log's head has not moved, so
many consoles watching one namespace cost one count per new event batch, not one each.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.utils.timezone import now

from memory_admin import positions, sql
from memory_admin import redis as r
from memory_admin.models import Namespace

MINUTES = 60
KINDS = ("events", "writes", "conflicts", "locks")


@dataclass(frozen=True)
class Bucket:
    minute: datetime
    events: int | None  # None: not counted yet
    writes: int | None
    conflicts: int | None
    locks: int | None
    agents: int | None  # live agents sampled in that minute (None: nobody looked)
    waits: int | None = None  # lock acquires that began waiting in that minute (None: an agent's chart)


def first_positions_since(ns: Namespace, moments: list[datetime]) -> list[int]:
    """For each moment, the position of the first event created at or after it (head + 1 if
    none): a bisection over positions, one index probe a step, all moments in one statement."""
    if not moments:
        return []
    with connection.cursor() as cursor:
        cursor.execute(sql.BISECT, {"ns": ns.pk, "end": positions.head(ns) + 1, "moments": list(moments)})
        found = dict(cursor.fetchall())
    return [found[i] for i in range(1, len(moments) + 1)]


def first_position_since(ns: Namespace, moment: datetime) -> int:
    """The position of the first event created at or after `moment` (head + 1 if none)."""
    return first_positions_since(ns, [moment])[0]


# The event types charted, and their place in a minute's counts (events, writes, conflicts, locks).
TYPED = {"record.written": 1, "conflict.opened": 2, "lock.acquired": 3}


def last_minute(ns: Namespace) -> int:
    """How many events the last 60 seconds added to the log: the head less the first position of
    that stretch (a bisection; counting them by time would read the whole log)."""
    return positions.head(ns) + 1 - first_position_since(ns, now() - timedelta(minutes=1))


def _minute_start(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, tz=UTC)


def _count(ns: Namespace, agent: str, minutes: list[int]) -> dict[int, tuple]:
    """Counts of `minutes` (consecutive, through the current one), each present (zeros where quiet)."""
    starts = first_positions_since(ns, [_minute_start(m) for m in minutes])
    # Sorted edges for width_bucket, even where a creation time steps back across a minute.
    edges = [*itertools.accumulate(starts, max), max(starts[-1], positions.head(ns) + 1)]
    params = {"ns": ns.pk, "edges": edges, "lo": edges[0], "hi": edges[-1]}
    counts = {m: [0, 0, 0, 0] for m in minutes}
    with connection.cursor() as cursor:
        if agent:
            cursor.execute(sql.AGENT_COUNTS, {**params, "agent": agent})
            for bucket, *row in cursor.fetchall():
                counts[minutes[bucket - 1]] = row
        else:
            for i, m in enumerate(minutes):
                counts[m][0] = edges[i + 1] - edges[i]
            cursor.execute(sql.TYPED_COUNTS, {**params, "types": list(TYPED)})
            for type, bucket, n in cursor.fetchall():
                counts[minutes[bucket - 1]][TYPED[type]] = n
    return {m: tuple(c) for m, c in counts.items()}


# A lock wait stays counted once this long after it began (the longest wait is 30 s).
WAIT_MARK_MS = 120_000
# A minute's wait counter lives a little longer than the charts look back.
WAIT_COUNTER_SECONDS = MINUTES * 60 + 300


def count_lock_wait(*, ns: Namespace, waiter: str) -> None:
    """An acquire found its lock held and waits for it (services/locks.py): counted in the minute
    it began, once however often it looks again."""
    minute = int(now().timestamp() // 60)
    r.script(r.COUNT_WAIT)(
        keys=[r.lock_wait_mark(ns.name, waiter), r.lock_waits_key(ns.name, minute)],
        args=[WAIT_MARK_MS, WAIT_COUNTER_SECONDS],
    )


# The buckets last counted are reused this long while the log's head stays where it was (lock
# waits and agent samples move without it).
FRESH_SECONDS = 5


def recent_hour(
    ns: Namespace, *, agent: str = "", live_agents: Callable[[], int] | None = None
) -> list[Bucket]:
    """last_hour, or the buckets last counted if the log has not grown since and they are at most
    FRESH_SECONDS old. `live_agents` is asked only when counting (its answer is sampled)."""
    client, key = r.client(), r.recent_activity_key(ns.name, agent)
    head = positions.head(ns)
    kept = client.get(key)
    if kept:
        seen = json.loads(kept)
        if seen["head"] == head:
            return [Bucket(datetime.fromtimestamp(b[0], tz=UTC), *b[1:]) for b in seen["buckets"]]
    buckets = last_hour(ns, agent=agent, sample_agents=live_agents() if live_agents else None)
    rows = [[b.minute.timestamp(), *astuple(b)[1:]] for b in buckets]
    client.set(key, json.dumps({"head": head, "buckets": rows}), ex=FRESH_SECONDS)
    return buckets


def last_hour(ns: Namespace, *, agent: str = "", sample_agents: int | None = None) -> list[Bucket]:
    """The last MINUTES minutes, oldest first (the current minute so far last); of one agent's
    events with `agent`. `sample_agents` records the live agents now into the current minute.
    Minutes counted before are read from Redis; the others are counted now."""
    client, key = r.client(), r.activity_key(ns.name, agent)
    current = int(now().timestamp() // 60)
    first = current - MINUTES + 1
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(key)
    if not agent:
        for m in range(first, current + 1):
            pipe.get(r.lock_waits_key(ns.name, m))  # GETs: a cluster's client refuses MGET in a pipeline
    stored, *waited = pipe.execute()
    waits = [int(w or 0) for w in waited] if waited else [None] * MINUTES
    kept = {int(m): v for m, v in stored.items() if not m.startswith("a")}
    samples = {int(m[1:]): int(v) for m, v in stored.items() if m.startswith("a")}
    if sample_agents is not None:
        samples[current] = sample_agents
    # Every minute from the oldest not counted yet through the current one (still running).
    oldest = min((m for m in range(first, current) if m not in kept), default=current)
    counted = _count(ns, agent, list(range(oldest, current + 1)))
    pipe = client.pipeline(transaction=False)
    done = {m: ",".join(map(str, c)) for m, c in counted.items() if m < current}
    if done:
        pipe.hset(key, mapping=done)
    if sample_agents is not None:
        pipe.hset(key, f"a{current}", sample_agents)
    old = [m for m in stored if int(m.lstrip("a")) < first]
    if old:
        pipe.hdel(key, *old)
    pipe.expire(key, 2 * 3600)
    pipe.execute()
    out = []
    for m in range(first, current + 1):
        counts = counted.get(m) or (tuple(int(x) for x in kept[m].split(",")[:4]) if m in kept else None)
        events, writes, conflicts, locks = counts or (None, None, None, None)
        sampled, waited = samples.get(m), waits[m - first]
        out.append(Bucket(_minute_start(m), events, writes, conflicts, locks, sampled, waited))
    return out


# --- SVG -----------------------------------------------------------------------------------

WIDTH, HEIGHT, PAD = 600, 120, 4


@dataclass(frozen=True)
class Series:
    name: str  # also its CSS class
    label: str
    points: str  # an SVG polyline's points
    last: int | None
    peak: int
    end: tuple[str, str] | None  # the last point (a dot, so that a single minute shows)


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
                end=tuple(points[-1].split(",")) if points else None,
            )
        )
    return {"series": series, "peak": peak, "width": WIDTH, "height": HEIGHT}


LABELS = {
    "events": "events a minute",
    "writes": "record writes",
    "conflicts": "conflicts",
    "locks": "lock acquisitions",
    "waits": "lock waits",
    "agents": "live agents",
}
