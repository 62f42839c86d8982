"""Versioned records with optimistic locking (DESIGN.md rule 1) and fenced writes (rule 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils.timezone import now

from memory_admin import rows
from memory_admin.errors import NotFound, StaleFence, VersionConflict
from memory_admin.models import Conflict, LockFence, Namespace, Record, RecordVersion, iso
from memory_admin.services import Actor
from memory_admin.services.events import append_event, append_last_event, pipelined_commit
from memory_admin.validation import check_json, check_key, check_record_key, dumps


@dataclass(frozen=True)
class Fence:
    lock: str
    token: int


def get_record(*, ns: Namespace, key: str) -> Record:
    """The live record at `key`; NotFound if absent or deleted."""
    with connection.cursor() as cursor:  # the most frequent agent call: SQL written once (rows.py)
        cursor.execute(_GET, [ns.pk, key])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no record {key!r}")
    return rows.load(Record, row)


_GET = (
    f"SELECT {rows.columns(Record, 'r')} FROM memory_admin_record r "
    "WHERE r.ns_id = %s AND r.key = %s AND NOT r.deleted"
)


def list_records(*, ns: Namespace, prefix: str = "", after: str = "", limit: int = 50) -> list[Record]:
    """Live records whose key starts with `prefix`, by key, after the key `after`."""
    records = Record.objects.filter(ns=ns, deleted=False)
    if prefix:
        records = records.filter(key__startswith=prefix)
    if after:
        records = records.filter(key__gt=after)
    return list(records.order_by("key")[:limit])


def record_versions(*, ns: Namespace, key: str, limit: int = 50) -> list[RecordVersion]:
    """A key's versions, newest first (deletes included, as versions with `deleted`)."""
    record = Record.objects.filter(ns=ns, key=key).first()
    if record is None:
        raise NotFound(f"no record {key!r}")
    return list(record.versions.order_by("-version")[:limit])


def write_record(
    *,
    ns: Namespace,
    key: str,
    value: Any,
    actor: Actor,
    expected_version: int | None = None,
    fence: Fence | None = None,
) -> tuple[Record, bool]:
    """Write `value` if nobody has written `key` since `expected_version`; returns (record, created).

    expected_version None writes unconditionally, 0 creates only if absent, n writes
    only over version n. A mismatch is kept as a Conflict and raised as VersionConflict.
    """
    check_record_key(key)
    check_json(value)
    with pipelined_commit():  # record.written, last, pipelined with the COMMIT
        outcome = _write(
            ns=ns, key=key, value=value, actor=actor, expected_version=expected_version, fence=fence
        )
    if isinstance(outcome, Conflict):
        raise _conflict_error(outcome)
    return outcome


@transaction.atomic
def _write(*, ns, key, value, actor, expected_version, fence) -> tuple[Record, bool] | Conflict:
    if fence is not None:
        check_fence(ns=ns, fence=fence, actor=actor)
    stamp = now()
    created = False
    if expected_version in (None, 0):
        record = Record.objects.select_for_update().filter(ns=ns, key=key).first()
        if record is None:
            record = _insert(ns=ns, key=key, value=value, actor=actor, stamp=stamp)
            created = record is not None
            if record is None:  # a concurrent create won the race
                if expected_version == 0:
                    return _open_conflict(ns=ns, key=key, value=value, actor=actor, expected=0)
                record = Record.objects.select_for_update().get(ns=ns, key=key)
        if not created:
            if expected_version == 0 and not record.deleted:
                return _open_conflict(ns=ns, key=key, value=value, actor=actor, expected=0, current=record)
            created = record.deleted
            record.value, record.deleted, record.updated_by, record.updated = value, False, actor.name, stamp
            record.version += 1
            record.save(update_fields=["value", "deleted", "updated_by", "updated", "version"])
    else:
        record = _update_if_version(
            ns=ns, key=key, value=value, actor=actor, expected=expected_version, stamp=stamp
        )
        if record is None or not record.written:
            return _open_conflict(
                ns=ns,
                key=key,
                value=value,
                actor=actor,
                expected=expected_version,
                current=record,
                known=True,
            )
        _close_conflicts(ns=ns, key=key, actor=actor, version=record.version, ids=record.open_conflicts)
        _append_written(ns=ns, record=record, actor=actor, created=False)
        return record, False
    RecordVersion.objects.create(
        record=record, version=record.version, value=value, updated_by=actor.name, updated=stamp
    )
    _close_conflicts(ns=ns, key=key, actor=actor, version=record.version)
    _append_written(ns=ns, record=record, actor=actor, created=created)
    return record, created


