"""Every raw statement of memory_admin/sql.py gives what the ORM form it replaces gives, on the
same rows of the real test database; and no other module hands SQL text to a cursor."""

from __future__ import annotations

import ast
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.postgres.fields import ArrayField
from django.db import DatabaseError, connection, transaction
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    Exists,
    F,
    Func,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Q,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast, Extract
from django.utils.timezone import now

from memory_admin import sql
from memory_admin.models import (
    LOCK_EVENTS,
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
    iso,
    iso_from_us,
)
from memory_admin.rows import load as rows_load
from memory_admin.services import counts, records, store
from memory_admin.services.events import SEQUENCER_LOCK, append_event
from memory_admin.services.facts import store_fact
from memory_admin.services.records import delete_record, write_record
from memory_admin.services.tokens import by_digest, digest, issue_token
from tests.conftest import actor, sequence_here

pytestmark = pytest.mark.django_db
COVERED: set[str] = set()
ROOT = Path(__file__).resolve().parent.parent / "memory_admin"


def covers(*names: str):
    """Marks a test as the one that checks these statements against their ORM forms."""
    COVERED.update(names)
    return lambda test: test


def rows(statement: str, params=None) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def _json(value):
    """A jsonb value as the ORM reads it (a raw cursor gets Django's psycopg setup's text)."""
    return json.loads(value) if isinstance(value, str) else value


def event(ns, position, *, type="custom.note", agent="", subject="", payload=None, created=None, actor="a"):
    return Event.objects.create(
        ns=ns,
        position=position,
        ord=position,
        type=type,
        actor=actor,
        agent_id=agent,
        subject=subject,
        payload=payload or {},
        created=created or now(),
    )


# --- connections and the log -------------------------------------------------------------


@covers("PING")
def test_ping_reaches_the_server():
    connection.ensure_connection()  # the ORM form: no round trip once connected
    assert rows(sql.PING) == [(1,)]


@covers("APPEND_EVENT")
def test_an_appended_event_is_the_row_the_orm_would_create_with_the_writers_xid(ns, alpha):
    (xid,) = rows("SELECT pg_current_xact_id()::text::bigint")[0]
    stamp = now()
    raw = append_event(ns=ns, type="custom.a", actor=actor(alpha), subject="s", payload={"x": 1})
    follows = append_event(ns=ns, type="custom.a", actor=actor(alpha), subject="s", follows=xid + 50)
    orm = Event.objects.create(
        ns=ns,
        ord=xid,
        type="custom.a",
        actor="alpha",
        agent_id="alpha",
        subject="s",
        payload={"x": 1},
        created=stamp,
    )

    stored = Event.objects.get(seq=raw.seq)
    fields = ("ns_id", "ord", "txn", "type", "actor", "agent_id", "subject", "payload", "position")
    assert [getattr(stored, f) for f in fields] == [getattr(orm, f) for f in fields]
    assert (raw.ord, follows.ord) == (xid, xid + 50)  # GREATEST(xid, follows)


@covers("SEQUENCER_LOCK", "SEQUENCER_TRY_LOCK")
def test_the_sequencer_lock_is_an_advisory_lock_held_to_the_end_of_the_transaction():
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    assert rows(held) == [(0,)]
    rows(sql.SEQUENCER_LOCK, [SEQUENCER_LOCK])
    assert rows(sql.SEQUENCER_TRY_LOCK, [SEQUENCER_LOCK]) == [(True,)]  # the same session: re-entrant
    assert rows(held) == [(1,)]


@covers("SEQUENCE")
def test_the_sequencer_numbers_what_waits_as_the_orm_form_would(ns, alpha, make_agent):
    other = make_agent("zed", namespace="elsewhere").ns
    for i in range(3):
        append_event(ns=ns, type="custom.a", actor=actor(alpha), payload={"i": i})
        append_event(ns=other, type="custom.a", actor="zed", payload={"i": i})
    heads = {n.pk: n.head for n in Namespace.objects.all()}
    # The ORM form: the waiting events in (ord, seq) order, numbered on from each head.
    waiting = list(Event.objects.filter(position=None).order_by("ord", "seq").values_list("seq", "ns_id"))
    expected, count = {}, dict(heads)
    for seq, ns_id in waiting:
        count[ns_id] += 1
        expected[seq] = count[ns_id]

    top = Event.objects.filter(position=None).aggregate(top=Max("ord"))["top"]

    sequence_here()  # SEQUENCE, its horizon moved past this test's own open transaction

    assert dict(Event.objects.filter(seq__in=expected).values_list("seq", "position")) == expected
    assert {n.pk: n.head for n in Namespace.objects.all()} == count
    # The floor moved to the greatest ord stamped: the next pass's scan starts there.
    assert list(Sequencer.objects.values_list("floor", flat=True)) == [top]


@covers("WAITING")
def test_waiting_is_whether_an_unnumbered_event_sits_between_the_floor_and_the_horizon(ns, alpha):
    (horizon,) = rows(f"SELECT {sql.HORIZON}")[0]

    def orm() -> bool:
        floor = Sequencer.objects.aggregate(floor=Max("floor"))["floor"] or 0
        return Event.objects.filter(position=None, ord__gte=floor, ord__lt=horizon).exists()

    sequence_here()
    Sequencer.objects.update_or_create(pk=1, defaults={"floor": 5})  # as if stamped up to ord 5
    assert rows(sql.WAITING) == [(orm(),)] == [(False,)]
    Event.objects.create(ns=ns, ord=4, type="custom.a", actor="a")  # below the floor: not looked at
    assert rows(sql.WAITING) == [(orm(),)] == [(False,)]
    Event.objects.create(ns=ns, ord=5, type="custom.a", actor="a")  # committed long ago
    assert rows(sql.WAITING) == [(orm(),)] == [(True,)]


