"""Versioned records with optimistic locking (DESIGN.md rule 1) and fenced writes (rule 2)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.db import DatabaseError, connection, transaction
from django.utils.timezone import now

from memory_admin import metrics, rows, sql
from memory_admin.errors import DomainError, NotFound, StaleFence, VersionConflict
from memory_admin.models import Conflict, LockFence, Namespace, Record, RecordVersion, iso
from memory_admin.services import Actor, conflicts
from memory_admin.services.events import append_event, current_txn, ring_after_write
from memory_admin.validation import check_json, check_key, check_record_key, dumps


@dataclass(frozen=True)
class Fence:
    lock: str
    token: int


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class Write:
    """One write of write_records: as write_record's arguments."""

    key: str
    value: Any
    expected_version: int | None = None


def get_record(*, ns: Namespace, key: str) -> Record:
    """The live record at `key`; NotFound if absent or deleted."""
    with connection.cursor() as cursor:  # the most frequent agent call: SQL written once (rows.py)
        cursor.execute(sql.GET_RECORD, [ns.pk, key])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no record {key!r}")
    return rows.load(Record, row)


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
    try:
        if fence is None:
            outcome = _write(ns=ns, key=key, value=value, actor=actor, expected_version=expected_version)
        else:
            with transaction.atomic():
                # The fence row is share-locked to commit: a new acquire orders after this write.
                check_fence(ns=ns, fence=fence, actor=actor)
                outcome = _write(ns=ns, key=key, value=value, actor=actor, expected_version=expected_version)
    except StaleFence:
        metrics.record_written("fenced")
        raise
    if isinstance(outcome, Conflict):
        metrics.record_written("conflict")
        raise _conflict_error(outcome)
    transaction.on_commit(lambda: metrics.record_written("ok"))  # not if an outer /txn rolls back
    return outcome


def _write(*, ns, key, value, actor, expected_version) -> tuple[Record, bool] | Conflict:
    """The write as one statement — the record, its version row, its event and the writer's
    superseded conflicts with theirs — so that outside a transaction it commits by itself in
    one round trip; or, when refused, the writer's conflict."""
    params = {
        "ns": ns.pk,
        "key": key,
        "value": dumps(value),
        "expected": expected_version,
        "actor": actor.name,
        "agent_id": actor.agent_id,
        "stamp": now(),
        "txn": current_txn(),
    }
    with sql.prepared_cursor() as cursor:
        cursor.execute(sql.WRITE_RECORD, params)
        row = cursor.fetchone()
    if row is None or not row[-2]:  # refused: absent, or the version did not match
        return _refused(ns=ns, write=Write(key, value, expected_version), actor=actor, row=row)
    ring_after_write()
    return rows.load(Record, row), row[-1]


def _refused(*, ns, write, actor, row) -> Conflict:
    """The writer's conflict for a write the statement refused; `row` is the record as the
    statement read it (None: absent)."""
    current = None if row is None else rows.load(Record, row)
    # The statement read the record as of its start; a writer that won meanwhile is newer.
    stale = current is None or current.version == write.expected_version
    with transaction.atomic():
        return _open_conflict(
            ns=ns,
            key=write.key,
            value=write.value,
            actor=actor,
            expected=write.expected_version or 0,
            current=None if stale else current,
            known=not stale,
        )


@dataclass(slots=True)  # as Write: 50 of them a /txn
class Written:
    """A write of write_records that was made: the record as record_body reads it (all of it
    known to the writer but its version), and whether the write created it. Not a Record: 50
    model instances, their JSON values parsed back and their timestamps read, were a sixth of
    the web process's CPU on a /txn of 50 puts."""

    key: str
    value: Any
    version: int
    updated_by: str
    updated: datetime
    created: bool


def write_records(
    *, ns: Namespace, writes: list[Write], actor: Actor, lock: Collection[str] = ()
) -> list[Written | DomainError]:
    """write_record for each of `writes` (distinct keys), all in one statement: each write's
    Written, or the error it was refused with (its conflict kept as write_record
    keeps it). For /batch and /txn, whose keys are locked in one order (lock_keys) before any
    is written: beforehand, or by this statement itself, first, for the keys of `lock`."""
    outcomes: dict[int, Written | DomainError] = {}
    for index, write in enumerate(writes):
        try:
            check_record_key(write.key)
            check_json(write.value)
        except DomainError as exc:
            outcomes[index] = exc
    valid = [index for index in range(len(writes)) if index not in outcomes]
    if not valid:
        lock_keys(ns=ns, keys=lock)
        return [outcomes[index] for index in range(len(writes))]
    stamp = now()
    statement = sql.WRITE_MANY_LOCKING if lock else sql.WRITE_MANY
    chosen = [writes[index] for index in valid]
    found = _write_many(statement, ns=ns, writes=chosen, actor=actor, stamp=stamp, lock=lock)
    for number, index in enumerate(valid, start=1):
        row = found.get(number)
        write = writes[index]
        if row is not None and row[0]:  # written, is_new, version
            outcomes[index] = Written(write.key, write.value, row[2], actor.name, stamp, row[1])
        else:  # the record as the statement read it, if any, after those three
            row = None if row is None else row[3:]
            conflict = _refused(ns=ns, write=write, actor=actor, row=row)
            metrics.record_written("conflict")
            outcomes[index] = _conflict_error(conflict)
    written = sum(1 for outcome in outcomes.values() if isinstance(outcome, Written))
    if written:
        ring_after_write()
        transaction.on_commit(lambda: metrics.record_written("ok", written))
    return [outcomes[index] for index in range(len(writes))]


