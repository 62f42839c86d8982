"""The console's websocket: reads the log and pushes fragments, never writes.

Protocol: the page connects to /ws/ns/<name>/?<View query>, then sends
`{"after": <last event id it shows>}` (on every (re)connect, and on resume after a pause).
The consumer replays the log after that id, then answers each `memory.changed` doorbell
the same way, deduplicating by id. Each message it sends ends with the page's new cursor.

The sockets of one process share their namespace's Feed. It is the one member of the
namespace's group in this process: a doorbell crosses the channel layer once per process,
not once per socket, and the Feed rings its sockets in memory. They mostly sit at the same
cursor on the same kind of page, so they need the same events and the same fragments: sockets
at one cursor share one read of the log, and sockets with one page, filters and `operate`
permission share one render of a batch. A socket behind the others (a reconnect, a resume)
reads its own gap the same way, keyed by its own cursor. A socket runs one catch-up at a time;
doorbells that ring meanwhile only ask for one more when it ends, so none is lost and a burst
of them costs one catch-up. (20 consoles at 100 events/s were 2,000 reads, renders and layer
deliveries a second in one process; bench scenario 6.)

DESIGN.md warns that with channels-redis a Redis restart can leave a consumer deaf:
its group membership is gone and group sends are silently dropped. So every
CONSOLE_HEALTH_SECONDS the consumer sends itself a tick through the layer; the tick
re-joins its Feed to the group and catches up from the log. A tick that never comes back
means the layer no longer reaches this process: the socket closes with 1011, and the page's
ws extension reconnects and resyncs from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from urllib.parse import parse_qs

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from memory_admin import live, metrics
from memory_admin.models import Namespace
from memory_admin.views.screens import View

log = logging.getLogger("memory_admin.console")

OPERATE = "memory_admin.operate"
TRY_AGAIN = 1011  # a close code the htmx ws extension reconnects after


# Network events a console socket expects and survives: the browser left (uvicorn's
# ClientDisconnected is an OSError) or Redis did not answer in time. They are logged without
# a traceback, and at DEBUG when the socket was going anyway.
EXPECTED = (OSError, redis.ConnectionError, redis.TimeoutError)


def _retrieve(task: asyncio.Task) -> None:
    """Done callback of a shared task: its waiters may all have left, and an exception nobody
    retrieves is logged by asyncio as "Task exception was never retrieved" with a traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("console feed task failed: %r", task.exception())


def health_seconds() -> float:
    return float(getattr(settings, "CONSOLE_HEALTH_SECONDS", 10))


# Reads stay correct forever (the log is append-only), so only their number is bounded.
KEEP_BATCHES = 16
# Fragments are rendered from the current state, which also changes without events (a lock
# renewed, a heartbeat's expiry): one render serves sockets for a moment, not for minutes.
RENDER_SECONDS = 2.0
KEEP_RENDERS = 64


