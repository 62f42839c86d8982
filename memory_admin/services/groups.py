"""Consumer groups on a namespace's Redis stream: each event goes to one consumer of a group.

The relay adds event n to the stream `ma:{ns}:events` as entry `n-0`, so an entry id is
its event id. Delivery is Redis' XREADGROUP/XACK; an entry left unacked longer than
`reclaim_after_ms` is handed to the next consumer that reads (XAUTOCLAIM).

Redis may lose a group (a restart without persistence, a flush). Each group's `floor` —
every event up to it delivered and acked — is kept in Postgres; a group found missing is
recreated there and the stream is re-seeded from the log, so nothing after the floor is
lost (events between the floor and a lost ack may come again: at least once).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, models, transaction

from memory_admin import positions
from memory_admin import redis as r
from memory_admin.errors import Invalid, NotFound
from memory_admin.models import ConsumerGroup, Event, Namespace, ParkedEvent
from memory_admin.services import SYSTEM_ACTOR, Actor
from memory_admin.services.events import append_event, head
from memory_admin.validation import check_key

log = logging.getLogger("memory_admin.groups")

STARTS = ("earliest", "latest")


@dataclass(frozen=True)
class Batch:
    items: list[dict[str, Any]]  # Event bodies
    last_delivered: str  # the group's last delivered stream id: a wake-up can wait after it


@r.unavailable_on_error
def read_group(
    *,
    ns: Namespace,
    group: str,
    consumer: str,
    count: int,
    start: str = "latest",
    reclaim_after_ms: int = 60_000,
    agent_id: str = "",
) -> Batch:
    """Up to `count` events for `consumer`: first those another consumer left unacked for
    `reclaim_after_ms`, then new ones. Never blocks (callers wait on the stream). An event
    delivered the group's `max_deliveries` times already is parked instead of delivered.
    `agent_id` names the agent reading, so the console can find what it left unacked."""
    check_key(group, "group")
    check_key(consumer, "consumer")
    if start not in STARTS:
        raise Invalid("start must be earliest or latest", {"start": "earliest or latest"})
    row = _ensure(ns=ns, name=group, start=start)
    try:
        items = _read(ns, row, consumer, count, reclaim_after_ms, agent_id)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        _recreate(ns=ns, row=row)
        items = _read(ns, row, consumer, count, reclaim_after_ms, agent_id)
    return Batch(items=items, last_delivered=_advance_floor(ns, row))


@r.unavailable_on_error
def ack_group(*, ns: Namespace, group: str, ids: list[int]) -> int:
    """Acknowledge events of `group`; returns how many were pending (unknown ids count 0)."""
    check_key(group, "group")
    row = ConsumerGroup.objects.filter(ns=ns, name=group).first()
    if row is None or not ids:
        return 0
    try:
        keys = [r.stream_key(ns.name), r.group_replays_key(ns.name, group)]
        acked = r.script(r.ACK)(keys=keys, args=[group, *ids])
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        _recreate(ns=ns, row=row)  # its pending entries are gone: they will be delivered again
        return 0
    _advance_floor(ns, row)
    return int(acked)


def _ensure(*, ns: Namespace, name: str, start: str) -> ConsumerGroup:
    """The group's row, creating it (and the Redis group) on first use."""
    row = ConsumerGroup.objects.filter(ns=ns, name=name).first()
    if row is not None:
        return row
    # "latest" means after the last committed event, which the stream may not have yet.
    floor = 0 if start == "earliest" else head(ns)
    try:
        with transaction.atomic():
            row = ConsumerGroup.objects.create(ns=ns, name=name, floor=floor)
    except IntegrityError:  # another consumer created it first
        return ConsumerGroup.objects.get(ns=ns, name=name)
    _create(ns.name, name, floor)
    return row


def _create(ns: str, group: str, floor: int) -> None:
    try:
        r.client().xgroup_create(r.stream_key(ns), group, id=f"{floor}-0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _read(
    ns: Namespace, row: ConsumerGroup, consumer: str, count: int, reclaim_after_ms: int, agent_id: str
) -> list[dict]:
    client, key, group = r.client(), r.stream_key(ns.name), row.name
    pipe = client.pipeline(transaction=False)
    if agent_id:
        pipe.hset(r.group_consumers_key(ns.name, group), consumer, agent_id)
    if row.max_deliveries:
        # The same idle entries XAUTOCLAIM takes next, with how often each was delivered already.
        pipe.xpending_range(key, group, min="-", max="+", count=count, idle=reclaim_after_ms)
    pipe.xautoclaim(key, group, consumer, min_idle_time=reclaim_after_ms, count=count)
    replies = pipe.execute()
    claimed = replies[-1]
    entries = list(claimed[1])
    # Redis 7 drops pending entries trimmed from the stream and names them apart: the log has them.
    entries.extend((entry_id, None) for entry_id in (claimed[2] if len(claimed) > 2 else []))
    if row.max_deliveries:
        pending = {p["message_id"]: p for p in replies[-2]}
        spent = [e for e in entries if pending.get(e[0], {}).get("times_delivered", 0) >= row.max_deliveries]
        if spent:
            _park(ns, row, spent, pending)
            entries = [e for e in entries if e not in spent]
    if len(entries) < count:
        fresh = client.xreadgroup(group, consumer, {key: ">"}, count=count - len(entries))
        if fresh:
            entries.extend(fresh[0][1])
    return _bodies(ns, _for_group(ns, group, entries))


