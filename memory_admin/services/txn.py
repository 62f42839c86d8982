"""Several operations in one request: /txn (compares, then one branch, all or nothing) and
/batch (independent operations, one result each). Both compose the nouns' own services inside
one Postgres transaction, so every change still appends its own event and keeps its rules.

Why one transaction for a batch too: a commit (a WAL flush) costs more than the operation
(measured: docs/DESIGN.md, "Transactions and batches"). An operation that is refused changes
nothing — its service refuses before writing, or inside a savepoint of its own — so it is its
own result and the others commit together.

A /txn of puts alone (no compares) is one statement, outside any transaction: Postgres runs it
as its own, all or nothing (records.write_all_or_nothing), with no BEGIN and COMMIT round trips;
if a write is refused, it runs again the ordinary way, which says which and why.

The keys a request names are locked first, in one order: two requests that write the same
keys in a different order queue instead of deadlocking, and a compare on a record holds
until the commit.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from django.db import OperationalError, connection, transaction

from memory_admin import sql
from memory_admin.errors import DomainError, Unavailable
from memory_admin.models import Agent, LockFence, Namespace
from memory_admin.services import Actor, events, facts, records, status

log = logging.getLogger("memory_admin.txn")
T = TypeVar("T")

Kind = Literal["put", "delete", "get", "fact", "event", "status"]
WRITES = frozenset({"put", "delete"})
MAX_OPS = 128  # compares, and operations per branch or batch (as etcd's --max-txn-ops)
ATTEMPTS = 3  # a deadlock or serialization failure rolls back everything; run it again


class TxnAborted(DomainError):
    """An operation of the branch that ran failed: nothing of the transaction was kept."""

    status, code = 409, "txn_aborted"


@dataclass(slots=True)  # as records.Write: not frozen, 50 of them a /txn
class Op:
    """One operation: `kind` and its arguments as the single endpoint takes them."""

    kind: Kind
    args: dict[str, Any]

    @property
    def key(self) -> str | None:
        return self.args.get("key") if self.kind in ("put", "delete", "get") else None


@dataclass(frozen=True)
class Compare:
    """One condition of a /txn: a record's version or existence, or a lock the caller holds."""

    key: str | None = None
    op: Literal["=", "!=", "<", ">"] = "="
    version: int | None = None
    exists: bool | None = None
    lock: str | None = None
    fencing_token: int | None = None


@dataclass(slots=True)
class Done:
    """What an operation gave: its object (record, fact, event, status; None for a delete),
    whether it created something, or the error it failed with."""

    kind: Kind
    value: Any = None
    created: bool = False
    error: DomainError | None = None


@dataclass
class TxnResult:
    txn: str
    succeeded: bool
    results: list[Done] = field(default_factory=list)


def run_txn(
    *, ns: Namespace, agent: Agent, actor: Actor, compare: list[Compare], success: list[Op], failure: list[Op]
) -> TxnResult:
    """Check `compare`, then run `success` if every compare holds, else `failure`, all in one
    transaction. If an operation of that branch fails, everything is rolled back, the branch's
    record writes are kept as one conflict group (named by the txn id) and TxnAborted raised."""
    txn = uuid.uuid4().hex
    compared = {c.key for c in compare if c.key}
    keys = compared | {op.key for op in (*success, *failure) if op.key}

    def once() -> TxnResult:
        with transaction.atomic(), _stamped(txn):
            # Compared records are read (and row-locked) after their keys are locked; without
            # them, the branch's first statement may take the locks itself.
            versions = _lock_records(ns=ns, keys=keys, read=compared) if compared else {}
            held = all(_holds(ns=ns, actor=actor, condition=c, versions=versions) for c in compare)
            branch = success if held else failure
            lock = set() if compared else keys
            results = []
            for index, done in enumerate(_results(ns=ns, agent=agent, actor=actor, ops=branch, lock=lock)):
                # A get of an absent key is an answer (404), not a failure.
                if done.error is not None and not (done.kind == "get" and done.error.status == 404):
                    raise _Failed(index, done.error, branch)
                results.append(done)
        return TxnResult(txn=txn, succeeded=held, results=results)

    if not compare and _puts_alone(success) and not connection.in_atomic_block:
        with _stamped(txn):
            writes = [_write(op) for op in success]
            written = _retrying(lambda: records.write_all_or_nothing(ns=ns, writes=writes, actor=actor))
        if written is not None:
            return TxnResult(txn=txn, succeeded=True, results=[Done("put", w, w.created) for w in written])
        # A write was invalid or refused and nothing was kept: run it all as below, which says why.
    try:
        return _retrying(once)
    except _Failed as failed:
        raise _aborted(ns=ns, actor=actor, txn=txn, failed=failed) from None


