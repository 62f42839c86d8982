"""An operator resolving an agent's conflict while that agent writes the key again: the two take
the record and the conflict in one order, so one waits for the other and neither deadlocks."""

import pytest
from django.db import connection, transaction

from memory_admin.errors import Invalid, VersionConflict
from memory_admin.models import Conflict, Record
from memory_admin.services import Actor, conflicts
from memory_admin.services.records import write_record
from tests.conftest import actor, on_own_connection, wait_for_waiters

pytestmark = pytest.mark.django_db(transaction=True)


def test_accepting_a_conflict_while_its_writer_writes_the_key_again_does_not_deadlock(ns, alpha):
    agent = actor(alpha)
    write_record(ns=ns, key="plan", value="v1", actor=agent)
    with pytest.raises(VersionConflict):
        write_record(ns=ns, key="plan", value="stale", expected_version=7, actor=agent)
    conflict = Conflict.objects.get(key="plan", status="open")

    with transaction.atomic():
        with connection.cursor() as cursor:  # this side waits last: it would see the deadlock
            cursor.execute("SET LOCAL deadlock_timeout = '10ms'")
        # The agent's write, as its one statement runs it: the record row first ...
        Record.objects.select_for_update().get(ns=ns, key="plan")
        resolving, resolved = on_own_connection(
            lambda: conflicts.resolve_conflict(
                conflict=conflict, action="accept", actor=Actor(name="operator:admin"), expected_version=1
            ),
            deadlock_timeout="10s",
        )
        wait_for_waiters(1)  # the operator's resolution waits for the record
        # ... then its open conflicts on the key, closed as superseded by this write.
        record, _ = write_record(ns=ns, key="plan", value="v2", expected_version=1, actor=agent)
    resolving.join(timeout=30)

    assert record.version == 2
    conflict.refresh_from_db()
    assert (conflict.status, conflict.resolution) == ("resolved", "superseded")
    # The operator went second and found it resolved: nothing of theirs was written.
    assert isinstance(resolved[0], Invalid) and "already resolved" in resolved[0].message, resolved
    assert Record.objects.get(ns=ns, key="plan").value == "v2"


def test_accepting_a_conflict_on_an_absent_key_while_its_writer_creates_the_key_does_not_deadlock(ns, alpha):
    agent = actor(alpha)
    with pytest.raises(VersionConflict):  # over version 3 of a record that does not exist
        write_record(ns=ns, key="draft", value="stale", expected_version=3, actor=agent)
    conflict = Conflict.objects.get(key="draft", status="open")

    with transaction.atomic():
        with connection.cursor() as cursor:  # this side waits last: it would see the deadlock
            cursor.execute("SET LOCAL deadlock_timeout = '10ms'")
        # The agent's write, as its one statement runs it: the new record's row first ...
        write_record(ns=ns, key="draft", value="v1", expected_version=0, actor=Actor(name="creator"))
        resolving, resolved = on_own_connection(
            lambda: conflicts.resolve_conflict(
                conflict=conflict, action="accept", actor=Actor(name="operator:admin"), expected_version=0
            ),
            deadlock_timeout="10s",
        )
        wait_for_waiters(1)  # the operator's create waits for the uncommitted one
        # ... then its open conflicts on the key, closed as superseded by this write.
        record, _ = write_record(ns=ns, key="draft", value="v2", actor=agent)
    resolving.join(timeout=30)

    assert record.version == 2
    conflict.refresh_from_db()
    assert (conflict.status, conflict.resolution) == ("resolved", "superseded")
    # The operator's create found the key taken: refused and kept as the operator's own conflict.
    assert isinstance(resolved[0], VersionConflict), resolved
    assert Record.objects.get(ns=ns, key="draft").value == "v2"
