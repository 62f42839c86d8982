"""The console's websocket: reads the log and pushes fragments, never writes.

Protocol: the page connects to /ws/ns/<name>/?<View query>, then sends
`{"after": <last event id it shows>}` (on every (re)connect, and on resume after a pause).
The consumer replays the log after that id, then answers each `memory.changed` doorbell
the same way, deduplicating by id. Each message it sends ends with the page's new cursor.

The socket sits in its namespace's Feed (feed.py), which hears the doorbells, reads the log
and renders the fragments (render.py) for all the sockets of this process, and hands them to
the sockets in step (at its cursor, with no catch-up of their own running: `deliver`). A
socket runs one catch-up or delivery at a time (its Turn); doorbells that ring during a
catch-up only ask for one more when it ends, so none is lost and a burst of them costs one.

The socket has no channel of its own: the Feed is the process' one member of the namespace's
group, and its health tick (feed.py) re-joins the group, catches every socket up from the log,
and, when the layer no longer reaches this process, closes the sockets with 1011 (`hang_up`):
the page's ws extension reconnects and resyncs from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from urllib.parse import parse_qs

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import WebsocketDenier

from memory_admin import metrics
from memory_admin.live.feed import Feed, feed_for, retrieve
from memory_admin.live.render import MAX_REPLAY, cursor_html
from memory_admin.models import Namespace
from memory_admin.views.screens import View

log = logging.getLogger("memory_admin.console")

OPERATE = "memory_admin.operate"
TRY_AGAIN = 1011  # a close code the htmx ws extension reconnects after


# Network events a console socket expects and survives: the browser left (uvicorn's
# ClientDisconnected is an OSError) or Redis did not answer in time. They are logged without
# a traceback, and at DEBUG when the socket was going anyway.
EXPECTED = (OSError, redis.ConnectionError, redis.TimeoutError)


class Turn:
    """One catch-up or delivery of a socket at a time, in the order they asked (an asyncio.Lock),
    and whether one runs or waits: when none does, taking the turn does not wait."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.claims = 0  # the holder and the waiters

    async def __aenter__(self) -> None:
        self.claims += 1
        try:
            await self.lock.acquire()
        except BaseException:
            self.claims -= 1
            raise

    async def __aexit__(self, *exc) -> None:
        self.lock.release()
        self.claims -= 1

    def free(self) -> bool:
        return self.claims == 0


# A channel_layer_alias that names no layer: a consumer without a channel of its own.
NO_LAYER = "none: this socket needs no channel of its own"


class Refused(WebsocketDenier):
    """Refuses a websocket handshake (403) without joining the channel layer: a refused socket
    has nothing to receive from it."""

    channel_layer_alias = NO_LAYER