def _for_group(ns: Namespace, group: str, entries: list) -> list:
    """The entries without replays meant for another group (those are acked for this one)."""
    foreign = [entry_id for entry_id, fields in entries if fields and fields.get("group", group) != group]
    if not foreign:
        return entries
    r.client().xack(r.stream_key(ns.name), group, *foreign)
    return [e for e in entries if e[0] not in foreign]


def _park(ns: Namespace, row: ConsumerGroup, entries: list, pending: dict) -> None:
    """Take entries delivered `max_deliveries` times out of delivery: kept in Postgres (with an
    event saying so) until an operator replays or discards them, then acked in Redis."""
    bodies = dict(zip((e[0] for e in entries), _bodies_in_order(ns, entries), strict=True))
    with transaction.atomic():
        for entry_id, _ in entries:
            body = bodies[entry_id]
            if body is None:
                continue
            info = pending[entry_id]
            ParkedEvent.objects.update_or_create(
                group=row,
                event=body["id"],
                defaults={"body": body, "consumer": info["consumer"], "deliveries": info["times_delivered"]},
            )
            append_event(
                ns=ns,
                type="group.parked",
                actor=SYSTEM_ACTOR,
                subject=row.name,
                payload={
                    "group": row.name,
                    "event_id": body["id"],
                    "consumer": info["consumer"],
                    "deliveries": info["times_delivered"],
                },
            )
    client = r.client()
    pipe = client.pipeline(transaction=False)
    pipe.xack(r.stream_key(ns.name), row.name, *[e[0] for e in entries])
    pipe.hdel(r.group_replays_key(ns.name, row.name), *[b["id"] for b in bodies.values() if b])
    pipe.execute()
    log.warning("parked %s event(s) of group %s in %s", len(entries), row.name, ns.name)


def _bodies_in_order(ns: Namespace, entries: list) -> list[dict | None]:
    ids = [_event_id(e[0]) for e in entries if not (e[1] and "event" in e[1])]
    found = {positions.of(e): e.body() for e in positions.numbered(ns, ids)} if ids else {}
    return [
        json.loads(fields["event"]) if fields and "event" in fields else found.get(_event_id(entry_id))
        for entry_id, fields in entries
    ]


def _bodies(ns: Namespace, entries: list) -> list[dict]:
    bodies, missing = [], []
    for entry_id, fields in entries:
        if fields and "event" in fields:
            bodies.append(json.loads(fields["event"]))
        else:  # trimmed from the stream while pending: the log still has it
            missing.append(_event_id(entry_id))
    if missing:
        bodies.extend(event.body() for event in Event.objects.filter(ns=ns, position__in=missing))
        bodies.sort(key=lambda body: body["id"])
    return bodies


def _advance_floor(ns: Namespace, row: ConsumerGroup) -> str:
    """Move the durable floor up to what is delivered and acked; returns the last delivered id."""
    client, key = r.client(), r.stream_key(ns.name)
    pipe = client.pipeline(transaction=False)
    pipe.xpending(key, row.name)
    pipe.xinfo_groups(key)
    pending, groups = pipe.execute()
    last = next((g["last-delivered-id"] for g in groups if g["name"] == row.name), "0-0")
    floor = _event_id(last)
    if pending["pending"]:
        floor = min(floor, _event_id(pending["min"]) - 1)
    if floor > row.floor:
        ConsumerGroup.objects.filter(pk=row.pk, floor__lt=floor).update(floor=floor)
        row.floor = floor
    return last