@covers("LOG_STATUS")
def test_the_log_status_counts_what_the_orm_counts(ns, alpha):
    append_event(ns=ns, type="custom.a", actor=actor(alpha))
    event(ns, 1)
    Namespace.objects.filter(pk=ns.pk).update(head=5, published=2)
    waiting, age, unpublished, oldest = rows(sql.LOG_STATUS, [ns.pk])[0]

    figures = Event.objects.filter(position=None).aggregate(n=Count("pk"), first=Min("created"))
    assert waiting == figures["n"] >= 1
    assert age is not None and figures["first"] is not None
    assert (
        unpublished
        == Namespace.objects.filter(pk=ns.pk).values_list(F("head") - F("published"), flat=True)[0]
    )
    assert oldest is not None  # this test's own transaction has written


# --- facts and tokens --------------------------------------------------------------------


@covers("STORE_FACT")
def test_a_stored_fact_and_its_event_are_the_rows_the_orm_form_writes(ns, alpha):
    raw = store_fact(ns=ns, fact="sky is blue", category="obs", metadata={"k": 1}, actor=actor(alpha))
    orm = Fact.objects.create(ns=ns, agent=alpha, fact="sky is blue", category="obs", metadata={"k": 1})
    append_event(
        ns=ns,
        type="fact.stored",
        actor=actor(alpha),
        subject=str(orm.pk),
        payload={"fact_id": orm.pk, "category": "obs"},
    )

    stored = Fact.objects.get(pk=raw.pk)
    fields = ("ns_id", "agent_id", "fact", "category", "metadata")
    assert [getattr(stored, f) for f in fields] == [getattr(orm, f) for f in fields]
    raw_event, orm_event = (Event.objects.get(type="fact.stored", subject=str(pk)) for pk in (raw.pk, orm.pk))
    fields = ("ns_id", "txn", "type", "actor", "agent_id")
    assert [getattr(raw_event, f) for f in fields] == [getattr(orm_event, f) for f in fields]
    assert raw_event.payload == {"fact_id": raw.pk, "category": "obs"}
    assert raw_event.ord == orm_event.ord  # the same transaction's xid


@covers("TOKEN_BY_DIGEST")
def test_a_token_by_digest_is_the_token_select_related_loads(alpha, beta):
    _, secret = issue_token(agent=alpha)
    revoked, other = issue_token(agent=beta)
    Token.objects.filter(pk=revoked.pk).update(revoked=now())

    raw = by_digest(digest(secret))
    orm = Token.objects.select_related("agent__ns").filter(digest=digest(secret), revoked=None).first()

    for a, b in ((raw, orm), (raw.agent, orm.agent), (raw.agent.ns, orm.agent.ns)):
        assert {f.attname: getattr(a, f.attname) for f in type(a)._meta.concrete_fields} == {
            f.attname: getattr(b, f.attname) for f in type(b)._meta.concrete_fields
        }
    assert by_digest(digest(other)) is None
    assert by_digest(digest("nothing")) is None


# --- counts and charts -------------------------------------------------------------------


@covers("DISTINCT_CATEGORIES", "DISTINCT_TYPES")
def test_the_distinct_values_are_the_orm_distinct(ns, alpha, make_agent):
    elsewhere = make_agent("zed", namespace="elsewhere")
    for category in ("b", "a", "c", "a", "b"):
        Fact.objects.create(ns=ns, agent=alpha, fact="f", category=category)
    Fact.objects.create(ns=elsewhere.ns, agent=elsewhere, fact="f", category="zz")
    for i, type in enumerate(("custom.x", "record.written", "custom.x", "lock.acquired")):
        event(ns, i + 1, type=type)

    # the log's types: of positioned events (the index's condition), not agent.created waiting
    cases = (
        ("categories", Fact.objects, "category"),
        ("types", Event.objects.filter(position__isnull=False), "type"),
    )
    for what, rows_of, column in cases:
        orm = rows_of.filter(ns=ns).values_list(column, flat=True).distinct().order_by(column)
        assert counts.distinct_values(ns, what) == list(orm)
        assert counts.distinct_values(ns, what, limit=2) == list(orm[:2])


@covers("BISECT")
def test_the_bisection_finds_what_the_orm_finds_by_time(ns):
    start = now() - timedelta(minutes=10)
    for i in range(1, 31):
        event(ns, i, created=start + timedelta(seconds=17 * i))
    Namespace.objects.filter(pk=ns.pk).update(head=30)
    moments = [start + timedelta(seconds=s) for s in (-5, 0, 17, 18, 100, 250, 509, 510, 511, 900)]

    found = dict(rows(sql.BISECT, {"ns": ns.pk, "end": 31, "moments": moments}))

    for i, moment in enumerate(moments, start=1):
        first = (
            Event.objects.filter(ns=ns, position__isnull=False, created__gte=moment)
            .order_by("position")
            .values_list("position", flat=True)
            .first()
        )
        assert found[i] == (first or 31), moment


def _bucket(edges):
    return Func(
        F("position"),
        Value(edges, output_field=ArrayField(BigIntegerField())),
        function="width_bucket",
        output_field=IntegerField(),
    )


@covers("TYPED_COUNTS", "AGENT_COUNTS")
def test_the_chart_counts_are_the_orm_group_by(ns):
    types = ("record.written", "conflict.opened", "lock.acquired", "custom.x")
    for i in range(1, 41):
        event(ns, i, type=types[i % 4] if i % 3 else "record.written", agent="alpha" if i % 2 else "beta")
    edges = [3, 10, 10, 25, 38]
    params = {"ns": ns.pk, "edges": edges, "lo": edges[0], "hi": edges[-1]}
    window = Event.objects.filter(ns=ns, position__gte=edges[0], position__lt=edges[-1])

    typed = rows(sql.TYPED_COUNTS, {**params, "types": list(types[:3])})
    orm = window.filter(type__in=types[:3]).values_list("type", _bucket(edges)).annotate(n=Count("*"))
    assert sorted(typed) == sorted(orm)

    agent = rows(sql.AGENT_COUNTS, {**params, "agent": "alpha"})
    orm = (
        window.filter(agent_id="alpha")
        .values_list(_bucket(edges))
        .annotate(
            n=Count("*"),
            writes=Count("pk", filter=Q(type="record.written")),
            conflicts=Count("pk", filter=Q(type="conflict.opened")),
            locks=Count("pk", filter=Q(type="lock.acquired")),
        )
    )
    assert sorted(agent) == sorted(orm)


