"""Every raw SQL statement of the server, in one place.

The ORM writes most queries. The statements here are the ones it cannot say, or says at a cost
the benchmark measured: one round trip where the ORM needs several (a write and its event in
one CTE), a recursive CTE or a LATERAL join, a row lock or an advisory lock, a Postgres function
(`pg_current_xact_id`, `width_bucket`, `ts_rank`), or a hot path where compiling the queryset
on every call cost a measurable share of the web process's CPU (memory_admin/rows.py).

Each statement is a `Statement`: its text (a `str`, passed to `cursor.execute` as it is), the
ORM form it replaces, as the queryset code would be written, and why it is raw. Table and column
names come from the models' metadata: `{Event}` is Event's table, `{Event.position}` the column
of its `position` field. tests/test_sql.py runs each statement and its ORM form on the same
data, and checks that no other module hands SQL text to a cursor.
"""

from __future__ import annotations

import functools
import re

from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.models import Model

from memory_admin.models import (
    LOCK_EVENTS,
    Agent,
    Conflict,
    Event,
    Fact,
    LockFence,
    Namespace,
    Record,
    RecordVersion,
    Sequencer,
    StoreItem,
    Token,
)
from memory_admin.rows import columns
from memory_admin.services import SYSTEM


class _Names:
    """A model in a statement's template: `{Model}` is its table, `{Model.field}` a column."""

    def __init__(self, model: type[Model]) -> None:
        self._model = model

    def __str__(self) -> str:
        return self._model._meta.db_table

    def __getattr__(self, field: str) -> str:
        return self._model._meta.get_field(field).column


_TABLES = (
    Agent,
    Conflict,
    Event,
    Fact,
    LockFence,
    Namespace,
    Record,
    RecordVersion,
    Sequencer,
    StoreItem,
    Token,
)
_MODELS = {model.__name__: _Names(model) for model in _TABLES}


def _text(template: str, **extra: str) -> str:
    """`template` with its models' names filled in, and `extra`'s parts (templates themselves)."""
    return template.format(**_MODELS, **{name: part.format(**_MODELS) for name, part in extra.items()})


