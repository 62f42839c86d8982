"""How a doorbell reaches many open consoles of one process: sockets that join at the same
moment all join the namespace's Feed; health ticks of consoles opened together do not come
together; the web process keeps what it loaded out of the garbage collector's full passes."""

from __future__ import annotations

import asyncio
import gc

import pytest
from asgiref.sync import async_to_sync

from memory_admin.live import consumer, feed
from memory_admin.views.screens import last_event_id
from tests.test_console_live import open_page

pytestmark = pytest.mark.django_db(transaction=True)


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


def test_consoles_opened_together_spread_their_first_health_tick(ns, session_cookie, settings, monkeypatch):
    settings.CONSOLE_HEALTH_SECONDS = period = 2.0
    opened: dict[int, float] = {}
    ticked: dict[int, float] = {}
    connect, tick = consumer.ConsoleConsumer.connect, consumer.ConsoleConsumer.console_tick

    async def timed_connect(self):  # the real handlers, timed
        await connect(self)
        opened[id(self)] = asyncio.get_running_loop().time()

    async def timed_tick(self, message):
        ticked.setdefault(id(self), asyncio.get_running_loop().time())
        await tick(self, message)

    monkeypatch.setattr(consumer.ConsoleConsumer, "connect", timed_connect)
    monkeypatch.setattr(consumer.ConsoleConsumer, "console_tick", timed_tick)
    start = last_event_id(ns)

    async def scenario() -> None:
        pages = await asyncio.gather(
            *(open_page("/ws/ns/team/?page=timeline", session_cookie, start) for _ in range(8))
        )
        await until(lambda: len(ticked) >= 8, timeout=3 * period)
        for page in pages:
            await page.disconnect()

    async_to_sync(scenario)()
    waited = sorted(ticked[socket] - opened[socket] for socket in ticked)
    assert waited[0] >= period / 2  # none before half a period
    assert waited[-1] - waited[0] > period / 8  # each at its own point of the period, not all after one


def test_the_web_process_keeps_what_it_loaded_out_of_full_collections():
    import config.asgi  # noqa: F401  (the web process' application)

    assert gc.get_freeze_count() > 10_000