# --- time travel -------------------------------------------------------------------------


@covers("RECORDS_AT")
def test_the_records_at_a_moment_are_the_orm_newest_version_by_then(ns, alpha):
    t = [now() - timedelta(minutes=10 - i) for i in range(5)]
    for key in ("a", "b", "c", "d", "e"):
        write_record(ns=ns, key=key, value={"v": 1}, actor=actor(alpha))
    write_record(ns=ns, key="a", value={"v": 2}, actor=actor(alpha))
    delete_record(ns=ns, key="b", actor=actor(alpha))
    write_record(ns=ns, key="c", value={"v": 2}, actor=actor(alpha))
    # Writes of one transaction share its clock: give them the times separate ones would have.
    Record.objects.filter(ns=ns).update(created=t[0])
    RecordVersion.objects.filter(version=1).update(updated=t[0])
    for key, version, at in (("a", 2, t[2]), ("b", 2, t[1]), ("c", 2, t[3]), ("e", 1, t[2])):
        RecordVersion.objects.filter(record__key=key, version=version).update(updated=at)
    Record.objects.filter(key="e").update(created=t[2])

    for when, after, limit in (
        (t[0], "", 50),
        (t[1], "", 50),
        (t[2], "", 50),
        (t[4], "a", 50),
        (t[4], "", 2),
    ):
        raw = rows(sql.RECORDS_AT, {"ns": ns.pk, "at": when, "after": after, "limit": limit})
        newest = (
            RecordVersion.objects.filter(
                record__ns=ns, record__created__lte=when, record__key__gt=after, updated__lte=when
            )
            .order_by("record__key", "-version")
            .distinct("record__key")
            .values_list(
                "record__key", "version", "value", "updated_by", "updated", "record__version", "deleted"
            )
        )
        orm = [row[:-1] for row in newest if not row[-1]][:limit]
        assert [(k, v, _json(value), *rest) for k, v, value, *rest in raw] == orm
        assert raw, when


@covers("STATUS_AT")
def test_the_statuses_at_an_event_are_each_agents_last_status_event_by_then(ns, alpha, beta, make_agent):
    make_agent("carol")
    event(ns, 1, type="status.changed", agent="alpha", payload={"status": "up"})
    event(ns, 2, type="status.changed", agent="beta", payload={"status": "busy"})
    event(ns, 3, type="custom.x", agent="alpha")
    event(ns, 4, type="agent.stale", agent="alpha", payload={"last_status": "up"})
    event(ns, 5, type="status.changed", agent="beta", payload={"status": "done"})

    for n, after, limit in ((1, "", 50), (3, "", 50), (4, "", 50), (5, "alpha", 50), (5, "", 1)):
        raw = rows(sql.STATUS_AT, {"ns": ns.pk, "n": n, "after": after, "limit": limit})
        last = Event.objects.filter(
            ns=ns, agent_id=OuterRef("name"), position__lte=n, type__in=("status.changed", "agent.stale")
        ).order_by("-position")
        agents = (
            ns.agents.filter(name__gt=after)
            .annotate(last=Subquery(last.values("position")[:1]))
            .filter(last__isnull=False)
            .order_by("name")[:limit]
        )
        orm = []
        for agent in agents:
            e = Event.objects.get(ns=ns, position=agent.last)
            orm.append((agent.name, e.type, e.payload, e.created, e.position))
        assert [(a, t, _json(p), c, n) for a, t, p, c, n in raw] == orm


@covers("LOCKS_AT")
def test_the_locks_at_an_event_are_those_whose_last_lock_event_by_then_is_an_acquire(ns):
    for resource in ("db", "net", "queue"):
        LockFence.objects.create(ns=ns, resource=resource, token=1, holder="alpha", expires=now())
    event(ns, 1, type="lock.acquired", subject="db", actor="alpha", payload={"fencing_token": 1})
    event(ns, 2, type="lock.acquired", subject="net", actor="beta", payload={"fencing_token": 4})
    event(ns, 3, type="custom.x", subject="db")
    event(ns, 4, type="lock.released", subject="db", actor="alpha")
    event(ns, 5, type="lock.acquired", subject="queue", actor="alpha", payload={"fencing_token": 2})

    for n, after, limit in ((1, "", 50), (3, "", 50), (4, "", 50), (5, "", 50), (5, "net", 50), (5, "", 1)):
        raw = rows(sql.LOCKS_AT, {"ns": ns.pk, "n": n, "after": after, "limit": limit})
        last = Event.objects.filter(
            ns=ns, subject=OuterRef("resource"), position__lte=n, type__in=LOCK_EVENTS
        ).order_by("-position")
        fences = (
            LockFence.objects.filter(ns=ns, resource__gt=after)
            .annotate(last=Subquery(last.values("position")[:1]))
            .filter(last__isnull=False)
            .order_by("resource")
        )
        orm = []
        for fence in fences:
            e = Event.objects.get(ns=ns, position=fence.last)
            if e.type == "lock.acquired":
                orm.append((fence.resource, e.actor, e.payload, e.created, e.position))
        assert [(r, a, _json(p), c, n) for r, a, p, c, n in raw] == orm[:limit]


# --- the store ---------------------------------------------------------------------------