_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|\s+|[^'\"\s-]+|-")


def _compact(text: str) -> str:
    """`text` without its `--` comments, each run of white space one space (quoted text as it
    is): what Postgres reads is the same. psycopg parses a statement's placeholders again on every
    call when its text is over 4,096 bytes (MAX_CACHED_STATEMENT_LENGTH); the write-many
    statements were, as written, and this kept 5% of the web process's CPU on a /txn of 50 puts."""
    parts = [" "]
    for token in _TOKENS.findall(text):
        if token.startswith("--") or token.isspace():
            if parts[-1] != " ":
                parts.append(" ")
        else:
            parts.append(token)
    return "".join(parts).strip()


STATEMENTS: dict[str, Statement] = {}


class Statement(str):
    """A raw statement: the text itself, `orm` (the queryset code it replaces) and `why` (why
    it is raw). Its docstring says both."""

    orm: str
    why: str

    def __new__(cls, template: str, *, orm: str, why: str, **extra: str) -> Statement:
        self = super().__new__(cls, _compact(_text(template, **extra)))
        self.orm = orm
        self.why = why
        self.__doc__ = f"Replaces: {orm}\nRaw because: {why}"
        return self


def _statement(name: str, template: str, *, orm: str, why: str, **extra: str) -> Statement:
    STATEMENTS[name] = statement = Statement(template, orm=orm, why=why, **extra)
    return statement


# --- connections ------------------------------------------------------------------------


class _Prepared(ServerBindingCursor):
    """Binds parameters on the server and has Postgres prepare each statement once per
    connection (pooled connections keep them): the hot statements took longer to parse and plan
    than to run (the record write, EXPLAIN ANALYZE: 0.3-0.5 ms planning, 0.2-0.4 ms execution)."""

    logged = False

    def execute(self, query, params=None, **kwargs):
        super().execute(query, params, prepare=True, **kwargs)
        if self.logged:  # a prepared run leaves unset the query that Django's query log reads
            self._query = self._convert_query(query, params)
        return self


# Statements a pooled connection keeps prepared (psycopg evicts the oldest past it): WRITE_RECORD
# takes one per set of parameter types (an expected version or none), write_records two, the
# lock statements one or two each.
_PREPARED_MAX = 32


def prepared_cursor():
    """A Django cursor (query logging, error wrapping) over a _Prepared cursor. Its statement's
    result columns are named, not `*`, so a column added later cannot change a prepared result.

    Django turns psycopg's preparing off (prepare_threshold None, for PgBouncer's transaction
    mode); the service pools its own connections, so a connection prepares what asks for it
    here. Django's own cursors bind on the client and never prepare."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        pg = connection.connection
        if pg.prepare_threshold is None:
            pg.prepare_threshold, pg.prepared_max = 2**31 - 1, _PREPARED_MAX  # only on request
        raw = _Prepared(pg)
    if connection.queries_logged:
        raw.logged = True
        return connection.make_debug_cursor(raw)
    return connection.make_cursor(raw)


PING = _statement(
    "PING",
    "SELECT 1",
    orm="connection.ensure_connection()",
    why="ensure_connection() trusts a connection it already holds; a probe must reach the server",
)


# --- the event log (services/events.py, relay.py) ---------------------------------------

# An xid8 as a bigint: xid8 has no cast to numbers; the text form is its decimal value.
XID = "pg_current_xact_id()::text::bigint"

# The horizon: the oldest transaction of this database still running, from the statement's own
# snapshot (or, with none running, the first xid not yet completed). Transaction ids are
# cluster-wide, so `pg_snapshot_xmin` alone would wait for every other database's transactions
# too; only a running xid seen in pg_stat_activity in another named database is left out (it
# cannot write our events). Anything not proven elsewhere counts, so the horizon never passes a
# transaction that could still append.
HORIZON = _compact("""(SELECT LEAST(
    pg_snapshot_xmax(s.snap)::text::bigint,
    (SELECT min(x::text::bigint) FROM pg_snapshot_xip(s.snap) x
     WHERE mod(x::text::bigint, 4294967296) NOT IN (
         SELECT a.backend_xid::text::bigint FROM pg_stat_activity a
         WHERE a.backend_xid IS NOT NULL AND a.datname IS NOT NULL AND a.datname <> current_database())))
  FROM (SELECT pg_current_snapshot() AS snap) s)""")

APPEND_EVENT = _statement(
    "APPEND_EVENT",
    """
INSERT INTO {Event} ({Event.ns}, {Event.ord}, {Event.txn}, {Event.type}, {Event.actor}, {Event.agent_id},
                     {Event.subject}, {Event.payload}, {Event.created})
VALUES (%s, GREATEST({xid}, %s), %s, %s, %s, %s, %s, %s::jsonb, %s)
RETURNING {Event.seq}, {Event.ord}
""",
    xid=XID,
    orm="Event.objects.create(ns=ns, ord=Greatest(XidAsBigint(), follows), txn=txn, type=type, ...)",
    why="`ord` is the writer's own xid8 (pg_current_xact_id()), a Postgres function the ORM has no "
    "expression for; the row comes back with its seq and ord in the same round trip",
)

SEQUENCER_LOCK = _statement(
    "SEQUENCER_LOCK",
    "SELECT pg_advisory_xact_lock(%s)",
    orm="none: the ORM has no advisory locks",
    why="an advisory lock, held to the end of the transaction, is what makes one sequencer at a time",
)
SEQUENCER_TRY_LOCK = _statement(
    "SEQUENCER_TRY_LOCK",
    "SELECT pg_try_advisory_xact_lock(%s)",
    orm="none: the ORM has no advisory locks",
    why="the advisory lock, without waiting for the sequencer at work",
)

# Where the sequencer's scan starts (models.Sequencer): no row (a new or flushed database) is 0.
FLOOR = _text("(SELECT COALESCE(max({Sequencer.floor}), 0) FROM {Sequencer})")

# Stamps positions on the events below the horizon that have none: the first `limit` of them in
# (ord, seq) order, each namespace's numbered on from its head, and moves the floor to the
# greatest `ord` stamped (what waits after them has an `ord` at least that). Returns each
# namespace touched with its new head.
SEQUENCE = _statement(
    "SEQUENCE",
    """
WITH todo AS (
    SELECT {Event.seq}, {Event.ns}, {Event.ord},
           row_number() OVER (PARTITION BY {Event.ns} ORDER BY {Event.ord}, {Event.seq}) AS n
    FROM (SELECT {Event.seq}, {Event.ns}, {Event.ord} FROM {Event}
          WHERE {Event.position} IS NULL AND {Event.ord} >= {floor} AND {Event.ord} < {horizon}
          ORDER BY {Event.ord}, {Event.seq} LIMIT %s) waiting
), counts AS (
    SELECT {Event.ns}, count(*) AS n FROM todo GROUP BY {Event.ns}
), heads AS (
    UPDATE {Namespace} ns SET {Namespace.head} = ns.{Namespace.head} + counts.n
    FROM counts WHERE ns.{Namespace.id} = counts.{Event.ns}
    RETURNING ns.{Namespace.id}, ns.{Namespace.head} AS head, ns.{Namespace.head} - counts.n AS base
), stamped AS (
    UPDATE {Event} e SET {Event.position} = heads.base + todo.n
    FROM todo JOIN heads ON heads.{Namespace.id} = todo.{Event.ns}
    WHERE e.{Event.seq} = todo.{Event.seq}
    RETURNING e.{Event.ns}
), floor AS (
    INSERT INTO {Sequencer} ({Sequencer.id}, {Sequencer.floor})
    SELECT 1, max({Event.ord}) FROM todo HAVING count(*) > 0
    ON CONFLICT ({Sequencer.id}) DO UPDATE SET {Sequencer.floor} = EXCLUDED.{Sequencer.floor}
)
SELECT heads.{Namespace.id}, heads.head, (SELECT count(*) FROM stamped) FROM heads
""",
    horizon=HORIZON,
    floor=FLOOR,
    orm="waiting = Event.objects.filter(position=None, ord__gte=Floor(), ord__lt=Horizon())"
    ".order_by('ord', 'seq')[:limit]; "
    "then per namespace: Namespace.objects.filter(pk=ns).update(head=F('head') + n) and "
    "Event.objects.bulk_update(events with position=base + i, ['position']); "
    "Sequencer.objects.update_or_create(pk=1, defaults={'floor': max ord})",
    why="the horizon is read from the statement's own snapshot (pg_current_snapshot): reading it in "
    "one statement and stamping in the next would let a transaction end in between; and one "
    "statement, not a round trip per namespace plus a bulk update",
)

WAITING = _statement(
    "WAITING",
    "SELECT EXISTS (SELECT 1 FROM {Event} "
    "WHERE {Event.position} IS NULL AND {Event.ord} >= {floor} AND {Event.ord} < {horizon})",
    horizon=HORIZON,
    floor=FLOOR,
    orm="Event.objects.filter(position=None, ord__gte=Floor(), ord__lt=Horizon()).exists()",
    why="the horizon is a snapshot function (pg_current_snapshot, pg_snapshot_xip) the ORM cannot say",
)

LOG_STATUS = _statement(
    "LOG_STATUS",
    """
SELECT (SELECT count(*) FROM {Event} WHERE {Event.position} IS NULL),
       (SELECT extract(epoch FROM now() - min({Event.created})) FROM {Event} WHERE {Event.position} IS NULL),
       (SELECT {Namespace.head} - {Namespace.published} FROM {Namespace} WHERE {Namespace.id} = %s),
       (SELECT extract(epoch FROM now() - xact_start) FROM pg_stat_activity
        WHERE datname = current_database() AND backend_xid IS NOT NULL ORDER BY xact_start LIMIT 1)
""",
    orm="Event.objects.filter(position=None).aggregate(n=Count('pk'), oldest=Min('created')); "
    "Namespace.objects.filter(pk=ns).values_list(F('head') - F('published')); "
    "and pg_stat_activity, which has no model",
    why="pg_stat_activity has no model; the four figures in one round trip, not three",
)


# --- facts (services/facts.py) ----------------------------------------------------------

STORE_FACT = _statement(
    "STORE_FACT",
    """
WITH f AS (
    INSERT INTO {Fact} ({Fact.ns}, {Fact.agent}, {Fact.fact}, {Fact.category}, {Fact.metadata},
                        {Fact.created})
    VALUES (%(ns)s, %(agent)s, %(fact)s, %(category)s, %(metadata)s::jsonb, %(stamp)s)
    RETURNING {Fact.id}
), e AS (
    INSERT INTO {Event} ({Event.ns}, {Event.ord}, {Event.txn}, {Event.type}, {Event.actor}, {Event.agent_id},
                         {Event.subject}, {Event.payload}, {Event.created})
    SELECT %(ns)s, {xid}, %(txn)s, 'fact.stored', %(actor)s, %(agent_id)s,
           f.{Fact.id}::text, jsonb_build_object('fact_id', f.{Fact.id}, 'category', %(category)s::text),
           %(stamp)s
    FROM f
)
SELECT {Fact.id} FROM f
""",
    xid=XID,
    orm="with transaction.atomic(): fact = Fact.objects.create(ns=ns, agent=agent, fact=fact, ...); "
    "append_event(ns=ns, type='fact.stored', subject=str(fact.pk), payload={'fact_id': fact.pk, ...})",
    why="the fact and its event in one statement: one round trip and one commit, no BEGIN/COMMIT "
    "(the ORM form is four round trips)",
)


# --- tokens (services/tokens.py) --------------------------------------------------------

TOKEN_BY_DIGEST = _statement(
    "TOKEN_BY_DIGEST",
    "SELECT {token}, {agent}, {ns} FROM {Token} t "
    "JOIN {Agent} a ON a.{Agent.id} = t.{Token.agent} "
    "JOIN {Namespace} n ON n.{Namespace.id} = a.{Agent.ns} "
    "WHERE t.{Token.digest} = %s AND t.{Token.revoked} IS NULL",
    token=columns(Token, "t"),
    agent=columns(Agent, "a"),
    ns=columns(Namespace, "n"),
    orm="Token.objects.select_related('agent__ns').filter(digest=digest, revoked=None).first()",
    why="every API request whose token is not cached runs it; compiling the queryset each time "
    "cost a measurable share of the web process's CPU (memory_admin/rows.py)",
)


# --- counts (services/counts.py) --------------------------------------------------------

# The distinct values of an indexed (ns_id, column, ...) column, one index probe per value (a
# "loose index scan"): SELECT DISTINCT read all 1,000,000 rows of a namespace for a menu of ten.
_DISTINCT = """
WITH RECURSIVE v AS (
    (SELECT {col} AS value FROM {table} WHERE {ns} = %(ns)s{where} ORDER BY {col} LIMIT 1)
    UNION ALL
    SELECT (SELECT {col} FROM {table} WHERE {ns} = %(ns)s{where} AND {col} > v.value ORDER BY {col} LIMIT 1)
    FROM v WHERE v.value IS NOT NULL
)
SELECT value FROM v WHERE value IS NOT NULL LIMIT %(limit)s
"""
_LOOSE_SCAN = (
    "a recursive CTE (a loose index scan, one index probe per value); the ORM's DISTINCT reads every row"
)
DISTINCT_CATEGORIES = _statement(  # fact_ns_category_idx
    "DISTINCT_CATEGORIES",
    _DISTINCT,
    table="{Fact}",
    col="{Fact.category}",
    ns="{Fact.ns}",
    where="",
    orm="Fact.objects.filter(ns=ns).values_list('category', flat=True).distinct()"
    ".order_by('category')[:limit]",
    why=_LOOSE_SCAN,
)
DISTINCT_TYPES = _statement(  # event_ns_type_idx
    "DISTINCT_TYPES",
    _DISTINCT,
    table="{Event}",
    col="{Event.type}",
    ns="{Event.ns}",
    where=" AND {Event.position} IS NOT NULL",  # the index's condition (models.POSITIONED)
    orm="Event.objects.filter(ns=ns, position__isnull=False).values_list('type', flat=True).distinct()"
    ".order_by('type')[:limit]",
    why=_LOOSE_SCAN,
)


# --- activity charts (services/activity.py) ---------------------------------------------

# A bisection of positions per moment, all of them in one statement (one round trip, not twenty
# per moment): each step probes the first event at or after the middle of [lo, hi).
BISECT = _statement(
    "BISECT",
    """
WITH RECURSIVE b(i, lo, hi) AS (
    SELECT i, 1::bigint, %(end)s::bigint FROM generate_series(1, cardinality(%(moments)s::timestamptz[])) i
  UNION ALL
    SELECT b.i,
           CASE WHEN p.{Event.created} < (%(moments)s::timestamptz[])[b.i]
                THEN p.{Event.position} + 1 ELSE b.lo END,
           CASE WHEN p.{Event.created} IS NULL OR p.{Event.created} >= (%(moments)s::timestamptz[])[b.i]
                THEN (b.lo + b.hi) / 2 ELSE b.hi END
    FROM b LEFT JOIN LATERAL (
        SELECT {Event.position}, {Event.created} FROM {Event}
        WHERE {Event.ns} = %(ns)s AND {Event.position} >= (b.lo + b.hi) / 2
        ORDER BY {Event.position} LIMIT 1
    ) p ON true
    WHERE b.lo < b.hi
)
SELECT i, lo FROM b WHERE lo >= hi
""",
    orm="for each moment: positions.log(ns).filter(created__gte=moment).order_by('position')"
    ".values_list('position', flat=True).first()",
    why="the log has no index on time: that queryset reads every event after the moment; the "
    "bisection is a recursive CTE with a LATERAL probe, all moments in one round trip",
)

# A bucket a minute is a range of positions (`edges`, from the bisection): the namespace's events
# of a minute are the width of its range; its writes, conflicts and lock acquisitions are counted
# in event_ns_type_idx alone (an index-only scan over those types, not every event of the hour).
TYPED_COUNTS = _statement(
    "TYPED_COUNTS",
    """
SELECT {Event.type}, width_bucket({Event.position}, %(edges)s::bigint[]), count(*)
FROM {Event}
WHERE {Event.ns} = %(ns)s AND {Event.type} = ANY(%(types)s)
  AND {Event.position} >= %(lo)s AND {Event.position} < %(hi)s
GROUP BY 1, 2
""",
    orm="Event.objects.filter(ns=ns, type__in=types, position__gte=lo, position__lt=hi)"
    ".values('type', bucket=Func(F('position'), Value(edges), function='width_bucket'))"
    ".annotate(n=Count('*'))",
    why="the ORM form needs a Func for width_bucket and an ArrayField cast for its edges; the "
    "statement reads the same and runs on every chart refresh of the overview",
)
# One agent's: its events in event_ns_agent_idx, a minute's range at a time.
AGENT_COUNTS = _statement(
    "AGENT_COUNTS",
    """
SELECT width_bucket({Event.position}, %(edges)s::bigint[]), count(*),
       count(*) FILTER (WHERE {Event.type} = 'record.written'),
       count(*) FILTER (WHERE {Event.type} = 'conflict.opened'),
       count(*) FILTER (WHERE {Event.type} = 'lock.acquired')
FROM {Event}
WHERE {Event.ns} = %(ns)s AND {Event.agent_id} = %(agent)s
  AND {Event.position} >= %(lo)s AND {Event.position} < %(hi)s
GROUP BY 1
""",
    orm="Event.objects.filter(ns=ns, agent_id=agent, position__gte=lo, position__lt=hi)"
    ".values(bucket=Func(F('position'), Value(edges), function='width_bucket'))"
    ".annotate(n=Count('*'), writes=Count('*', filter=Q(type='record.written')), ...)",
    why="as TYPED_COUNTS: width_bucket over an array parameter",
)


# --- time travel (services/history.py) --------------------------------------------------

# The newest version of each record written by `at`, a page of records by key: one probe of the
# (record, version) index per record, newest version first.
RECORDS_AT = _statement(
    "RECORDS_AT",
    """
SELECT r.{Record.key}, v.{RecordVersion.version}, v.{RecordVersion.value}, v.{RecordVersion.updated_by},
       v.{RecordVersion.updated}, r.{Record.version}
FROM {Record} r
CROSS JOIN LATERAL (
    SELECT {RecordVersion.version}, {RecordVersion.value}, {RecordVersion.deleted},
           {RecordVersion.updated_by}, {RecordVersion.updated}
    FROM {RecordVersion}
    WHERE {RecordVersion.record} = r.{Record.id} AND {RecordVersion.updated} <= %(at)s
    ORDER BY {RecordVersion.version} DESC LIMIT 1
) v
WHERE r.{Record.ns} = %(ns)s AND r.{Record.created} <= %(at)s AND r.{Record.key} > %(after)s
  AND NOT v.{RecordVersion.deleted}
ORDER BY r.{Record.key}
LIMIT %(limit)s
""",
    orm="RecordVersion.objects.filter(record__ns=ns, record__created__lte=at, record__key__gt=after, "
    "updated__lte=at).order_by('record__key', '-version').distinct('record__key') "
    "(then drop the deletes, and take `limit`)",
    why="a LATERAL join: one index probe per record; DISTINCT ON reads every version written by "
    "`at`, and the deletes must be dropped after it, so the page cannot be cut in SQL",
)

_STATUS_TYPES = "('status.changed', 'agent.stale')"
# The last status event of each agent up to event n: one backward probe of the
# (ns, agent_id, position) index per agent, a page of agents by name.
STATUS_AT = _statement(
    "STATUS_AT",
    """
SELECT a.{Agent.name}, e.{Event.type}, e.{Event.payload}, e.{Event.created}, e.{Event.position}
FROM {Agent} a
CROSS JOIN LATERAL (
    SELECT {Event.type}, {Event.payload}, {Event.created}, {Event.position} FROM {Event}
    WHERE {Event.ns} = a.{Agent.ns} AND {Event.agent_id} = a.{Agent.name} AND {Event.position} <= %(n)s
      AND {Event.type} IN {types}
    ORDER BY {Event.position} DESC LIMIT 1
) e
WHERE a.{Agent.ns} = %(ns)s AND a.{Agent.name} > %(after)s
ORDER BY a.{Agent.name}
LIMIT %(limit)s
""",
    types=_STATUS_TYPES,
    orm="Agent.objects.filter(ns=ns, name__gt=after).annotate(last=Subquery(Event.objects.filter("
    "ns=ns, agent_id=OuterRef('name'), position__lte=n, type__in=types).order_by('-position')"
    ".values('position')[:1])).filter(last__isnull=False), then the events numbered `last`",
    why="a LATERAL join returns the event's columns from one probe; the ORM needs a subquery per "
    "column or a second query for the events",
)

# Each lock's last lock event up to event n (one backward probe of the partial index
# event_ns_lock_idx per lock, which repeats its condition so the planner can use it); the locks
# whose last one is an acquire were held then. A page of locks by resource; every lock that was
# ever taken has its fence row.
LOCKS_AT = _statement(
    "LOCKS_AT",
    """
SELECT f.{LockFence.resource}, e.{Event.actor}, e.{Event.payload}, e.{Event.created}, e.{Event.position}
FROM {LockFence} f
CROSS JOIN LATERAL (
    SELECT {Event.type}, {Event.actor}, {Event.payload}, {Event.created}, {Event.position} FROM {Event}
    WHERE {Event.ns} = f.{LockFence.ns} AND {Event.subject} = f.{LockFence.resource}
      AND {Event.position} <= %(n)s
      AND {Event.type} IN ({types})
    ORDER BY {Event.position} DESC LIMIT 1
) e
WHERE f.{LockFence.ns} = %(ns)s AND f.{LockFence.resource} > %(after)s AND e.{Event.type} = 'lock.acquired'
ORDER BY f.{LockFence.resource}
LIMIT %(limit)s
""",
    types=", ".join(f"'{t}'" for t in LOCK_EVENTS),
    orm="LockFence.objects.filter(ns=ns, resource__gt=after).annotate(last=Subquery(Event.objects"
    ".filter(ns=ns, subject=OuterRef('resource'), position__lte=n, type__in=LOCK_EVENTS)"
    ".order_by('-position').values('position')[:1])), then the events numbered `last` that are "
    "acquires",
    why="as STATUS_AT: a LATERAL join, and the page is cut after the acquires are kept",
)


# --- the LangGraph store (services/store.py) --------------------------------------------


@functools.cache
def store_upsert(index_sql: str) -> Statement:
    """The item's row, created or updated, its search text indexed by the ranking's
    `index_sql` (an expression of one parameter)."""
    return Statement(
        """
INSERT INTO {StoreItem} AS s ({StoreItem.ns}, {StoreItem.rkey}, {StoreItem.path}, {StoreItem.key},
    {StoreItem.created}, {StoreItem.ttl}, {StoreItem.expires}, {StoreItem.search})
VALUES (%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN {index} END)
ON CONFLICT ({StoreItem.ns}, {StoreItem.rkey}) DO UPDATE SET
    {StoreItem.path} = EXCLUDED.{StoreItem.path}, {StoreItem.key} = EXCLUDED.{StoreItem.key},
    {StoreItem.ttl} = EXCLUDED.{StoreItem.ttl}, {StoreItem.expires} = EXCLUDED.{StoreItem.expires},
    {StoreItem.search} = EXCLUDED.{StoreItem.search},
    -- an item that had expired is gone to LangGraph: putting it again creates it anew
    {StoreItem.created} = CASE WHEN s.{StoreItem.expires} <= EXCLUDED.{StoreItem.created}
                          THEN EXCLUDED.{StoreItem.created} ELSE s.{StoreItem.created} END
""",
        index=index_sql,
        orm="StoreItem.objects.update_or_create(ns=ns, rkey=rkey, defaults={...}, create_defaults={...})",
        why="one statement, race-free (ON CONFLICT): update_or_create is a SELECT ... FOR UPDATE then "
        "an INSERT or UPDATE, and two first puts of one item race to the unique index; the search "
        "column is the ranking's SQL expression",
    )


STORE_UPSERT = STATEMENTS["STORE_UPSERT"] = store_upsert("to_tsvector('english', %s)")

# The live items of a namespace: their rows joined to their records, not deleted, not expired.
_STORE_LIVE = _text(
    """
FROM {StoreItem} s
JOIN {Record} r ON r.{Record.ns} = s.{StoreItem.ns} AND r.{Record.key} = s.{StoreItem.rkey}
WHERE s.{StoreItem.ns} = %s AND NOT r.{Record.deleted}
  AND (s.{StoreItem.expires} IS NULL OR s.{StoreItem.expires} > %s)
"""
)
_STORE_COLUMNS = _text(
    "s.{StoreItem.path}, s.{StoreItem.key}, r.{Record.value}, s.{StoreItem.created}, r.{Record.updated}, "
    "s.{StoreItem.rkey}, s.{StoreItem.ttl}"
)
_STORE_WHY = (
    "the join is on two columns with no foreign key between them (an item's row and its record "
    "share (ns, key)); the ORM can only say it with a subquery per column"
)

STORE_GET = _statement(
    "STORE_GET",
    "SELECT {columns} {live} AND s.{StoreItem.rkey} = %s",
    columns=_STORE_COLUMNS,
    live=_STORE_LIVE,
    orm="StoreItem.objects.filter(ns=ns, rkey=rkey).filter(Q(expires=None) | Q(expires__gt=stamp))"
    ".annotate(value=Subquery(records.values('value')), updated=Subquery(records.values('updated')))"
    ".exclude(Exists(records.filter(deleted=True))) with records = Record.objects.filter(ns=ns, "
    "key=OuterRef('rkey'))",
    why=_STORE_WHY,
)


@functools.cache
def store_search(*, prefix: bool, where: str, score: str | None) -> Statement:
    """Live items, a page of them (LIMIT and OFFSET parameters last): under a path prefix (its
    length and labels as parameters) if `prefix`, matching `where` (conditions on `r.value`
    from services/store.py's filter), newest first, or best first by `score` (the ranking's SQL
    expression, its query the first parameter)."""
    sql = f"SELECT {_STORE_COLUMNS}, {score or 'NULL::real'} AS score {_STORE_LIVE}"
    if prefix:
        sql += _text(" AND s.{StoreItem.path}[1:%s] = %s::text[]")
    sql += where
    order = "score DESC NULLS LAST, r.{Record.updated} DESC, s.{StoreItem.rkey}" if score else None
    sql += _text(" ORDER BY " + (order or "r.{Record.updated} DESC, s.{StoreItem.rkey}"))
    return Statement(
        sql.replace("{", "{{").replace("}", "}}") + " LIMIT %s OFFSET %s",
        orm="StoreItem.objects.filter(...live items as STORE_GET...).filter(path__0_<n>=prefix, "
        "**value filters as KeyTransform lookups).annotate(score=...).order_by(...)[offset:offset + limit]",
        why=_STORE_WHY + "; LangGraph's filters compare JSON values of like type (jsonb_typeof)",
    )


STATEMENTS["STORE_SEARCH"] = store_search(prefix=True, where="", score=None)


@functools.cache
def store_namespaces(*, where: str, depth: bool) -> Statement:
    """The distinct paths of live items (cut at a depth, its parameter first, if `depth`),
    matching `where` (conditions on `s.path`), by path in byte order, a page of them."""
    cut = _text("s.{StoreItem.path}[1:%s]" if depth else "s.{StoreItem.path}")
    sql = f"SELECT p FROM (SELECT DISTINCT {cut} AS p {_STORE_LIVE}{where}) t"
    sql += ' ORDER BY p COLLATE "C" LIMIT %s OFFSET %s'
    return Statement(
        sql.replace("{", "{{").replace("}", "}}"),
        orm="StoreItem.objects.filter(...live items as STORE_GET...).values_list(Slice('path'), "
        "flat=True).distinct().order_by(Collate('path', 'C'))[offset:offset + limit]",
        why=_STORE_WHY + "; paths sorted in byte order, as LangGraph's own store lists them",
    )


STATEMENTS["STORE_NAMESPACES"] = store_namespaces(where="", depth=True)


# Conditions of store_namespaces' `where`: the path has at least n labels (a parameter); label i
# (counted from 1) is a label; label n from the end (counted from 0) is a label.
STORE_PATH_LONGER = _text(" AND cardinality(s.{StoreItem.path}) >= %s")
STORE_LABEL_FROM_START = _text(" AND s.{StoreItem.path}[%s] = %s")
STORE_LABEL_FROM_END = _text(" AND s.{StoreItem.path}[cardinality(s.{StoreItem.path}) - %s] = %s")


def store_value_compare(op: str) -> str:
    """A condition of store_search's `where`: the item's value at a field (a parameter) compared
    by `op` (=, <>, <, <=, >, >=) to a JSON operand (a parameter; for an order, field and operand
    again: orders compare like with like, numbers as numbers, strings as strings)."""
    value = _text("r.{Record.value} -> %s")
    if op == "=":
        return f" AND {value} = %s::jsonb"
    if op == "<>":
        return f" AND ({value}) IS DISTINCT FROM %s::jsonb"
    assert op in ("<", "<=", ">", ">="), op
    return f" AND jsonb_typeof({value}) = jsonb_typeof(%s::jsonb) AND {value} {op} %s::jsonb"


# --- records (services/records.py) ------------------------------------------------------

GET_RECORD = _statement(
    "GET_RECORD",
    "SELECT {record} FROM {Record} r "
    "WHERE r.{Record.ns} = %s AND r.{Record.key} = %s AND NOT r.{Record.deleted}",
    record=columns(Record, "r"),
    orm="Record.objects.filter(ns=ns, key=key, deleted=False).first()",
    why="the most frequent agent call: compiling the queryset each time cost a measurable share of "
    "the web process's CPU (memory_admin/rows.py)",
)

# The history row of each record a write statement wrote (`w`): a version, never a delete.
_HISTORY = """
    INSERT INTO {RecordVersion} ({RecordVersion.record}, {RecordVersion.version}, {RecordVersion.value},
                                 {RecordVersion.deleted}, {RecordVersion.updated_by}, {RecordVersion.updated})
    SELECT {Record.id}, {Record.version}, {Record.value}, false, {Record.updated_by}, {Record.updated} FROM w
"""

# The rest of a write, after `w` (the record row written, with `is_new`): its history row, the
# `record.written` event and the writer's open conflicts on the key closed as superseded, with a
# `conflict.resolved` event each; it returns the record, written = true and created. When it
# wrote nothing it returns the record as it stands with written = false (or no row if absent).
# The event's log order follows the key's last one (services/events.py: `ord`).
_WRITE_REST = (
    """
, v AS ("""
    + _HISTORY
    + """), c AS (
    UPDATE {Conflict} SET {Conflict.status} = 'resolved', {Conflict.resolution} = 'superseded',
        {Conflict.resolved_by} = %(actor)s, {Conflict.resolved} = %(stamp)s
    WHERE {Conflict.ns} = %(ns)s AND {Conflict.key} = %(key)s AND {Conflict.actor} = %(actor)s
      AND {Conflict.status} = 'open' AND EXISTS (SELECT 1 FROM w)
    RETURNING {Conflict.id}
), e AS (
    INSERT INTO {Event} ({event_columns})
    SELECT w.{Record.ns}, w.{Record.ord}, %(txn)s, 'record.written', %(actor)s, %(agent_id)s, w.{Record.key},
           jsonb_build_object('key', w.{Record.key}, 'version', w.{Record.version}, 'created', w.is_new),
           %(stamp)s
    FROM w
    UNION ALL
    SELECT w.{Record.ns}, w.{Record.ord}, %(txn)s, 'conflict.resolved', %(actor)s, %(agent_id)s,
           w.{Record.key},
           jsonb_build_object('conflict_id', c.{Conflict.id}, 'key', w.{Record.key},
                              'resolution', 'superseded', 'version', w.{Record.version}), %(stamp)s
    FROM w, c
)
SELECT {written}, true, w.is_new FROM w
UNION ALL
SELECT {record}, false, false FROM {Record} r
WHERE r.{Record.ns} = %(ns)s AND r.{Record.key} = %(key)s AND NOT EXISTS (SELECT 1 FROM w)
"""
)
EVENT_COLUMNS = (
    "{Event.ns}, {Event.ord}, {Event.txn}, {Event.type}, {Event.actor}, {Event.agent_id}, "
    "{Event.subject}, {Event.payload}, {Event.created}"
)

WRITE_RECORD = _statement(
    "WRITE_RECORD",
    """
WITH w AS (
    INSERT INTO {Record} AS rec ({Record.ns}, {Record.key}, {Record.value}, {Record.version},
        {Record.deleted}, {Record.updated_by}, {Record.updated}, {Record.created}, {Record.ord})
    -- typed as the columns they fill: a prepared statement types each parameter once
    SELECT %(ns)s::bigint, %(key)s::varchar, %(value)s::jsonb, 1, false, %(actor)s::varchar,
           %(stamp)s::timestamptz, %(stamp)s::timestamptz, {xid}
    -- over version n, only a record that exists: a key never written is not created
    WHERE %(expected)s::bigint IS NULL OR %(expected)s::bigint = 0
       OR EXISTS (SELECT FROM {Record} WHERE {Record.ns} = %(ns)s AND {Record.key} = %(key)s)
    ON CONFLICT ({Record.ns}, {Record.key}) DO UPDATE SET
        {Record.value} = EXCLUDED.{Record.value}, {Record.version} = rec.{Record.version} + 1,
        {Record.deleted} = false, {Record.updated_by} = EXCLUDED.{Record.updated_by},
        {Record.updated} = EXCLUDED.{Record.updated}, {Record.ord} = GREATEST(rec.{Record.ord}, {xid}),
        -- a tombstone comes back to life as created: its `created` is the new life's
        {Record.created} = CASE WHEN rec.{Record.deleted} THEN EXCLUDED.{Record.created}
                           ELSE rec.{Record.created} END
    -- unconditional (NULL); create only (0): a tombstone; over version n: that live version
    WHERE %(expected)s::bigint IS NULL OR (%(expected)s::bigint = 0 AND rec.{Record.deleted})
       OR (rec.{Record.version} = %(expected)s::bigint AND NOT rec.{Record.deleted})
    RETURNING {returning}, (rec.xmax = 0 OR rec.{Record.created} = %(stamp)s) AS is_new
)"""
    + _WRITE_REST,
    returning=columns(Record, "rec"),
    xid=XID,
    event_columns=EVENT_COLUMNS,
    written=columns(Record, "w"),
    record=columns(Record, "r"),
    orm="with transaction.atomic(): record = Record.objects.select_for_update().filter(ns=ns, key=key)"
    ".first(); if it matches expected_version (None: any, 0: absent or deleted, n: live version n): "
    "record.version += 1 ... record.save() (or Record.objects.create(...)); "
    "RecordVersion.objects.create(...); conflicts.close_superseded(...); append_event(...)",
    why="the record, its version row, its event and the writer's superseded conflicts in one "
    "statement: outside a transaction it commits by itself in one round trip (the ORM form is "
    "seven or more, with BEGIN and COMMIT)",
)

# The writer's one open conflict on the key: created, or refreshed in place (conflict_one_open_uniq).
KEEP_CONFLICT = _statement(
    "KEEP_CONFLICT",
    """
INSERT INTO {Conflict} AS c (
    {Conflict.ns}, {Conflict.key}, {Conflict.agent}, {Conflict.actor}, {Conflict.expected_version},
    {Conflict.current_version}, {Conflict.proposed_value}, "{Conflict.delete}", "{Conflict.group}",
    {Conflict.status}, {Conflict.resolution}, {Conflict.resolved_by}, {Conflict.resolved}, {Conflict.created}
)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, 'open', '', '', NULL, %s)
ON CONFLICT ({Conflict.ns}, {Conflict.key}, {Conflict.actor}) WHERE {Conflict.status} = 'open' DO UPDATE SET
    {Conflict.agent} = EXCLUDED.{Conflict.agent},
    {Conflict.expected_version} = EXCLUDED.{Conflict.expected_version},
    {Conflict.current_version} = EXCLUDED.{Conflict.current_version},
    {Conflict.proposed_value} = EXCLUDED.{Conflict.proposed_value},
    "{Conflict.delete}" = EXCLUDED."{Conflict.delete}", "{Conflict.group}" = EXCLUDED."{Conflict.group}"