class ConsoleConsumer(AsyncWebsocketConsumer):
    # Nothing is sent to a socket through the layer: the Feed rings it in memory. (A channel
    # each was a receive each in the layer, and a tick each through it.)
    channel_layer_alias = NO_LAYER
    ns: Namespace | None = None
    feed: Feed | None = None
    pump: asyncio.Task | None = None
    gone = False  # disconnect() ran: what fails from now on failed because the browser left
    counted = False  # in metrics.WEBSOCKETS

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused
            return
        name = self.scope["url_route"]["kwargs"]["ns"]
        self.ns = await database_sync_to_async(Namespace.objects.filter(name=name).first)()
        if self.ns is None:
            await self.close()
            return
        self.view = View.parse(parse_qs(self.scope.get("query_string", b"").decode()))
        self.can_operate = await database_sync_to_async(user.has_perm)(OPERATE)
        self.cursor: int | None = None  # None until the page says where it is
        self.need = 0  # the newest event a doorbell rang for
        self.rung = False  # a doorbell rang since the last catch-up began
        self.busy = Turn()  # one catch-up at a time: the cursor moves in order
        self.feed = feed_for(self.ns)
        await self.feed.join(self)
        await self.accept()
        self.counted = True
        metrics.WEBSOCKETS.inc()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except EXPECTED as exc:
            # A handler that meets Redis down (the Feed cannot join the group) or finds the
            # browser gone (an OSError) ends the socket; neither is an error of the page's. (Redis
            # failing mid-life: the server closes the socket, the page reconnects and resyncs.)
            quiet = self.gone or isinstance(exc, OSError)
            log.log(logging.DEBUG if quiet else logging.INFO, "console socket ended with %r", exc)
        finally:
            if not self.gone:  # cut short before disconnect() ran: its tasks and Feed seat go now
                await self.disconnect(1006)

    async def disconnect(self, code: int) -> None:
        self.gone = True
        if self.counted:
            self.counted = False
            metrics.WEBSOCKETS.dec()
        if self.pump is not None:
            self.pump.cancel()
        if self.feed is not None:
            await self.feed.leave(self)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            after = int(json.loads(text_data or "")["after"])
        except (ValueError, TypeError, KeyError):
            return  # not a hello; the page sends nothing else
        asked = time.monotonic()
        async with self.busy:
            self.cursor = max(0, after)
            await self.catch_up(since=asked)

    def ready(self) -> bool:
        """Open, and running no catch-up of its own: in step with the Feed's pushes."""
        return not self.gone and self.busy.free()

    async def deliver(self, html: str, after: int, last: int) -> bool:
        """The Feed's fragments for the events after `after` through `last`, rendered once for
        every socket in step: sent if this socket still shows `after` and runs no catch-up of its
        own (so taking its turn does not wait). Whether it was this socket's to send."""
        if self.cursor != after or not self.ready():
            return False
        async with self.busy:
            try:
                await self.send(text_data=html)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(exc)
                return True
            self.cursor = last
        return True

    def ring(self, event_id: int) -> None:
        """A doorbell from the Feed: catch up to `event_id`, now or right after the running catch-up."""
        if self.cursor is None or event_id <= self.cursor:
            return  # before the hello (the replay covers it), or already sent
        self.need = max(self.need, event_id)
        self.rung = True
        if self.pump is None or self.pump.done():
            self.pump = asyncio.ensure_future(self._answer_doorbells())
            self.pump.add_done_callback(retrieve)

    async def _answer_doorbells(self) -> None:
        try:
            while self.rung:
                async with self.busy:
                    self.rung = False
                    if self.need > self.cursor:
                        await self.catch_up(need=self.need)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(exc)

    async def _failed(self, exc: Exception) -> None:
        """A catch-up or a delivery failed: close, and the page reconnects and resyncs from its cursor."""
        if isinstance(exc, EXPECTED):
            # The browser left (an OSError from the server), or Redis is slow: only the second
            # is worth an operator's attention.
            level = logging.DEBUG if self.gone or isinstance(exc, OSError) else logging.WARNING
            log.log(level, "console socket of %s could not catch up (%r); closing", self.ns, exc)
        else:  # as an exception in a handler would
            log.error("console socket of %s failed to catch up; closing", self.ns, exc_info=exc)
        await self.hang_up()

    async def hang_up(self) -> None:
        """Close with 1011: the page reconnects and resyncs from its cursor."""
        with contextlib.suppress(*EXPECTED):
            await self.close(code=TRY_AGAIN)

    async def catch_up(self, *, since: float | None = None, need: int | None = None) -> None:
        """Send every event after the cursor (in batches); a page too far behind reloads.

        A hello or a tick wants everything committed before `since`; a doorbell wants at least
        its event, `need` (committed before the relay rang, so any read begun later has it)."""
        sent = 0
        while True:
            # After a full batch, the next one must bring at least one more event.
            floor = None if need is None else max(need, self.cursor + 1)
            batch, html = await self.feed.next(
                self.cursor, self.view, self.can_operate, since=since, need=floor
            )
            if not batch.events:
                return
            sent += len(batch.events)
            if sent > MAX_REPLAY:
                await self.send(text_data=cursor_html(self.cursor, reload=True))
                return
            await self.send(text_data=html)
            self.cursor = batch.last
            if not batch.more:
                return