@covers("STORE_UPSERT")
def test_the_store_upsert_writes_the_row_update_or_create_writes(ns):
    stamp, later = now(), now() + timedelta(minutes=5)

    def upsert(rkey, path, created, ttl, expires):
        rows_ = sql.store_upsert("to_tsvector('english', %s)")
        with connection.cursor() as cursor:
            cursor.execute(rows_, [ns.pk, rkey, path, "k", created, ttl, expires, True, "blue sky"])

    def orm(rkey, path, created, ttl, expires):
        found = StoreItem.objects.filter(ns=ns, rkey=rkey).first()
        renew = found is None or (found.expires is not None and found.expires <= created)
        StoreItem.objects.update_or_create(
            ns=ns,
            rkey=rkey,
            defaults={"path": path, "key": "k", "ttl": ttl, "expires": expires}
            | ({"created": created} if renew else {}),
        )

    fields = ("path", "key", "created", "ttl", "expires")
    for step in (("x", stamp, 1.0, stamp), ("y", later, None, None), ("z", later + timedelta(1), 2.0, later)):
        label, created, ttl, expires = step
        upsert("raw", [label], created, ttl, expires)
        orm("orm", [label], created, ttl, expires)
        raw, by_orm = (
            StoreItem.objects.filter(ns=ns, rkey=k).values_list(*fields).get() for k in ("raw", "orm")
        )
        assert raw == by_orm
    assert rows("SELECT search::text FROM memory_admin_storeitem WHERE rkey = 'raw'") == [
        ("'blue':1 'sky':2",)
    ]


def _live(ns, stamp):
    """The ORM form of the store's live items: rows with their records' value and time."""
    records = Record.objects.filter(ns=ns, key=OuterRef("rkey"))
    return (
        StoreItem.objects.filter(ns=ns)
        .filter(Q(expires=None) | Q(expires__gt=stamp))
        .filter(Exists(records.filter(deleted=False)))
        .annotate(value=Subquery(records.values("value")), updated=Subquery(records.values("updated")))
    )


@pytest.fixture
def items(ns, alpha):
    me = actor(alpha)
    store.put_item(ns=ns, namespace=["docs", "a"], key="1", value={"n": 1, "t": "blue sky"}, actor=me)
    store.put_item(ns=ns, namespace=["docs", "b"], key="2", value={"n": 2, "t": "red sky"}, actor=me)
    store.put_item(ns=ns, namespace=["docs", "b", "c"], key="3", value={"n": "3", "t": "x"}, actor=me, ttl=5)
    store.put_item(ns=ns, namespace=["notes"], key="4", value={"n": 4}, actor=me, index=False)
    store.put_item(ns=ns, namespace=["gone"], key="5", value={"n": 5}, actor=me)
    store.delete_item(ns=ns, namespace=["gone"], key="5", actor=me)
    store.put_item(ns=ns, namespace=["old"], key="6", value={"n": 6}, actor=me, ttl=1)
    StoreItem.objects.filter(key="6").update(expires=now() - timedelta(seconds=1))
    # Distinct update times, as writes in separate transactions would have.
    for i, key in enumerate(("1", "2", "3", "4")):
        Record.objects.filter(key=store.record_key(_path(key), key)).update(
            updated=now() + timedelta(seconds=i)
        )


def _path(key):
    return {"1": ["docs", "a"], "2": ["docs", "b"], "3": ["docs", "b", "c"], "4": ["notes"]}[key]


@covers("STORE_GET")
def test_a_store_get_finds_the_live_item_the_orm_finds(ns, items):
    stamp = now()
    for key in ("1", "3", "5", "6", "nope"):
        rkey = store.record_key(_path(key) if key in "1234" else ["x"], key)
        rkey = {"5": store.record_key(["gone"], "5"), "6": store.record_key(["old"], "6")}.get(key, rkey)
        raw = rows(sql.STORE_GET, [ns.pk, stamp, rkey])
        orm = list(
            _live(ns, stamp)
            .filter(rkey=rkey)
            .values_list("path", "key", "value", "created", "updated", "rkey", "ttl")
        )
        assert [store._item(row).body() for row in raw] == [store._item(row).body() for row in orm]
        assert len(raw) == (1 if key in ("1", "3") else 0)


@covers("STORE_SEARCH")
def test_a_store_search_finds_and_orders_what_the_orm_form_does(ns, items):
    stamp = now()
    columns = ("path", "key", "value", "created", "updated", "rkey", "ttl")

    def raw(prefix=(), filter=None, limit=10, offset=0):
        where, values = store._filter_sql(filter)
        params = [ns.pk, stamp, *([len(prefix), list(prefix)] if prefix else []), *values, limit, offset]
        return [
            row[1] for row in rows(sql.store_search(prefix=bool(prefix), where=where, score=None), params)
        ]

    def orm(prefix=(), condition=None, limit=10, offset=0):
        found = _live(ns, stamp).filter(condition or Q()).order_by("-updated", "rkey").values_list(*columns)
        if prefix:
            found = found.filter(**{f"path__0_{len(prefix)}": list(prefix)})
        return [row[1] for row in found[offset : offset + limit]]

    assert raw() == orm() == ["4", "3", "2", "1"]
    assert raw(["docs", "b"]) == orm(["docs", "b"]) == ["3", "2"]
    assert raw(limit=2, offset=1) == orm(limit=2, offset=1)
    assert raw(filter={"n": 2}) == orm(condition=Q(value__n=2)) == ["2"]
    assert raw(filter={"n": {"$ne": 2}}) == orm(condition=~Q(value__n=2)) == ["4", "3", "1"]
    # Orders compare like with like: "3" (a string) is not compared with numbers.
    assert (
        raw(filter={"n": {"$gte": 2}}) == orm(condition=Q(value__n__gte=2) & ~Q(value__n="3")) == ["4", "2"]
    )
    scored = store.search_items(ns=ns, namespace_prefix=["docs"], query="blue", refresh_ttl=False)
    assert [(item.key, item.score > 0) for item in scored[:1]] == [("1", True)]


@covers("STORE_NAMESPACES")
def test_the_store_namespaces_are_the_orm_distinct_paths(ns, items):
    def raw(where="", params=(), depth=None, limit=100, offset=0):
        statement = sql.store_namespaces(where=where, depth=depth is not None)
        head = [] if depth is None else [depth]
        return [row[0] for row in rows(statement, [*head, ns.pk, now(), *params, limit, offset])]

    def orm(depth=None, condition=None):
        paths = _live(ns, now()).filter(condition or Q()).values_list("path", flat=True)
        return sorted({tuple(p[:depth] if depth else p) for p in paths})

    assert (
        [tuple(p) for p in raw()] == orm() == [("docs", "a"), ("docs", "b"), ("docs", "b", "c"), ("notes",)]
    )
    assert [tuple(p) for p in raw(depth=1)] == orm(depth=1) == [("docs",), ("notes",)]
    where = sql.STORE_PATH_LONGER + sql.STORE_LABEL_FROM_START + sql.STORE_LABEL_FROM_END
    assert [tuple(p) for p in raw(where, [2, 1, "docs", 0, "b"])] == orm(
        condition=Q(path__len__gte=2, path__0="docs")
    )[1:2]
    assert store.list_namespaces(ns=ns, suffix=["b"]) == [["docs", "b"]]