RETURNING {Conflict.id}, {Conflict.created}, xmax = 0
""",
    orm="Conflict.objects.update_or_create(ns=ns, key=key, actor=actor, status='open', defaults={...})",
    why="race-free on the partial unique index conflict_one_open_uniq (ON CONFLICT ... WHERE), which "
    "neither update_or_create (SELECT, then INSERT) nor bulk_create(update_conflicts=True) can name",
)

# The fence row share-locked to commit: a new acquire (which updates it) orders after the write.
FENCE_FOR_SHARE = _statement(
    "FENCE_FOR_SHARE",
    "SELECT * FROM {LockFence} WHERE {LockFence.ns} = %s AND {LockFence.resource} = %s FOR SHARE",
    orm="LockFence.objects.select_for_update().filter(ns=ns, resource=lock).first()",
    why="FOR SHARE, which the ORM lacks: concurrent fenced writes do not queue behind each other "
    "(select_for_update is FOR UPDATE)",
)


# --- locks (services/locks.py) ----------------------------------------------------------

# The fencing counter bumped and the holder recorded, with `lock.acquired` (and, when the fence
# still names a holder whose lease lapsed unrecorded, its `lock.expired` first), in one statement.
# The FOR UPDATE sub-select reads the fence as it is once locked, so `was` is the previous holder.
# The end of ACQUIRE_LOCK and HAND_LOCK: the `lock.acquired` event of the fence row `f` just
# given to %(owner)s, after the event(s) `e` begins with, and the token it got.
_THEN_ACQUIRED = """    UNION ALL
    SELECT %(ns)s, f.{LockFence.ord}, %(txn)s, 'lock.acquired', %(owner)s, %(agent_id)s, %(resource)s,
           jsonb_build_object('resource', %(resource)s::varchar, 'ttl_seconds', %(ttl)s::int,
                              'expires_at', %(expires_at)s::text,
                              'fencing_token', f.{LockFence.token}),
           %(stamp)s
    FROM f
)
SELECT {LockFence.token} FROM f
"""

ACQUIRE_LOCK = _statement(
    "ACQUIRE_LOCK",
    """