def _puts_alone(ops: list[Op]) -> bool:
    """Whether `ops` are puts on distinct keys, and nothing else: all or none of them kept is then
    one statement (records.write_all_or_nothing)."""
    return bool(ops) and all(op.kind == "put" for op in ops) and len({op.key for op in ops}) == len(ops)


class _Failed(Exception):
    def __init__(self, index: int, error: DomainError, branch: list[Op]) -> None:
        self.index, self.error, self.branch = index, error, branch


def _aborted(*, ns: Namespace, actor: Actor, txn: str, failed: _Failed) -> TxnAborted:
    """After the rollback: the branch's record writes kept as one conflict group, in a
    transaction of their own, and the error that says which operation failed and why."""
    kept: dict[str, int] = {}
    with transaction.atomic(), _stamped(txn):
        for op in failed.branch:
            if op.kind in WRITES:
                conflict = records.keep_refused_write(
                    ns=ns,
                    key=op.key,
                    value=op.args.get("value"),
                    expected_version=op.args.get("expected_version"),
                    delete=op.kind == "delete",
                    actor=actor,
                    group=txn,
                )
                kept[op.key] = conflict.pk
    error = failed.error.body()["error"]
    if "conflict_id" in error:  # the failing write's own conflict was rolled back: its kept one
        error["conflict_id"] = kept.get(failed.branch[failed.index].key)
    return TxnAborted(
        f"operation {failed.index} ({failed.branch[failed.index].kind}) failed: {failed.error.message}; "
        "nothing was changed",
        failed_op=failed.index,
        error=error,
        txn=txn,
        conflict_group=txn if kept else None,
    )


def run_batch(*, ns: Namespace, agent: Agent, actor: Actor, ops: list[Op]) -> list[Done]:
    """Run independent operations in one transaction: one's failure is its own result and the
    others are kept."""
    keys = {op.key for op in ops if op.kind in WRITES}

    def once() -> list[Done]:
        with transaction.atomic():
            return list(_results(ns=ns, agent=agent, actor=actor, ops=ops, lock=keys))

    return _retrying(once)


def _stamped(txn: str) -> contextlib.AbstractContextManager:
    """The events appended inside carry the transaction's id (Event.txn)."""
    return events.in_txn(txn)


RETRYABLE = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