def test_every_statement_fits_psycopgs_cache_of_parsed_queries():
    """Over 4,096 bytes psycopg parses a statement's placeholders again on every call."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    for name, statement in sql.STATEMENTS.items():
        assert len(statement.encode()) <= MAX_CACHED_STATEMENT_LENGTH, name


def test_a_statement_is_sent_without_comments_or_runs_of_white_space_but_its_quoted_text_as_is():
    text = (
        '\n    SELECT \'a  --  b\', "odd  ""n"" x"  -- a comment\n'
        "    FROM t  -- another\n"
        "    WHERE x->>'k' = 'it''s'  AND y - -1 > 0\n"
    )
    compact = "SELECT 'a  --  b', \"odd  \"\"n\"\" x\" FROM t WHERE x->>'k' = 'it''s' AND y - -1 > 0"
    assert sql._compact(text) == compact
    assert rows(sql._compact("SELECT 'a  --  b' -- gone\n, 2")) == [("a  --  b", 2)]


def test_every_statement_is_checked_against_its_orm_form():
    assert set(sql.STATEMENTS) == COVERED
    for name, statement in sql.STATEMENTS.items():
        assert statement.orm and statement.why, name
        assert "memory_admin_" not in statement.orm, name


# --- one module --------------------------------------------------------------------------

SQL_TEXT = re.compile(
    r"\b(SELECT\s+\S|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|WITH\s+(RECURSIVE\s+)?\w+\s*(\(|AS))"
)


def _strings(node: ast.AST):
    """The string literals in `node`, docstrings left out (they may speak of SQL)."""
    docstrings = {
        id(body[0].value)
        for n in ast.walk(node)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (body := n.body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            yield n


def test_no_module_but_sql_py_holds_sql_text_or_hands_it_to_a_cursor():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if "migrations" in path.parts or path == ROOT / "sql.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT.parent)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany", "raw")
                and node.args
                and any(True for _ in _strings(node.args[0]))
            ):
                found.append(f"{where}:{node.lineno}: {node.func.attr}() with SQL text")
        for string in _strings(tree):
            if SQL_TEXT.search(string.value):
                found.append(f"{where}:{string.lineno}: SQL text {string.value.strip()[:40]!r}")
    assert found == []


def test_the_check_sees_sql_text_and_leaves_redis_pipelines_alone():
    tree = ast.parse('cursor.execute("SELECT 1")\npipe.execute()\nX = f"DELETE FROM {t} WHERE"\n')
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args]
    assert len(calls) == 1
    assert [s.value for s in _strings(tree) if SQL_TEXT.search(s.value)] == ["SELECT 1", "DELETE FROM "]


def test_statements_are_named_from_model_metadata():
    assert f"FROM {Event._meta.db_table}" in sql.WAITING
    assert Event._meta.get_field("position").column in sql.SEQUENCE
    assert sql.PING.__doc__.startswith("Replaces: ")


# --- records, locks, /txn, the relay -------------------------------------------------------


@covers("GET_RECORD")
def test_get_record_reads_the_live_record_the_orm_reads(ns, alpha):
    write_record(ns=ns, key="live", value={"v": 1}, actor=actor(alpha))
    write_record(ns=ns, key="gone", value={"v": 1}, actor=actor(alpha))
    delete_record(ns=ns, key="gone", actor=actor(alpha))
    for key in ("live", "gone", "never"):
        raw = [rows_load(Record, row) for row in rows(sql.GET_RECORD, [ns.pk, key])]
        orm = list(Record.objects.filter(ns=ns, key=key, deleted=False)[:1])
        assert [_fields(r) for r in raw] == [_fields(r) for r in orm]


def _fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def _orm_write(ns, key, value, expected, who):
    """WRITE_RECORD's ORM form: (written, created, the record as it stands or None)."""
    from memory_admin.services import conflicts

    with transaction.atomic():
        record = Record.objects.select_for_update().filter(ns=ns, key=key).first()
        live = record is not None and not record.deleted
        if not (
            expected is None
            or (expected == 0 and not live)
            or (expected and live and record.version == expected)
        ):
            return False, False, record
        stamp, created = now(), not live
        if record is None:
            record = Record(ns=ns, key=key, version=0, created=stamp)
        elif record.deleted:
            record.created = stamp
        record.version += 1
        event = append_event(
            ns=ns,
            type="record.written",
            actor=who,
            subject=key,
            payload={"key": key, "version": record.version, "created": created},
            follows=record.ord if record.pk else 0,
        )
        record.value, record.deleted, record.updated_by, record.updated = value, False, who.name, stamp
        record.ord = event.ord
        record.save()
        RecordVersion.objects.create(
            record=record, version=record.version, value=value, updated_by=who.name, updated=stamp
        )
        conflicts.close_superseded(ns=ns, key=key, actor=who, version=record.version)
        return True, created, record


def _raw_write(ns, key, value, expected, who):
    params = {
        "ns": ns.pk,
        "key": key,
        "value": json.dumps(value),
        "expected": expected,
        "actor": who.name,
        "agent_id": who.agent_id,
        "stamp": now(),
        "txn": "",
    }
    found = rows(sql.WRITE_RECORD, params)
    if not found:
        return False, False, None
    *record, written, created = found[0]
    return written, created, rows_load(Record, record)