WITH bumped AS (
    UPDATE {LockFence} f
    SET {LockFence.token} = f.{LockFence.token} + 1, {LockFence.holder} = %(owner)s, {LockFence.held} = true,
        {LockFence.acquired} = %(stamp)s, {LockFence.expires} = %(expires)s,
        {LockFence.ord} = GREATEST(f.{LockFence.ord}, {xid})
    FROM (SELECT {LockFence.id}, {LockFence.holder}, {LockFence.token}, {LockFence.held} FROM {LockFence}
          WHERE {LockFence.ns} = %(ns)s AND {LockFence.resource} = %(resource)s FOR UPDATE) was
    WHERE f.{LockFence.id} = was.{LockFence.id}
    RETURNING f.{LockFence.token}, f.{LockFence.ord}, was.{LockFence.holder} AS was_holder,
              was.{LockFence.token} AS was_token, was.{LockFence.held} AS was_held
), created AS (
    INSERT INTO {LockFence} ({LockFence.ns}, {LockFence.resource}, {LockFence.token}, {LockFence.holder},
                             {LockFence.held}, {LockFence.acquired}, {LockFence.expires}, {LockFence.ord})
    SELECT %(ns)s, %(resource)s, 1, %(owner)s, true, %(stamp)s, %(expires)s, {xid}
    WHERE NOT EXISTS (SELECT 1 FROM bumped)
    ON CONFLICT ({LockFence.ns}, {LockFence.resource}) DO NOTHING
    RETURNING {LockFence.token}, {LockFence.ord}, ''::varchar AS was_holder, 0::bigint AS was_token,
              false AS was_held
), f AS (
    SELECT * FROM bumped UNION ALL SELECT * FROM created
), e AS (
    INSERT INTO {Event} ({event_columns})
    SELECT %(ns)s, f.{LockFence.ord}, %(txn)s, 'lock.expired', '{system}', f.was_holder, %(resource)s,
           jsonb_build_object('resource', %(resource)s::varchar, 'holder', f.was_holder,
                              'fencing_token', f.was_token),
           %(stamp)s
    FROM f WHERE f.was_held
"""
    + _THEN_ACQUIRED,
    xid=XID,
    event_columns=EVENT_COLUMNS,
    system=SYSTEM,
    orm="with transaction.atomic(): fence = LockFence.objects.select_for_update().filter(ns=ns, "
    "resource=resource).first(); if fence and fence.held: append_event(type='lock.expired', ...); "
    "fence.token += 1, fence.holder = owner ... fence.save() (or LockFence.objects.create(token=1, ...)); "
    "append_event(type='lock.acquired', ...)",
    why="the fence and its events in one statement: an acquire outside a transaction commits by "
    "itself in one round trip (the ORM form is five or six, with BEGIN and COMMIT)",
)

# The holder's fence marked free, with its `lock.released` / `lock.expired` event.
END_LOCK = _statement(
    "END_LOCK",
    """
WITH f AS (
    UPDATE {LockFence} SET {LockFence.held} = false, {LockFence.ord} = GREATEST({LockFence.ord}, {xid})
    WHERE {LockFence.ns} = %(ns)s AND {LockFence.resource} = %(resource)s AND {LockFence.token} = %(token)s
      AND {LockFence.holder} = %(owner)s AND {LockFence.held}
    RETURNING {LockFence.ord}
)
INSERT INTO {Event} ({event_columns})
SELECT %(ns)s, f.{LockFence.ord}, %(txn)s, %(type)s, %(actor)s, %(owner)s, %(resource)s,
       jsonb_build_object('resource', %(resource)s::varchar, 'fencing_token', %(token)s::bigint)
       || CASE WHEN %(type)s::varchar = 'lock.released' THEN '{{}}'::jsonb
               ELSE jsonb_build_object('holder', %(owner)s::varchar) END,
       %(stamp)s
FROM f
""",
    xid=XID,
    event_columns=EVENT_COLUMNS,
    orm="with transaction.atomic(): n = LockFence.objects.filter(ns=ns, resource=resource, token=token, "
    "holder=owner, held=True).update(held=False, ord=Greatest('ord', XidAsBigint())); if n: "
    "append_event(type=type, ...)",
    why="the fence and its event in one statement, one round trip outside a transaction; the event's "
    "`ord` is the fence's, read in the same statement",
)


# A release that hands the lock straight to its first waiter: the holder's fence moves to the
# waiter with the next token, and `lock.released` then `lock.acquired` are appended, in one
# statement (services/locks.release_lock).
HAND_LOCK = _statement(
    "HAND_LOCK",
    """
WITH f AS (
    UPDATE {LockFence}
    SET {LockFence.token} = {LockFence.token} + 1, {LockFence.holder} = %(owner)s, {LockFence.held} = true,
        {LockFence.acquired} = %(stamp)s, {LockFence.expires} = %(expires)s,
        {LockFence.ord} = GREATEST({LockFence.ord}, {xid})
    WHERE {LockFence.ns} = %(ns)s AND {LockFence.resource} = %(resource)s AND {LockFence.token} = %(token)s
      AND {LockFence.holder} = %(holder)s AND {LockFence.held}
    RETURNING {LockFence.token}, {LockFence.ord}
), e AS (
    INSERT INTO {Event} ({event_columns})
    SELECT %(ns)s, f.{LockFence.ord}, %(txn)s, 'lock.released', %(holder)s, %(holder)s, %(resource)s,
           jsonb_build_object('resource', %(resource)s::varchar, 'fencing_token', %(token)s::bigint),
           %(stamp)s
    FROM f
"""
    + _THEN_ACQUIRED,
    xid=XID,
    event_columns=EVENT_COLUMNS,
    orm="END_LOCK's ORM form with type='lock.released', then ACQUIRE_LOCK's for the next holder, "
    "in one transaction.atomic()",
    why="a waiting acquire's Postgres step rides on the release it waited for: one commit per "
    "handover where an end and an acquire are two, on the path that bounds a contended lock",
)


# --- /txn (services/txn.py) -------------------------------------------------------------

# The records that exist, row-locked: single writes (which take no advisory lock) wait for the
# commit too, so a compare on an existing record still holds when the writes are in.
LOCK_ROWS = _statement(
    "LOCK_ROWS",
    """
SELECT {Record.key}, CASE WHEN {Record.deleted} THEN 0 ELSE {Record.version} END FROM {Record}
WHERE {Record.ns} = %s AND {Record.key} = ANY(%s) ORDER BY {Record.key} FOR UPDATE
""",
    orm="Record.objects.select_for_update().filter(ns=ns, key__in=read).order_by('key')"
    ".values_list('key', Case(When(deleted=True, then=0), default='version', ...))",
    why="every /txn with conditions runs it: compiling the queryset each time is CPU on the path "
    "the benchmark's /txn scenario measures; the statement is the same",
)


# --- the relay (relay.py, on its own psycopg connection) --------------------------------

RELAY_LOCK = _statement(
    "RELAY_LOCK",
    "SELECT pg_try_advisory_lock(%s)",
    orm="none: the ORM has no advisory locks",
    why="a session-level advisory lock: the active relay holds it for as long as its connection lives",
)
RELAY_PENDING = _statement(
    "RELAY_PENDING",
    """
SELECT {Namespace.id}, {Namespace.name}, {Namespace.published}, {Namespace.head} FROM {Namespace}
WHERE {Namespace.head} > {Namespace.published} ORDER BY {Namespace.id}
""",
    orm="Namespace.objects.filter(head__gt=F('published')).order_by('id').values_list('id', 'name', "
    "'published', 'head')",
    why="the relay runs on a psycopg connection of its own, pipelined with the sequencer's statements "
    "(one round trip a pass), which the ORM does not drive",
)
RELAY_WAITING = _statement(
    "RELAY_WAITING",
    "SELECT EXISTS (SELECT 1 FROM {Event} WHERE {Event.position} IS NULL AND {Event.ord} >= {floor})",
    floor=FLOOR,
    orm="Event.objects.filter(position=None, ord__gte=Floor()).exists()",
    why="as RELAY_PENDING: the relay's own pipelined connection",
)
RELAY_FETCH = _statement(
    "RELAY_FETCH",
    """
SELECT {Event.position}, {Event.type}, {Event.actor}, {Event.agent_id}, {Event.subject},
       {Event.payload}::text, (extract(epoch FROM {Event.created}) * 1000000)::bigint, {Event.txn},
       {Event.seq}
FROM {Event} WHERE {Event.ns} = %s AND {Event.position} > %s AND {Event.position} <= %s
ORDER BY {Event.position}
""",
    orm="Event.objects.filter(ns=ns_id, position__gt=after, position__lte=through).order_by('position')"
    ".values_list('position', 'type', 'actor', 'agent_id', 'subject', Cast('payload', TextField()), "
    "Cast(Extract('created', 'epoch') * 1000000, BigIntegerField()), 'txn', 'seq')",
    why="as RELAY_PENDING: the relay's own connection; the payload comes as its text, published as it "
    "is, and `created` as Unix microseconds, which the relay formats without a datetime (iso_from_us)",
)
RELAY_MARK = _statement(
    "RELAY_MARK",
    """
UPDATE {Namespace} ns SET {Namespace.published} = marks.published
FROM unnest(%s::bigint[], %s::bigint[]) AS marks (id, published)
WHERE ns.{Namespace.id} = marks.id AND ns.{Namespace.published} < marks.published
""",
    orm="for each namespace: Namespace.objects.filter(pk=id, published__lt=p).update(published=p)",
    why="every namespace's mark in one statement (the ORM form is one per namespace), on the relay's "
    "own connection",
)


# The relay's statements that a pass runs, prepared once per connection (relay_prepare): as
# simple queries Postgres parsed and planned each of them on every pass (SEQUENCE alone ~1.6 ms
# of planning, EXPLAIN; more than it took to run).
_RELAY_PREPARED = {
    "ma_relay_mark": RELAY_MARK,
    "ma_sequence": SEQUENCE,
    "ma_relay_pending": RELAY_PENDING,
    "ma_relay_waiting": RELAY_WAITING,
}


def _numbered(statement: str) -> str:
    """`statement` with its positional `%s` parameters as PREPARE's `$1`, `$2`, ..."""
    parts = statement.split("%s")
    return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))


