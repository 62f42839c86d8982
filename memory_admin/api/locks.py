"""Locks: mutual exclusion with fencing tokens.

Resources may contain `/`, so the resource is the rest of the path; `.../renew` is the
renewal of the resource before it.
"""

import asyncio
import random
from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema

from memory_admin.api.common import (
    Id,
    In,
    Key,
    Limit,
    actor_of,
    error_response,
    errors,
    in_thread,
    iso_ms,
    json_response,
    list_response,
    ns_of,
)
from memory_admin.api.once import once
from memory_admin.errors import DomainError, Invalid
from memory_admin.models import HeldLock
from memory_admin.services import locks

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


class LockList(Schema):
    items: list[LockOut]
    next: str | None = Field(
        None, description="with `limit` only: pass as `after` for the next page; null on the last page"
    )


class PageQuery(Schema):
    limit: Limit | None = Field(None, description="a page of at most this many, by resource; none: all")
    after: Key | None = Field(None, description="the `next` of the previous page (needs `limit`)")


def lock_body(lock: HeldLock) -> dict[str, Any]:
    return {
        "resource": lock.resource,
        "owner": lock.owner,
        "fencing_token": lock.token,
        "acquired_at": iso_ms(lock.acquired),
        "expires_at": iso_ms(lock.expires),
    }


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
    "/locks/{path:resource}/renew", response={200: LockOut, **errors(403, 409)}, url_name="renew_lock"
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
    return lock_body(lock)


@router.post("/locks/{path:resource}", response={200: LockOut, **errors(403, 409)}, url_name="acquire_lock")
async def acquire_lock(request: HttpRequest, resource: Key, body: AcquireIn | None = None):
    """Take the lock, waiting up to `wait_seconds` for its holder to go; else 409 `lock_held`.
    Not re-entrant. The fencing token is larger than every earlier one for the resource."""
    body = body or AcquireIn()  # an empty body takes the defaults
    ns, actor = ns_of(request), actor_of(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_seconds
    pause = 0.02

    def attempt() -> HttpResponse:
        try:
            lock = locks.acquire_lock(
                ns=ns, resource=resource, actor=actor, ttl_seconds=body.ttl_seconds, wait_seconds=0
            )
        except DomainError as exc:
            return error_response(exc)
        return json_response(lock_body(lock))

    while True:
        final = loop.time() >= deadline
        # One attempt per transaction: a kept Idempotency-Key response commits with its lock.
        response = await in_thread(once)(
            request, attempt, ready=lambda response, final=final: final or response.status_code != 409
        )
        if response is not None:
            return response
        await asyncio.sleep(max(0.0, min(pause * random.uniform(0.5, 1.5), deadline - loop.time())))
        pause = min(pause * 1.5, 0.25)


@router.get("/locks/{path:resource}", response={200: LockOut, **errors(404)}, url_name="get_lock")
def get_lock(request: HttpRequest, resource: Key):
    return lock_body(locks.get_lock(ns=ns_of(request), resource=resource))


@router.delete("/locks/{path:resource}", response={204: None, **errors(403, 409)}, url_name="release_lock")
def release_lock(request: HttpRequest, resource: Key, query: Query[ReleaseQuery]):
    """Release; only the holder with its token may (else 409 `not_lock_holder`)."""
    locks.release_lock(
        ns=ns_of(request), resource=resource, token=query.fencing_token, actor=actor_of(request)
    )
    return HttpResponse(status=204)
