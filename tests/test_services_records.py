"""Versioned records: DESIGN.md rule 1 (no lost updates) and the conflict inbox."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction

from memory_admin.errors import NotFound, VersionConflict
from memory_admin.models import Conflict, Event, Record, RecordVersion
from memory_admin.services.records import (
    Write,
    delete_record,
    get_record,
    record_versions,
    write_all_or_nothing,
    write_record,
    write_records,
)
from tests.conftest import actor


def _in_thread(fn):
    """Run `fn` with this thread's own database connection, closed afterwards."""

    def run(*args):
        try:
            return fn(*args)
        finally:
            connection.close()

    return run


def _increment(ns, agent, rounds: int, results) -> None:
    """One worker process: `rounds` read-modify-write increments with jittered backoff."""
    won, conflicts = [], 0
    try:
        for _ in range(rounds):
            pause = 0.005
            current = get_record(ns=ns, key="counter")
            while True:
                try:
                    record, _ = write_record(
                        ns=ns, key="counter", value={"n": current.value["n"] + 1},
                        expected_version=current.version, actor=actor(agent),
                    )  # fmt: skip
                except VersionConflict as refused:
                    conflicts += 1
                    # The refusal carries the record as it stands: modify that, no re-read.
                    current = Record(**{k: refused.details["current"][k] for k in ("value", "version")})
                    time.sleep(random.uniform(0, pause))  # jittered backoff, as the client does
                    pause = min(pause * 2, 0.2)
                    continue
                won.append(record.version)
                break
    finally:
        connection.close()
        results.put((won, conflicts))


@pytest.mark.django_db(transaction=True)
def test_concurrent_read_modify_write_loses_no_update(ns, alpha):
    # Processes, not threads: sixteen agents are sixteen programs, and one interpreter's lock
    # would serialise their Python work and stretch every read-to-write window.
    workers, rounds = 16, 50
    write_record(ns=ns, key="counter", value={"n": 0}, expected_version=0, actor=actor(alpha))
    connection.close()  # nothing open may be inherited: each forked worker opens its own
    connection.close_pool()
    forked = multiprocessing.get_context("fork")
    results = forked.Queue()
    procs = [forked.Process(target=_increment, args=(ns, alpha, rounds, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=100) for _ in procs]
    for proc in procs:
        proc.join(10)
        assert proc.exitcode == 0

    versions_won = [version for won, _ in outcomes for version in won]
    final = get_record(ns=ns, key="counter")
    assert final.value == {"n": workers * rounds}
    assert final.version == workers * rounds + 1
    assert len(versions_won) == len(set(versions_won)) == workers * rounds, "two writes returned one version"
    assert sum(conflicts for _, conflicts in outcomes) > 0, "the workers never raced; the test proved nothing"
    assert RecordVersion.objects.filter(record__key="counter").count() == workers * rounds + 1


@pytest.mark.django_db(transaction=True)
def test_create_only_race_has_exactly_one_winner(ns, make_agent):
    agents = [make_agent(f"creator-{i}") for i in range(10)]
    barrier = threading.Barrier(10)

    @_in_thread
    def create(agent):
        barrier.wait()
        try:
            write_record(ns=ns, key="plan", value={"by": agent.name}, expected_version=0, actor=actor(agent))
            return True
        except VersionConflict:
            return False

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(create, agents))

    assert results.count(True) == 1
    assert Record.objects.get(key="plan").version == 1
    assert Conflict.objects.filter(key="plan", status="open").count() == 9


@pytest.mark.django_db
def test_stale_expected_version_is_rejected_and_kept_as_conflict(ns, alpha, beta):
    write_record(ns=ns, key="plan", value={"v": 1}, expected_version=0, actor=actor(alpha))
    with pytest.raises(VersionConflict) as refused:
        write_record(ns=ns, key="plan", value={"v": 2}, expected_version=0, actor=actor(beta))
    conflict = Conflict.objects.get(key="plan")
    assert conflict.agent == beta and conflict.status == "open"
    assert conflict.current_version == 1 and conflict.proposed_value == {"v": 2}
    body = refused.value.body()["error"]
    assert body["conflict_id"] == conflict.pk and body["current"]["value"] == {"v": 1}
    assert get_record(ns=ns, key="plan").value == {"v": 1}, "a refused write changed the record"


@pytest.mark.django_db
def test_a_later_successful_write_by_the_same_agent_closes_its_conflict(ns, alpha, beta):
    write_record(ns=ns, key="plan", value={"v": 1}, actor=actor(alpha))
    with pytest.raises(VersionConflict):
        write_record(ns=ns, key="plan", value={"v": 2}, expected_version=7, actor=actor(beta))
    write_record(ns=ns, key="other", value=1, actor=actor(beta))
    assert Conflict.objects.get(key="plan").status == "open", "a write to another key closed it"
    write_record(ns=ns, key="plan", value={"v": 3}, expected_version=1, actor=actor(beta))
    conflict = Conflict.objects.get(key="plan")
    assert (conflict.status, conflict.resolution) == ("resolved", "superseded")
    assert Event.objects.filter(type="conflict.resolved", subject="plan").count() == 1


