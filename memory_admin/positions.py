"""Where an event sits in its namespace's log, written once for the console's newer pages
(cascade, consumer groups, time travel, charts).

The number pages and agents see as an event's id is its `position`: dense and ascending within
its namespace, stamped by the sequencer (services/events.py); an event without one is not in the
log yet.
"""

from __future__ import annotations

from django.db.models import QuerySet

from memory_admin.models import Event, Namespace

FIELD = "position"  # the event's number in its namespace's log


def log(ns: Namespace) -> QuerySet[Event]:
    """The namespace's log (only events with a position are in it)."""
    return Event.objects.filter(ns=ns, position__isnull=False)


def of(event: Event) -> int:
    return getattr(event, FIELD)


def through(ns: Namespace, n: int) -> QuerySet[Event]:
    """The log up to and including event `n`."""
    return log(ns).filter(**{f"{FIELD}__lte": n})


def after(ns: Namespace, n: int) -> QuerySet[Event]:
    return log(ns).filter(**{f"{FIELD}__gt": n})


def newest_first(events: QuerySet[Event]) -> QuerySet[Event]:
    return events.order_by(f"-{FIELD}")


def head(ns: Namespace) -> int:
    """The newest event's number, 0 for an empty log."""
    from memory_admin.services.events import head as log_head

    return log_head(ns)


def numbered(ns: Namespace, numbers: list[int]) -> QuerySet[Event]:
    return log(ns).filter(**{f"{FIELD}__in": numbers})


def at(ns: Namespace, n: int) -> Event | None:
    return log(ns).filter(**{FIELD: n}).first()


def behind(ns: Namespace, n: int, cap: int = 10_000) -> int:
    """How many events follow event `n` (positions are dense: the head tells), up to `cap`."""
    return min(cap, max(0, head(ns) - n))