def _recreate(*, ns: Namespace, row: ConsumerGroup) -> None:
    """Recreate a group Redis lost at its floor, re-seeding the stream from the log if needed."""
    client, key = r.client(), r.stream_key(ns.name)
    with transaction.atomic():
        row = ConsumerGroup.objects.select_for_update().get(pk=row.pk)  # one recreator at a time
        # transaction=True: a cluster's client takes WATCH only in a pipeline that says so
        with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # the relay appends meanwhile: then try again
                    groups = pipe.xinfo_groups(key) if pipe.exists(key) else []
                    if any(g["name"] == row.name for g in groups):
                        return
                    first = pipe.xrange(key, count=1)
                    newest = pipe.xrevrange(key, count=1)
                    top = _event_id(newest[0][0]) if newest else 0
                    # Is any event after the floor missing from the stream (trimmed, or lost)?
                    missing = Event.objects.filter(ns=ns, position__gt=row.floor)
                    if first:
                        missing = missing.filter(position__lt=_event_id(first[0][0]))
                    gap = missing.exists()
                    pipe.multi()
                    if gap and not groups:
                        _reseed(pipe, ns, key, after=row.floor, through=max(top, head(ns)))
                    elif gap:
                        log.warning(
                            "group %s of %s recreated at %s; events before %s are no longer in the stream",
                            row.name,
                            ns.name,
                            row.floor,
                            first[0][0] if first else "its end",
                        )
                    pipe.xgroup_create(key, row.name, id=f"{row.floor}-0", mkstream=True)
                    pipe.execute()
                    log.warning("recreated consumer group %s of %s at %s", row.name, ns.name, row.floor)
                    return
                except redis.WatchError:
                    continue


def _reseed(pipe, ns: Namespace, key: str, *, after: int, through: int) -> None:
    """Rebuild the stream (no group uses it now) with the log's events after `after`."""
    keep = settings.EVENT_STREAM_MAXLEN
    found = list(
        Event.objects.filter(ns=ns, position__gt=after, position__lte=through).order_by("-position")[:keep]
    )
    if len(found) == keep:
        log.warning("re-seeding %s: only the newest %s events after %s fit the stream", key, keep, after)
    pipe.delete(key)
    for event in reversed(found):
        pipe.xadd(key, {"event": json.dumps(event.body(), ensure_ascii=False)}, id=f"{event.position}-0")


def _event_id(stream_id: str) -> int:
    return int(str(stream_id).split("-", 1)[0])


# --- what the console shows and does ---------------------------------------------------------

# Deliveries handed back to the group wait under this consumer, idle longer than any
# reclaim_after_ms allows (a day), so the next read of any consumer takes them over.
HANDED_BACK = "ma:handed-back"
HAND_BACK_IDLE_MS = 2 * 86_400_000
MAX_DELIVERIES = 1000


@dataclass(frozen=True)
class Consumer:
    name: str
    agent: str  # the agent that last read as it ("" if unknown)
    pending: int
    idle_ms: int | None  # since its last read (None when Redis no longer lists it)


@dataclass(frozen=True)
class GroupState:
    """A group as the console shows it: its durable row and what Redis says of it now."""

    row: ConsumerGroup
    cursor: int  # the last event delivered to the group
    lag: int  # events after the cursor (counted up to positions.behind's cap)
    pending: int
    consumers: list[Consumer]
    parked: int
    missing: bool  # Redis lost the group; the next read recreates it at its floor

    @property
    def dom_id(self) -> str:
        return self.row.dom_id


@dataclass(frozen=True)
class Delivery:
    """An event delivered to a consumer and not acked yet."""

    group: str
    consumer: str
    event: int
    idle_ms: int
    deliveries: int
    entry: str  # the stream entry (a replay's is not `<event>-0`)


@r.unavailable_on_error
def list_groups(*, ns: Namespace) -> list[GroupState]:
    """Every consumer group of the namespace with its cursor, lag, consumers and parked events."""
    rows = list(ConsumerGroup.objects.filter(ns=ns).order_by("name"))
    if not rows:
        return []
    client, key = r.client(), r.stream_key(ns.name)
    try:
        info = {g["name"]: g for g in client.xinfo_groups(key)}
    except redis.ResponseError:  # no stream yet
        info = {}
    pipe = client.pipeline(transaction=False)
    for row in rows:
        if row.name in info:
            pipe.xinfo_consumers(key, row.name)
        pipe.hgetall(r.group_consumers_key(ns.name, row.name))
    replies = iter(pipe.execute())
    parked = dict(
        ParkedEvent.objects.filter(group__in=rows)
        .values("group")
        .annotate(n=models.Count("id"))
        .values_list("group", "n")
    )
    head = positions.head(ns)
    out = []
    for row in rows:
        group = info.get(row.name)
        consumers_now = next(replies) if group else []
        agents = next(replies)
        cursor = _event_id(group["last-delivered-id"]) if group else row.floor
        consumers = [
            Consumer(c["name"], agents.get(c["name"], ""), int(c["pending"]), int(c["idle"]))
            for c in consumers_now
        ]
        out.append(
            GroupState(
                row=row,
                cursor=cursor,
                lag=positions.behind(ns, cursor) if cursor < head else 0,
                pending=int(group["pending"]) if group else 0,
                consumers=consumers,
                parked=parked.get(row.pk, 0),
                missing=group is None,
            )
        )
    return out


