"""Time travel on real Postgres: old versions restored as new versioned writes, and a namespace
as it was at an event of its log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from memory_admin import positions
from memory_admin import redis as r
from memory_admin.errors import Invalid, VersionConflict
from memory_admin.models import Conflict, Event, LockFence, Record
from memory_admin.services import Actor
from memory_admin.services.events import sequence
from memory_admin.services.history import locks_at, moment, records_at, restore_version, statuses_at
from memory_admin.services.locks import acquire_lock, force_release, release_lock, sweep_expired_locks
from memory_admin.services.records import delete_record, write_record
from memory_admin.services.status import heartbeat
from tests.conftest import actor

pytestmark = pytest.mark.django_db(transaction=True)
OPERATOR = Actor(name="operator:otto")


def test_an_old_version_is_restored_as_a_new_version_with_its_event(alpha):
    ns = alpha.ns
    for n in (1, 2, 3):
        write_record(ns=ns, key="plan", value={"step": n}, actor=actor(alpha))
    record, old = restore_version(ns=ns, key="plan", version=1, expected_version=3, actor=OPERATOR)
    assert (record.version, record.value, old.version) == (4, {"step": 1}, 1)
    sequence()  # no relay runs here
    event = positions.newest_first(positions.log(ns)).first()
    assert (event.type, event.actor, event.payload["version"]) == ("record.written", "operator:otto", 4)


def test_a_restore_over_a_record_that_moved_is_refused_and_kept_as_a_conflict(alpha, beta):
    ns = alpha.ns
    write_record(ns=ns, key="plan", value={"step": 1}, actor=actor(alpha))
    write_record(ns=ns, key="plan", value={"step": 2}, actor=actor(alpha))
    write_record(ns=ns, key="plan", value={"step": 3}, actor=actor(beta))  # after the operator looked
    with pytest.raises(VersionConflict):
        restore_version(ns=ns, key="plan", version=1, expected_version=2, actor=OPERATOR)
    assert Record.objects.get(key="plan").value == {"step": 3}
    conflict = Conflict.objects.get(key="plan", actor="operator:otto")
    assert conflict.proposed_value == {"step": 1} and conflict.expected_version == 2


def test_a_delete_cannot_be_restored(alpha):
    write_record(ns=alpha.ns, key="plan", value={"step": 1}, actor=actor(alpha))
    delete_record(ns=alpha.ns, key="plan", actor=actor(alpha))
    write_record(ns=alpha.ns, key="plan", value={"step": 3}, actor=actor(alpha))
    with pytest.raises(Invalid):
        restore_version(ns=alpha.ns, key="plan", version=2, expected_version=3, actor=OPERATOR)


def test_the_namespace_as_of_an_event_shows_records_and_status_as_they_were(alpha, beta):
    ns = alpha.ns
    write_record(ns=ns, key="plan", value={"step": 1}, actor=actor(alpha))
    heartbeat(agent=alpha, status="drafting", ttl_seconds=60, actor=actor(alpha))
    then = positions.head(ns)
    write_record(ns=ns, key="plan", value={"step": 2}, actor=actor(alpha))
    write_record(ns=ns, key="later", value={"x": 1}, actor=actor(beta))
    heartbeat(agent=alpha, status="reviewing", ttl_seconds=60, actor=actor(alpha))
    write_record(ns=ns, key="gone", value=1, actor=actor(beta))
    delete_record(ns=ns, key="gone", actor=actor(beta))

    when = moment(ns=ns, event=then)
    [plan] = records_at(ns=ns, when=when)
    assert (plan.key, plan.version, plan.value, plan.current) == ("plan", 1, {"step": 1}, 2)
    [status] = statuses_at(ns=ns, when=when)
    assert (status.agent, status.status, status.state) == ("alpha", "drafting", "live")

    now = moment(ns=ns, event=positions.head(ns))
    assert [r.key for r in records_at(ns=ns, when=now)] == ["later", "plan"]  # "gone" was deleted
    assert statuses_at(ns=ns, when=now)[0].status == "reviewing"
    by_time = moment(ns=ns, at=Event.objects.get(ns=ns, **{positions.FIELD: then}).created)
    assert by_time.event == then
    assert records_at(ns=ns, when=moment(ns=ns, event=0)) == []


def test_the_namespace_as_of_an_event_shows_the_locks_held_then_from_the_log(alpha, beta):
    ns = alpha.ns
    draft = acquire_lock(ns=ns, resource="draft", actor=actor(alpha), ttl_seconds=60)
    dataset = acquire_lock(ns=ns, resource="dataset", actor=actor(alpha), ttl_seconds=60)
    notes = acquire_lock(ns=ns, resource="notes", actor=actor(beta), ttl_seconds=60)
    then = positions.head(ns)
    release_lock(ns=ns, resource="draft", token=draft.token, actor=actor(alpha))
    force_release(ns=ns, resource="dataset", reason="stuck", actor=OPERATOR)
    # beta's lease lapses (the clock moved, not waited out) and the sweep records it.
    r.client().delete(r.lock_key("team", "notes"))
    LockFence.objects.filter(resource="notes").update(expires=timezone.now() - timedelta(seconds=1))
    assert sweep_expired_locks() == 1
    again = acquire_lock(ns=ns, resource="draft", actor=actor(beta), ttl_seconds=60)

    held_then = locks_at(ns=ns, when=moment(ns=ns, event=then))
    assert [(lock.resource, lock.holder, lock.token) for lock in held_then] == [
        ("dataset", "alpha", dataset.token),
        ("draft", "alpha", draft.token),
        ("notes", "beta", notes.token),
    ]
    held_now = locks_at(ns=ns, when=moment(ns=ns, event=positions.head(ns)))
    assert [(lock.resource, lock.holder, lock.token) for lock in held_now] == [("draft", "beta", again.token)]
    assert locks_at(ns=ns, when=moment(ns=ns, event=then - 3)) == []  # before the first acquire
    assert locks_at(ns=ns, when=moment(ns=ns, event=then), after="draft", limit=1)[0].resource == "notes"


@pytest.fixture
def as_operator(client, db):
    user = User.objects.create_user("otto")
    user.user_permissions.add(Permission.objects.get(codename="operate"))
    client.force_login(user)
    return client


def test_the_as_of_page_takes_an_event_or_a_time_and_refuses_nothing(as_operator, alpha):
    write_record(ns=alpha.ns, key="plan", value={"step": 1}, actor=actor(alpha))
    head = positions.head(alpha.ns)
    for query in (f"event={head}", "event=0", "event=999999", "at=2020-01-01T00:00", "at=2020-02-31T00:00",
                  "at=nonsense", "event=x", ""):  # fmt: skip
        response = as_operator.get(f"/ns/team/as-of/?{query}")
        assert response.status_code == 200, query
    assert b"plan" in as_operator.get(f"/ns/team/as-of/?event={head}").content


def test_the_as_of_page_lists_the_locks_held_then(as_operator, alpha):
    held = acquire_lock(ns=alpha.ns, resource="report/draft", actor=actor(alpha), ttl_seconds=60)
    then = positions.head(alpha.ns)
    release_lock(ns=alpha.ns, resource="report/draft", token=held.token, actor=actor(alpha))
    page = as_operator.get(f"/ns/team/as-of/?event={then}").content.decode()
    section = page[page.index('id="asof-locks"') :]
    assert "report/draft" in section and f"token {held.token}" in section
    page = as_operator.get(f"/ns/team/as-of/?event={positions.head(alpha.ns)}").content.decode()
    assert "No locks were held then." in page
