"""The event log: appended in the writer's transaction, positioned after commit, read by position.

No writer waits for another to append (DESIGN.md rule 3). An event is inserted with `seq` from a
sequence and `ord`, at least its transaction's xid8 (`pg_current_xact_id()`). The horizon
(sql.HORIZON) is the oldest transaction of this database still running: every event with
`ord` below it was committed (or rolled back) by a transaction that has ended, and every event
still to come has `ord` at or above it. So the set of events below the horizon only ever grows
at its top: the sequencer stamps them with `position`, dense and ascending per namespace, in
(ord, seq) order, and a reader that pages by position never skips one and never sees one move.

`ord` alone would not keep one key's versions in order: a writer may take its xid, wait for the
row lock of a record another writer holds, and write the next version with the smaller xid. So
an event that follows another about the same subject (the next version of a record, the next
act on a lock) takes `ord = max(its xid, the subject's last ord)`, read under the subject's row
lock (`follows=`). Within one key the log shows versions in ascending order.

The sequencer is the active relay; any reader that finds events waiting below the horizon
stamps them itself (under the same advisory lock), so the log stays readable while no relay
runs. Writers ring a doorbell (Redis PUBLISH) after commit to wake the relay at once; NOTIFY is
never sent from a writing transaction (it takes a cluster-wide lock held through commit).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin import sql
from memory_admin.models import Event, Namespace
from memory_admin.services import Actor
from memory_admin.validation import check_event_type, check_json, dumps, reserved_event_type

log = logging.getLogger("memory_admin.events")

SEQUENCER_LOCK = 0x6D61_7365_7175_656E  # "masequen": one sequencer at a time
RELAY_STATUS_KEY = "ma:relay:status"  # namespaces the relay cannot publish (relay.py)
SEQUENCE_BATCH = 2000

_txn: contextvars.ContextVar[str] = contextvars.ContextVar("memory_admin_txn", default="")


def append_event(
    *,
    ns: Namespace,
    type: str,
    actor: Actor | str,
    agent_id: str | None = None,
    subject: str = "",
    payload: dict[str, Any] | None = None,
    follows: int = 0,
) -> Event:
    """Append one event in the current transaction (which must be the change's own).

    `follows`: the `ord` of the last event about the same subject, read under its row lock;
    the new event orders after it. Returns the event with its `seq` and `ord` (no position yet).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("events must be appended inside the transaction of the change they record")
    actor_name = actor if isinstance(actor, str) else actor.name
    if agent_id is None:
        agent_id = "" if isinstance(actor, str) else actor.agent_id
    payload = payload or {}
    created = now()
    txn = _txn.get()
    with connection.cursor() as cursor:
        cursor.execute(
            sql.APPEND_EVENT,
            [ns.pk, follows, txn, type, actor_name, agent_id, subject, dumps(payload), created],
        )
        seq, ord = cursor.fetchone()
    ring_after_commit()
    return Event(
        seq=seq,
        ns=ns,
        ord=ord,
        txn=txn,
        type=type,
        actor=actor_name,
        agent_id=agent_id,
        subject=subject,
        payload=payload,
        created=created,
    )


@contextlib.contextmanager
def in_txn(txn_id: str) -> Iterator[None]:
    """Every event appended inside carries `txn_id` (the events of one /txn request)."""
    token = _txn.set(txn_id)
    try:
        yield
    finally:
        _txn.reset(token)


def current_txn() -> str:
    return _txn.get()


# --- the doorbell -------------------------------------------------------------------------


def doorbell_channel() -> str:
    """The Redis channel that wakes the relay; one per database, so servers sharing a Redis
    (tests, several deployments) wake only their own relay."""
    return f"ma:doorbell:{settings.DATABASES['default']['NAME']}"


def positions_channel() -> str:
    """Where the relay says which position each event it published got (`seq:position`, space
    separated): what a publisher waiting for its event's position listens to."""
    return doorbell_channel().replace("doorbell", "positions", 1)


def announced(type: str) -> bool:
    """Whether the relay says an event's position on the positions channel: only for the agents'
    own types, the ones `POST /events` appends and waits for. Nobody waits for the server's own
    (a record written, a lock taken), and every web process that once answered a `POST /events`
    parses every position said: for a /txn of 50 puts, 8% of the web processes' CPU
    (bench/README.md, round 10)."""
    return not reserved_event_type(type)


def ring_after_commit() -> None:
    """Wake the relay once this transaction has committed (once per transaction)."""
    # Django keeps (savepoint ids, callback, robust) per registered callback.
    if not any(func is ring for _, func, _ in connection.run_on_commit):
        transaction.on_commit(ring)


def ring_after_write() -> None:
    """After appending outside `transaction.atomic` (a statement that committed by itself): ring
    now; inside a transaction: ring when it commits."""
    if connection.in_atomic_block:
        ring_after_commit()
    else:
        ring()


def ring() -> None:
    """Wake the relay now. Never fails: a relay that misses it finds the events by polling."""
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        r.client().publish(doorbell_channel(), "1")


# --- the sequencer ----------------------------------------------------------------------


def sequence(*, wait: bool = True, limit: int = SEQUENCE_BATCH) -> dict[int, int]:
    """Stamp positions on events waiting below the horizon; returns {ns_id: new head}.

    One sequencer at a time (an advisory lock held to commit). With `wait` false, another
    sequencer at work means nothing is done here: it stamps what this one would have.
    The lock is taken in a statement of its own, so the stamping statement's snapshot is
    taken after the previous sequencer committed and sees its positions.
    """
    if connection.in_atomic_block:
        raise RuntimeError("the sequencer runs in a transaction of its own")
    with transaction.atomic(), sql.prepared_cursor() as cursor:  # planned once per connection
        if wait:
            cursor.execute(sql.SEQUENCER_LOCK, [SEQUENCER_LOCK])
        else:
            cursor.execute(sql.SEQUENCER_TRY_LOCK, [SEQUENCER_LOCK])
            if not cursor.fetchone()[0]:
                return {}
        cursor.execute(sql.SEQUENCE, [limit])
        return {ns_id: head for ns_id, head, _ in cursor.fetchall()}


def sequence_waiting() -> None:
    """For a reader: stamp what waits below the horizon (after the sequencer at work, if any, so
    that what committed before this read is in it unless an older transaction is still open)."""
    if connection.in_atomic_block:
        return  # inside someone's transaction: never commit for them
    with sql.prepared_cursor() as cursor:
        cursor.execute(sql.WAITING)
        waiting = cursor.fetchone()[0]
    if waiting:
        sequence()


# --- reading ----------------------------------------------------------------------------


@transaction.atomic
def publish_event(*, ns: Namespace, type: str, payload: dict[str, Any], actor: Actor) -> Event:
    """Append an agent's own event; the server's reserved types are refused."""
    check_event_type(type, custom=True)
    check_json(payload, "payload")
    return append_event(ns=ns, type=type, actor=actor, payload=payload)


def read_events(
    *,
    ns: Namespace,
    after: int = 0,
    types: list[str] | None = None,
    agent_id: str | None = None,
    limit: int = 50,
) -> list[Event]:
    """Events at positions after `after`, oldest first; never skips one (module docstring)."""
    sequence_waiting()
    events = Event.objects.filter(ns=ns, position__gt=after)
    if types:
        events = events.filter(type__in=types)
    if agent_id:
        events = events.filter(agent_id=agent_id)
    return list(events.order_by("position")[:limit])


def head(ns: Namespace) -> int:
    """The position of the namespace's newest event in the log (0 when empty)."""
    sequence_waiting()
    return Namespace.objects.filter(pk=ns.pk).values_list("head", flat=True).first() or 0


def position_of(ns: Namespace, seq: int) -> int | None:
    """The position an appended event got, or None while it waits for the sequencer."""
    return Event.objects.filter(ns=ns, seq=seq).values_list("position", flat=True).first()


def find_position(event: Event) -> Event:
    """`event` with its position if it has one now, sequencing what waits (after any sequencer at
    work). A committed event waits only for transactions older than it to end (milliseconds)."""
    event.position = position_of(event.ns, event.seq)
    if event.position is None:
        sequence_waiting()
        event.position = position_of(event.ns, event.seq)
    return event


def log_status(ns: Namespace) -> dict[str, Any]:
    """How far the log's readers are behind its writers: events committed but not yet sequenced
    (waiting for the horizon or the relay) and the age of the oldest, events of `ns` sequenced but
    not yet published to Redis, and how long the oldest open writing transaction has been open
    (it holds the horizon back)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.LOG_STATUS, [ns.pk])
        waiting, waiting_for, unpublished, oldest = cursor.fetchone()
    stalled = None
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        report = r.client().hget(RELAY_STATUS_KEY, str(ns.pk))
        stalled = json.loads(report) if report else None
    return {
        "waiting": waiting,
        "waiting_seconds": float(waiting_for or 0),
        "unpublished": unpublished or 0,
        "oldest_transaction_seconds": float(oldest or 0),
        "stalled": stalled,  # the relay cannot publish this namespace: {"attempts", "error"}
    }
