"""Consumer groups: each event of the namespace goes to one consumer of a group."""

import asyncio
from typing import Literal

from django.http import HttpRequest, HttpResponse
from ninja import Field, Router, Schema

from memory_admin.api.common import (
    Id,
    In,
    Key,
    Unauthenticated,
    actor_of,
    agent_of,
    and_exact,
    error_response,
    errors,
    in_thread,
    json_response,
    ns_of,
    token_of,
)
from memory_admin.api.events import EventOut
from memory_admin.api.once import once
from memory_admin.errors import DomainError
from memory_admin.services import groups, tokens, wakeups

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


class ConfigureIn(In):
    max_deliveries: int | None = Field(
        ...,
        ge=1,
        le=groups.MAX_DELIVERIES,
        description="park an event after this many failed deliveries (null: never)",
    )


class ConsumerOut(Schema):
    name: str
    agent_id: str | None
    pending: int
    idle_ms: int | None


class GroupOut(Schema):
    group: str
    cursor: int = Field(description="the last event id delivered to the group")
    lag: int = Field(description="events after the cursor")
    pending: int
    max_deliveries: int | None
    parked: int
    consumers: list[ConsumerOut]


@router.post(
    "/events/groups/{path:group}/read", response={200: ReadOut, **errors(403)}, url_name="read_group"
)
async def read_group(request: HttpRequest, group: Key, body: ReadIn):
    """Up to `count` events for `consumer`, waiting up to `block_ms` for one. Ack them; an
    event not acked within `reclaim_after_ms` goes to another consumer of the group."""
    ns = ns_of(request)
    agent_id = agent_of(request).name
    token_id = token_of(request).pk
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.block_ms / 1000
    batches: list[groups.Batch] = []

    def attempt() -> HttpResponse:
        # Every wake-up asks again (a revocation's own event wakes this read): a read that
        # was waiting when its token was revoked answers 401, not the events that came since.
        if not tokens.token_is_live(token_id):
            return error_response(Unauthenticated("the token was revoked while the read waited"))
        try:
            batch = groups.read_group(
                ns=ns,
                group=group,
                consumer=body.consumer,
                count=body.count,
                start=body.start,
                reclaim_after_ms=body.reclaim_after_ms,
                agent_id=agent_id,
            )
        except DomainError as exc:
            return error_response(exc)
        batches.append(batch)
        return json_response({"items": batch.items})

    watch = wakeups.StreamWatch(ns.name)
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
            await _wait_for_entry(watch, batches[-1].last_delivered, deadline)
    finally:
        await watch.close()


async def _wait_for_entry(watch: wakeups.StreamWatch, after: str, deadline: float) -> None:
    """Until the stream has an entry after `after`, a slice passes, or the deadline."""
    timeout = min(WAKE_SLICE, deadline - asyncio.get_running_loop().time())
    if timeout <= 0:
        return
    if await watch.wait_past(after, max(1, int(timeout * 1000))) is None:
        await asyncio.sleep(timeout)  # the next attempt answers 503 if Redis is still down


@router.post("/events/groups/{path:group}/ack", response={200: AckOut, **errors(403)}, url_name="ack_group")
def ack_group(request: HttpRequest, group: Key, body: AckIn):
    """Acknowledge events read from the group; `acked` counts those that were pending."""
    return {"acked": groups.ack_group(ns=ns_of(request), group=group, ids=body.ids)}


def _group_body(state: groups.GroupState) -> dict:
    return {
        "group": state.row.name,
        "cursor": state.cursor,
        "lag": state.lag,
        "pending": state.pending,
        "max_deliveries": state.row.max_deliveries,
        "parked": state.parked,
        "consumers": [
            {"name": c.name, "agent_id": c.agent or None, "pending": c.pending, "idle_ms": c.idle_ms}
            for c in state.consumers
        ],
    }


def _state(request: HttpRequest, group: str) -> dict:
    ns = ns_of(request)
    groups.get_group(ns=ns, group=group)  # 404 for a group nobody read
    return _group_body(next(s for s in groups.list_groups(ns=ns) if s.row.name == group))


# Registered after /read and /ack: `{path:group}` would take their suffix as part of the name.
@and_exact(
    router.get, "/events/groups/{path:group}", response={200: GroupOut, **errors(404)}, url_name="get_group"
)
def get_group(request: HttpRequest, group: Key):
    """The group's cursor, lag, unacked deliveries per consumer and how many events are parked."""
    return _state(request, group)


@and_exact(
    router.put,
    "/events/groups/{path:group}",
    response={200: GroupOut, **errors(403)},
    url_name="configure_group",
)
def configure_group(request: HttpRequest, group: Key, body: ConfigureIn):
    """Set after how many failed deliveries the group parks an event (creating the group if new)."""
    groups.configure_group(
        ns=ns_of(request), group=group, max_deliveries=body.max_deliveries, actor=actor_of(request)
    )
    return _state(request, group)


# The /read and /ack paths take every URL ending so; a GET or PUT there is of the group whose
# name ends so (API.md: Reaching every key). `/events/groups/{group}!` reaches any group too.
def _group_named_with(suffix: str) -> None:
    path = f"/events/groups/{{path:group}}/{suffix}"

    @router.get(
        path, response={200: GroupOut, **errors(404)}, url_name=f"get_{suffix}_group", include_in_schema=False
    )
    def get_suffixed_group(request: HttpRequest, group: Key):
        return get_group(request, f"{group}/{suffix}")

    @router.put(
        path,
        response={200: GroupOut, **errors(403)},
        url_name=f"configure_{suffix}_group",
        include_in_schema=False,
    )
    def configure_suffixed_group(request: HttpRequest, group: Key, body: ConfigureIn):
        return configure_group(request, f"{group}/{suffix}", body)


_group_named_with("read")
_group_named_with("ack")