def _retrying(once: Callable[[], T]) -> T:
    """`once()`, run again (up to ATTEMPTS in all) when Postgres rolled it back for a deadlock or
    a serialization failure. Inside someone else's transaction the rollback, and so the retry,
    is theirs."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return once()
        except OperationalError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if attempt == ATTEMPTS or connection.in_atomic_block or sqlstate not in RETRYABLE:
                raise
            log.info("transaction retried after %s (attempt %d)", sqlstate, attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _lock_records(*, ns: Namespace, keys: set[str], read: set[str]) -> dict[str, int]:
    """Lock `keys` (records.lock_keys) and the records of `read` that exist (in key order); the
    versions of those, 0 if deleted. The records written are row-locked by their writes."""
    records.lock_keys(ns=ns, keys=keys)
    with connection.cursor() as cursor:
        cursor.execute(sql.LOCK_ROWS, [ns.pk, sorted(read)])
        return dict(cursor.fetchall())


def _holds(*, ns: Namespace, actor: Actor, condition: Compare, versions: dict[str, int]) -> bool:
    if condition.lock is not None:
        # As records.check_fence: the fence row is share-locked until commit, so the lock
        # cannot change hands before this transaction's writes are in.
        found = LockFence.objects.raw(
            sql.FENCE_FOR_SHARE,
            [ns.pk, condition.lock],
        )
        fence = next(iter(found), None)
        return (
            fence is not None
            and fence.held
            and fence.holder == actor.name
            and fence.token == condition.fencing_token
        )
    version = versions.get(condition.key, 0)  # absent and deleted are version 0
    if condition.exists is not None:
        return (version > 0) == condition.exists
    target = condition.version
    return {
        "=": version == target,
        "!=": version != target,
        "<": version < target,
        ">": version > target,
    }[condition.op]


def _results(*, ns: Namespace, agent: Agent, actor: Actor, ops: list[Op], lock: set[str]) -> Iterator[Done]:
    """Each operation's result, in order, as it runs, once the keys of `lock` are locked (by the
    first statement): consecutive puts on distinct keys are written together in one statement
    (records.write_records: one round trip and one plan, not one per put); every other
    operation runs through its service."""
    for chunk in _chunks(ops):
        if chunk[0].kind != "put" or len(chunk) == 1:
            records.lock_keys(ns=ns, keys=lock)
            lock = set()
            yield _run(ns=ns, agent=agent, actor=actor, op=chunk[0])
            continue
        writes = [_write(op) for op in chunk]
        outcomes, lock = records.write_records(ns=ns, writes=writes, actor=actor, lock=lock), set()
        for outcome in outcomes:
            if isinstance(outcome, DomainError):
                yield Done("put", error=outcome)
            else:
                yield Done("put", outcome, outcome.created)


def _write(put: Op) -> records.Write:
    return records.Write(put.key, put.args["value"], put.args.get("expected_version"))


def _chunks(ops: list[Op]) -> Iterator[list[Op]]:
    """`ops` in order, cut into runs of puts on distinct keys and the other operations alone."""
    run: list[Op] = []
    keys: set[str] = set()
    for op in ops:
        key = op.key
        if run and (op.kind != "put" or key in keys):
            yield run
            run, keys = [], set()
        if op.kind == "put":
            run.append(op)
            keys.add(key)
        else:
            yield [op]
    if run:
        yield run


def _run(*, ns: Namespace, agent: Agent, actor: Actor, op: Op) -> Done:
    """One operation through its service; a domain error is its result."""
    args = op.args
    try:
        if op.kind == "put":
            record, created = records.write_record(
                ns=ns,
                key=args["key"],
                value=args["value"],
                expected_version=args.get("expected_version"),
                actor=actor,
            )
            return Done(op.kind, record, created)
        if op.kind == "delete":
            records.delete_record(
                ns=ns, key=args["key"], expected_version=args.get("expected_version"), actor=actor
            )
            return Done(op.kind)
        if op.kind == "get":
            return Done(op.kind, records.get_record(ns=ns, key=args["key"]))
        if op.kind == "fact":
            fact = facts.store_fact(
                ns=ns,
                fact=args["fact"],
                category=args["category"],
                metadata=args.get("metadata"),
                actor=actor,
            )
            return Done(op.kind, fact, True)
        if op.kind == "event":
            event = events.publish_event(
                ns=ns, type=args["type"], payload=args.get("payload") or {}, actor=actor
            )
            return Done(op.kind, event, True)
        found = status.heartbeat(
            agent=agent,
            status=args["status"],
            detail=args.get("detail", ""),
            ttl_seconds=args.get("ttl_seconds", 60),
            actor=actor,
            at_commit=True,
        )
        return Done(op.kind, found)
    except Unavailable:
        raise  # a store is down: the whole request is refused, nothing half-done
    except DomainError as exc:
        return Done(op.kind, error=exc)
