"""Distributed locks: held in Redis (Lua, TTL), fenced by a durable counter per lock in Postgres.

An acquire reserves the lock in Redis (set-if-absent, first come first served among waiters),
then bumps the lock's fencing counter and appends `lock.acquired` in one Postgres statement that
commits before the token is handed out, then confirms the reservation with the token. Tokens so
only grow, also after Redis loses its data and after a Postgres crash; a reservation whose
Postgres part failed is given back. A release marks the lock `releasing` in Redis (only its
holder with its token may), records it in Postgres, then frees it and wakes the next waiter: no
acquire can slip between, so the log shows each lock's acts in order. Work per acquire or
release: one Postgres statement and two Redis scripts (the second also rings the relay's doorbell).
A release with a waiter in line hands the lock over in the same work: its statement records the
waiter's acquire too, and the second script makes the waiter the holder and tells it its token.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin import sql
from memory_admin.errors import Invalid, LockHeld, NotFound, NotLockHolder
from memory_admin.models import HeldLock, LockFence, Namespace, iso, iso_ms
from memory_admin.services import SYSTEM, Actor, activity
from memory_admin.services.events import (
    append_event,
    current_txn,
    doorbell_channel,
    ring_after_commit,
    ring_after_write,
)
from memory_admin.validation import check_key

# A waiter's place in a lock's queue lapses this long after its last look (a waiter whose
# process died drops out); waiters look again at least every WAITER_LOOK_SECONDS.
WAITER_LEASE_MS = 3000
WAITER_LOOK_SECONDS = 1.0


@dataclass(frozen=True)
class Busy:
    """An acquire that did not get the lock: who holds it (None while an earlier waiter's turn)."""

    owner: str | None
    expires_ms: int | None

    def error(self, resource: str) -> LockHeld:
        expires = iso(r.from_ms(self.expires_ms)) if self.expires_ms else None
        who = self.owner or "an earlier waiter"
        return LockHeld(f"{resource!r} is held by {who}", held_by=self.owner, expires_at=expires)


def new_waiter(actor: Actor, ttl_seconds: int = 0) -> str:
    """A waiter id: unique, naming its agent (the lock page shows who waits). An agent's carries
    the lease it asks for, so that a release can hand the lock to it (release_lock)."""
    lease = f".{ttl_seconds}" if actor.agent is not None and 1 <= ttl_seconds <= 3600 else ""
    return f"{uuid.uuid4().hex[:12]}{lease} {actor.name}"


@dataclass(frozen=True)
class Grant:
    """A lock handed by a release to the first waiter in line, as its wake-up announced it."""

    token: int
    acquired_ms: int
    expires_ms: int


def wakeup(message: str) -> tuple[str, Grant | None]:
    """The waiter a wake-up names, and the lock it was handed (None: it should look again)."""
    parts = message.split("\n")
    if len(parts) < 4:
        return parts[-1], None
    token, acquired, expires = parts[3].split()
    return parts[2], Grant(int(token), int(acquired), int(expires))


def granted_item(resource: str, owner: str, grant: Grant) -> dict[str, Any]:
    """lock_item of a lock handed to a waiter."""
    return lock_item(
        resource, owner, grant.token, r.iso_from_ms(grant.acquired_ms), r.iso_from_ms(grant.expires_ms)
    )


def wake_channel() -> str:
    """Where freeing a lock announces its next waiter: one channel for the whole database."""
    from memory_admin.services.events import doorbell_channel

    return doorbell_channel().replace("doorbell", "lockfree", 1)


def wake_message(ns: str, resource: str) -> str:
    """The prefix of a wake-up; the waiter's id follows it."""
    return f"{ns}\n{resource}\n"


def acquire_lock(
    *, ns: Namespace, resource: str, actor: Actor, ttl_seconds: int = 30, wait_seconds: float = 0
) -> HeldLock:
    """Take `resource` for `ttl_seconds`, waiting up to `wait_seconds` for the holder to go
    (in this thread; the API waits without one, api/locks.py)."""
    import time

    check_key(resource, "resource")
    deadline = time.monotonic() + wait_seconds
    waiter = new_waiter(actor, ttl_seconds) if wait_seconds > 0 else ""
    first, served = True, False
    try:
        while True:
            left = deadline - time.monotonic()
            queue = bool(waiter) and (left > 0 or first)  # a waiter's first look always queues
            outcome = try_acquire(
                ns=ns, resource=resource, actor=actor, ttl_seconds=ttl_seconds, waiter=waiter, queue=queue
            )
            if isinstance(outcome, HeldLock):
                served = True  # taking the lock took the waiter out of the queue too
                return outcome
            if left <= 0 and not (first and waiter):
                raise outcome.error(resource)
            first = False
            time.sleep(max(0.0, min(left, 0.05)))
    finally:
        if waiter and not served:
            leave_queue(ns=ns, resource=resource, waiter=waiter)


@r.unavailable_on_error
def try_acquire(
    *, ns: Namespace, resource: str, actor: Actor, ttl_seconds: int, waiter: str = "", queue: bool = False
) -> HeldLock | Busy:
    """One attempt: the lock, or who holds it. With `queue`, a caller that did not get it keeps
    (or takes) its place among the waiters under `waiter`."""
    check_key(resource, "resource")
    if not 1 <= ttl_seconds <= 3600:
        raise Invalid("ttl_seconds must be 1-3600", {"ttl_seconds": "1-3600"})
    stamp = now()
    keys = r.lock_keys(ns.name, resource)
    reserved = r.script(r.ACQUIRE)(
        keys=keys,
        args=[actor.name, r.to_ms(stamp), ttl_seconds * 1000, waiter, WAITER_LEASE_MS, int(queue)],
    )
    if int(reserved[0]) == 3:  # a release handed it to this waiter
        acquired, expires = r.from_ms(reserved[2]), r.from_ms(reserved[3])
        return HeldLock(resource=resource, owner=actor.name, token=int(reserved[1]), acquired=acquired,
                        expires=expires)  # fmt: skip
    if int(reserved[0]) != 1 and queue and waiter:
        activity.count_lock_wait(ns=ns, waiter=waiter)  # the overview charts waits (not in the log)
    if int(reserved[0]) == 0:
        return Busy(owner=reserved[1], expires_ms=int(float(reserved[3])) if reserved[3] else None)
    if int(reserved[0]) == 2:
        return Busy(owner=None, expires_ms=None)
    expires = stamp + timedelta(seconds=ttl_seconds)
    try:
        token = _record_acquire(
            ns=ns, resource=resource, actor=actor, stamp=stamp, expires=expires, ttl=ttl_seconds
        )
    except BaseException:
        _undo(ns, resource, actor)
        raise
    if not r.script(r.CONFIRM)(keys=keys[:2], args=[actor.name, token, resource, _doorbell()]):
        # The reservation's lease ran out before Postgres answered: it was never held with
        # this token. Record its end, so the fence does not name a holder that has none.
        _record_end(ns=ns, resource=resource, owner=actor.name, token=token, type="lock.expired")
        return Busy(owner=None, expires_ms=None)
    return HeldLock(resource=resource, owner=actor.name, token=token, acquired=stamp, expires=expires)


def _undo(ns: Namespace, resource: str, actor: Actor) -> None:
    keys = r.lock_keys(ns.name, resource)[:4]
    with contextlib.suppress(Exception):  # Redis is what failed: the reservation lapses with its TTL
        r.script(r.UNDO)(
            keys=keys,
            args=[actor.name, resource, wake_channel(), wake_message(ns.name, resource), r.to_ms(now())],
        )


@r.unavailable_on_error
def leave_queue(*, ns: Namespace, resource: str, waiter: str) -> None:
    """A waiter that stopped waiting (served, timed out, gone) gives up its place, and the lock,
    should a release have handed it over just as it stopped."""
    handed = r.script(r.LEAVE)(keys=r.lock_keys(ns.name, resource)[:4], args=[waiter])
    if handed:
        with contextlib.suppress(NotLockHolder):  # released, renewed away or lapsed meanwhile
            release_lock(ns=ns, resource=resource, token=int(handed[1]), actor=Actor(name=handed[0]))


@r.unavailable_on_error
def wake_if_lapsed(*, ns: Namespace, resource: str) -> None:
    """A lock whose lease lapsed frees itself without a release: wake its next waiter."""
    r.script(r.WAKE)(
        keys=r.lock_keys(ns.name, resource)[:4],
        args=[resource, wake_channel(), wake_message(ns.name, resource), r.to_ms(now())],
    )


def _acquire_params(*, ns, resource, owner, agent_id, stamp, expires, ttl) -> dict[str, Any]:
    """What ACQUIRE_LOCK and HAND_LOCK need to give the fence, and the event, to `owner`."""
    return {
        "ns": ns.pk,
        "resource": resource,
        "owner": owner,
        "agent_id": agent_id,
        "stamp": stamp,
        "expires": expires,
        "expires_at": iso(expires),
        "ttl": ttl,
        "txn": current_txn(),
    }


def _record_acquire(*, ns, resource, actor, stamp, expires, ttl) -> int:
    params = _acquire_params(
        ns=ns,
        resource=resource,
        owner=actor.name,
        agent_id=actor.agent_id,
        stamp=stamp,
        expires=expires,
        ttl=ttl,
    )
    with sql.prepared_cursor() as cursor:
        cursor.execute(sql.ACQUIRE_LOCK, params)
        row = cursor.fetchone()
        if row is None:  # a first acquire raced another for the new fence row: it exists now
            cursor.execute(sql.ACQUIRE_LOCK, params)
            row = cursor.fetchone()
    return row[0]  # the relay's doorbell rings with the confirmation (_doorbell)


def _doorbell() -> str:
    """The relay's doorbell channel for the lock script that follows an acquire's or release's
    statement to ring, in the same round trip; '' inside a transaction, which rings it when it
    commits (services/events.ring_after_write)."""
    if connection.in_atomic_block:
        ring_after_commit()
        return ""
    return doorbell_channel()


def _record_end(*, ns, resource, owner, token, type, actor: str | None = None, ring: bool = True) -> bool:
    """Mark the holder's fence free with its event; False if the fence no longer names it.
    With `ring` false the caller rings the relay's doorbell (_doorbell)."""
    with sql.prepared_cursor() as cursor:
        cursor.execute(
            sql.END_LOCK,
            {
                "ns": ns.pk,
                "resource": resource,
                "owner": owner,
                "token": token,
                "type": type,
                "actor": actor or (owner if type == "lock.released" else SYSTEM),
                "stamp": now(),
                "txn": current_txn(),
            },
        )
        ended = cursor.rowcount > 0
    if ended and ring:
        ring_after_write()
    return ended


@r.unavailable_on_error
def renew_lock(*, ns: Namespace, resource: str, token: int, actor: Actor, ttl_seconds: int = 30) -> HeldLock:
    """Extend the holder's lease; only the holder with its current token may."""
    check_key(resource, "resource")
    stamp = now()
    result = r.script(r.RENEW)(
        keys=[r.lock_key(ns.name, resource), r.locks_index(ns.name)],
        args=[actor.name, token, r.to_ms(stamp), ttl_seconds * 1000, resource],
    )
    if int(result[0]) == 0:
        raise NotLockHolder(f"{actor.name} does not hold {resource!r} with token {token}")
    return HeldLock(
        resource=resource,
        owner=actor.name,
        token=token,
        acquired=r.from_ms(result[1]),
        expires=r.from_ms(result[2]),
    )


@r.unavailable_on_error
def release_lock(*, ns: Namespace, resource: str, token: int, actor: Actor) -> None:
    """Release, if `actor` holds `resource` with `token` (compared in Redis, atomically). The
    first waiter in line, if it named its lease (new_waiter), gets the lock in the same steps:
    the release's statement records its acquire too, and its wake-up carries the token, so a
    handover costs one commit and no look by the waiter (the next holder waits on this path)."""
    check_key(resource, "resource")
    keys = r.lock_keys(ns.name, resource)[:4]
    args = [actor.name, token, resource, wake_channel(), wake_message(ns.name, resource)]
    begun = r.script(r.RELEASE)(keys=keys, args=[*args, r.to_ms(now()), "begin", ""])
    if not begun:
        raise NotLockHolder(f"{actor.name} does not hold {resource!r} with token {token}")
    # Inside a transaction the token would be handed out before it commits: no handover then.
    waiter = begun[1] if len(begun) > 1 and not connection.in_atomic_block else ""
    heir, lease = _heir(waiter)
    stamp, handed = now(), None
    try:
        if heir:
            handed = _record_handover(
                ns=ns, resource=resource, owner=actor.name, token=token, heir=heir, stamp=stamp, ttl=lease
            )
        if handed is None:
            _record_end(
                ns=ns, resource=resource, owner=actor.name, token=token, type="lock.released", ring=False
            )
    except BaseException:
        r.script(r.RELEASE)(keys=keys, args=[*args, r.to_ms(now()), "undo", ""])
        raise
    if handed is None:
        r.script(r.RELEASE)(keys=keys, args=[*args, r.to_ms(now()), "end", _doorbell()])
        return
    start = r.to_ms(stamp)
    outcome = r.script(r.RELEASE)(
        keys=keys, args=[*args, start, "hand", _doorbell(), waiter, heir, handed, start + lease * 1000]
    )
    if outcome == 2:  # the waiter left the line meanwhile: Redis freed the lock, granting nothing
        _record_end(ns=ns, resource=resource, owner=heir, token=handed, type="lock.released")
        wake_if_lapsed(ns=ns, resource=resource)
    elif outcome == 0:  # cannot happen while the line holds; should it, the fence must not lie
        _record_end(ns=ns, resource=resource, owner=heir, token=handed, type="lock.expired")


def _heir(waiter: str) -> tuple[str, int]:
    """The agent a waiter id names and the lease it asked for; ('', 0) for one that takes no
    handover (it looks for itself when woken)."""
    ticket, _, name = waiter.partition(" ")
    _, dot, lease = ticket.partition(".")
    return (name, int(lease)) if dot and lease.isdigit() else ("", 0)


def _record_handover(*, ns, resource, owner, token, heir, stamp, ttl) -> int | None:
    """The holder's release and `heir`'s acquire, in one statement: the heir's token, or None if
    the fence no longer names the holder (nothing written then)."""
    expires = stamp + timedelta(seconds=ttl)
    params = _acquire_params(
        ns=ns, resource=resource, owner=heir, agent_id=heir, stamp=stamp, expires=expires, ttl=ttl
    )
    params.update(holder=owner, token=token)
    with sql.prepared_cursor() as cursor:
        cursor.execute(sql.HAND_LOCK, params)
        row = cursor.fetchone()
    return row[0] if row else None


@r.unavailable_on_error
def force_release(*, ns: Namespace, resource: str, reason: str, actor: Actor) -> HeldLock:
    """An operator frees a stuck lock; its holder's fenced writes are refused from now on."""
    check_key(resource, "resource")
    reason = reason.strip()
    if not reason:
        raise Invalid("a reason is required to force-release a lock", {"reason": "required"})
    with transaction.atomic():
        fence = LockFence.objects.select_for_update().filter(ns=ns, resource=resource).first()
        held = get_lock(ns=ns, resource=resource)  # NotFound when nobody holds it
        event = append_event(
            ns=ns,
            type="lock.force_released",
            actor=actor,
            agent_id=held.owner,
            subject=resource,
            payload={
                "resource": resource,
                "holder": held.owner,
                "fencing_token": held.token,
                "reason": reason,
            },
            follows=fence.ord if fence is not None else 0,
        )
        r.script(r.FORCE_RELEASE)(
            keys=r.lock_keys(ns.name, resource)[:4],
            args=[resource, wake_channel(), wake_message(ns.name, resource), r.to_ms(now())],
        )
        if fence is not None:
            fence.held, fence.ord = False, event.ord
            fence.save(update_fields=["held", "ord"])
    return held


def waiters(*, ns: Namespace, resource: str) -> list[str]:
    """Who waits for the lock, first in line first (their leases not lapsed)."""
    stamp = r.to_ms(now())
    client = r.client()
    pipe = client.pipeline(transaction=False)
    pipe.zrange(r.lock_queue(ns.name, resource), 0, -1)
    pipe.hgetall(r.lock_leases(ns.name, resource))
    queue, leases = pipe.execute()
    return [w.split(" ", 1)[-1] for w in queue if float(leases.get(w, 0)) >= stamp]


@r.unavailable_on_error
def get_lock(*, ns: Namespace, resource: str) -> HeldLock:
    """The lock as held now, with who waits for it; NotFound when nobody holds it."""
    check_key(resource, "resource")
    pipe = r.client().pipeline(transaction=False)
    pipe.hgetall(r.lock_key(ns.name, resource))
    pipe.zrange(r.lock_queue(ns.name, resource), 0, -1)
    fields, queue = pipe.execute()
    if not fields or not fields.get("token"):
        raise NotFound(f"lock {resource!r} is not held")
    return _held(resource, fields, queue)


@r.unavailable_on_error
def list_locks(*, ns: Namespace, limit: int | None = None, owner: str | None = None) -> list[HeldLock]:
    """Locks held now in the namespace, soonest to expire first (the first `limit` of them);
    with `owner`, only that holder's."""
    client = r.client()
    if owner is not None:
        # The last known holders in Postgres narrow it down; Redis says who holds them now.
        resources = list(
            LockFence.objects.filter(ns=ns, holder=owner, held=True).values_list("resource", flat=True)
        )
    elif limit:
        resources = client.zrangebyscore(r.locks_index(ns.name), r.to_ms(now()), "+inf", start=0, num=limit)
    else:
        resources = client.zrangebyscore(r.locks_index(ns.name), r.to_ms(now()), "+inf")
    if not resources:
        return []
    pipe = client.pipeline(transaction=False)
    for resource in resources:
        pipe.hgetall(r.lock_key(ns.name, resource))
        pipe.zrange(r.lock_queue(ns.name, resource), 0, -1)
    replies = pipe.execute()
    held = [
        _held(res, fields, queue)
        for res, fields, queue in zip(resources, replies[::2], replies[1::2], strict=True)
        if fields and fields.get("token")  # not a reservation still being recorded
    ]
    if owner is not None:
        held = sorted((lock for lock in held if lock.owner == owner), key=lambda lock: lock.expires)
    return held


@r.unavailable_on_error
def lock_items(*, ns: Namespace, after: str = "", limit: int | None = None) -> list[dict[str, Any]]:
    """The items of GET /locks, as plain dicts with times as text (no object or datetime per lock):
    every lock held now, soonest to expire first, in one Redis round trip; with `limit`, up to
    `limit` of them by resource after `after`. For a page, the fences in Postgres that say held
    name the candidates in resource order; Redis says which are held now."""
    iso = r.iso_from_ms
    if not limit:
        return [
            lock_item(resource, owner, token, iso(acquired), iso(expires))
            for resource, owner, token, acquired, expires in r.held_locks(ns.name, r.to_ms(now()))
        ]
    items: list[dict[str, Any]] = []
    fences = LockFence.objects.filter(ns=ns, held=True).order_by("resource")
    while len(items) < limit:
        # A fence may still say held for a lease that lapsed: read on until the page is full.
        want = limit - len(items)
        batch = list(fences.filter(resource__gt=after).values_list("resource", flat=True)[:want])
        if not batch:
            break
        now_ms = r.to_ms(now())
        keys = [r.lock_key(ns.name, resource) for resource in batch]
        fields = r.hmget_each(keys, "owner", "token", "acquired", "expires")
        for resource, (owner, token, acquired, expires) in zip(batch, fields, strict=True):
            if owner is not False and token and int(expires) >= now_ms:
                items.append(lock_item(resource, owner, token, iso(acquired), iso(expires)))
        if len(batch) < want:
            break
        after = batch[-1]
    return items


@r.unavailable_on_error
def count_locks(*, ns: Namespace) -> int:
    """How many locks are held now, without loading them."""
    return r.client().zcount(r.locks_index(ns.name), r.to_ms(now()), "+inf")


def lock_item(
    resource: str, owner: str, token: int | str, acquired_at: str, expires_at: str
) -> dict[str, Any]:
    """A held lock as the API and the MCP tools answer it (api/locks.py's LockOut): the one place
    its fields are named. Times are ISO text to the millisecond, as Redis keeps them."""
    return {
        "resource": resource,
        "owner": owner,
        "fencing_token": int(token),
        "acquired_at": acquired_at,
        "expires_at": expires_at,
    }


def held_item(lock: HeldLock) -> dict[str, Any]:
    """lock_item of a HeldLock (an acquire, a renewal, GET /locks/{resource})."""
    return lock_item(lock.resource, lock.owner, lock.token, iso_ms(lock.acquired), iso_ms(lock.expires))


def _held(resource: str, fields: dict[str, str], queue: list[str] = ()) -> HeldLock:
    return HeldLock(
        resource=resource,
        owner=fields["owner"],
        token=int(fields["token"]),
        acquired=r.from_ms(fields["acquired"]),
        expires=r.from_ms(fields["expires"]),
        waiting=tuple(waiter.split(" ", 1)[-1] for waiter in queue),
    )


def sweep_expired_locks(*, limit: int = 500) -> int:
    """Record `lock.expired` for locks whose TTL lapsed, and wake their waiters (run by the
    relay). Returns how many."""
    client = r.client()
    count = 0
    candidates = LockFence.objects.filter(held=True, expires__lte=now()).select_related("ns")[:limit]
    for fence in candidates:
        fields = client.hmget(r.lock_key(fence.ns.name, fence.resource), "token", "expires")
        if fields[0] == str(fence.token):  # renewed: learn the new expiry
            LockFence.objects.filter(pk=fence.pk, token=fence.token).update(expires=r.from_ms(fields[1]))
            continue
        # Gone, or reserved by a new acquirer: the end is recorded once, here or by that acquire.
        if _record_end(
            ns=fence.ns, resource=fence.resource, owner=fence.holder, token=fence.token, type="lock.expired"
        ):
            count += 1
        if fields[0] is None:  # not taken over: drop it from the listing index, wake a waiter
            client.zrem(r.locks_index(fence.ns.name), fence.resource)
            wake_if_lapsed(ns=fence.ns, resource=fence.resource)
    return count