# The hot path of optimistic locking in one round trip: the conditional UPDATE, the new
# version's history row and the writer's open conflicts on the key (to close them) — or,
# when the version did not match, the record as it stands (for the 409).
_UPDATE_IF_VERSION = """
WITH u AS (
    UPDATE memory_admin_record
    SET value = %s::jsonb, version = version + 1, updated_by = %s, updated = %s
    WHERE ns_id = %s AND key = %s AND version = %s AND NOT deleted
    RETURNING *
), v AS (
    INSERT INTO memory_admin_recordversion (record_id, version, value, deleted, updated_by, updated)
    SELECT id, version, value, false, updated_by, updated FROM u
)
SELECT {columns_u}, true AS written, ARRAY(
    SELECT id FROM memory_admin_conflict
    WHERE ns_id = %s AND key = %s AND actor = %s AND status = 'open'
) AS open_conflicts
FROM u
UNION ALL
SELECT {columns_r}, false, '{{}}'::bigint[] FROM memory_admin_record r
WHERE r.ns_id = %s AND r.key = %s AND NOT EXISTS (SELECT 1 FROM u)
""".format(columns_u=rows.columns(Record, "u"), columns_r=rows.columns(Record, "r"))


def _update_if_version(*, ns, key, value, actor, expected, stamp) -> Record | None:
    """The written record (`written` true), the unchanged one (`written` false), or None if absent."""
    params = [dumps(value), actor.name, stamp, ns.pk, key, expected, ns.pk, key, actor.name, ns.pk, key]
    with connection.cursor() as cursor:
        cursor.execute(_UPDATE_IF_VERSION, params)
        row = cursor.fetchone()
    if row is None:
        return None
    record = rows.load(Record, row)
    record.written, record.open_conflicts = row[-2:]
    return record


def _append_written(*, ns, record, actor, created) -> None:
    append_last_event(
        ns=ns,
        type="record.written",
        actor=actor,
        subject=record.key,
        payload={"key": record.key, "version": record.version, "created": created},
    )


def _insert(*, ns, key, value, actor, stamp) -> Record | None:
    try:
        with transaction.atomic():
            return Record.objects.create(
                ns=ns, key=key, value=value, version=1, updated_by=actor.name, updated=stamp, created=stamp
            )
    except IntegrityError:
        return None


def delete_record(*, ns: Namespace, key: str, actor: Actor, expected_version: int | None = None) -> Record:
    """Delete `key` (kept as a tombstone version, so versions never repeat)."""
    check_record_key(key)
    outcome = _delete(ns=ns, key=key, actor=actor, expected_version=expected_version)
    if isinstance(outcome, Conflict):
        raise _conflict_error(outcome)
    return outcome


def _delete(*, ns, key, actor, expected_version) -> Record | Conflict:
    with transaction.atomic():
        record = Record.objects.select_for_update().filter(ns=ns, key=key, deleted=False).first()
        if record is None:
            raise NotFound(f"no record {key!r}")
        if expected_version is not None and record.version != expected_version:
            return _open_conflict(
                ns=ns,
                key=key,
                value=None,
                actor=actor,
                expected=expected_version,
                current=record,
                delete=True,
            )
        stamp = now()
        record.value, record.deleted, record.updated_by, record.updated = None, True, actor.name, stamp
        record.version += 1
        record.save(update_fields=["value", "deleted", "updated_by", "updated", "version"])
        RecordVersion.objects.create(
            record=record,
            version=record.version,
            value=None,
            deleted=True,
            updated_by=actor.name,
            updated=stamp,
        )
        _close_conflicts(ns=ns, key=key, actor=actor, version=record.version)
        append_event(
            ns=ns,
            type="record.deleted",
            actor=actor,
            subject=key,
            payload={"key": key, "version": record.version},
        )
        return record


def check_fence(*, ns: Namespace, fence: Fence, actor: Actor) -> None:
    """Refuse a write whose fencing token is no longer the lock's current one, or not the writer's.

    The fence row is share-locked until commit, so a new acquire (which updates it)
    orders after this write: the next holder never has its write overwritten.
    """
    check_key(fence.lock, "fence.lock")
    # FOR SHARE (which the ORM lacks): concurrent fenced writes don't queue behind each other.
    found = LockFence.objects.raw(
        "SELECT * FROM memory_admin_lockfence WHERE ns_id = %s AND resource = %s FOR SHARE",
        [ns.pk, fence.lock],
    )
    current = next(iter(found), None)
    # A token only counts for the agent it was issued to: no writing behind another's lock.
    if current is None or current.token != fence.token or not current.held or current.holder != actor.name:
        raise StaleFence(
            f"not the holder of lock {fence.lock!r}"
            if current and current.token == fence.token and current.held
            else f"fencing token {fence.token} for lock {fence.lock!r} is no longer current",
            lock=fence.lock,
            token=fence.token,
            current_token=current.token if current else None,
        )