@covers("WRITE_RECORD")
def test_write_record_does_what_its_orm_form_does_for_every_expected_version(ns, alpha):
    who = actor(alpha)
    steps = [
        (0, {"v": 1}),  # create only, absent: created
        (0, {"v": 2}),  # create only, live: refused
        (1, {"v": 3}),  # over version 1: written
        (1, {"v": 4}),  # over version 1 again: refused
        (None, {"v": 5}),  # unconditional: written
        ("delete", None),
        (3, {"v": 6}),  # over a tombstone's version: refused
        (0, {"v": 7}),  # create only, over a tombstone: created anew
        (None, {"v": 8}),
        (9, {"v": 9}),  # over a version it never had: refused
    ]
    outcomes = {"raw": [], "orm": []}
    for expected, value in steps:
        for key, write in (("raw", _raw_write), ("orm", _orm_write)):
            if expected == "delete":
                delete_record(ns=ns, key=key, actor=who)
                continue
            if expected == 1 and value == {"v": 3}:  # an open conflict of this writer, superseded next
                store_open_conflict(ns, key, who)
            written, created, record = write(ns, key, value, expected, who)
            outcomes[key].append(
                (written, created, record and (record.version, record.value, record.deleted))
            )
    assert outcomes["raw"] == outcomes["orm"]
    assert [o[:2] for o in outcomes["raw"]] == [
        (True, True), (False, False), (True, False), (False, False), (True, False),
        (False, False), (True, True), (True, False), (False, False),
    ]  # fmt: skip

    def history(key):
        versions = RecordVersion.objects.filter(record__key=key).order_by("version")
        events = Event.objects.filter(subject=key).exclude(type="conflict.opened").order_by("seq")
        return (
            list(versions.values_list("version", "value", "deleted", "updated_by")),
            [
                (e.type, {k: v for k, v in e.payload.items() if k not in ("key", "conflict_id")})
                for e in events
            ],
            list(Conflict.objects.filter(key=key).values_list("status", "resolution")),
        )

    assert history("raw") == history("orm")
    assert history("raw")[2] == [("resolved", "superseded")]
    # Over version n, a key never written is refused without a row.
    assert _raw_write(ns, "never", {"v": 1}, 4, who) == (False, False, None)
    assert not Record.objects.filter(key="never").exists()


def store_open_conflict(ns, key, who):
    Conflict.objects.create(ns=ns, key=key, agent=who.agent, actor=who.name, expected_version=7)


@covers("KEEP_CONFLICT")
def test_keep_conflict_creates_then_refreshes_the_one_open_conflict_as_update_or_create(ns, alpha):
    def raw(key, expected):
        return rows(
            sql.KEEP_CONFLICT,
            [ns.pk, key, alpha.pk, "alpha", expected, 3, json.dumps({"p": expected}), False, "", now()],
        )[0]

    def orm(key, expected):
        return Conflict.objects.update_or_create(
            ns=ns,
            key=key,
            actor="alpha",
            status="open",
            defaults={"agent": alpha, "expected_version": expected, "current_version": 3},
            create_defaults={"agent": alpha, "expected_version": expected, "current_version": 3},
        )

    first, again = raw("raw", 1), raw("raw", 2)
    (made, created), (same, created_again) = orm("orm", 1), orm("orm", 2)
    assert (first[2], again[2]) == (created, created_again) == (True, False)
    assert first[0] == again[0] and made.pk == same.pk
    fields = ("status", "expected_version", "current_version", "agent_id")
    assert Conflict.objects.filter(key="raw").values_list(*fields).get() == (
        Conflict.objects.filter(key="orm").values_list(*fields).get()
    )


@covers("FENCE_FOR_SHARE")
def test_the_fence_read_for_share_is_the_row_select_for_update_reads(ns):
    LockFence.objects.create(ns=ns, resource="db", token=3, holder="alpha", expires=now())
    for resource in ("db", "none"):
        raw = list(LockFence.objects.raw(sql.FENCE_FOR_SHARE, [ns.pk, resource]))
        orm = list(LockFence.objects.select_for_update().filter(ns=ns, resource=resource))
        assert [_fields(f) for f in raw] == [_fields(f) for f in orm]
    assert sql.FENCE_FOR_SHARE.endswith("FOR SHARE")  # not FOR UPDATE: fenced writers share it


def _orm_acquire(ns, resource, owner, stamp, expires):
    with transaction.atomic():
        fence = LockFence.objects.select_for_update().filter(ns=ns, resource=resource).first()
        if fence is not None and fence.held:
            append_event(
                ns=ns,
                type="lock.expired",
                actor="system",
                agent_id=fence.holder,
                subject=resource,
                payload={"resource": resource, "holder": fence.holder, "fencing_token": fence.token},
            )
        if fence is None:
            fence = LockFence(ns=ns, resource=resource, token=0)
        fence.token += 1
        fence.holder, fence.held, fence.acquired, fence.expires = owner, True, stamp, expires
        fence.save()
        append_event(
            ns=ns,
            type="lock.acquired",
            actor=owner,
            agent_id=owner,
            subject=resource,
            payload={
                "resource": resource,
                "ttl_seconds": 30,
                "expires_at": iso(expires),
                "fencing_token": fence.token,
            },
        )
        return fence.token


def lock_log(resource):
    """A lock's events in log order, told apart from another lock's only by its name."""
    events = Event.objects.filter(subject=resource).order_by("seq")
    return [
        (e.type, e.actor, e.agent_id, {k: v for k, v in e.payload.items() if k != "resource"}) for e in events
    ]


def _raw_acquire(ns, resource, owner, stamp, expires):
    params = {
        "ns": ns.pk,
        "resource": resource,
        "owner": owner,
        "agent_id": owner,
        "stamp": stamp,
        "expires": expires,
        "expires_at": iso(expires),
        "ttl": 30,
        "txn": "",
    }
    return rows(sql.ACQUIRE_LOCK, params)[0][0]


def _orm_end(ns, resource, owner, token, type):
    with transaction.atomic():
        ended = LockFence.objects.filter(
            ns=ns, resource=resource, token=token, holder=owner, held=True
        ).update(held=False)
        if ended:
            payload = {"resource": resource, "fencing_token": token}
            if type != "lock.released":
                payload["holder"] = owner
            append_event(ns=ns, type=type, actor=owner, agent_id=owner, subject=resource, payload=payload)
        return ended


