"""The shared log: append, page after a cursor, and a live Server-Sent Events stream."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import django.db
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema

from memory_admin import metrics
from memory_admin.api.common import (
    Id,
    In,
    Limit,
    actor_of,
    agent_of,
    error_response,
    errors,
    in_thread,
    json_response,
    ns_of,
    token_of,
)
from memory_admin.api.once import HEADER, once
from memory_admin.errors import DomainError, Invalid
from memory_admin.models import Namespace
from memory_admin.services import events, idempotency, tokens, wakeups

router = Router(tags=["events"])
T = TypeVar("T")
log = logging.getLogger("memory_admin.api")

KEEPALIVE_SECONDS = 15
WAKE_BLOCK_MS = 4000  # below the Redis client's 5 s socket timeout
POLL_SECONDS = 1.0  # while Redis is down, the stream polls Postgres
BATCH = 500


class EventIn(In):
    type: str = Field(description="^[a-z0-9][a-z0-9_.-]{0,63}$; the server's own prefixes are refused")
    payload: dict[str, Any] = Field(default_factory=dict)


class EventOut(Schema):
    id: int | None = Field(description="the event's position in the namespace's log")
    type: str
    agent_id: str | None
    actor: str
    subject: str
    payload: dict[str, Any]
    created_at: str
    txn: str | None = Field(None, description="the /txn request that wrote it, if one did")


class EventPage(Schema):
    items: list[EventOut]
    next: int | None = Field(description="the last id of a full page (pass as `after`); null when caught up")


class EventQuery(Schema):
    after: Id = Field(0, description="the last id seen")
    type: list[str] = Field(default_factory=list, description="repeat, or separate with commas")
    agent_id: str | None = None
    limit: Limit = 50


class StreamQuery(Schema):
    after: Id | None = Field(None, description="replay from here; the header Last-Event-ID wins")
    type: list[str] = Field(default_factory=list)


def _types(values: list[str]) -> list[str]:
    return [t for value in values for t in value.split(",") if t]


POSITION_WAIT = 1.0  # seconds a published event's response waits for its position
RELAY_GRACE = 0.05  # seconds it leaves the sequencing to the relay
POSITIONS_HEARD = 10_000  # positions kept for publishers that listen only after the relay spoke


@router.post("/events", response={201: EventOut, **errors(403)}, url_name="publish_event")
async def publish_event(request: HttpRequest, body: EventIn):
    """Append an event of the agent's own type. The answer carries its `id` (its position in the
    log) once it is sequenced, normally within milliseconds of the commit; `id` is null if that
    took longer than a second (a transaction older than it still open): it is in the log, and
    readers will see it in its place."""
    ns, actor = ns_of(request), actor_of(request)
    published: list = []

    def compute():
        try:
            event = events.publish_event(ns=ns, type=body.type, payload=body.payload, actor=actor)
        except DomainError as exc:
            return error_response(exc)
        published.append(event)
        return json_response(event.body(), status=201)

    response = await in_thread(once)(request, compute)
    if not published or response.status_code != 201:
        return response
    event = published[-1]
    event.position = await _position_from_relay(event.seq)
    # Only if the relay did not say (none runs, or it is far behind) does this request sequence:
    # publishers that all did would queue behind one another on the sequencer's lock.
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + POSITION_WAIT - RELAY_GRACE, 0.002
    while event.position is None and loop.time() < deadline:
        event = await in_thread(events.find_position)(event)
        if event.position is None:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
    if event.position is None:
        return response
    response = json_response(event.body(), status=201)
    if request.headers.get(HEADER):  # a retry replays the body with its id
        await in_thread(idempotency.update_body)(
            agent=agent_of(request), key=request.headers[HEADER], body=response.content
        )
    return response


async def _position_from_relay(seq: int) -> int | None:
    """The position the relay gave event `seq`, as it says on the positions channel once it has
    published it (woken by this commit's doorbell, normally within milliseconds); None if it did
    not say within RELAY_GRACE."""
    positions = await wakeups.subscribed(events.positions_channel(), _positions, keep=POSITIONS_HEARD)
    name = str(seq)
    try:
        return await positions.wait(positions.arm(name), RELAY_GRACE)
    finally:
        positions.forget(name)


def _positions(message: str) -> list[tuple[str, int]]:
    pairs = (pair.partition(":") for pair in message.split())
    return [(seq, int(position)) for seq, _, position in pairs]


@router.get("/events", response={200: EventPage, **errors()}, url_name="read_events")
def read_events(request: HttpRequest, query: Query[EventQuery]):
    """Events after `after`, oldest first. Ids are gapless and in commit order: a reader
    that pages on `after` never skips one."""
    page = events.read_events(
        ns=ns_of(request),
        after=query.after,
        types=_types(query.type),
        agent_id=query.agent_id,
        limit=query.limit,
    )
    full = len(page) == query.limit
    return {"items": [event.body() for event in page], "next": page[-1].position if full else None}


@router.get(
    "/events/stream",
    response={200: None, **errors()},
    url_name="event_stream",
    openapi_extra={"responses": {200: {"description": "text/event-stream: `id`, `event`, `data` per event"}}},
)
async def event_stream(request: HttpRequest, query: Query[StreamQuery]):
    """Server-Sent Events: replays after `after` (or `Last-Event-ID`) from Postgres, then
    follows live. A `: keepalive` comment line every 15 s keeps proxies from closing it."""
    last_seen = request.headers.get("Last-Event-ID")
    if last_seen is not None:
        if not last_seen.strip().isdigit() or int(last_seen) >= 2**63:
            raise Invalid("Last-Event-ID must be an event id", {"Last-Event-ID": "an event id"})
        cursor = int(last_seen)
    elif query.after is not None:
        cursor = query.after
    else:
        cursor = await in_thread(events.head)(ns_of(request))
    response = StreamingHttpResponse(
        _follow(ns_of(request), cursor, _types(query.type), token_of(request).pk),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _follow(ns: Namespace, cursor: int, types: list[str], token_id: int) -> AsyncIterator[str]:
    """Postgres is the source of truth, Redis only the wake-up: after every wake-up (or
    timeout) the log is read after the cursor, so the replay-to-live seam has no gap and
    no duplicate, and a Redis outage only slows the stream to polling. The stream ends once
    its token is revoked: checked before each read, and the revocation's event wakes it."""
    loop = asyncio.get_running_loop()
    watch = wakeups.StreamWatch(ns.name)
    metrics.EVENT_STREAMS.inc()
    try:
        # The start as the stream's last event id, sent first: a client that reconnects before
        # the first event resumes from here, not from a later "now" (which would skip what came
        # between).
        yield f"retry: 1000\nid: {cursor}\n\n"
        wake_from = await _unless_left(watch.top())  # taken before the replay: nothing falls between
        last_write = loop.time()
        while True:
            try:
                read = in_thread(_next_batch)(token_id, ns=ns, after=cursor, types=types, limit=BATCH)
                batch = await _unless_left(read)
            except django.db.Error as exc:  # Postgres away: keep the stream, try again shortly
                log.warning("event stream of %s waiting for Postgres: %s", ns.name, exc)
                await asyncio.sleep(POLL_SECONDS)
                continue
            if batch is None:
                return  # revoked: the client's reconnect gets 401
            for event in batch:
                yield _frame(event.body())
                cursor = event.position
            if batch:
                last_write = loop.time()
            if len(batch) == BATCH:
                continue
            if wake_from is None:
                await asyncio.sleep(POLL_SECONDS)
                wake_from = await _unless_left(watch.top())
            else:
                wake_from = await _unless_left(watch.wait_past(wake_from, WAKE_BLOCK_MS, BATCH))
            if loop.time() - last_write >= KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"
                last_write = loop.time()
    finally:
        metrics.EVENT_STREAMS.dec()
        await watch.close()


async def _unless_left(work: Awaitable[T]) -> T:
    """`work`, shielded from the stream's cancel. When the client leaves, Django cancels the
    stream; a cancel that lands in sync_to_async (a read of the log) or in a redis-py command was
    swallowed (the call finished and returned), so the stream went on following the log for
    nobody, holding its Redis client and delaying its worker's exit. Shielded, the stream ends
    at once, and the call finishes alone."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved
    return await asyncio.shield(task)


def _next_batch(token_id: int, **read) -> list | None:
    """The next events of a stream (read_events' arguments), or None once its token is revoked."""
    if not tokens.token_is_live(token_id):
        return None
    return events.read_events(**read)


def _frame(body: dict[str, Any]) -> str:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"id: {body['id']}\nevent: {body['type']}\ndata: {data}\n\n"
