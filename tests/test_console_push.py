"""How a doorbell reaches many open consoles of one process: sockets that join at the same
moment all join the namespace's Feed; the web process keeps what it loaded out of the garbage
collector's full passes."""

from __future__ import annotations

import asyncio
import gc

import pytest
from asgiref.sync import async_to_sync

from memory_admin.live import feed

pytestmark = pytest.mark.django_db(transaction=True)


class Page:
    """A console socket as the Feed sees it, that nothing rings."""

    cursor = None

    def ring(self, event_id: int) -> None:
        pass


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


def test_the_web_process_keeps_what_it_loaded_out_of_full_collections():
    import config.asgi  # noqa: F401  (the web process' application)

    assert gc.get_freeze_count() > 10_000
