"""The Feed: one namespace's doorbells, log reads and rendered batches, shared by the console
sockets of this process.

The Feed is the one member of the namespace's group in this process: a doorbell crosses the
channel layer once per process, not once per socket, and the Feed rings its sockets in memory.
They mostly sit at the same cursor on the same kind of page, so they need the same events and
the same fragments: sockets at one cursor share one read of the log, and sockets with one page,
filters and `operate` permission share one render of a batch, which the Feed sends them in one
loop. A socket behind the others (a reconnect, a resume) reads its own gap the same way, keyed
by its own cursor, in a catch-up of its own. (20 consoles at
100 events/s were 2,000 reads, renders and layer deliveries a second in one process; bench
scenario 6.)

The Feed also watches its channel: DESIGN.md warns that with channels-redis a Redis restart can
leave a process deaf (its group membership gone, group sends silently dropped). So every
CONSOLE_HEALTH_SECONDS the Feed re-joins the group and sends its own channel a tick; the tick
brings every socket up to the log's head, in one read per page and permission. A tick that has
not come back by the next one means the layer no longer reaches this process: every socket
closes with 1011, and its page reconnects (to a new Feed) and resyncs from its cursor. One tick
per process and namespace, not one per socket: 100 consoles' ticks, each a layer round trip and
a log read, were ~10% of a web process' samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, OrderedDict
from typing import Protocol

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer
from django.conf import settings

from memory_admin.live.layer import group_name, layer
from memory_admin.live.render import Batch, read_batch, render_safely
from memory_admin.models import Namespace
from memory_admin.views.screens import View, last_event_id

log = logging.getLogger("memory_admin.console")


class Socket(Protocol):
    """What the Feed needs of a console socket (consumer.ConsoleConsumer)."""

    cursor: int | None  # the last event its page shows; None before its hello
    view: View
    can_operate: bool

    def ready(self) -> bool: ...

    async def deliver(self, html: str, after: int, last: int) -> bool: ...

    def ring(self, event_id: int) -> None: ...

    async def hang_up(self) -> None: ...


def health_seconds() -> float:
    return float(getattr(settings, "CONSOLE_HEALTH_SECONDS", 10))


def retrieve(task: asyncio.Task) -> None:
    """Done callback of a shared task: its waiters may all have left, and an exception nobody
    retrieves is logged by asyncio as "Task exception was never retrieved" with a traceback."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("console feed task failed: %r", task.exception())


# Reads stay correct forever (the log is append-only), so only their number is bounded.
KEEP_BATCHES = 16
# Fragments are rendered from the current state, which also changes without events (a lock
# renewed, a heartbeat's expiry): one render serves sockets for a moment, not for minutes.
RENDER_SECONDS = 2.0
KEEP_RENDERS = 64
# After a failed receive, how long to wait before the next (doubling up to the second number):
# a dropped connection is back at once, a Redis that is down is not asked more than once a second.
RETRY_SECONDS = (0.05, 1.0)
TICK = {"type": "console.tick"}


