"""Locks: mutual exclusion with fencing tokens.

Resources may contain `/` and `:`, so the resource is the rest of the path, and a sub-resource
follows it after `!`, which no resource contains: `POST /locks/{resource}!renew` renews and
`/locks/{resource}!` is the lock itself for any resource (API.md: Reaching every key). The older
`POST /locks/{resource}/renew` still renews the resource before it; GET and DELETE on such a
path reach the resource that ends in `/renew`, as nothing else answers them there.
"""

import asyncio
import contextlib
import json
import time

from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema

from memory_admin.api.common import (
    Id,
    In,
    Key,
    Limit,
    actor_of,
    and_exact,
    error_response,
    errors,
    in_thread,
    json_response,
    list_response,
    ns_of,
)
from memory_admin.api.once import HEADER, REPLAYED, once
from memory_admin.errors import DomainError, Invalid
from memory_admin.services import locks
from memory_admin.services.wakeups import Subscription, subscribed

router = Router(tags=["locks"])


class AcquireIn(In):
    ttl_seconds: int = Field(30, ge=1, le=3600)
    wait_seconds: float = Field(0, ge=0, le=30, description="how long to wait for the holder to go")


class RenewIn(In):
    fencing_token: Id
    ttl_seconds: int = Field(30, ge=1, le=3600)


class ReleaseQuery(Schema):
    fencing_token: Id


class LockOut(Schema):
    resource: str
    owner: str
    fencing_token: int
    acquired_at: str
    expires_at: str


class LockDetail(LockOut):
    waiting: list[str] = Field(description="agents waiting for the lock, first in line first")


class LockList(Schema):
    items: list[LockOut]
    next: str | None = Field(
        None, description="with `limit` only: pass as `after` for the next page; null on the last page"
    )


class PageQuery(Schema):
    limit: Limit | None = Field(None, description="a page of at most this many, by resource; none: all")
    after: Key | None = Field(None, description="the `next` of the previous page (needs `limit`)")


@router.get("/locks", response={200: LockList, **errors()}, url_name="list_locks")
def list_locks(request: HttpRequest, query: Query[PageQuery]):
    """Locks held now in the namespace, soonest to expire first: `{"items"}`. With `limit`, a page
    of them by resource after `after`: `{"items", "next"}`."""
    ns = ns_of(request)
    if query.limit is None:
        if query.after is not None:
            raise Invalid("after needs limit", {"limit": "required with after"})
        return list_response({"items": locks.lock_items(ns=ns)})
    page = locks.lock_items(ns=ns, after=query.after or "", limit=query.limit + 1)
    more = len(page) > query.limit
    page = page[: query.limit]
    return list_response({"items": page, "next": page[-1]["resource"] if more else None})


@router.post(
    "/locks/{path:resource}!renew", response={200: LockOut, **errors(403, 409)}, url_name="renew_lock"
)
@router.post(
    "/locks/{path:resource}/renew",
    response={200: LockOut, **errors(403, 409)},
    url_name="renew_lock_alias",
    operation_id="renew_lock_alias",
    deprecated=True,
)
def renew_lock(request: HttpRequest, resource: Key, body: RenewIn):
    """Extend the lease; only the holder with its current token may (else 409 `not_lock_holder`)."""
    lock = locks.renew_lock(
        ns=ns_of(request),
        resource=resource,
        token=body.fencing_token,
        ttl_seconds=body.ttl_seconds,
        actor=actor_of(request),
    )
    return locks.held_item(lock)


