"""Counts and filter menus for the console, each a statement the ORM does not write well.

- `tally`: a count, exact up to COUNT_CAP rows, past it Postgres' estimate (EXPLAIN of the
  same query). The ORM form, `rows.count()`, counted a namespace's million facts on every
  overview load and live push (50-60 ms).
- `distinct_values`: the distinct values of an indexed column, one index probe per value.
  The ORM form, `.values_list(col, flat=True).distinct()`, read every row of the namespace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.db import connection
from django.db.models import QuerySet

from memory_admin import sql
from memory_admin.models import Namespace

DISTINCT_SQL = {"categories": sql.DISTINCT_CATEGORIES, "types": sql.DISTINCT_TYPES}


def distinct_values(ns: Namespace, what: str, limit: int = 200) -> list[str]:
    """The namespace's fact categories or event types, sorted, for the filter menus."""
    with connection.cursor() as cursor:
        cursor.execute(DISTINCT_SQL[what], {"ns": ns.pk, "limit": limit})
        return [row[0] for row in cursor.fetchall()]


# Counted exactly up to this many; past it the overview shows Postgres' estimate, marked as one.
# Counting a namespace's million facts took 50-60 ms of every overview load and live push.
COUNT_CAP = 10_000


@dataclass(frozen=True)
class Tally:
    """A count as the overview shows it: exact, or Postgres' estimate when past COUNT_CAP."""

    value: int
    exact: bool = True

    def __str__(self) -> str:
        if self.exact:
            return f"{self.value:,}"
        for size, unit in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
            if self.value >= size:
                return f"≈{self.value / size:.1f}{unit}".replace(".0", "")
        return f"≈{self.value:,}"

    @property
    def note(self) -> str:
        return f"estimated from Postgres' statistics: more than {COUNT_CAP:,}, the most counted exactly"


def tally(rows: QuerySet) -> Tally:
    """How many `rows`: exact up to COUNT_CAP (one index range of at most that many entries), else
    the planner's estimate for the query (from the column statistics ANALYZE keeps), never below."""
    cap, rows = COUNT_CAP, rows.order_by().values("pk")
    counted = rows[: cap + 1].count()
    if counted <= cap:
        return Tally(counted)
    plan = json.loads(rows.explain(format="json"))
    if isinstance(plan, list):  # Django joins EXPLAIN's rows: one plan comes out unwrapped
        plan = plan[0]
    return Tally(max(cap + 1, int(plan["Plan"]["Plan Rows"])), exact=False)
