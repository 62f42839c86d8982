"""Where an event sits in its namespace's log, written once for the console's newer pages
(cascade, consumer groups, time travel, charts).

The number pages and agents see as an event's id is moving from the global `id` to a
per-namespace dense `position`; these helpers are the one place that names the column.
"""

from __future__ import annotations

from django.db.models import QuerySet

from memory_admin.models import Event, Namespace

# The event's number in its namespace's log: `position` once the model has it (stamped after
# commit, null until then), the global `id` before.
FIELD = "position" if any(f.name == "position" for f in Event._meta.get_fields()) else "id"


def log(ns: Namespace) -> QuerySet[Event]:
    """The namespace's log (only events with a position are in it)."""
    events = Event.objects.filter(ns=ns)
    return events.filter(position__isnull=False) if FIELD == "position" else events


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
    return newest_first(log(ns)).values_list(FIELD, flat=True).first() or 0


def numbered(ns: Namespace, numbers: list[int]) -> QuerySet[Event]:
    return log(ns).filter(**{f"{FIELD}__in": numbers})


def at(ns: Namespace, n: int) -> Event | None:
    return log(ns).filter(**{FIELD: n}).first()


def behind(ns: Namespace, n: int, cap: int = 10_000) -> int:
    """How many events follow event `n`, counted up to `cap` (an index range, not a scan)."""
    return after(ns, n).order_by(FIELD)[:cap].count()