@and_exact(
    router.post,
    "/locks/{path:resource}",
    response={200: LockOut, **errors(403, 409)},
    url_name="acquire_lock",
)
async def acquire_lock(request: HttpRequest, resource: Key, body: AcquireIn | None = None):
    """Take the lock, waiting up to `wait_seconds` for its holder to go; else 409 `lock_held`.
    Not re-entrant. Waiters are served first come, first served, woken when the lock is freed.
    The fencing token is larger than every earlier one for the resource."""
    body = body or AcquireIn()  # an empty body takes the defaults
    ns, actor = ns_of(request), actor_of(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_seconds
    waiter = locks.new_waiter(actor, body.ttl_seconds) if body.wait_seconds > 0 else ""
    # A lock handed over by its release is answered from the wake-up, here in the loop; with an
    # Idempotency-Key the next attempt answers it, so that the answer is kept with the lock.
    answer_grants = HEADER not in request.headers
    wakeups = await wakeup_listener() if waiter else None
    busy: list[locks.Busy] = []
    served = False
    first = True
    try:
        while True:
            left = deadline - loop.time()
            # A waiter's first look always queues (and counts as a wait), however long the
            # subscription above took on a loaded machine.
            final = left <= 0 and not (first and waiter)
            first = False
            # Armed before the attempt, so a wake-up that comes while it runs is not lost.
            woken = wakeups.arm(waiter) if wakeups is not None and not final else None
            # One attempt per transaction: a kept Idempotency-Key response commits with its lock.
            response = await in_thread(once)(
                request,
                lambda final=final: _attempt(request, resource, body, waiter, not final, busy),
                ready=lambda response, final=final: final or response.status_code != 409,
            )
            if response is not None:
                # Taking the lock took the waiter out of the queue too (a replay took nothing).
                served = response.status_code == 200 and REPLAYED not in response
                return response
            pause = max(0.0, min(left, locks.WAITER_LOOK_SECONDS))
            holder_expires = busy[-1].expires_ms if busy else None
            if holder_expires:  # a lease that lapses frees the lock without a wake-up
                pause = min(pause, max(0.0, holder_expires / 1000 - time.time()) + 0.005)
            grant = await wakeups.wait(woken, pause)
            if grant is not None and answer_grants:
                served = True
                return json_response(locks.granted_item(resource, actor.name, grant))
    finally:
        if waiter and not served:
            with contextlib.suppress(Exception):
                await in_thread(locks.leave_queue)(ns=ns, resource=resource, waiter=waiter)


def acquire_now(request: HttpRequest, resource: Key, body: AcquireIn | None = None):
    """acquire_lock for a body that does not wait, in the request's thread (config/asgi.py
    answers such a request with it, in one hop): one attempt, kept under an Idempotency-Key as
    the async view keeps its last."""
    body = body or AcquireIn()
    if body.wait_seconds > 0:  # not sent here (`waits` says so); still answered as it asks
        return async_to_sync(acquire_lock)(request, resource, body)
    return once(request, lambda: _attempt(request, resource, body, "", False, []))


def waits(body: bytes) -> bool:
    """Whether an acquire with this (raw) body may wait: `wait_seconds` given and not 0. Any
    other body, valid or not, is answered by acquire_now, the same as by acquire_lock."""
    if b"wait" not in body and b"\\" not in body:  # no such key, not even escaped: no parsing
        return False
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("wait_seconds", 0) != 0


acquire_lock.sync_twin = acquire_now  # memory_admin/api/__init__.py: AgentAPI
acquire_lock.waits = waits


def _attempt(
    request: HttpRequest, resource: str, body: AcquireIn, waiter: str, queue: bool, busy: list[locks.Busy]
) -> HttpResponse:
    """One try for the lock: its answer (200 or the 409 that says who holds it)."""
    try:
        outcome = locks.try_acquire(
            ns=ns_of(request),
            resource=resource,
            actor=actor_of(request),
            ttl_seconds=body.ttl_seconds,
            waiter=waiter,
            queue=queue,
        )
    except DomainError as exc:
        return error_response(exc)
    if isinstance(outcome, locks.Busy):
        busy.append(outcome)
        return error_response(outcome.error(resource))
    return json_response(locks.held_item(outcome))


async def wakeup_listener() -> Subscription:
    """This process's one subscription to lock wake-ups: a freed lock names its next waiter,
    and the request waiting under that id (if it is here) tries again at once."""
    return await subscribed(locks.wake_channel(), _woken)


def _woken(message: str) -> list[tuple[str, locks.Grant | None]]:
    return [locks.wakeup(message)]


@and_exact(
    router.get, "/locks/{path:resource}", response={200: LockDetail, **errors(404)}, url_name="get_lock"
)
def get_lock(request: HttpRequest, resource: Key):
    """The lock as held now, with `waiting`: the agents queued for it, first in line first."""
    ns = ns_of(request)
    lock = locks.get_lock(ns=ns, resource=resource)
    return {**locks.held_item(lock), "waiting": locks.waiters(ns=ns, resource=resource)}


@and_exact(
    router.delete, "/locks/{path:resource}", response={204: None, **errors(403, 409)}, url_name="release_lock"
)
def release_lock(request: HttpRequest, resource: Key, query: Query[ReleaseQuery]):
    """Release; only the holder with its token may (else 409 `not_lock_holder`)."""
    locks.release_lock(
        ns=ns_of(request), resource=resource, token=query.fencing_token, actor=actor_of(request)
    )
    return HttpResponse(status=204)


# The older renew path takes every URL ending in `/renew`; a read or release there is of the
# resource that ends so (its POST stays the renewal, which older agents rely on).
@router.get(
    "/locks/{path:resource}/renew", response={200: LockDetail, **errors(404)}, include_in_schema=False
)
def get_renew_lock(request: HttpRequest, resource: Key):
    return get_lock(request, f"{resource}/renew")


@router.delete(
    "/locks/{path:resource}/renew", response={204: None, **errors(403, 409)}, include_in_schema=False
)
def release_renew_lock(request: HttpRequest, resource: Key, query: Query[ReleaseQuery]):
    return release_lock(request, f"{resource}/renew", query)