def relay_prepare() -> str:
    """The PREPAREs of the relay's pass statements, one query, for a new relay connection."""
    return ";\n".join(f"PREPARE {name} AS {_numbered(text)}" for name, text in _RELAY_PREPARED.items())


def relay_pass(*, marking: bool) -> str:
    """A relay's pass as one query: SEQUENCER_LOCK, RELAY_MARK when there are marks to store,
    SEQUENCE, RELAY_PENDING and RELAY_WAITING, separated by semicolons, the last four as
    EXECUTEs of what relay_prepare prepared. Sent as one simple query (parameters bound on the
    client), Postgres runs them as one transaction, and psycopg spends a fifth of the CPU it spent
    on the same statements pipelined (bench/README.md, round 5)."""
    return ";\n".join(
        [
            SEQUENCER_LOCK,
            *(["EXECUTE ma_relay_mark(%s, %s)"] if marking else []),
            "EXECUTE ma_sequence(%s)",
            "EXECUTE ma_relay_pending",
            "EXECUTE ma_relay_waiting",
        ]
    )


# The keys of a /batch or /txn, present or not, each by a transaction-level advisory lock, taken
# in one order (of the lock ids): two requests over the same keys queue, they never deadlock, also
# when they create them. The two-number form keeps these apart from any one-number advisory lock.
_LOCK_KEYS = """
SELECT count(pg_advisory_xact_lock(%(lock_space)s, h)) AS n FROM (
    SELECT DISTINCT hashtext(%(lock_ns)s || ':' || k) AS h
    FROM jsonb_array_elements_text(%(lock_keys)s::jsonb) AS k ORDER BY h
) AS ids
"""
LOCK_KEYS = _statement(
    "LOCK_KEYS",
    _LOCK_KEYS,
    orm="none: the ORM has no advisory locks (select_for_update locks only rows that exist)",
    why="advisory locks on keys that may not exist yet, taken in one order so that two requests "
    "over the same keys queue and never deadlock",
)