class Feed:
    """One namespace's doorbells, log reads and rendered batches, shared by the sockets of
    this process.

    Each read and each render runs once as its own task; the sockets that want it await it
    shielded, so a socket that disconnects meanwhile does not cancel it for the others.
    """

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.loop = asyncio.get_running_loop()
        self.group = live.group_name(ns.pk)
        self.sockets: set[ConsoleConsumer] = set()
        self.subscribed: asyncio.Future | None = None
        self.channel: str | None = None
        self.listener: asyncio.Task | None = None
        self.batches: OrderedDict[int, live.Batch] = OrderedDict()  # by `after`
        self.reading: dict[int, tuple[float, asyncio.Task]] = {}
        self.renders: OrderedDict[tuple, tuple[float, str]] = OrderedDict()
        self.rendering: dict[tuple, asyncio.Task] = {}

    async def join(self, socket: ConsoleConsumer) -> None:
        """Add `socket`; returns once the Feed is in the group, so the socket's hello comes after."""
        self.sockets.add(socket)
        if self.subscribed is None or self.subscribed.cancelled() or self.subscribed.exception():
            self.subscribed = asyncio.ensure_future(self._subscribe())
            self.subscribed.add_done_callback(_retrieve)
        await asyncio.shield(self.subscribed)

    async def _subscribe(self) -> None:
        layer = get_channel_layer()
        self.channel = await layer.new_channel()
        await layer.group_add(self.group, self.channel)
        if not self.sockets:  # its socket left meanwhile, and leave() found nothing to stop
            await layer.group_discard(self.group, self.channel)
            return
        self.listener = asyncio.ensure_future(self._listen(layer, self.channel))

    async def leave(self, socket: ConsoleConsumer) -> None:
        self.sockets.discard(socket)
        if self.sockets:
            return
        # The last socket: a new one starts a new Feed (the caches go with this one).
        if _feeds.get(self.ns.pk) is self:
            del _feeds[self.ns.pk]
        if self.listener is not None:
            self.listener.cancel()
        if self.channel is not None:
            with contextlib.suppress(Exception):  # the layer may be what failed
                await get_channel_layer().group_discard(self.group, self.channel)

    async def rejoin(self) -> None:
        """(Re-)join the group: Redis may have lost it (a restart) without telling anyone."""
        await get_channel_layer().group_add(self.group, self.channel)

    async def _listen(self, layer, channel: str) -> None:
        failing = False
        while self.sockets:  # no sockets, no feed: it never outlives its last browser
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if asyncio.current_task().cancelling():
                    return  # leave() cancelled a receive that ended in a Redis timeout instead
                # The sockets' health ticks notice a layer that stays away and close them.
                if not failing:
                    log.warning("console feed of %s cannot receive from Redis (%r); retrying", self.ns, exc)
                failing = True
                await asyncio.sleep(1)
                continue
            if failing:
                log.info("console feed of %s receives from Redis again", self.ns)
                failing = False
            if message.get("type") == "memory.changed":
                for socket in list(self.sockets):
                    socket.ring(message["event"]["id"])

    async def next(
        self,
        after: int,
        view: View,
        can_operate: bool,
        *,
        since: float | None = None,
        need: int | None = None,
    ) -> tuple[live.Batch, str]:
        """The batch after `after` and its fragments for `view`: read after `since` (a hello
        or a tick), or reaching at least event `need` (a doorbell)."""
        batch = self.batches.get(after)
        if batch is None or not batch.serves(since=since, need=need):
            batch = await self._read(after, view, can_operate, since=since, need=need)
        if not batch.events:
            return batch, ""
        return batch, await self._render(batch, view, can_operate)

    async def _read(
        self, after: int, view: View, can_operate: bool, *, since: float | None, need: int | None
    ) -> live.Batch:
        running = self.reading.get(after)
        if running is not None and (since is None or running[0] >= since):
            batch = await asyncio.shield(running[1])
            if batch.serves(since=since, need=need):
                return batch
        # A read that begins now has everything committed before this socket asked.
        started = time.monotonic()
        task = asyncio.ensure_future(self._read_and_render(after, view, can_operate, started))
        task.add_done_callback(_retrieve)
        self.reading[after] = (started, task)
        return await asyncio.shield(task)

    async def _read_and_render(self, after: int, view: View, can_operate: bool, started: float) -> live.Batch:
        try:
            # The reader's own page is rendered in the same thread hop as the read.
            batch, html = await database_sync_to_async(live.read_batch)(
                self.ns, after, view, can_operate=can_operate, started=started
            )
        finally:
            if self.reading.get(after, (0, None))[1] is asyncio.current_task():
                del self.reading[after]
        kept = self.batches.get(after)
        if kept is None or kept.started < started:
            self.batches[after] = batch
            self.batches.move_to_end(after)
            while len(self.batches) > KEEP_BATCHES:
                self.batches.popitem(last=False)
        if batch.events:
            self._keep_render(self._render_key(batch, view, can_operate), started, html)
        return batch

    @staticmethod
    def _render_key(batch: live.Batch, view: View, can_operate: bool) -> tuple:
        # The fragments differ by page, filters and permission (can_operate shows the action
        # buttons), never by user otherwise: they are rendered without a request.
        return (view, can_operate, batch.events[0].id, batch.last)

    def _keep_render(self, key: tuple, started: float, html: str) -> None:
        self.renders[key] = (started, html)
        self.renders.move_to_end(key)
        while len(self.renders) > KEEP_RENDERS:
            self.renders.popitem(last=False)

    async def _render(self, batch: live.Batch, view: View, can_operate: bool) -> str:
        key = self._render_key(batch, view, can_operate)
        kept = self.renders.get(key)
        if kept is not None and time.monotonic() - kept[0] < RENDER_SECONDS:
            return kept[1]
        task = self.rendering.get(key)
        if task is None:
            task = asyncio.ensure_future(self._render_once(key, batch, view, can_operate))
            task.add_done_callback(_retrieve)
            self.rendering[key] = task
        return await asyncio.shield(task)

    async def _render_once(self, key: tuple, batch: live.Batch, view: View, can_operate: bool) -> str:
        started = time.monotonic()
        try:
            html = await database_sync_to_async(live.render_safely)(
                self.ns, view, batch.events, can_operate=can_operate
            )
        finally:
            del self.rendering[key]
        self._keep_render(key, started, html)
        return html


