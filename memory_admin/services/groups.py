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
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, transaction

from memory_admin import redis as r
from memory_admin.errors import Invalid
from memory_admin.models import ConsumerGroup, Event, Namespace
from memory_admin.services.events import last_event_id
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
) -> Batch:
    """Up to `count` events for `consumer`: first those another consumer left unacked for
    `reclaim_after_ms`, then new ones. Never blocks (callers wait on the stream)."""
    check_key(group, "group")
    check_key(consumer, "consumer")
    if start not in STARTS:
        raise Invalid("start must be earliest or latest", {"start": "earliest or latest"})
    row = _ensure(ns=ns, name=group, start=start)
    try:
        items = _read(ns, group, consumer, count, reclaim_after_ms)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        _recreate(ns=ns, row=row)
        items = _read(ns, group, consumer, count, reclaim_after_ms)
    return Batch(items=items, last_delivered=_advance_floor(ns, row))


@r.unavailable_on_error
def ack_group(*, ns: Namespace, group: str, ids: list[int]) -> int:
    """Acknowledge events of `group`; returns how many were pending (unknown ids count 0)."""
    check_key(group, "group")
    row = ConsumerGroup.objects.filter(ns=ns, name=group).first()
    if row is None or not ids:
        return 0
    try:
        acked = r.client().xack(r.stream_key(ns.name), group, *[f"{i}-0" for i in ids])
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
    floor = 0 if start == "earliest" else last_event_id()
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


def _read(ns: Namespace, group: str, consumer: str, count: int, reclaim_after_ms: int) -> list[dict]:
    client, key = r.client(), r.stream_key(ns.name)
    claimed = client.xautoclaim(key, group, consumer, min_idle_time=reclaim_after_ms, count=count)
    entries = list(claimed[1])
    # Redis 7 drops pending entries trimmed from the stream and names them apart: the log has them.
    entries.extend((entry_id, None) for entry_id in (claimed[2] if len(claimed) > 2 else []))
    if len(entries) < count:
        fresh = client.xreadgroup(group, consumer, {key: ">"}, count=count - len(entries))
        if fresh:
            entries.extend(fresh[0][1])
    return _bodies(ns, entries)


def _bodies(ns: Namespace, entries: list) -> list[dict]:
    bodies, missing = [], []
    for entry_id, fields in entries:
        if fields and "event" in fields:
            bodies.append(json.loads(fields["event"]))
        else:  # trimmed from the stream while pending: the log still has it
            missing.append(_event_id(entry_id))
    if missing:
        bodies.extend(event.body() for event in Event.objects.filter(ns=ns, id__in=missing))
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
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # the relay appends meanwhile: then try again
                    groups = pipe.xinfo_groups(key) if pipe.exists(key) else []
                    if any(g["name"] == row.name for g in groups):
                        return
                    first = pipe.xrange(key, count=1)
                    newest = pipe.xrevrange(key, count=1)
                    top = _event_id(newest[0][0]) if newest else 0
                    # Ids are global, so a namespace's stream is sparse: ask the log what is missing.
                    missing = Event.objects.filter(ns=ns, id__gt=row.floor)
                    if first:
                        missing = missing.filter(id__lt=_event_id(first[0][0]))
                    gap = missing.exists()
                    pipe.multi()
                    if gap and not groups:
                        _reseed(pipe, ns, key, after=row.floor, through=max(top, last_event_id()))
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
    found = list(Event.objects.filter(ns=ns, id__gt=after, id__lte=through).order_by("-id")[:keep])
    if len(found) == keep:
        log.warning("re-seeding %s: only the newest %s events after %s fit the stream", key, keep, after)
    pipe.delete(key)
    for event in reversed(found):
        pipe.xadd(key, {"event": json.dumps(event.body())}, id=f"{event.id}-0")


def _event_id(stream_id: str) -> int:
    return int(str(stream_id).split("-", 1)[0])
