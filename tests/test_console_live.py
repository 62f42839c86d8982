"""The console's websocket against the real ASGI app, a real session and the real Redis layer:
committed events reach open pages as oob fragments, only in their namespace; a page that was
away catches up from the log; a group Redis lost is re-joined."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from memory_admin import live
from memory_admin.models import Event
from memory_admin.services.events import sequence
from memory_admin.services.facts import store_fact
from memory_admin.services.locks import acquire_lock, force_release
from memory_admin.services.status import heartbeat
from memory_admin.views.screens import last_event_id
from tests.conftest import actor

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster]

ORIGIN = b"http://127.0.0.1"
# How long a page may wait for an answer (or to close): the consumer's reads, the channel layer
# and the relay all share a machine that other suites may load; an answer ends the wait at once.
WAIT = 30


def socket(
    path: str, cookie: str | None, origin: bytes = ORIGIN, host: bytes = b"127.0.0.1"
) -> WebsocketCommunicator:
    """A browser's handshake: its Host, the Origin of the page, the session cookie."""
    headers = [(b"host", host), (b"origin", origin)] + ([(b"cookie", cookie.encode())] if cookie else [])
    return WebsocketCommunicator(application, path, headers=headers)


async def open_page(path: str, cookie: str, after: int) -> WebsocketCommunicator:
    page = socket(path, cookie)
    connected, _ = await page.connect(timeout=WAIT)
    assert connected
    await page.send_json_to({"after": after})
    return page


async def publish(*events: Event) -> None:
    """What the relay does for each committed event: one doorbell to the namespace's group."""
    for event in events:
        await live.broadcast(event.ns_id, event.ns.name, event.position)


def newest(type: str) -> Event:
    sequence()  # what no relay runs here to do
    return (
        Event.objects.select_related("ns").filter(type=type, position__isnull=False).order_by("-seq").first()
    )


def cursor_of(html: str) -> int:
    return int(re.search(r'id="live-cursor" data-event-id="(\d+)"', html).group(1))


def test_a_fact_committed_and_relayed_reaches_the_facts_page_as_a_prepended_row(
    ns, alpha, session_cookie, relay
):
    start = last_event_id(ns)

    async def scenario():
        page = await open_page("/ws/ns/team/?page=facts", session_cookie, start)
        fact = await database_sync_to_async(store_fact)(
            ns=ns, fact="Water boils at 100C", category="physics", actor=actor(alpha)
        )
        html = await page.receive_from(timeout=WAIT)  # through the relay process and Redis
        await page.disconnect(timeout=WAIT)
        return fact, html

    fact, html = async_to_sync(scenario)()
    assert '<tbody hx-swap-oob="afterbegin:#fact-rows">' in html
    assert f'id="fact-{fact.pk}"' in html and "Water boils at 100C" in html
    assert 'hx-swap-oob="true"' in html and cursor_of(html) == newest("fact.stored").id


def test_a_socket_of_another_namespace_gets_nothing(ns, alpha, outsider, session_cookie):
    mine_start, theirs_start = last_event_id(ns), last_event_id(outsider.ns)

    async def scenario():
        mine = await open_page("/ws/ns/team/?page=timeline", session_cookie, mine_start)
        theirs = await open_page("/ws/ns/other/?page=timeline", session_cookie, theirs_start)
        await database_sync_to_async(store_fact)(ns=ns, fact="team only", category="c", actor=actor(alpha))
        await publish(await database_sync_to_async(newest)("fact.stored"))
        html = await mine.receive_from(timeout=WAIT)
        # Then an event of theirs: what their page gets first is that one (a socket's messages
        # come in order), not a wait to see that nothing came.
        await database_sync_to_async(store_fact)(
            ns=outsider.ns, fact="theirs", category="c", actor=actor(outsider)
        )
        await publish(await database_sync_to_async(newest)("fact.stored"))
        first = await theirs.receive_from(timeout=WAIT)
        await mine.disconnect(timeout=WAIT)
        await theirs.disconnect(timeout=WAIT)
        return html, first

    html, first = async_to_sync(scenario)()
    assert '<div hx-swap-oob="afterbegin:#event-rows">' in html and "fact.stored" in html
    assert '<span class="eactor">alpha</span>' in html
    assert first.count('<li id="event-') == 1 and '<span class="eactor">outsider</span>' in first


