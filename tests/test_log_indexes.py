"""The log's indexes: its readers' indexes hold positioned events only (models.Event.Meta), so an
append writes two index entries, not five; every query that reads the log must still reach them.

A partial index serves a query only when the query's conditions imply the index's, here that the
position is not null. These plans are taken with sequential scans priced out of reach, so what
each asserts is that the planner *can* probe a namespace's range of an index, whatever it would
choose for a table this small.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import QuerySet

from memory_admin import positions, sql
from memory_admin.models import Event, LockFence, Namespace, Record, RecordVersion
from memory_admin.services import events as log
from memory_admin.services.records import write_record
from memory_admin.views.screens import View
from tests.conftest import actor, sequence_here

pytestmark = pytest.mark.django_db


def _plan(statement: str, params=None) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
        [[[plan]]] = cursor.fetchall()
    return plan["Plan"]


def _queryset_plan(events: QuerySet) -> dict:
    statement, params = events.query.sql_with_params()
    return _plan(statement, params)


def _event_scans(plan: dict) -> list[tuple[str, str | None, str]]:
    """(index, index condition, node type) of each scan of the event table in `plan`."""
    found = []
    if plan.get("Relation Name") == Event._meta.db_table:
        found.append((plan.get("Index Name", ""), plan.get("Index Cond"), plan["Node Type"]))
    for child in plan.get("Plans", []):
        found += _event_scans(child)
    return found


def _probes_the_namespace(plan: dict, *indexes: str) -> None:
    """Every scan of the log in `plan` is a probe of one of `indexes` within the namespace."""
    scans = _event_scans(plan)
    assert scans, plan
    for name, cond, node in scans:
        assert node != "Seq Scan" and name in indexes and "ns_id" in (cond or ""), scans


@pytest.fixture
def ns_with_log(ns, alpha) -> Namespace:
    """A log of 5,000 notes by another agent around a few writes, status changes and lock events of
    alpha's, its statistics taken: the planner picks the index that narrows a filter best, so
    a plan that does not probe it is one that cannot."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Event._meta.db_table} (ns_id, position, ord, txn, type, actor, agent_id, subject,"
            " payload, created) SELECT %s, g, g, '', 'custom.note', 'beta', 'beta', 'n', '{}', now()"
            " FROM generate_series(1, 5000) g",
            [ns.pk],
        )
        cursor.execute(f"UPDATE {Namespace._meta.db_table} SET head = 5000 WHERE id = %s", [ns.pk])
    for n in range(3):
        write_record(ns=ns, key=f"k{n}", value=n, actor=actor(alpha))
        log.append_event(ns=ns, type="status.changed", actor=actor(alpha), payload={"status": "up"})
    log.append_event(ns=ns, type="lock.acquired", actor=actor(alpha), subject="db", payload={})
    sequence_here()
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Event._meta.db_table}")
    return ns


def test_an_append_leaves_the_readers_indexes_until_the_sequencer_stamps_it(ns, alpha):
    """The write path's saving itself: an event waiting for its position is in the primary key and
    the sequencer's index only; it enters the readers' ones when it is stamped."""
    table = Event._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s ORDER BY indexname", [table]
        )
        indexes = dict(cursor.fetchall())
    readers = {name: text for name, text in indexes.items() if "position" in text.split(" USING ")[1]}
    readers.pop("event_unsequenced_idx")
    assert set(readers) == {
        "event_ns_agent_idx",
        "event_ns_lock_idx",
        "event_ns_position_uniq",
        "event_ns_type_idx",
    }
    assert all('"position" IS NOT NULL' in text for text in readers.values()), readers


def test_the_apis_event_lists_probe_the_namespace_in_their_index(ns_with_log):
    ns = ns_with_log
    base = Event.objects.filter(ns=ns, position__gt=0).order_by("position")[:50]
    _probes_the_namespace(_queryset_plan(base), "event_ns_position_uniq")
    by_type = Event.objects.filter(ns=ns, position__gt=0, type__in=["record.written"]).order_by("position")[
        :50
    ]
    _probes_the_namespace(_queryset_plan(by_type), "event_ns_type_idx")
    by_agent = Event.objects.filter(ns=ns, position__gt=0, agent_id="alpha").order_by("position")[:50]
    _probes_the_namespace(_queryset_plan(by_agent), "event_ns_agent_idx")


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({}, "event_ns_position_uniq"),
        ({"type": "record.written"}, "event_ns_type_idx"),
        ({"agent": "alpha"}, "event_ns_agent_idx"),
    ],
)
def test_the_timeline_probes_the_namespace_in_its_index(ns_with_log, filters, index):
    events = View(page="timeline", **filters).events(ns_with_log)[:50]
    _probes_the_namespace(_queryset_plan(events), index)


