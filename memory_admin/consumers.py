"""The console's websocket: reads the log and pushes fragments, never writes.

Protocol: the page connects to /ws/ns/<name>/?<View query>, then sends
`{"after": <last event id it shows>}` (on every (re)connect, and on resume after a pause).
The consumer replays the log after that id, then answers each `memory.changed` doorbell
the same way, deduplicating by id. Each message it sends ends with the page's new cursor.

DESIGN.md warns that with channels-redis a Redis restart can leave a consumer deaf:
its group membership is gone and group sends are silently dropped. So every
CONSOLE_HEALTH_SECONDS the consumer sends itself a tick through the layer; the tick
re-joins the group and catches up from the log. A tick that never comes back means the
layer no longer reaches this socket: it closes with 1011, and the page's ws extension
reconnects and resyncs from its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from memory_admin import live
from memory_admin.models import Namespace
from memory_admin.views.screens import View

log = logging.getLogger("memory_admin.console")

OPERATE = "memory_admin.operate"
TRY_AGAIN = 1011  # a close code the htmx ws extension reconnects after


def health_seconds() -> float:
    return float(getattr(settings, "CONSOLE_HEALTH_SECONDS", 10))


class ConsoleConsumer(AsyncWebsocketConsumer):
    ns: Namespace | None = None
    group: str | None = None
    health: asyncio.Task | None = None

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
        self.tick_returned = True
        self.group = live.group_name(self.ns.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.health = asyncio.create_task(self._check_health())

    async def disconnect(self, code: int) -> None:
        if self.health is not None:
            self.health.cancel()
        if self.group is not None:
            with contextlib.suppress(Exception):  # the layer may be what failed
                await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            after = int(json.loads(text_data or "")["after"])
        except (ValueError, TypeError, KeyError):
            return  # not a hello; the page sends nothing else
        self.cursor = max(0, after)
        await self.catch_up()

    async def memory_changed(self, message: live.Changed) -> None:
        if self.cursor is None or message["event"]["id"] <= self.cursor:
            return  # before the hello (the replay covers it), or already sent
        await self.catch_up()

    async def console_tick(self, message: dict) -> None:
        self.tick_returned = True
        await self.channel_layer.group_add(self.group, self.channel_name)
        if self.cursor is not None:
            await self.catch_up()

    async def catch_up(self) -> None:
        """Send every event after the cursor (in batches); a page too far behind reloads."""
        sent = 0
        while True:
            events, more = await database_sync_to_async(live.pending)(self.ns, self.cursor)
            if not events:
                return
            sent += len(events)
            if sent > live.MAX_REPLAY:
                await self.send(text_data=live.cursor_html(self.cursor, reload=True))
                return
            try:
                html = await database_sync_to_async(live.render_changes)(
                    self.ns, self.view, events, can_operate=self.can_operate
                )
            except Exception:
                # A fragment that cannot render must not wedge the page in a replay loop:
                # move its cursor on; the next page load shows the state.
                log.exception("rendering events %s..%s failed", events[0].id, events[-1].id)
                html = live.cursor_html(events[-1].id)
            await self.send(text_data=html)
            self.cursor = events[-1].id
            if not more:
                return

    async def _check_health(self) -> None:
        while True:
            await asyncio.sleep(health_seconds())
            if not self.tick_returned:
                log.warning("console socket %s stopped hearing the channel layer; closing", self.channel_name)
                await self.close(code=TRY_AGAIN)
                return
            self.tick_returned = False
            try:
                await self.channel_layer.send(self.channel_name, {"type": "console.tick"})
            except Exception:
                log.warning("channel layer unreachable; closing console socket", exc_info=True)
                await self.close(code=TRY_AGAIN)
                return