# write_records' statement: WRITE_RECORD's three cases over a JSON array of writes, each in the
# form its expected version asks for, then the history rows, the superseded conflicts and the
# events (in the writes' order) for all of them. It returns, for each write by its number (from
# 1), whether it was written, whether it created the record and the new version; or, for a write
# it refused, false and the record as it stands (no row if absent). The keys are distinct.
_MANY_SET = """
    {Record.value} = EXCLUDED.{Record.value}, {Record.version} = rec.{Record.version} + 1,
    {Record.deleted} = false, {Record.updated_by} = EXCLUDED.{Record.updated_by},
    {Record.updated} = EXCLUDED.{Record.updated}, {Record.ord} = GREATEST(rec.{Record.ord}, {xid}),"""


def _insert_many(which: str) -> str:
    """The upsert of the writes `which` selects, in key order (the order rows are locked in)."""
    return (
        """
    INSERT INTO {Record} AS rec ({Record.ns}, {Record.key}, {Record.value}, {Record.version},
        {Record.deleted}, {Record.updated_by}, {Record.updated}, {Record.created}, {Record.ord})
    SELECT %(ns)s, i.key, i.value, 1, false, %(actor)s, %(stamp)s, %(stamp)s, {xid}
    FROM i WHERE """
        + which
        + """ ORDER BY i.key
    ON CONFLICT ({Record.ns}, {Record.key}) DO UPDATE SET"""
        + _MANY_SET
    )