def get_group(*, ns: Namespace, group: str) -> ConsumerGroup:
    check_key(group, "group")
    row = ConsumerGroup.objects.filter(ns=ns, name=group).first()
    if row is None:
        raise NotFound(f"no consumer group {group!r}")
    return row


@r.unavailable_on_error
def pending_deliveries(
    *, ns: Namespace, group: str, consumer: str | None = None, limit: int = 100
) -> list[Delivery]:
    """A group's unacked deliveries (of one consumer), oldest event first."""
    try:
        found = r.client().xpending_range(
            r.stream_key(ns.name), group, min="-", max="+", count=limit, consumername=consumer
        )
    except redis.ResponseError:  # the group (or the stream) is gone from Redis
        return []
    return [
        Delivery(
            group=group,
            consumer=p["consumer"],
            event=_event_id(p["message_id"]),
            idle_ms=int(p["time_since_delivered"]),
            deliveries=int(p["times_delivered"]),
            entry=p["message_id"],
        )
        for p in found
    ]


@r.unavailable_on_error
def agent_deliveries(*, ns: Namespace, agent_id: str, limit: int = 100) -> list[Delivery]:
    """What `agent_id` was delivered and has not acked, in every group of the namespace: the
    deliveries of each consumer it last read as."""
    out: list[Delivery] = []
    for group, consumers in _consumers_of(ns, [agent_id]).items():
        for consumer in consumers.get(agent_id, []):
            out += pending_deliveries(ns=ns, group=group, consumer=consumer, limit=limit)
    return out


@r.unavailable_on_error
def pending_by_agent(*, ns: Namespace, agents: list[str] | None) -> dict[str, int]:
    """How many deliveries each of `agents` (None: every agent that read) holds unacked, over all
    groups (one round trip a group)."""
    counts: dict[str, int] = defaultdict(int)
    mapping = _consumers_of(ns, agents)
    if not mapping:
        return counts
    pipe = r.client().pipeline(transaction=False)
    for group in mapping:
        pipe.xpending(r.stream_key(ns.name), group)
    for consumers, summary in zip(mapping.values(), pipe.execute(raise_on_error=False), strict=True):
        if isinstance(summary, Exception):
            continue
        per_consumer = {c["name"]: int(c["pending"]) for c in summary.get("consumers") or []}
        for agent, names in consumers.items():
            counts[agent] += sum(per_consumer.get(name, 0) for name in names)
    return dict(counts)


def _consumers_of(ns: Namespace, agents: list[str] | None) -> dict[str, dict[str, list[str]]]:
    """group -> agent -> the consumers it read as, for the groups where `agents` (None: any) read."""
    names = list(ConsumerGroup.objects.filter(ns=ns).values_list("name", flat=True))
    if not names:
        return {}
    pipe = r.client().pipeline(transaction=False)
    for name in names:
        pipe.hgetall(r.group_consumers_key(ns.name, name))
    wanted = None if agents is None else set(agents)
    out: dict[str, dict[str, list[str]]] = {}
    for name, consumers in zip(names, pipe.execute(), strict=True):
        for consumer, agent in consumers.items():
            if wanted is None or agent in wanted:
                out.setdefault(name, {}).setdefault(agent, []).append(consumer)
    return out


@r.unavailable_on_error
def hand_back(*, ns: Namespace, agent_id: str, actor: Actor) -> int:
    """Give the group back what `agent_id` was delivered and never acked: the deliveries move to
    a neutral consumer, idle long enough that the next read of any consumer takes them over.
    Delivery counts stay (the agent's failure is not the event's). Returns how many moved."""
    client, key = r.client(), r.stream_key(ns.name)
    moved = 0
    for group, consumers in _consumers_of(ns, [agent_id]).items():
        for consumer in consumers[agent_id]:
            while True:
                found = pending_deliveries(ns=ns, group=group, consumer=consumer, limit=500)
                if not found:
                    break
                ids = [p.entry for p in found]
                claimed = client.xclaim(key, group, HANDED_BACK, 0, ids, idle=HAND_BACK_IDLE_MS, justid=True)
                moved += len(claimed)
                if len(found) < 500 or not claimed:
                    break
    if moved:
        with transaction.atomic():
            append_event(
                ns=ns,
                type="group.handed_back",
                actor=actor,
                agent_id=agent_id,
                subject=agent_id,
                payload={"agent_id": agent_id, "deliveries": moved},
            )
    return moved