def _raw_end(ns, resource, owner, token, type):
    params = {
        "ns": ns.pk,
        "resource": resource,
        "owner": owner,
        "token": token,
        "type": type,
        "actor": owner,
        "stamp": now(),
        "txn": "",
    }
    with connection.cursor() as cursor:
        cursor.execute(sql.END_LOCK, params)
        return cursor.rowcount


@covers("ACQUIRE_LOCK", "END_LOCK")
def test_acquire_and_end_lock_write_the_fence_and_events_their_orm_forms_write(ns):
    stamp = now()
    expires = stamp + timedelta(seconds=30)
    outcomes = {}
    for resource, acquire, end in (("raw", _raw_acquire, _raw_end), ("orm", _orm_acquire, _orm_end)):
        outcomes[resource] = [
            acquire(ns, resource, "alpha", stamp, expires),  # a new fence: token 1
            end(ns, resource, "alpha", 1, "lock.released"),
            end(ns, resource, "alpha", 1, "lock.released"),  # no longer held: nothing
            acquire(ns, resource, "beta", stamp, expires),  # token 2
            acquire(ns, resource, "alpha", stamp, expires),  # beta's lapsed unrecorded: expired, then 3
            end(ns, resource, "alpha", 3, "lock.expired"),
        ]
    assert outcomes["raw"] == outcomes["orm"] == [1, 1, 0, 2, 3, 1]
    fields = ("token", "holder", "held", "acquired", "expires")
    assert LockFence.objects.filter(resource="raw").values_list(*fields).get() == (
        LockFence.objects.filter(resource="orm").values_list(*fields).get()
    )

    assert lock_log("raw") == lock_log("orm")


@covers("HAND_LOCK")
def test_hand_lock_writes_what_an_end_and_the_next_acquire_write(ns):
    stamp = now()
    expires = stamp + timedelta(seconds=30)
    for resource in ("raw", "two"):
        _raw_acquire(ns, resource, "alpha", stamp, expires)
    params = {
        "ns": ns.pk,
        "resource": "raw",
        "holder": "alpha",
        "token": 1,
        "owner": "beta",
        "agent_id": "beta",
        "stamp": stamp,
        "expires": expires,
        "expires_at": iso(expires),
        "ttl": 30,
        "txn": "",
    }
    assert rows(sql.HAND_LOCK, params) == [(2,)]
    assert rows(sql.HAND_LOCK, params) == []  # alpha no longer holds it: nothing
    _raw_end(ns, "two", "alpha", 1, "lock.released")
    _raw_acquire(ns, "two", "beta", stamp, expires)
    fields = ("token", "holder", "held", "acquired", "expires")
    assert LockFence.objects.filter(resource="raw").values_list(*fields).get() == (
        LockFence.objects.filter(resource="two").values_list(*fields).get()
    )

    assert lock_log("raw") == lock_log("two")


VERSION = BigIntegerField()


@covers("LOCK_ROWS")
def test_lock_rows_reads_the_versions_the_orm_reads_row_locked(ns, alpha):
    for key in ("a", "b", "c"):
        write_record(ns=ns, key=key, value={}, actor=actor(alpha))
    write_record(ns=ns, key="b", value={}, actor=actor(alpha))
    delete_record(ns=ns, key="c", actor=actor(alpha))
    read = ["c", "a", "b", "never"]
    raw = rows(sql.LOCK_ROWS, [ns.pk, sorted(read)])
    orm = (
        Record.objects.select_for_update()
        .filter(ns=ns, key__in=read)
        .order_by("key")
        .values_list("key", Case(When(deleted=True, then=0), default="version", output_field=VERSION))
    )
    assert raw == list(orm) == [("a", 1), ("b", 2), ("c", 0)]


@covers("RELAY_LOCK", "RELAY_PENDING", "RELAY_WAITING", "RELAY_FETCH", "RELAY_MARK")
def test_the_relays_statements_read_and_mark_what_the_orm_forms_do(ns, alpha, make_agent):
    other = make_agent("zed", namespace="elsewhere").ns
    for n in range(1, 4):
        event(ns, n, type="custom.x", payload={"n": n}, agent="alpha")
    Namespace.objects.filter(pk=ns.pk).update(head=3, published=1)
    Namespace.objects.filter(pk=other.pk).update(head=2, published=2)
    assert rows(sql.RELAY_LOCK, [12345]) == [(True,)]
    rows("SELECT pg_advisory_unlock(12345)")

    pending = Namespace.objects.filter(head__gt=F("published")).order_by("id")
    assert rows(sql.RELAY_PENDING) == list(pending.values_list("id", "name", "published", "head"))
    floor = Sequencer.objects.aggregate(floor=Max("floor"))["floor"] or 0
    assert rows(sql.RELAY_WAITING) == [(Event.objects.filter(position=None, ord__gte=floor).exists(),)]

    fetched = rows(sql.RELAY_FETCH, [ns.pk, 1, 3])
    orm = (
        Event.objects.filter(ns=ns, position__gt=1, position__lte=3)
        .order_by("position")
        .values_list(
            "position",
            "type",
            "actor",
            "agent_id",
            "subject",
            Cast("payload", TextField()),
            Cast(Extract("created", "epoch") * 1000000, BigIntegerField()),
            "txn",
            "seq",
        )
    )
    assert fetched == list(orm)
    assert [json.loads(row[5]) for row in fetched] == [{"n": 2}, {"n": 3}]
    assert [iso_from_us(row[6]) for row in fetched] == [
        iso(e.created) for e in Event.objects.filter(ns=ns, position__in=[2, 3]).order_by("position")
    ]

    rows(sql.RELAY_MARK, [[ns.pk, other.pk], [3, 1]])  # never backwards
    assert list(
        Namespace.objects.filter(pk__in=[ns.pk, other.pk]).order_by("pk").values_list("published")
    ) == [
        (3,),
        (2,),
    ]


