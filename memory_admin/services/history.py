"""Time travel: a record's old version restored as a new versioned write, and a namespace as it
was at an event of its log (records from their versions, agents' status from the log)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from memory_admin import positions, sql
from memory_admin.errors import Invalid, NotFound
from memory_admin.models import Event, Namespace, Record, RecordVersion
from memory_admin.services import Actor
from memory_admin.services.activity import first_position_since
from memory_admin.services.records import write_record


def restore_version(
    *, ns: Namespace, key: str, version: int, expected_version: int, actor: Actor
) -> tuple[Record, RecordVersion]:
    """Write version `version` of `key` again, as a new version over `expected_version` (the one
    the operator saw): if the record moved since, the write is refused and kept as a conflict."""
    old = RecordVersion.objects.filter(record__ns=ns, record__key=key, version=version).first()
    if old is None:
        raise NotFound(f"no version {version} of {key!r}")
    if old.deleted:
        raise Invalid(f"version {version} of {key!r} is a delete; there is no value to restore")
    record, _ = write_record(ns=ns, key=key, value=old.value, expected_version=expected_version, actor=actor)
    return record, old


@dataclass(frozen=True)
class Moment:
    """A point of the log: event `event` (0: before the first), committed at `at`."""

    event: int
    at: datetime | None


def moment(*, ns: Namespace, event: int | None = None, at: datetime | None = None) -> Moment:
    """Event `event`, or the last event committed at or before `at`."""
    if event is not None:
        if event <= 0:
            return Moment(0, None)
        found = positions.at(ns, event)
        if found is None:
            raise NotFound(f"no event #{event} in {ns.name}")
        return Moment(event, found.created)
    if at is None:
        raise Invalid("give an event id or a time")
    # Creation times follow the log's order closely but not exactly (they are taken before the
    # commit): the event before the first one created after `at`, found by bisecting positions
    # (the log has no index on time).
    after = first_position_since(ns, at + timedelta(microseconds=1))
    last = positions.newest_first(positions.log(ns).filter(**{f"{positions.FIELD}__lt": after})).first()
    return Moment(positions.of(last), last.created) if last is not None else Moment(0, None)


@dataclass(frozen=True)
class PastRecord:
    key: str
    version: int
    value: Any
    updated_by: str
    updated: datetime
    current: int  # its version now


def records_at(*, ns: Namespace, when: Moment, after: str = "", limit: int = 50) -> list[PastRecord]:
    """The live records at `when` and their values then, by key after `after`."""
    if when.at is None:
        return []
    with connection.cursor() as cursor:
        cursor.execute(sql.RECORDS_AT, {"ns": ns.pk, "at": when.at, "after": after, "limit": limit})
        rows = cursor.fetchall()
    return [
        PastRecord(key, version, _json(value), by, updated, current)
        for key, version, value, by, updated, current in rows
    ]


def _json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class PastStatus:
    agent: str
    status: str
    detail: str
    state: str  # live / stale, as the log said then
    since: datetime
    event: int


def statuses_at(*, ns: Namespace, when: Moment, after: str = "", limit: int = 50) -> list[PastStatus]:
    """Each agent's status as the log had it at `when` (agents without one yet are left out)."""
    if not when.event:
        return []
    with connection.cursor() as cursor:
        cursor.execute(sql.STATUS_AT, {"ns": ns.pk, "n": when.event, "after": after, "limit": limit})
        rows = cursor.fetchall()
    out = []
    for name, type, payload, created, event in rows:
        payload = _json(payload)
        if type == "agent.stale":
            out.append(PastStatus(name, payload.get("last_status", ""), "", "stale", created, event))
        else:
            out.append(
                PastStatus(name, payload.get("status", ""), payload.get("detail", ""), "live", created, event)
            )
    return out


@dataclass(frozen=True)
class PastLock:
    resource: str
    holder: str
    token: int
    since: datetime
    event: int  # its lock.acquired


def locks_at(*, ns: Namespace, when: Moment, after: str = "", limit: int = 50) -> list[PastLock]:
    """The locks held at `when`, as the log had them (acquired and not yet released, expired or
    force-released by then), by resource after `after`."""
    if not when.event:
        return []
    with connection.cursor() as cursor:
        cursor.execute(sql.LOCKS_AT, {"ns": ns.pk, "n": when.event, "after": after, "limit": limit})
        rows = cursor.fetchall()
    return [
        PastLock(resource, holder, int(_json(payload).get("fencing_token", 0)), created, event)
        for resource, holder, payload, created, event in rows
    ]


def events_around(*, ns: Namespace, when: Moment, count: int = 10) -> list[Event]:
    """The events leading up to `when`, newest first."""
    return list(positions.newest_first(positions.through(ns, when.event))[:count]) if when.event else []