@pytest.mark.parametrize(
    ("path", "with_cookie", "origin"),
    [
        ("/ws/ns/team/", False, ORIGIN),  # anonymous
        ("/ws/ns/team/", True, b"http://evil.example"),  # a page of another site
        ("/ws/ns/nope/", True, ORIGIN),  # no such namespace
    ],
)
def test_sockets_are_refused_without_a_session_a_valid_origin_or_a_namespace(
    ns, session_cookie, path, with_cookie, origin
):
    async def scenario():
        page = socket(path, session_cookie if with_cookie else None, origin)
        connected, _ = await page.connect(timeout=WAIT)
        if connected:
            await page.disconnect(timeout=WAIT)
        return connected

    assert async_to_sync(scenario)() is False


def test_a_page_that_was_away_catches_up_from_the_log_once(ns, alpha, session_cookie):
    start = last_event_id(ns)
    # Committed while no page listened, and never broadcast: only the log has them.
    facts = [store_fact(ns=ns, fact=f"missed {i}", category="c", actor=actor(alpha)) for i in range(3)]

    async def scenario():
        page = await open_page("/ws/ns/team/?page=facts", session_cookie, start)
        replay = await page.receive_from(timeout=WAIT)
        # A late doorbell for an event the page already has sends nothing more.
        await publish(await database_sync_to_async(newest)("fact.stored"))
        nothing = await page.receive_nothing(timeout=0.5)
        await page.disconnect(timeout=WAIT)
        return replay, nothing

    replay, nothing = async_to_sync(scenario)()
    positions = [replay.index(f'id="fact-{f.pk}"') for f in facts]
    assert positions == sorted(positions, reverse=True)  # newest first, as the page lists them
    assert cursor_of(replay) == newest("fact.stored").id
    assert nothing


def test_agents_page_gets_the_agent_row_updated_in_place(ns, alpha, session_cookie):
    start = last_event_id(ns)

    async def scenario():
        page = await open_page("/ws/ns/team/?page=agents", session_cookie, start)
        await database_sync_to_async(heartbeat)(
            agent=alpha, status="writing", detail="chapter 2", ttl_seconds=30, actor=actor(alpha)
        )
        await publish(await database_sync_to_async(newest)("status.changed"))
        html = await page.receive_from(timeout=WAIT)
        await page.disconnect(timeout=WAIT)
        return html

    html = async_to_sync(scenario)()
    assert '<tbody hx-swap-oob="beforeend:#agent-rows">' in html
    assert f'id="{alpha.dom_id}" class="state-live' in html and "writing" in html and "data-expires=" in html


def test_locks_page_adds_a_taken_lock_and_removes_a_force_released_one(ns, alpha, session_cookie):
    start = last_event_id(ns)

    async def scenario():
        page = await open_page("/ws/ns/team/?page=locks", session_cookie, start)
        lock = await database_sync_to_async(acquire_lock)(
            ns=ns, resource="db/migrate", actor=actor(alpha), ttl_seconds=30
        )
        await publish(await database_sync_to_async(newest)("lock.acquired"))
        added = await page.receive_from(timeout=WAIT)
        await database_sync_to_async(force_release)(
            ns=ns, resource="db/migrate", reason="stuck", actor=actor(alpha)
        )
        await publish(await database_sync_to_async(newest)("lock.force_released"))
        removed = await page.receive_from(timeout=WAIT)
        await page.disconnect(timeout=WAIT)
        return lock, added, removed

    lock, added, removed = async_to_sync(scenario)()
    assert f'<tr id="{lock.dom_id}"' in added and "db/migrate" in added and f">{lock.token}<" in added
    assert f'<tr id="{lock.dom_id}" data-remove></tr>' in removed