@covers("LOCK_KEYS")
def test_lock_keys_takes_one_advisory_lock_per_distinct_key_present_or_not(ns, alpha):
    write_record(ns=ns, key="a", value={}, actor=actor(alpha))
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    params = {
        "lock_space": records.KEY_LOCKS,
        "lock_ns": str(ns.pk),
        "lock_keys": json.dumps(["a", "b", "c"]),
    }
    assert rows(sql.LOCK_KEYS, params) == [(3,)]
    assert rows(held) == [(3,)]  # none of them a row lock: "b" and "c" do not exist


@covers("WRITE_MANY", "WRITE_MANY_LOCKING")
def test_write_many_does_for_each_write_what_write_records_orm_form_does(ns, alpha):
    who = actor(alpha)
    for key in ("b", "c", "d"):
        for prefix in ("raw/", "orm/"):
            _orm_write(ns, prefix + key, {"v": 0}, None, who)
    for prefix in ("raw/", "orm/"):
        delete_record(ns=ns, key=prefix + "d", actor=who)
        store_open_conflict(ns, prefix + "b", who)
    writes = [("a", 0), ("b", 1), ("c", 7), ("d", 0), ("e", None), ("f", 3)]

    def raw(statement):
        params = {
            **records._lock_params(ns, ["raw/" + key for key, _ in writes]),
            "ns": ns.pk,
            "writes": json.dumps([["raw/" + key, {"k": key}, expected] for key, expected in writes]),
            "actor": who.name,
            "agent_id": who.agent_id,
            "stamp": now(),
            "txn": "",
        }
        found = {row[0]: row[1:4] for row in rows(statement, params)}
        return [found.get(n, (False, False, None)) for n in range(1, len(writes) + 1)]

    by_raw = raw(sql.WRITE_MANY)
    by_orm = []
    for key, expected in writes:
        written, created, record = _orm_write(ns, "orm/" + key, {"k": key}, expected, who)
        by_orm.append((written, created, record and record.version))
    assert by_raw == by_orm
    assert [w[:2] for w in by_raw] == [
        (True, True),
        (True, False),
        (False, False),
        (True, True),
        (True, True),
    ] + [(False, False)]

    def state(prefix):
        found = Record.objects.filter(key__startswith=prefix).order_by("key")
        events = (
            Event.objects.filter(subject__startswith=prefix).exclude(type="conflict.opened").order_by("seq")
        )
        return (
            [(r.key[4:], r.version, r.value, r.deleted) for r in found],
            sorted((e.subject[4:], e.type, e.payload.get("version")) for e in events),
            list(Conflict.objects.filter(key__startswith=prefix).values_list("status", "resolution")),
        )

    assert state("raw/") == state("orm/")
    assert raw(sql.WRITE_MANY_LOCKING)[4] == (True, False, 2)  # the same statement, its keys locked first


@covers("WRITE_MANY_ALL")
def test_write_many_all_keeps_every_write_or_none(ns, alpha):
    who = actor(alpha)
    for key in ("a", "b"):
        _orm_write(ns, key, {"v": 0}, None, who)

    def run(writes):
        params = {
            **records._lock_params(ns, [key for key, _ in writes]),
            "ns": ns.pk,
            "writes": json.dumps([[key, {"k": key}, expected] for key, expected in writes]),
            "actor": who.name,
            "agent_id": who.agent_id,
            "stamp": now(),
            "txn": "",
        }
        with transaction.atomic():  # a savepoint: the refusal aborts the statement, not the test
            return [row[:4] for row in rows(sql.WRITE_MANY_ALL, params)]

    def kept():
        return (
            list(Record.objects.order_by("key").values_list("key", "version", "value")),
            Event.objects.count(),
            RecordVersion.objects.count(),
            Conflict.objects.count(),
        )

    before = kept()
    # One refused among writes it would make: the guard raises and none is kept.
    with pytest.raises(DatabaseError) as refused:
        run([("a", 1), ("b", 7), ("c", None)])
    assert refused.value.__cause__.sqlstate == sql.REFUSED_ALL
    assert kept() == before
    # Every one refused: nothing to undo, the refusals answered as WRITE_MANY_LOCKING answers them.
    assert run([("a", 7), ("b", 0), ("c", 2)]) == [(1, False, False, 1), (2, False, False, 1)]
    assert kept() == before
    # None refused: all made, as WRITE_MANY_LOCKING makes them.
    made = run([("a", 1), ("b", None), ("c", 0)])
    assert made == [(1, True, False, 2), (2, True, False, 2), (3, True, True, 1)]
    assert kept()[0] == [("a", 2, {"k": "a"}), ("b", 2, {"k": "b"}), ("c", 1, {"k": "c"})]


def _scans(plan: dict, table: str) -> list[dict]:
    """The scans of `table` in an EXPLAIN (FORMAT JSON) plan."""
    found = [plan] if plan.get("Relation Name") == table and "Scan" in plan["Node Type"] else []
    for child in plan.get("Plans", []):
        found += _scans(child, table)
    return found


def test_write_many_reads_records_by_key_however_many_the_namespace_holds(ns, alpha):
    who = actor(alpha)
    Record.objects.bulk_create(
        Record(ns=ns, key=f"rec-{n:05d}", value=n, version=1, updated_by=who.name) for n in range(5000)
    )
    rows("ANALYZE " + Record._meta.db_table)
    writes = [[f"rec-{n:05d}", n, 1] for n in range(0, 5000, 100)]
    params = {
        **records._lock_params(ns, [key for key, _, _ in writes]),
        "ns": ns.pk,
        "writes": json.dumps(writes),
        "actor": who.name,
        "agent_id": who.agent_id,
        "stamp": now(),
        "txn": "",
    }
    for statement in (sql.WRITE_MANY, sql.WRITE_MANY_LOCKING, sql.WRITE_MANY_ALL):
        [[[plan]]] = rows("EXPLAIN (FORMAT JSON) " + statement, params)
        scans = _scans(plan["Plan"], Record._meta.db_table)
        # the written keys and the refused ones: each an index probe by key, never the namespace's
        # every record (a sequential scan, or all of them hashed)
        found = [(scan["Node Type"], scan.get("Index Cond")) for scan in scans]
        assert scans and all("key" in (cond or "") for _, cond in found), found