class Feed:
    """One namespace's doorbells, log reads and rendered batches, shared by the sockets of
    this process.

    Each read and each render runs once as its own task; the sockets that want it await it
    shielded, so a socket that disconnects meanwhile does not cancel it for the others.
    """

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.loop = asyncio.get_running_loop()
        self.group = group_name(ns.pk)
        self.sockets: set[Socket] = set()
        self.subscribed: asyncio.Future | None = None
        self.channel: str | None = None
        self.listener: asyncio.Task | None = None
        self.batches: OrderedDict[int, Batch] = OrderedDict()  # by `after`
        self.reading: dict[int, tuple[float, asyncio.Task]] = {}
        self.renders: OrderedDict[tuple, tuple[float, str]] = OrderedDict()
        self.rendering: dict[tuple, asyncio.Task] = {}
        self.need = 0  # the newest position a doorbell rang for
        self.pushing: asyncio.Task | None = None
        self.health: asyncio.Task | None = None
        self.tick_returned = True

    async def join(self, socket: Socket) -> None:
        """Add `socket`; returns once the Feed is in the group, so the socket's hello comes after."""
        self.sockets.add(socket)
        failed = (
            self.subscribed is not None
            and self.subscribed.done()
            and (self.subscribed.cancelled() or self.subscribed.exception() is not None)
        )
        if self.subscribed is None or failed:  # not while a subscription runs (sockets join at once)
            self.subscribed = asyncio.ensure_future(self._subscribe())
            self.subscribed.add_done_callback(retrieve)
        await asyncio.shield(self.subscribed)

    async def _subscribe(self) -> None:
        channels = layer()
        self.channel = await channels.new_channel()
        await channels.group_add(self.group, self.channel)
        if not self.sockets:  # its socket left meanwhile, and leave() found nothing to stop
            await channels.group_discard(self.group, self.channel)
            return
        self.listener = asyncio.ensure_future(self._listen(channels, self.channel))
        self.health = asyncio.ensure_future(self._check_health())
        self.health.add_done_callback(retrieve)

    async def leave(self, socket: Socket) -> None:
        self.sockets.discard(socket)
        if self.sockets:
            return
        # The last socket: a new one starts a new Feed (the caches go with this one).
        if _feeds.get(self.ns.pk) is self:
            del _feeds[self.ns.pk]
        for task in (self.listener, self.health):
            if task is not None:
                task.cancel()
        if self.channel is not None:
            with contextlib.suppress(Exception):  # the layer may be what failed
                await layer().group_discard(self.group, self.channel)

    async def _listen(self, channels: BaseChannelLayer, channel: str) -> None:
        pause = RETRY_SECONDS[0]
        failing = False
        while self.sockets:  # no sockets, no feed: it never outlives its last browser
            try:
                message = await channels.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if asyncio.current_task().cancelling():
                    return  # leave() cancelled a receive that ended in a Redis timeout instead
                # The health check closes the sockets if the layer stays away.
                if not failing:
                    log.warning("console feed of %s cannot receive from Redis (%r); retrying", self.ns, exc)
                failing = True
                await asyncio.sleep(pause)
                pause = min(2 * pause, RETRY_SECONDS[1])
                # What rang meanwhile may be lost (a Redis restart loses the group and what waited
                # in the channel): a tick now brings every socket up to the log's head as soon as
                # receiving works again, not a health period later.
                with contextlib.suppress(Exception):  # the next receive fails too, and retries
                    await self._tick()
                continue
            if failing:
                log.info("console feed of %s receives from Redis again", self.ns)
                failing, pause = False, RETRY_SECONDS[0]
            if message.get("type") == "memory.changed":
                self.ring(message["event"]["id"])
            elif message.get("type") == "console.tick":
                self.tick_returned = True
                task = asyncio.ensure_future(self._catch_up())
                task.add_done_callback(retrieve)

    async def _tick(self) -> None:
        """(Re-)join the group, which Redis may have lost (a restart) without telling anyone, and
        send the Feed's channel a tick, which catches every socket up when it comes back."""
        channels = layer()
        await channels.group_add(self.group, self.channel)
        await channels.send(self.channel, TICK)

    async def _catch_up(self) -> None:
        """Bring every socket up to the log's head: what any doorbell the layer lost rang for."""
        self.ring(await database_sync_to_async(last_event_id)(self.ns))

    async def _check_health(self) -> None:
        # Feeds started together (the pages of many namespaces reconnecting to a restarted
        # server) would tick together: the first tick comes at a random point of the period.
        await asyncio.sleep(health_seconds() * random.uniform(0.5, 1.0))
        while True:
            if not self.tick_returned:
                log.warning("console feed of %s stopped hearing the channel layer; closing", self.ns)
                await self._hang_up()
                return
            self.tick_returned = False
            try:
                await self._tick()
            except Exception as exc:
                log.warning("channel layer unreachable (%r); closing the console sockets of %s", exc, self.ns)
                await self._hang_up()
                return
            await asyncio.sleep(health_seconds())

    async def _hang_up(self) -> None:
        """Close every socket: their pages reconnect, to a new Feed (new channel, new membership)."""
        if _feeds.get(self.ns.pk) is self:
            del _feeds[self.ns.pk]
        for socket in list(self.sockets):
            try:
                await socket.hang_up()
            except Exception:  # one socket's surprise must not leave the others open on a dead Feed
                log.exception("console feed of %s could not close a socket", self.ns)

    def ring(self, position: int) -> None:
        """A doorbell: push up to `position`, now or right after the running push."""
        self.need = max(self.need, position)
        if self.pushing is None or self.pushing.done():
            self.pushing = asyncio.ensure_future(self._push())
            self.pushing.add_done_callback(retrieve)

    async def _push(self) -> None:
        done = 0
        while self.need > done:  # doorbells that rang meanwhile: one more push covers them all
            done = self.need
            await self._push_once(done)

    async def _push_once(self, need: int) -> None:
        """Bring the sockets up to `need`. Most sit at one cursor with no catch-up of their own
        running: they get one read, one render per page and permission, and the same text each
        (not a catch-up with its cache lookups per socket and doorbell). Any
        other socket behind (its hello or tick replay running, a reconnect with an old cursor)
        catches up on its own."""
        behind = [s for s in self.sockets if s.cursor is not None and s.cursor < need]
        idle = Counter(s.cursor for s in behind if s.ready())
        if not idle:
            for socket in behind:
                socket.ring(need)
            return
        after = idle.most_common(1)[0][0]
        floor = max(need, after + 1)
        fragments: dict[tuple[View, bool], tuple[Batch, str]] = {}
        try:
            for socket in behind:
                key = (socket.view, socket.can_operate)
                if socket.cursor == after and key not in fragments:
                    fragments[key] = await self.next(after, socket.view, socket.can_operate, need=floor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # each socket tries on its own, and closes if it fails too
            log.debug("console feed of %s could not read after %s: %r", self.ns, after, exc)
            fragments.clear()
        for socket in behind:
            if socket not in self.sockets:
                continue  # gone meanwhile
            batch, html = fragments.get((socket.view, socket.can_operate), (None, ""))
            if batch is None or batch.more or not html:
                socket.ring(need)
                continue
            # Side by side, not awaited: a browser that reads slowly (its socket's buffer full)
            # holds up only itself.
            task = asyncio.ensure_future(self._deliver(socket, html, after, batch.last))
            task.add_done_callback(retrieve)

    async def _deliver(self, socket: Socket, html: str, after: int, last: int) -> None:
        if not await socket.deliver(html, after, last) and socket in self.sockets:
            socket.ring(last)  # not in step (any more): its own catch-up

    async def next(
        self,
        after: int,
        view: View,
        can_operate: bool,
        *,
        since: float | None = None,
        need: int | None = None,
    ) -> tuple[Batch, str]:
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
    ) -> Batch:
        running = self.reading.get(after)
        if running is not None and (since is None or running[0] >= since):
            batch = await asyncio.shield(running[1])
            if batch.serves(since=since, need=need):
                return batch
        # A read that begins now has everything committed before this socket asked.
        started = time.monotonic()
        task = asyncio.ensure_future(self._read_and_render(after, view, can_operate, started))
        task.add_done_callback(retrieve)
        self.reading[after] = (started, task)
        return await asyncio.shield(task)

    async def _read_and_render(self, after: int, view: View, can_operate: bool, started: float) -> Batch:
        try:
            # The reader's own page is rendered in the same thread hop as the read.
            batch, html = await database_sync_to_async(read_batch)(
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
    def _render_key(batch: Batch, view: View, can_operate: bool) -> tuple:
        # The fragments differ by page, filters and permission (can_operate shows the action
        # buttons), never by user otherwise: they are rendered without a request.
        return (view, can_operate, batch.events[0].id, batch.last)

    def _keep_render(self, key: tuple, started: float, html: str) -> None:
        self.renders[key] = (started, html)
        self.renders.move_to_end(key)
        while len(self.renders) > KEEP_RENDERS:
            self.renders.popitem(last=False)

    async def _render(self, batch: Batch, view: View, can_operate: bool) -> str:
        key = self._render_key(batch, view, can_operate)
        kept = self.renders.get(key)
        if kept is not None and time.monotonic() - kept[0] < RENDER_SECONDS:
            return kept[1]
        task = self.rendering.get(key)
        if task is None:
            task = asyncio.ensure_future(self._render_once(key, batch, view, can_operate))
            task.add_done_callback(retrieve)
            self.rendering[key] = task
        return await asyncio.shield(task)

    async def _render_once(self, key: tuple, batch: Batch, view: View, can_operate: bool) -> str:
        started = time.monotonic()
        try:
            html = await database_sync_to_async(render_safely)(
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