@transaction.atomic
def configure_group(*, ns: Namespace, group: str, max_deliveries: int | None, actor: Actor) -> ConsumerGroup:
    """Park events after `max_deliveries` failed deliveries (None: never park). Creates the group
    (starting after the newest event) if it does not exist yet."""
    check_key(group, "group")
    if max_deliveries is not None and not 1 <= max_deliveries <= MAX_DELIVERIES:
        raise Invalid(
            f"max_deliveries must be 1-{MAX_DELIVERIES} or null", {"max_deliveries": f"1-{MAX_DELIVERIES}"}
        )
    row = _ensure(ns=ns, name=group, start="latest")
    row = ConsumerGroup.objects.select_for_update().get(pk=row.pk)
    if row.max_deliveries != max_deliveries:
        row.max_deliveries = max_deliveries
        row.save(update_fields=["max_deliveries"])
        append_event(
            ns=ns,
            type="group.configured",
            actor=actor,
            subject=group,
            payload={"group": group, "max_deliveries": max_deliveries},
        )
    return row


def list_parked(*, ns: Namespace, group: str | None = None, limit: int = 100) -> list[ParkedEvent]:
    parked = ParkedEvent.objects.filter(group__ns=ns).select_related("group")
    if group is not None:
        parked = parked.filter(group__name=group)
    return list(parked[:limit])


def _lock_parked(*, ns: Namespace, parked_id: int) -> ParkedEvent:
    """The namespace's parked event, its row locked until the transaction ends: replayed or
    discarded once, whoever asks at the same time."""
    parked = ParkedEvent.objects.select_for_update().filter(group__ns=ns, pk=parked_id).first()
    if parked is None:
        raise NotFound(f"no parked event #{parked_id}")
    return parked


def _append_parked_event(*, ns: Namespace, type: str, parked: ParkedEvent, actor: Actor) -> None:
    """The event of a replay or a discard: one payload for both, naming the group, the event and
    the parked row it acts on."""
    group = parked.group.name
    append_event(
        ns=ns,
        type=type,
        actor=actor,
        subject=group,
        payload={"group": group, "event_id": parked.event, "parked_id": parked.pk},
    )


@r.unavailable_on_error
def replay_parked(*, ns: Namespace, parked_id: int, actor: Actor) -> ParkedEvent:
    """Deliver a parked event to its group once more (to one consumer, as any event)."""
    with transaction.atomic():
        parked = _lock_parked(ns=ns, parked_id=parked_id)
        group = parked.group.name
        _append_parked_event(ns=ns, type="group.replayed", parked=parked, actor=actor)
        parked.delete()
        # Last: if Redis refuses, the row and the event roll back and the event stays parked.
        keys = [r.stream_key(ns.name), r.group_replays_key(ns.name, group)]
        r.script(r.REPLAY)(keys=keys, args=[json.dumps(parked.body), parked.event, group])
    return parked


@transaction.atomic
def discard_parked(*, ns: Namespace, parked_id: int, actor: Actor) -> ParkedEvent:
    """Drop a parked event for good: the group never gets it again."""
    parked = _lock_parked(ns=ns, parked_id=parked_id)
    _append_parked_event(ns=ns, type="group.discarded", parked=parked, actor=actor)
    parked.delete()
    return parked


@r.unavailable_on_error
def reset_group(*, ns: Namespace, group: str, after: int, actor: Actor) -> ConsumerGroup:
    """Move the group's cursor: its next reads deliver the events after event `after` (earlier
    ones again, or skipping ahead). Unacked deliveries stay pending and can still be acked."""
    head = positions.head(ns)
    if not 0 <= after <= head:
        raise Invalid(f"after must be an event id from 0 to {head}", {"after": f"0-{head}"})
    with transaction.atomic():
        row = ConsumerGroup.objects.select_for_update().filter(ns=ns, name=group).first()
        if row is None:
            raise NotFound(f"no consumer group {group!r}")
        previous = row.floor
        row.floor = after
        row.save(update_fields=["floor"])
        append_event(
            ns=ns,
            type="group.reset",
            actor=actor,
            subject=group,
            payload={"group": group, "after": after, "previous_floor": previous},
        )
        _create(ns.name, group, after)  # Redis may have lost it; BUSYGROUP otherwise
        r.client().xgroup_setid(r.stream_key(ns.name), group, id=f"{after}-0")
    return row