_MANY_INPUT = """i AS (
    SELECT w->>0 AS key, w->1 AS value, (w->>2)::bigint AS expected, n
    FROM jsonb_array_elements(%(writes)s::jsonb) WITH ORDINALITY AS i(w, n)"""
_WRITE_MANY_REST = (
    """
), over_n AS (
    UPDATE {Record} rec
    SET {Record.value} = i.value, {Record.version} = rec.{Record.version} + 1,
        {Record.updated_by} = %(actor)s, {Record.updated} = %(stamp)s,
        {Record.ord} = GREATEST(rec.{Record.ord}, {xid})
    FROM i
    WHERE rec.{Record.ns} = %(ns)s AND rec.{Record.key} = i.key AND i.expected > 0
      -- probed by key, as the refused below: joined to `i` alone, the planner hashed the
      -- namespace's every record when it held fewer than ~8,000 (EXPLAIN)
      AND rec.{Record.key} = ANY(ARRAY(SELECT key FROM i WHERE i.expected > 0))
      AND rec.{Record.version} = i.expected AND NOT rec.{Record.deleted}
    RETURNING rec.*, false AS is_new
), any_version AS ("""
    + _insert_many("i.expected IS NULL")
    + """
        {Record.created} = CASE WHEN rec.{Record.deleted} THEN EXCLUDED.{Record.created}
                           ELSE rec.{Record.created} END
    RETURNING rec.*, (rec.xmax = 0 OR rec.{Record.created} = %(stamp)s) AS is_new
), create_only AS ("""
    + _insert_many("i.expected = 0")
    + """
        {Record.created} = EXCLUDED.{Record.created}
    WHERE rec.{Record.deleted}
    RETURNING rec.*, true AS is_new
), w AS (
    SELECT * FROM over_n UNION ALL SELECT * FROM any_version UNION ALL SELECT * FROM create_only
), v AS ("""
    + _HISTORY
    + """), c AS (
    UPDATE {Conflict} SET {Conflict.status} = 'resolved', {Conflict.resolution} = 'superseded',
        {Conflict.resolved_by} = %(actor)s, {Conflict.resolved} = %(stamp)s
    WHERE {Conflict.ns} = %(ns)s AND {Conflict.key} IN (SELECT {Record.key} FROM w)
      AND {Conflict.actor} = %(actor)s AND {Conflict.status} = 'open'
    RETURNING {Conflict.id}, {Conflict.key}
), e AS (
    INSERT INTO {Event} ({event_columns})
    SELECT w.{Record.ns}, w.{Record.ord}, %(txn)s, x.type, %(actor)s, %(agent_id)s, w.{Record.key}, x.payload,
           %(stamp)s
    FROM w JOIN i ON i.key = w.{Record.key}
    CROSS JOIN LATERAL (
        SELECT 0, 'record.written',
               jsonb_build_object('key', w.{Record.key}, 'version', w.{Record.version}, 'created', w.is_new)
        UNION ALL
        SELECT 1, 'conflict.resolved',
               jsonb_build_object('conflict_id', c.{Conflict.id}, 'key', w.{Record.key},
                                  'resolution', 'superseded', 'version', w.{Record.version})
        FROM c WHERE c.{Conflict.key} = w.{Record.key}
    ) AS x(k, type, payload)
    ORDER BY i.n, x.k
), refused AS (
    SELECT i.n, i.key FROM i WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.{Record.key} = i.key)
)
SELECT i.n, true, w.is_new, w.{Record.version}, {no_record} FROM i JOIN w ON w.{Record.key} = i.key{guard}
UNION ALL
-- the refused keys' records probed by key (`= ANY` of an array, an index scan), not joined: the
-- planner, counting 100 writes and few refusals, read the whole namespace to hash it (EXPLAIN: a
-- sequential scan of 10,000 records on every call, also when nothing was refused)
SELECT refused.n, false, false, r.{Record.version}, {record} FROM refused JOIN {Record} r
    ON r.{Record.key} = refused.key
WHERE r.{Record.ns} = %(ns)s AND r.{Record.key} = ANY(ARRAY(SELECT key FROM refused))
"""
)
_MANY = {
    "xid": XID,
    "event_columns": EVENT_COLUMNS,
    # a written write's record columns: the writer knows them all but the version
    "no_record": ", ".join(["NULL"] * len(Record._meta.concrete_fields)),
    "record": columns(Record, "r"),
    "guard": "",
}
_MANY_ORM = "for each write: write_record's ORM form (WRITE_RECORD), in one transaction"
_MANY_WHY = (
    "every write of a /batch or /txn in one statement: one round trip for 50 writes, not 50 "
    "(or 350 in the ORM form)"
)
WRITE_MANY = _statement(
    "WRITE_MANY", "WITH " + _MANY_INPUT + _WRITE_MANY_REST, orm=_MANY_ORM, why=_MANY_WHY, **_MANY
)
# The same, taking the advisory locks first (LOCK_KEYS): every write reads `i`, whose rows come
# only once `locked` is done, so no record row is locked before the keys are.
_MANY_LOCKING = (
    "WITH locked AS (" + _LOCK_KEYS + "), " + _MANY_INPUT + "\n    WHERE (SELECT n FROM locked) IS NOT NULL"
)
WRITE_MANY_LOCKING = _statement(
    "WRITE_MANY_LOCKING",
    _MANY_LOCKING + _WRITE_MANY_REST,
    orm="LOCK_KEYS's, then WRITE_MANY's",
    why=_MANY_WHY + "; the keys' advisory locks in the same round trip",
    **_MANY,
)
# The same, all or nothing, for a /txn of puts alone run outside a transaction (services/txn.py):
# when a write is refused and another made, the guard raises (SQLSTATE MA409, migration 0014) and
# the statement keeps nothing. When every write is refused there is nothing to undo: it answers as
# WRITE_MANY_LOCKING does, with no write made.
REFUSED_ALL = "MA409"
WRITE_MANY_ALL = _statement(
    "WRITE_MANY_ALL",
    _MANY_LOCKING + _WRITE_MANY_REST,
    orm="WRITE_MANY_LOCKING's, in transaction.atomic(), rolled back when a write is refused",
    why="one statement is a transaction of its own: no BEGIN and COMMIT round trips (two of the "
    "four a txn of puts made) and no transaction.atomic",
    **{**_MANY, "guard": "\nWHERE memory_admin_refuse_all((SELECT count(*) FROM refused))"},
)
