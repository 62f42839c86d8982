"""The event log: append in the caller's transaction, read after a cursor.

Ids come from a one-row counter taken with a row lock as the last write of a
transaction: the lock is held until commit, so ids are handed out in commit order and
without gaps (a rolled-back transaction gives its number back). A reader that has seen
id n has therefore seen every id below n — DESIGN.md rule 3 holds by construction, and
a consumer that sees a jump in ids knows it missed something.
Keep appends the last writes of a transaction: anything locked after the counter
would make other writers wait behind it.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.utils.timezone import now

from memory_admin.models import Event, Namespace
from memory_admin.services import Actor
from memory_admin.validation import check_event_type, check_json, dumps

CHANNEL = "ma_events"  # LISTEN/NOTIFY channel that wakes the relay

# The counter row is taken with a row lock (an upsert, so an emptied table starts again at 1).
_APPEND = f"""
WITH n AS (
    INSERT INTO memory_admin_eventcounter AS c (id, last) VALUES (1, 1)
    ON CONFLICT (id) DO UPDATE SET last = c.last + 1
    RETURNING last
)
INSERT INTO memory_admin_event (id, ns_id, type, actor, agent_id, subject, payload, created)
SELECT n.last, %s, %s, %s, %s, %s,
       CASE WHEN %s::text IS NULL THEN %s::jsonb ELSE %s::jsonb || jsonb_build_object(%s::text, n.last) END,
       %s
FROM n
RETURNING id, pg_notify('{CHANNEL}', '')
"""


def append_event(
    *,
    ns: Namespace,
    type: str,
    actor: Actor | str,
    agent_id: str | None = None,
    subject: str = "",
    payload: dict[str, Any] | None = None,
    id_field: str | None = None,
) -> Event:
    """Append one event in the current transaction; `id_field` copies the new id into the payload."""
    if not connection.in_atomic_block:
        raise RuntimeError("append_event must run inside the transaction of the change it records")
    actor_name = actor if isinstance(actor, str) else actor.name
    if agent_id is None:
        agent_id = "" if isinstance(actor, str) else actor.agent_id
    payload = payload or {}
    created = now()
    body = dumps(payload)
    with connection.cursor() as cursor:
        cursor.execute(
            _APPEND,
            [ns.pk, type, actor_name, agent_id, subject, id_field, body, body, id_field, created],
        )
        # The relay is notified at commit; identical notifications of a transaction fold into one.
        event_id = cursor.fetchone()[0]
    if id_field:
        payload = {**payload, id_field: event_id}
    return Event(
        id=event_id,
        ns=ns,
        type=type,
        actor=actor_name,
        agent_id=agent_id,
        subject=subject,
        payload=payload,
        created=created,
    )


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
    """Events with id > `after`, oldest first; never skips one (see the module docstring)."""
    events = Event.objects.filter(ns=ns, id__gt=after)
    if types:
        events = events.filter(type__in=types)
    if agent_id:
        events = events.filter(agent_id=agent_id)
    return list(events.order_by("id")[:limit])


def last_event_id() -> int:
    from memory_admin.models import EventCounter

    return EventCounter.objects.values_list("last", flat=True).filter(pk=1).first() or 0
