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

from memory_admin.models import Event, Fact, Namespace

# The distinct values of an indexed (ns_id, column, ...) column, one index probe per value (a
# "loose index scan"): SELECT DISTINCT read all 1,000,000 rows of a namespace for a menu of ten.
_DISTINCT = """
WITH RECURSIVE v AS (
    (SELECT {col} AS value FROM {table} WHERE ns_id = %(ns)s ORDER BY {col} LIMIT 1)
    UNION ALL
    SELECT (SELECT {col} FROM {table} WHERE ns_id = %(ns)s AND {col} > v.value ORDER BY {col} LIMIT 1)
    FROM v WHERE v.value IS NOT NULL
)
SELECT value FROM v WHERE value IS NOT NULL LIMIT %(limit)s
"""
DISTINCT_SQL = {
    "categories": _DISTINCT.format(table=Fact._meta.db_table, col="category"),  # fact_ns_category_idx
    "types": _DISTINCT.format(table=Event._meta.db_table, col="type"),  # event_ns_type_idx
}


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
    sql, params = rows.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return Tally(max(cap + 1, int(plan[0]["Plan"]["Plan Rows"])), exact=False)
