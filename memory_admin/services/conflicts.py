"""Conflicts: writes refused by optimistic locking, kept for operators to resolve."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils.timezone import now

from memory_admin.errors import Invalid, NotFound, VersionConflict
from memory_admin.models import Conflict, Namespace, Record

# A module, not its names: records imports this one back (close_superseded).
from memory_admin.services import Actor, records
from memory_admin.services.events import append_event

ACTIONS = {
    "accept": Conflict.Resolution.ACCEPTED,
    "keep": Conflict.Resolution.KEPT,
    "merge": Conflict.Resolution.MERGED,
}


def list_conflicts(
    *, ns: Namespace, status: str | None = "open", actor_name: str | None = None, limit: int = 50
) -> list[Conflict]:
    conflicts = Conflict.objects.filter(ns=ns)
    if status:
        conflicts = conflicts.filter(status=status)
    if actor_name:
        conflicts = conflicts.filter(actor=actor_name)
    return list(conflicts.order_by("-id")[:limit])


def get_conflict(*, ns: Namespace, conflict_id: int) -> Conflict:
    conflict = Conflict.objects.filter(ns=ns, pk=conflict_id).first()
    if conflict is None:
        raise NotFound(f"no conflict {conflict_id}")
    return conflict


def resolve_conflict(
    *,
    conflict: Conflict,
    action: str,
    actor: Actor,
    expected_version: int | None,
    value: Any = None,
) -> Record | None:
    """Resolve an open conflict: accept the proposed value, keep the current one, or write a merge.

    Accept and merge are versioned writes over `expected_version` (the version the
    operator looked at): if the record moved meanwhile, the operator's write is refused
    and kept as a conflict of its own, never silently applied.
    """
    if action not in ACTIONS:
        raise Invalid("action must be accept, keep or merge", {"action": "accept, keep or merge"})
    refused: VersionConflict | None = None
    with transaction.atomic():
        # The record's row before the conflict's, in the order a write takes them (its statement
        # writes the record, then closes its writer's superseded conflicts): the other way round,
        # accepting an agent's conflict while that agent wrote the key again deadlocked. A record
        # that does not exist has no row to lock yet: the write below creates it, and only then
        # is the conflict locked and looked at again.
        list(Record.objects.select_for_update().filter(ns=conflict.ns_id, key=conflict.key).values_list("pk"))
        conflict = _open(Conflict.objects.get(pk=conflict.pk))
        record = None
        try:
            if action == "accept" and conflict.delete:
                record = records.delete_record(
                    ns=conflict.ns, key=conflict.key, actor=actor, expected_version=expected_version
                )
            elif action in ("accept", "merge"):
                chosen = conflict.proposed_value if action == "accept" else value
                record, _ = records.write_record(
                    ns=conflict.ns,
                    key=conflict.key,
                    value=chosen,
                    actor=actor,
                    expected_version=expected_version if expected_version is not None else 0,
                )
        except VersionConflict as exc:
            refused = exc  # the operator's own conflict commits; this one stays open
        if refused is None:
            _open(Conflict.objects.select_for_update().get(pk=conflict.pk))  # else the write rolls back
            mark_resolved(
                ns=conflict.ns,
                ids=[conflict.pk],
                key=conflict.key,
                resolution=ACTIONS[action],
                actor=actor,
                version=record.version if record else None,
            )
    if refused is not None:
        raise refused
    return record


def _open(conflict: Conflict) -> Conflict:
    if conflict.status != Conflict.Status.OPEN:
        raise Invalid(f"conflict {conflict.pk} is already resolved", {"conflict": "already resolved"})
    return conflict


def mark_resolved(
    *, ns: Namespace, ids: list[int], key: str, resolution: str, actor: Actor, version: int | None
) -> None:
    """Close the open conflicts `ids` (all on `key`) as `resolution`, with a `conflict.resolved`
    event each: the one place that event is appended, but for the statements of a versioned write
    and of a run of puts, which close their writer's superseded conflicts the same way in SQL
    (services/records.py) rather than take another round trip."""
    Conflict.objects.filter(pk__in=ids).update(
        status=Conflict.Status.RESOLVED, resolution=resolution, resolved_by=actor.name, resolved=now()
    )
    for conflict_id in ids:
        append_event(
            ns=ns,
            type="conflict.resolved",
            actor=actor,
            subject=key,
            payload={"conflict_id": conflict_id, "key": key, "resolution": resolution, "version": version},
        )


def close_superseded(*, ns: Namespace, key: str, actor: Actor, version: int) -> None:
    """A successful delete by an actor supersedes its open conflicts on that key."""
    mine = Conflict.objects.filter(ns=ns, key=key, actor=actor.name, status=Conflict.Status.OPEN)
    ids = list(mine.values_list("pk", flat=True))
    if ids:
        mark_resolved(
            ns=ns, ids=ids, key=key, resolution=Conflict.Resolution.SUPERSEDED, actor=actor, version=version
        )


def group_conflicts(*, ns: Namespace, group: str) -> list[Conflict]:
    """The conflicts of one aborted transaction (its refused writes), in the order it sent them."""
    return list(Conflict.objects.filter(ns=ns, group=group).order_by("id")) if group else []


def resolve_group(
    *, ns: Namespace, group: str, action: str, actor: Actor, versions: dict[int, int | None]
) -> list[Record | None]:
    """Resolve a transaction's open conflicts together, all or nothing: accept writes every
    proposed value (each over the version in `versions`, the one the operator saw), keep leaves
    every record as it is. If one record moved meanwhile, nothing is written and VersionConflict
    is raised; an already resolved member is skipped."""
    if action not in ("accept", "keep"):
        raise Invalid("a group is accepted or kept", {"action": "accept or keep"})
    written = []
    with transaction.atomic():
        members = [c for c in group_conflicts(ns=ns, group=group) if c.status == Conflict.Status.OPEN]
        if not members:
            raise NotFound(f"no open conflicts in group {group!r}")
        # All its keys first, in the one order of a /txn's: a txn over the same keys in another
        # order waits for the whole group instead of holding one key it needs (deadlock).
        records.lock_keys(ns=ns, keys={c.key for c in members})
        for conflict in members:
            written.append(
                resolve_conflict(
                    conflict=conflict, action=action, actor=actor, expected_version=versions.get(conflict.pk)
                )
            )
    return written
