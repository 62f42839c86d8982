"""Distributed locks: held in Redis (Lua, TTL), fenced by tokens from the Postgres log.

A fencing token is the id of the lock's `lock.acquired` event: ids only grow, so
tokens keep growing across expiry, force-release and a Redis that lost its data.
Acquire and release run the Redis script inside the Postgres transaction that records
them: if Redis refuses, the event and the token roll back; if Redis is down, nothing
is half-done.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin.errors import Invalid, LockHeld, NotFound, NotLockHolder
from memory_admin.models import HeldLock, LockFence, Namespace, iso
from memory_admin.services import SYSTEM_ACTOR, Actor
from memory_admin.services.events import append_event, append_last_event, pipelined_commit
from memory_admin.validation import check_key


def acquire_lock(
    *, ns: Namespace, resource: str, actor: Actor, ttl_seconds: int = 30, wait_seconds: float = 0
) -> HeldLock:
    """Take `resource` for `ttl_seconds`, waiting up to `wait_seconds` for the holder to go."""
    check_key(resource, "resource")
    deadline = time.monotonic() + wait_seconds
    pause = 0.02
    while True:
        holder = _holder(ns.name, resource)
        if holder is None:
            lock = _try_acquire(ns=ns, resource=resource, actor=actor, ttl_seconds=ttl_seconds)
            if isinstance(lock, HeldLock):
                return lock
            holder = lock
        if time.monotonic() + pause > deadline:
            owner, expires = holder
            raise LockHeld(
                f"{resource!r} is held by {owner}",
                held_by=owner,
                expires_at=iso(r.from_ms(expires)) if expires else None,
            )
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 1.5, 0.25)


@r.unavailable_on_error
def _holder(ns: str, resource: str) -> tuple[str, str] | None:
    owner, expires = r.client().hmget(r.lock_key(ns, resource), "owner", "expires")
    return None if owner is None else (owner, expires)


@r.unavailable_on_error
def _try_acquire(*, ns, resource, actor, ttl_seconds) -> HeldLock | tuple[str, str]:
    """One attempt: the lock, or (owner, expires) of whoever holds it."""
    acquired_in_redis = None
    try:
        with transaction.atomic():
            stamp = now()
            expires = stamp + timedelta(seconds=ttl_seconds)
            LockFence.objects.bulk_create(
                [LockFence(ns=ns, resource=resource, token=0, holder="", held=False, expires=stamp)],
                ignore_conflicts=True,
            )
            fence = LockFence.objects.select_for_update().get(ns=ns, resource=resource)
            if fence.held:
                # The last holder never released: its lease lapsed (or Redis lost it) and the
                # relay's sweep has not recorded that yet. Record it here, before the new
                # acquire, or the log would show the lock changing hands without its end.
                # Should Redis still hold it (a renewal the fence row has not seen), the
                # script below refuses and this event rolls back with the rest.
                append_event(
                    ns=ns,
                    type="lock.expired",
                    actor=SYSTEM_ACTOR,
                    agent_id=fence.holder,
                    subject=resource,
                    payload={"resource": resource, "holder": fence.holder, "fencing_token": fence.token},
                )
            event = append_event(
                ns=ns,
                type="lock.acquired",
                actor=actor,
                subject=resource,
                payload={"resource": resource, "ttl_seconds": ttl_seconds, "expires_at": iso(expires)},
                id_field="fencing_token",
            )
            result = r.script(r.ACQUIRE)(
                keys=[r.lock_key(ns.name, resource), r.locks_index(ns.name)],
                args=[actor.name, event.id, r.to_ms(stamp), ttl_seconds * 1000, resource],
            )
            if int(result[0]) == 0:
                raise _Taken(result[1], result[3])
            acquired_in_redis = event.id
            fence.token, fence.holder, fence.held, fence.acquired, fence.expires = (
                event.id,
                actor.name,
                True,
                stamp,
                expires,
            )
            fence.save(update_fields=["token", "holder", "held", "acquired", "expires"])
    except _Taken as taken:
        return taken.owner, taken.expires
    except DatabaseError:
        if acquired_in_redis is not None:  # the commit failed: give the Redis lock back
            r.script(r.RELEASE)(
                keys=[r.lock_key(ns.name, resource), r.locks_index(ns.name)],
                args=[actor.name, acquired_in_redis, resource],
            )
        raise
    return HeldLock(resource=resource, owner=actor.name, token=event.id, acquired=stamp, expires=expires)


class _Taken(Exception):
    def __init__(self, owner: str, expires: str) -> None:
        self.owner, self.expires = owner, expires


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
    """Release, if `actor` holds `resource` with `token` (compared in Redis, atomically)."""
    check_key(resource, "resource")
    with pipelined_commit(), transaction.atomic():
        fence = LockFence.objects.select_for_update().filter(ns=ns, resource=resource).first()
        if fence is None:
            raise NotLockHolder(f"{actor.name} does not hold {resource!r} with token {token}")
        released = r.script(r.RELEASE)(
            keys=[r.lock_key(ns.name, resource), r.locks_index(ns.name)], args=[actor.name, token, resource]
        )
        if not released:
            raise NotLockHolder(f"{actor.name} does not hold {resource!r} with token {token}")
        if fence.token == token:
            fence.held = False
            fence.save(update_fields=["held"])
        # Last, so the log's counter is not held across the Redis call (services/events.py).
        append_last_event(
            ns=ns,
            type="lock.released",
            actor=actor,
            subject=resource,
            payload={"resource": resource, "fencing_token": token},
        )


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
        append_event(
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
        )
        r.script(r.FORCE_RELEASE)(
            keys=[r.lock_key(ns.name, resource), r.locks_index(ns.name)], args=[resource]
        )
        if fence is not None:
            fence.held = False
            fence.save(update_fields=["held"])
    return held


@r.unavailable_on_error
def get_lock(*, ns: Namespace, resource: str) -> HeldLock:
    check_key(resource, "resource")
    fields = r.client().hgetall(r.lock_key(ns.name, resource))
    if not fields or not fields.get("token"):
        raise NotFound(f"lock {resource!r} is not held")
    return _held(resource, fields)


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
    held = [_held(res, fields) for res, fields in zip(resources, pipe.execute(), strict=True) if fields]
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
            {
                "resource": resource,
                "owner": owner,
                "fencing_token": int(token),
                "acquired_at": iso(acquired),
                "expires_at": iso(expires),
            }
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
            if owner is not False and int(expires) >= now_ms:
                items.append(
                    {
                        "resource": resource,
                        "owner": owner,
                        "fencing_token": int(token),
                        "acquired_at": iso(acquired),
                        "expires_at": iso(expires),
                    }
                )
        if len(batch) < want:
            break
        after = batch[-1]
    return items


@r.unavailable_on_error
def count_locks(*, ns: Namespace) -> int:
    """How many locks are held now, without loading them."""
    return r.client().zcount(r.locks_index(ns.name), r.to_ms(now()), "+inf")


def _held(resource: str, fields: dict[str, str]) -> HeldLock:
    return HeldLock(
        resource=resource,
        owner=fields["owner"],
        token=int(fields["token"]),
        acquired=r.from_ms(fields["acquired"]),
        expires=r.from_ms(fields["expires"]),
    )


def sweep_expired_locks(*, limit: int = 500) -> int:
    """Record `lock.expired` for locks whose TTL lapsed (run by the relay). Returns how many."""
    client = r.client()
    count = 0
    candidates = LockFence.objects.filter(held=True, expires__lte=now()).select_related("ns")[:limit]
    for fence in candidates:
        fields = client.hmget(r.lock_key(fence.ns.name, fence.resource), "token", "expires")
        if fields[0] == str(fence.token):  # renewed: learn the new expiry
            LockFence.objects.filter(pk=fence.pk, token=fence.token).update(expires=r.from_ms(fields[1]))
            continue
        with transaction.atomic():
            if not LockFence.objects.filter(pk=fence.pk, token=fence.token, held=True).update(held=False):
                continue  # released or re-acquired meanwhile
            if fields[0] is None:  # gone, not taken over: drop it from the listing index
                client.zrem(r.locks_index(fence.ns.name), fence.resource)
            append_event(
                ns=fence.ns,
                type="lock.expired",
                actor=SYSTEM_ACTOR,
                agent_id=fence.holder,
                subject=fence.resource,
                payload={"resource": fence.resource, "holder": fence.holder, "fencing_token": fence.token},
            )
        count += 1
    return count
