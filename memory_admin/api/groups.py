"""Consumer groups: each event of the namespace goes to one consumer of a group."""

import asyncio
from typing import Literal

import redis
from django.http import HttpRequest, HttpResponse
from ninja import Field, Router, Schema

from memory_admin import redis as r
from memory_admin.api.common import Id, In, Key, error_response, errors, in_thread, json_response, ns_of
from memory_admin.api.events import EventOut
from memory_admin.api.once import once
from memory_admin.errors import DomainError
from memory_admin.services import groups

router = Router(tags=["events"])

WAKE_SLICE = 1.0  # seconds: idle entries become reclaimable without a stream entry to wake us


class ReadIn(In):
    consumer: Key
    count: int = Field(10, ge=1, le=100)
    block_ms: int = Field(0, ge=0, le=30_000, description="wait this long for an event when none is ready")
    start: Literal["earliest", "latest"] = Field(
        "latest", description="where a new group starts: the oldest event in the stream, or after the newest"
    )
    reclaim_after_ms: int = Field(
        60_000, ge=100, le=86_400_000, description="redeliver events unacked this long to another consumer"
    )


class AckIn(In):
    ids: list[Id] = Field(max_length=1000)


class ReadOut(Schema):
    items: list[EventOut]


class AckOut(Schema):
    acked: int


@router.post(
    "/events/groups/{path:group}/read", response={200: ReadOut, **errors(403)}, url_name="read_group"
)
async def read_group(request: HttpRequest, group: Key, body: ReadIn):
    """Up to `count` events for `consumer`, waiting up to `block_ms` for one. Ack them; an
    event not acked within `reclaim_after_ms` goes to another consumer of the group."""
    ns = ns_of(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.block_ms / 1000
    batches: list[groups.Batch] = []

    def attempt() -> HttpResponse:
        try:
            batch = groups.read_group(
                ns=ns,
                group=group,
                consumer=body.consumer,
                count=body.count,
                start=body.start,
                reclaim_after_ms=body.reclaim_after_ms,
            )
        except DomainError as exc:
            return error_response(exc)
        batches.append(batch)
        return json_response({"items": batch.items})

    client = r.async_client()
    try:
        while True:
            final = loop.time() >= deadline
            response = await in_thread(once)(
                request,
                attempt,
                ready=lambda response, final=final: final or response.status_code != 200 or batches[-1].items,
            )
            if response is not None:
                return response
            await _wait_for_entry(client, r.stream_key(ns.name), batches[-1].last_delivered, deadline)
    finally:
        await client.aclose()


async def _wait_for_entry(client, key: str, after: str, deadline: float) -> None:
    """Until the stream has an entry after `after`, a slice passes, or the deadline."""
    timeout = min(WAKE_SLICE, deadline - asyncio.get_running_loop().time())
    if timeout <= 0:
        return
    try:
        await client.xread({key: after}, block=max(1, int(timeout * 1000)), count=1)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        await asyncio.sleep(timeout)  # the next attempt answers 503 if Redis is still down


@router.post("/events/groups/{path:group}/ack", response={200: AckOut, **errors(403)}, url_name="ack_group")
def ack_group(request: HttpRequest, group: Key, body: AckIn):
    """Acknowledge events read from the group; `acked` counts those that were pending."""
    return {"acked": groups.ack_group(ns=ns_of(request), group=group, ids=body.ids)}