@pytest.mark.django_db
def test_a_write_is_planned_once_per_connection_not_per_call(ns, alpha):
    def prepared() -> list[tuple[int, int]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE %s ORDER BY name",
                ["%INSERT INTO memory_admin_recordversion%"],
            )
            return cursor.fetchall()

    record, _ = write_record(ns=ns, key="plan", value=0, expected_version=0, actor=actor(alpha))
    for n in range(1, 11):
        record, _ = write_record(
            ns=ns, key="plan", value=n, expected_version=record.version, actor=actor(alpha)
        )
    kept = prepared()
    assert len(kept) == 1  # create-only and over-version-n: one statement, prepared once
    assert sum(generic + custom for generic, custom in kept) == 11
    record, _ = write_record(ns=ns, key="plan", value=11, expected_version=record.version, actor=actor(alpha))
    assert len(prepared()) == 1 and record.version == 12


@pytest.mark.django_db
def test_a_run_of_puts_is_planned_once_per_connection_not_per_call(ns, alpha):
    def prepared() -> list[tuple[int, int]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT generic_plans + custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE %s ORDER BY name",
                ["%jsonb_array_elements(%"],  # the run's statement, not the single write's
            )
            return [row[0] for row in cursor.fetchall()]

    for n in range(12):  # with the keys' locks taken by the statement, and without
        written = write_records(
            ns=ns, writes=[Write("a", n), Write("b", n)], actor=actor(alpha), lock={"a", "b"} if n % 2 else ()
        )
        assert [w.version for w in written] == [n + 1, n + 1]
    assert prepared() == [6, 6]


@pytest.mark.django_db
def test_unconditional_write_upserts_and_counts_versions(ns, alpha):
    record, created = write_record(ns=ns, key="notes", value="a", actor=actor(alpha))
    assert (record.version, created) == (1, True)
    record, created = write_record(ns=ns, key="notes", value="b", actor=actor(alpha))
    assert (record.version, created) == (2, False)
    assert [v.value for v in record_versions(ns=ns, key="notes")] == ["b", "a"]


@pytest.mark.django_db
def test_delete_checks_the_version_and_leaves_a_tombstone_so_versions_never_repeat(ns, alpha):
    write_record(ns=ns, key="draft", value=1, actor=actor(alpha))
    with pytest.raises(VersionConflict):
        delete_record(ns=ns, key="draft", expected_version=5, actor=actor(alpha))
    assert get_record(ns=ns, key="draft").value == 1
    delete_record(ns=ns, key="draft", expected_version=1, actor=actor(alpha))
    with pytest.raises(NotFound):
        get_record(ns=ns, key="draft")
    record, created = write_record(ns=ns, key="draft", value=2, expected_version=0, actor=actor(alpha))
    assert created and record.version == 3
    assert [v.version for v in record_versions(ns=ns, key="draft")] == [3, 2, 1]


@pytest.mark.django_db
def test_every_write_appends_its_event_in_the_same_transaction(ns, alpha):
    before = Event.objects.count()
    write_record(ns=ns, key="k", value=1, actor=actor(alpha))
    with pytest.raises(VersionConflict):
        write_record(ns=ns, key="k", value=2, expected_version=0, actor=actor(alpha))
    types = list(Event.objects.order_by("seq").values_list("type", flat=True)[before:])
    assert types == ["record.written", "conflict.opened"]


@pytest.mark.django_db(transaction=True)
def test_all_or_nothing_writes_none_when_one_is_invalid_and_refuses_a_transaction(alpha):
    write_record(ns=alpha.ns, key="a", value=1, actor=actor(alpha))
    before = (Event.objects.count(), RecordVersion.objects.count())
    writes = [Write("a", 2, 1), Write("b", "nul \x00 in text", None)]
    assert write_all_or_nothing(ns=alpha.ns, writes=writes, actor=actor(alpha)) is None
    assert (Event.objects.count(), RecordVersion.objects.count()) == before
    assert Record.objects.get(key="a").version == 1 and not Record.objects.filter(key="b").exists()
    made = write_all_or_nothing(ns=alpha.ns, writes=[Write("a", 2, 1), Write("b", 1, 0)], actor=actor(alpha))
    assert [(w.key, w.version, w.created) for w in made] == [("a", 2, False), ("b", 1, True)]
    # It commits by itself: inside someone's transaction it would commit for them.
    with pytest.raises(RuntimeError), transaction.atomic():
        write_all_or_nothing(ns=alpha.ns, writes=[Write("c", 1, None)], actor=actor(alpha))