# The writer's one open conflict on the key: created, or refreshed in place (conflict_one_open_uniq).
_KEEP_CONFLICT = """
INSERT INTO memory_admin_conflict AS c (
    ns_id, key, agent_id, actor, expected_version, current_version, proposed_value, "delete",
    "group", status, resolution, resolved_by, resolved, created
)
VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, 'open', '', '', NULL, %s)
ON CONFLICT (ns_id, key, actor) WHERE status = 'open' DO UPDATE SET
    agent_id = EXCLUDED.agent_id, expected_version = EXCLUDED.expected_version,
    current_version = EXCLUDED.current_version, proposed_value = EXCLUDED.proposed_value,
    "delete" = EXCLUDED."delete", "group" = EXCLUDED."group"
RETURNING id, created, xmax = 0
"""


def _open_conflict(
    *, ns, key, value, actor, expected, current=None, delete=False, known=False, group=""
) -> Conflict:
    """Keep a refused write for operators: one open conflict per (key, writer).

    A retry loop that keeps losing refreshes its open conflict instead of filling the
    inbox, and does so without an event, so it never queues behind the log's counter.
    `known` says `current` is already the record as it stands (None: absent). `group` names
    the aborted transaction whose writes were refused together (services/txn.py).
    """
    if current is None and not known:
        current = Record.objects.filter(ns=ns, key=key).first()
    live = current if current is not None and not current.deleted else None
    fields = {
        "agent": actor.agent,
        "expected_version": expected,
        "current_version": live.version if live else None,
        "proposed_value": value,
        "delete": delete,
        "group": group,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            _KEEP_CONFLICT,
            [ns.pk, key, actor.agent.pk if actor.agent else None, actor.name, expected,
             fields["current_version"], dumps(value), delete, group, now()],
        )  # fmt: skip
        conflict_id, created, inserted = cursor.fetchone()
    conflict = Conflict(pk=conflict_id, ns=ns, key=key, actor=actor.name, created=created, **fields)
    if inserted:
        append_event(
            ns=ns,
            type="conflict.opened",
            actor=actor,
            subject=key,
            payload={
                "conflict_id": conflict.pk,
                "key": key,
                "expected_version": expected,
                "current_version": conflict.current_version,
                **({"group": group} if group else {}),
            },
        )
    conflict.current = live
    return conflict


def keep_refused_write(
    *,
    ns: Namespace,
    key: str,
    value: Any,
    actor: Actor,
    expected_version: int | None,
    delete: bool = False,
    group: str = "",
) -> Conflict:
    """Keep a write that was refused with its transaction as an open conflict of `group`.

    An unconditional write is kept as one over the version that stands now (what it would
    have written over).
    """
    current = Record.objects.filter(ns=ns, key=key).first()
    if expected_version is None:
        expected_version = current.version if current is not None and not current.deleted else 0
    return _open_conflict(
        ns=ns,
        key=key,
        value=None if delete else value,
        actor=actor,
        expected=expected_version,
        current=current,
        delete=delete,
        known=True,
        group=group,
    )


def _conflict_error(conflict: Conflict) -> VersionConflict:
    current = conflict.current
    return VersionConflict(
        f"{conflict.key!r} is at version {conflict.current_version}, not {conflict.expected_version}",
        expected_version=conflict.expected_version,
        current=record_body(current) if current is not None else None,
        conflict_id=conflict.pk,
    )


def _close_conflicts(*, ns, key, actor, version, ids: list[int] | None = None) -> None:
    """A successful write by the same actor supersedes its open conflicts on that key."""
    if ids is None:
        ids = list(
            Conflict.objects.filter(
                ns=ns, key=key, actor=actor.name, status=Conflict.Status.OPEN
            ).values_list("pk", flat=True)
        )
    if not ids:
        return
    Conflict.objects.filter(pk__in=ids).update(
        status=Conflict.Status.RESOLVED,
        resolution=Conflict.Resolution.SUPERSEDED,
        resolved_by=actor.name,
        resolved=now(),
    )
    for conflict_id in ids:
        append_event(
            ns=ns,
            type="conflict.resolved",
            actor=actor,
            subject=key,
            payload={"conflict_id": conflict_id, "key": key, "resolution": "superseded", "version": version},
        )


def record_body(record: Record) -> dict[str, Any]:
    """The record as API.md shows it."""
    return {
        "key": record.key,
        "value": record.value,
        "version": record.version,
        "updated_by": record.updated_by,
        "updated_at": iso(record.updated),
    }