# The Feed of each namespace with a console open in this process, gone with its last socket.
_feeds: dict[int, Feed] = {}


def feed_for(ns: Namespace) -> Feed:
    feed = _feeds.get(ns.pk)
    if feed is None or feed.loop is not asyncio.get_running_loop():  # tests run one loop each
        feed = _feeds[ns.pk] = Feed(ns)
    return feed


class ConsoleConsumer(AsyncWebsocketConsumer):
    ns: Namespace | None = None
    feed: Feed | None = None
    health: asyncio.Task | None = None
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
        self.busy = asyncio.Lock()  # one catch-up at a time: the cursor moves in order
        self.tick_returned = True
        self.feed = feed_for(self.ns)
        await self.feed.join(self)
        await self.accept()
        self.counted = True
        metrics.WEBSOCKETS.inc()
        self.health = asyncio.create_task(self._check_health())
        self.health.add_done_callback(_retrieve)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except EXPECTED as exc:
            # Channels awaits the socket's pending channel-layer receive as it stops; one that
            # ends in a Redis timeout instead of its cancellation is no error of the page's.
            # A handler that finds the browser gone (an OSError) ends it the same way. (Redis
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
        for task in (self.health, self.pump):
            if task is not None:
                task.cancel()
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

    def ring(self, event_id: int) -> None:
        """A doorbell from the Feed: catch up to `event_id`, now or right after the running catch-up."""
        if self.cursor is None or event_id <= self.cursor:
            return  # before the hello (the replay covers it), or already sent
        self.need = max(self.need, event_id)
        self.rung = True
        if self.pump is None or self.pump.done():
            self.pump = asyncio.ensure_future(self._answer_doorbells())
            self.pump.add_done_callback(_retrieve)

    async def _answer_doorbells(self) -> None:
        try:
            while self.rung:
                async with self.busy:
                    self.rung = False
                    if self.need > self.cursor:
                        await self.catch_up(need=self.need)
        except asyncio.CancelledError:
            raise
        except EXPECTED as exc:
            # The browser left (an OSError from the server), or Redis is slow: a page still
            # there reconnects and resyncs; only the second is worth an operator's attention.
            level = logging.DEBUG if self.gone or isinstance(exc, OSError) else logging.WARNING
            log.log(level, "console socket %s could not catch up (%r); closing", self.channel_name, exc)
            with contextlib.suppress(*EXPECTED):
                await self.close(code=TRY_AGAIN)
        except Exception:
            # As an exception in a handler would: the page reconnects and resyncs from its cursor.
            log.exception("console socket %s failed to catch up; closing", self.channel_name)
            with contextlib.suppress(*EXPECTED):
                await self.close(code=TRY_AGAIN)

    async def console_tick(self, message: dict) -> None:
        self.tick_returned = True
        await self.feed.rejoin()
        if self.cursor is not None:
            asked = time.monotonic()
            async with self.busy:
                await self.catch_up(since=asked)

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
            if sent > live.MAX_REPLAY:
                await self.send(text_data=live.cursor_html(self.cursor, reload=True))
                return
            await self.send(text_data=html)
            self.cursor = batch.last
            if not batch.more:
                return

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(health_seconds())
            if not self.tick_returned:
                log.warning("console socket %s stopped hearing the channel layer; closing", self.channel_name)
                with contextlib.suppress(*EXPECTED):
                    await self.close(code=TRY_AGAIN)
                return
            self.tick_returned = False
            try:
                await self.channel_layer.send(self.channel_name, {"type": "console.tick"})
            except Exception as exc:
                log.warning("channel layer unreachable (%r); closing console socket", exc)
                with contextlib.suppress(*EXPECTED):
                    await self.close(code=TRY_AGAIN)
                return