def test_the_consoles_other_log_readers_probe_the_namespace(ns_with_log):
    ns = ns_with_log
    newest = positions.newest_first(positions.log(ns).filter(agent_id="alpha"))[:15]  # the cascade page
    _probes_the_namespace(_queryset_plan(newest), "event_ns_agent_idx")
    through = positions.newest_first(positions.through(ns, 4000))[:50]  # time travel
    _probes_the_namespace(_queryset_plan(through), "event_ns_position_uniq")


def test_the_raw_statements_over_the_log_probe_the_namespace(ns_with_log, alpha):
    ns = ns_with_log
    LockFence.objects.create(ns=ns, resource="db", token=1, holder="alpha", expires="2030-01-01T00:00:00Z")
    edges = [4990, 5000, 5010]
    counts = {"ns": ns.pk, "edges": edges, "lo": 4990, "hi": 5010}
    cases = [
        (sql.DISTINCT_TYPES, {"ns": ns.pk, "limit": 10}, "event_ns_type_idx"),
        (sql.TYPED_COUNTS, {**counts, "types": ["record.written"]}, "event_ns_type_idx"),
        (sql.AGENT_COUNTS, {**counts, "agent": "alpha"}, "event_ns_agent_idx"),
        # an agent's last status event: by agent or by the two status types, whichever narrows more
        (
            sql.STATUS_AT,
            {"ns": ns.pk, "n": 5010, "after": "", "limit": 10},
            "event_ns_agent_idx",
            "event_ns_type_idx",
        ),
        (sql.LOCKS_AT, {"ns": ns.pk, "n": 5010, "after": "", "limit": 10}, "event_ns_lock_idx"),
        (sql.RELAY_FETCH, [ns.pk, 5000, 5010], "event_ns_position_uniq"),
    ]
    for statement, params, *indexes in cases:
        _probes_the_namespace(_plan(statement, params), *indexes)
    # The bisection's probes, inside a recursive CTE.
    bisect = _plan(sql.BISECT, {"ns": ns.pk, "end": 5010, "moments": ["2030-01-01T00:00:00Z"]})
    _probes_the_namespace(bisect, "event_ns_position_uniq")


def test_the_types_menu_lists_positioned_events_only(ns_with_log, alpha):
    """DISTINCT_TYPES repeats the index's condition: a type whose events all wait for their
    position is not in the menu until the sequencer stamps one."""
    ns = ns_with_log
    log.append_event(ns=ns, type="custom.waiting", actor=actor(alpha), payload={})
    with connection.cursor() as cursor:
        cursor.execute(sql.DISTINCT_TYPES, {"ns": ns.pk, "limit": 10})
        before = [value for (value,) in cursor.fetchall()]
    sequence_here()
    with connection.cursor() as cursor:
        cursor.execute(sql.DISTINCT_TYPES, {"ns": ns.pk, "limit": 10})
        after = [value for (value,) in cursor.fetchall()]
    assert "custom.waiting" not in before and {"custom.note", "record.written"} <= set(before)
    assert after == sorted([*before, "custom.waiting"])


def test_a_namespace_deleted_through_the_orm_takes_its_records_versions_along(ns, alpha):
    """The versions' foreign key is the ORM's alone now (models.RecordVersion.record): its
    cascade still removes them with their records."""
    write_record(ns=ns, key="k", value=1, actor=actor(alpha))
    write_record(ns=ns, key="k", value=2, actor=actor(alpha), expected_version=1)
    record = Record.objects.get(ns=ns, key="k")
    assert RecordVersion.objects.filter(record=record).count() == 2
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass",
            [RecordVersion._meta.db_table],
        )
        assert cursor.fetchone()[0] == 0
    ns.delete()
    assert not RecordVersion.objects.filter(record_id=record.pk).exists()
    assert not Record.objects.filter(pk=record.pk).exists()