def write_all_or_nothing(*, ns: Namespace, writes: list[Write], actor: Actor) -> list[Written] | None:
    """write_records for writes kept all or none (a /txn of puts alone, distinct keys), as one
    statement outside any transaction: Postgres runs it as a transaction of its own, with no BEGIN
    and COMMIT round trips. None when a write is invalid or refused: then nothing was kept, and
    the caller runs them again in a transaction, which says which write failed and why."""
    if connection.in_atomic_block:
        raise RuntimeError("write_all_or_nothing commits by itself: it runs outside a transaction")
    try:
        for write in writes:
            check_record_key(write.key)
            check_json(write.value)
    except DomainError:
        return None
    stamp = now()
    keys = [write.key for write in writes]
    try:
        found = _write_many(sql.WRITE_MANY_ALL, ns=ns, writes=writes, actor=actor, stamp=stamp, lock=keys)
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == sql.REFUSED_ALL:
            return None  # one refused, others made: the statement kept none of them
        raise
    if len(found) < len(writes) or not all(row[0] for row in found.values()):
        return None  # every write refused: none was made
    ring_after_write()
    metrics.record_written("ok", len(writes))
    return [
        Written(write.key, write.value, found[number][2], actor.name, stamp, found[number][1])
        for number, write in enumerate(writes, start=1)
    ]


def _write_many(
    statement: str,
    *,
    ns: Namespace,
    writes: list[Write],
    actor: Actor,
    stamp: datetime,
    lock: Collection[str],
) -> dict[int, tuple]:
    """`statement` (one of WRITE_MANY's forms) over `writes`: its rows by the write's number, from 1."""
    params = {
        **_lock_params(ns, lock),
        "ns": ns.pk,
        # One JSON document, not three arrays: one dump in C, not 50 and psycopg's quoting of
        # every element in Python; by orjson, every value having passed check_json (50 puts'
        # values: json.dumps ~105 us, orjson ~7).
        "writes": orjson.dumps([[w.key, w.value, w.expected_version] for w in writes]).decode(),
        "actor": actor.name,
        "agent_id": actor.agent_id,
        "stamp": stamp,
        "txn": current_txn(),
    }
    with sql.prepared_cursor() as cursor:  # planned once per connection, as the single write
        cursor.execute(statement, params)
        return {row[0]: row[1:] for row in cursor.fetchall()}


# The keys of a /batch or /txn, present or not, each by a transaction-level advisory lock, taken
# in one order (of the lock ids): two requests over the same keys queue, they never deadlock, also
# when they create them. The two-number form keeps these apart from any one-number advisory lock.
KEY_LOCKS = 0x7478  # "tx"


def lock_keys(*, ns: Namespace, keys: Collection[str]) -> None:
    """Lock `keys` of `ns` to the end of the transaction (sql.LOCK_KEYS)."""
    if keys:
        with connection.cursor() as cursor:
            cursor.execute(sql.LOCK_KEYS, _lock_params(ns, keys))


def _lock_params(ns: Namespace, keys: Collection[str]) -> dict[str, Any]:
    return {"lock_space": KEY_LOCKS, "lock_ns": str(ns.pk), "lock_keys": dumps(sorted(keys))}


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
        record.version += 1
        event = append_event(
            ns=ns,
            type="record.deleted",
            actor=actor,
            subject=key,
            payload={"key": key, "version": record.version},
            follows=record.ord,
        )
        record.value, record.deleted, record.updated_by, record.updated = None, True, actor.name, stamp
        record.ord = event.ord
        record.save(update_fields=["value", "deleted", "updated_by", "updated", "version", "ord"])
        RecordVersion.objects.create(
            record=record,
            version=record.version,
            value=None,
            deleted=True,
            updated_by=actor.name,
            updated=stamp,
        )
        conflicts.close_superseded(ns=ns, key=key, actor=actor, version=record.version)
        return record


def check_fence(*, ns: Namespace, fence: Fence, actor: Actor) -> None:
    """Refuse a write whose fencing token is no longer the lock's current one, or not the writer's.

    The fence row is share-locked until commit, so a new acquire (which updates it)
    orders after this write: the next holder never has its write overwritten.
    """
    check_key(fence.lock, "fence.lock")
    # FOR SHARE (which the ORM lacks): concurrent fenced writes don't queue behind each other.
    found = LockFence.objects.raw(
        sql.FENCE_FOR_SHARE,
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


def _open_conflict(
    *, ns, key, value, actor, expected, current=None, delete=False, known=False, group=""
) -> Conflict:
    """Keep a refused write for operators: one open conflict per (key, writer).

    A retry loop that keeps losing refreshes its open conflict instead of filling the
    inbox, and does so without an event. `known` says `current` is already the record as it
    stands (None: absent). `group` names the aborted transaction whose writes were refused
    together (services/txn.py).
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
            sql.KEEP_CONFLICT,
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


def record_body(record: Record | Written) -> dict[str, Any]:
    """The record as API.md shows it."""
    return {
        "key": record.key,
        "value": record.value,
        "version": record.version,
        "updated_by": record.updated_by,
        "updated_at": iso(record.updated),
    }
