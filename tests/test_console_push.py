"""How a doorbell reaches many open consoles of one process (live.feed.Feed): the sockets in
step get the Feed's one read and render in one pass, each event once and in order, while a
socket behind catches up on its own and a socket of another namespace hears nothing; sockets
that join at the same moment all join the Feed; the web process keeps what it loaded out of the
garbage collector's full passes."""

from __future__ import annotations

import asyncio
import gc
import re

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.template.loader import render_to_string

from memory_admin.live import feed, render
from memory_admin.services.events import publish_event
from memory_admin.views.screens import last_event_id
from tests.conftest import actor
from tests.test_console_live import newest, open_page, publish

pytestmark = pytest.mark.django_db(transaction=True)

ROW = re.compile(r'id="event-(\d+)"')


def rows(messages: list[str]) -> list[int]:
    """The event ids in the order they arrived (each message lists its rows newest first)."""
    return [int(i) for text in messages for i in reversed(ROW.findall(text))]


async def collect(page, count: int) -> list[str]:
    """Messages until they show `count` rows, then any that follow within a moment."""
    got = []
    while len(rows(got)) < count:
        got.append(await page.receive_from(timeout=10))
    while not await page.receive_nothing(timeout=0.2):
        got.append(await page.receive_from(timeout=5))
    return got


class Page:
    """A console socket as the Feed sees it, that nothing rings."""

    cursor = None

    def ring(self, event_id: int) -> None:
        pass


async def until(predicate, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_sockets_joining_while_the_feed_subscribes_all_join_it(ns):
    # A reconnect wave (a restarted server, a network blip): the first socket's group
    # subscription is still on its way to Redis when the others join.
    async def scenario() -> int:
        fed = feed.Feed(ns)
        pages = [Page() for _ in range(4)]
        await asyncio.gather(*(fed.join(page) for page in pages))
        joined = len(fed.sockets)
        for page in pages:
            await fed.leave(page)
        return joined

    assert async_to_sync(scenario)() == 4


def test_sockets_in_step_get_each_event_once_in_order_from_one_pass_of_the_feed(
    ns, alpha, outsider, session_cookie, settings
):
    settings.CONSOLE_HEALTH_SECONDS = 60  # no tick's catch-up in the way, however slow the run
    start, theirs = last_event_id(ns), last_event_id(outsider.ns)
    doorbells = 6

    async def scenario():
        pages = [await open_page("/ws/ns/team/?page=timeline", session_cookie, start) for _ in range(8)]
        other = await open_page("/ws/ns/other/?page=timeline", session_cookie, theirs)
        sockets = list(feed._feeds[ns.pk].sockets)
        await until(lambda: all(s.cursor is not None and s.ready() for s in sockets))  # hellos answered
        published = []
        for n in range(doorbells):
            await database_sync_to_async(publish_event)(
                ns=ns, type="push.test", payload={"n": n}, actor=actor(alpha)
            )
            event = await database_sync_to_async(newest)("push.test")
            published.append(event.position)
            await publish(event)
            if n == 2:  # a page opened now, from the start: behind the others, then in step
                pages.append(await open_page("/ws/ns/team/?page=timeline", session_cookie, start))
        got = [await collect(page, doorbells) for page in pages]
        heard = await other.receive_nothing(timeout=0.2)
        # The sockets in step from the start never needed a catch-up of their own.
        own = [s.pump for s in sockets]
        for page in [*pages, other]:
            await page.disconnect()
        return got, heard, own, published

    got, heard, own, published = async_to_sync(scenario)()
    for messages in got:
        assert rows(messages) == published
    assert heard  # nothing at all
    assert own == [None] * 8


def test_an_event_row_renders_once_for_sockets_at_different_cursors(ns, alpha, session_cookie, monkeypatch):
    start = last_event_id(ns)
    for n in range(3):
        publish_event(ns=ns, type="push.test", payload={"n": n}, actor=actor(alpha))
    first = newest("push.test").position - 2
    rendered: list[int] = []

    def counted(name, context=None, *args, **kwargs):  # Django's render_to_string, counted
        if name.endswith("#event-row"):
            rendered.append(context["event"].position)
        return render_to_string(name, context, *args, **kwargs)

    monkeypatch.setattr(render, "render_to_string", counted)

    async def scenario() -> tuple[list[str], list[str]]:
        # Two replays that overlap: all three events, and the last two.
        everything = await open_page("/ws/ns/team/?page=timeline", session_cookie, start)
        got_all = await collect(everything, 3)
        later = await open_page("/ws/ns/team/?page=timeline", session_cookie, first)
        got_later = await collect(later, 2)
        for page in (everything, later):
            await page.disconnect()
        return got_all, got_later

    got_all, got_later = async_to_sync(scenario)()
    assert rows(got_all) == [first, first + 1, first + 2]
    assert rows(got_later) == [first + 1, first + 2]
    assert sorted(rendered) == [first, first + 1, first + 2]


def test_the_web_process_keeps_what_it_loaded_out_of_full_collections():
    import config.asgi  # noqa: F401  (the web process' application)

    assert gc.get_freeze_count() > 10_000
