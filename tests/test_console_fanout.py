"""Many consoles on one namespace (live.feed.Feed): every socket gets every event once and in
order while agents write, through real web processes, the relay, Postgres and Redis; a doorbell
crosses the channel layer once per web process; sockets at one cursor share one log read, and
sockets with one page and permission one render; a socket behind the others reads its own gap;
the process' one health tick (and a receive that works again after failing) catches every socket
up from the log, and a channel layer that stays away closes the sockets for a reconnect."""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urlsplit

import httpx
import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels_redis.utils import decode_hosts
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from bench.loadgen import WebSocket  # a minimal RFC 6455 client, the one the benchmark measures with
from memory_admin import live
from memory_admin import redis as r
from memory_admin.live import feed
from memory_admin.models import Event, Fact
from memory_admin.services.events import sequence
from memory_admin.services.facts import store_fact
from memory_admin.services.locks import acquire_lock
from memory_admin.views.screens import last_event_id
from tests.conftest import actor, start_web, wait_for
from tests.test_console_live import cursor_of, newest, open_page, publish

pytestmark = pytest.mark.django_db(transaction=True)

ROW = re.compile(r'id="event-(\d+)"')


def login(name: str, operate: bool = False) -> str:
    user = User.objects.create_user(name)
    if operate:
        user.user_permissions.add(Permission.objects.get(codename="operate"))
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def group_key(ns) -> str:
    """The Redis key of the namespace's group, as channels-redis names it (prefix + ":group:")."""
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    return f"{prefix}:group:{live.group_name(ns.pk)}"


def group_members(ns) -> int:
    return r.client().zcard(group_key(ns))


def kill_blocked_receives() -> int:
    """CLIENT KILL the connections blocked in the channel layer's receive (BZPOPMIN) in the tests'
    Redis database: in this process, the Feed's."""
    client = r.client()
    db = client.connection_pool.connection_kwargs.get("db", 0)
    blocked = [
        c for c in client.client_list() if c["cmd"] == "bzpopmin" and "b" in c["flags"] and int(c["db"]) == db
    ]
    for c in blocked:
        client.client_kill_filter(_id=c["id"])
    return len(blocked)


class Console:
    """One open timeline page on a real server: what it received, message by message."""

    def __init__(self, url: str, cookie: str) -> None:
        self.url, self.cookie = url, cookie
        self.messages: list[str] = []
        self.ws: WebSocket | None = None
        self.reader: asyncio.Task | None = None

    async def open(self, after: int) -> Console:
        url = urlsplit(self.url)
        headers = {"Cookie": self.cookie, "Origin": self.url}
        self.ws = await WebSocket.connect(url.hostname, url.port, "/ws/ns/team/?page=timeline", headers)
        await self.ws.send(f'{{"after": {after}}}')
        self.reader = asyncio.create_task(self._read(self.ws))
        return self

    async def _read(self, ws: WebSocket) -> None:
        while (text := await ws.recv()) is not None:
            self.messages.append(text)

    def close(self) -> None:
        self.reader.cancel()
        self.ws.close()

    @property
    def cursor(self) -> int:
        return cursor_of(self.messages[-1])

    def rows(self) -> list[int]:
        """The event ids in the order the page shows them arrive: each message lists newest first."""
        return [int(i) for text in self.messages for i in reversed(ROW.findall(text))]


async def write_events(url: str, token: str, count: int, writers: int, pause: float = 0.0) -> None:
    """`writers` agents' requests at once, `count` events in all."""
    async with httpx.AsyncClient(
        base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"}
    ) as api:

        async def writer(w: int) -> None:
            for n in range(w, count, writers):
                resp = await api.post("/events", json={"type": "fanout.test", "payload": {"n": n}})
                assert resp.status_code == 201, resp.text
                await asyncio.sleep(pause)

        await asyncio.gather(*(writer(w) for w in range(writers)))


async def until(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def committed_after(ns, start: int) -> list[int]:
    sequence()
    return list(
        Event.objects.filter(ns=ns, position__gt=start)
        .order_by("position")
        .values_list("position", flat=True)
    )


def test_many_consoles_on_one_page_get_every_event_once_and_in_order_while_agents_write(
    web_server, relay, ns, alpha, make_token
):
    token, cookie, start = make_token(alpha), login("vera"), last_event_id(ns)

    async def scenario() -> tuple[list[Console], int]:
        consoles = [await Console(web_server.url, cookie).open(start) for _ in range(12)]
        await asyncio.sleep(0.3)  # the hellos are answered
        members = group_members(ns)
        await write_events(web_server.url, token, count=60, writers=6)
        await until(lambda: all(len(c.rows()) >= 60 for c in consoles))
        await asyncio.sleep(0.3)  # and nothing more comes
        for console in consoles:
            console.close()
        return consoles, members

    consoles, members = asyncio.run(scenario())
    written = committed_after(ns, start)
    assert len(written) == 60
    for console in consoles:
        assert console.rows() == written  # each once, oldest to newest
        for text in console.messages:
            if ROW.search(text):
                assert cursor_of(text) == max(int(i) for i in ROW.findall(text))
    # A doorbell crosses the layer once for the web process, not once per socket, ...
    assert members == 1
    # ... and the process leaves the group with its last socket.
    wait_for(lambda: group_members(ns) == 0, message="the group to empty")


def test_a_console_that_joins_late_or_reconnects_with_an_old_cursor_gets_the_gap_once(
    web_server, relay, ns, alpha, make_token
):
    token, cookie, start = make_token(alpha), login("vera"), last_event_id(ns)

    async def scenario() -> tuple[list[Console], Console, Console, Console]:
        steady = [await Console(web_server.url, cookie).open(start) for _ in range(4)]
        leaving = await Console(web_server.url, cookie).open(start)
        writing = asyncio.create_task(write_events(web_server.url, token, count=50, writers=2, pause=0.02))
        await until(lambda: len(leaving.rows()) >= 15)
        # A page that lost its socket comes back with the cursor it shows; one opened now
        # starts from an old one. Both are behind the others while the writes go on.
        leaving.close()
        await asyncio.sleep(0.2)
        back = await Console(web_server.url, cookie).open(leaving.cursor)
        late = await Console(web_server.url, cookie).open(start)
        await writing
        everyone = [*steady, back, late]
        await until(lambda: all(c.cursor >= steady[0].cursor for c in everyone) and steady[0].cursor > 0)
        await until(lambda: len(late.rows()) >= 50)
        await asyncio.sleep(0.3)
        for console in everyone:
            console.close()
        return steady, leaving, back, late

    steady, leaving, back, late = asyncio.run(scenario())
    written = committed_after(ns, start)
    assert len(written) == 50
    assert len(leaving.rows()) < 50  # it really left while events were still coming
    for console in steady:
        assert console.rows() == written
    assert late.rows() == written
    assert leaving.rows() + back.rows() == written  # the gap, without a repeat


def test_consoles_on_two_web_processes_each_get_every_event_once(
    web_server, relay, ns, alpha, make_token, tmp_path
):
    other = start_web(tmp_path)
    try:
        token, cookie, start = make_token(alpha), login("vera"), last_event_id(ns)

        async def scenario() -> tuple[list[Console], int]:
            consoles = [await Console(url, cookie).open(start) for url in [web_server.url, other.url] * 4]
            await asyncio.sleep(0.3)
            members = group_members(ns)
            # Writes through both processes, as behind a load balancer.
            await asyncio.gather(
                write_events(web_server.url, token, count=20, writers=2),
                write_events(other.url, token, count=20, writers=2),
            )
            await until(lambda: all(len(c.rows()) >= 40 for c in consoles))
            await asyncio.sleep(0.3)
            for console in consoles:
                console.close()
            return consoles, members

        consoles, members = asyncio.run(scenario())
    finally:
        other.process.stop()
    written = committed_after(ns, start)
    assert len(written) == 40
    for console in consoles:
        assert console.rows() == written
    assert members == 2  # one Feed per process in the group


def _reads(queries: list[dict], table: str, where: str) -> int:
    return sum(
        1
        for q in queries
        if q["sql"].startswith("SELECT") and f'FROM "{table}"' in q["sql"] and where in q["sql"]
    )


def test_consoles_at_one_cursor_share_one_log_read_and_one_render_per_permission(ns, alpha):
    operators = [login(f"op{i}", operate=True) for i in range(4)]
    viewers = [login(f"viewer{i}") for i in range(4)]
    start = last_event_id(ns)
    doorbells = 5

    async def scenario() -> tuple[list[list[str]], int]:
        pages = [await open_page("/ws/ns/team/?page=facts", cookie, start) for cookie in operators + viewers]
        for page in pages:
            assert await page.receive_nothing(timeout=0.1)  # nothing to replay yet
        # Queries run on this (the test's) thread: database_sync_to_async comes back to it.
        mark = await database_sync_to_async(lambda: len(connection.queries))()
        got: list[list[str]] = [[] for _ in pages]
        for n in range(doorbells):
            await database_sync_to_async(store_fact)(
                ns=ns, fact=f"fact {n}", category="c", actor=actor(alpha)
            )
            await publish(await database_sync_to_async(newest)("fact.stored"))
            for page, html in zip(pages, got, strict=True):
                html.append(await page.receive_from(timeout=30))
        for page in pages:
            await page.disconnect(timeout=30)
        return got, mark

    with CaptureQueriesContext(connection) as captured:
        got, mark = async_to_sync(scenario)()
    queries = captured.captured_queries[mark:]
    facts = list(Fact.objects.filter(ns=ns).order_by("id"))
    for html in got:
        assert [f'id="fact-{f.pk}"' in text for text, f in zip(html, facts, strict=True)] == [
            True
        ] * doorbells
    # One log read per doorbell for all eight sockets (it was one per socket) ...
    assert _reads(queries, Event._meta.db_table, '"position" >') == doorbells
    # ... and one render per doorbell for each permission: the operators' and the viewers'.
    assert _reads(queries, Fact._meta.db_table, '"id" IN') == 2 * doorbells


def test_operators_and_viewers_on_one_page_each_get_their_own_fragments(ns, alpha):
    operator, viewer = login("olga", operate=True), login("vera")
    start = last_event_id(ns)

    async def scenario() -> tuple[list[str], list[str]]:
        ops = [await open_page("/ws/ns/team/?page=locks", operator, start) for _ in range(3)]
        views = [await open_page("/ws/ns/team/?page=locks", viewer, start) for _ in range(3)]
        await database_sync_to_async(acquire_lock)(
            ns=ns, resource="db/migrate", actor=actor(alpha), ttl_seconds=30
        )
        await publish(await database_sync_to_async(newest)("lock.acquired"))
        got_ops = [await page.receive_from(timeout=30) for page in ops]
        got_views = [await page.receive_from(timeout=30) for page in views]
        for page in ops + views:
            await page.disconnect(timeout=30)
        return got_ops, got_views

    got_ops, got_views = async_to_sync(scenario)()
    assert all("db/migrate" in html and "Force release" in html for html in got_ops)
    assert all("db/migrate" in html and "Force release" not in html for html in got_views)


def test_consoles_whose_group_redis_lost_rejoin_it_and_catch_up(ns, alpha, settings):
    # A tick that has not come back by the next one closes the socket: on a machine other suites
    # load, a tick's round trip through Redis took longer than 0.2 s. The pages wait for the
    # first tick (receive_from), which ends as soon as it comes.
    settings.CONSOLE_HEALTH_SECONDS = 1
    cookie, start = login("vera"), last_event_id(ns)

    async def scenario() -> tuple[list[str], list[str], bool, int]:
        pages = [await open_page("/ws/ns/team/?page=facts", cookie, start) for _ in range(3)]
        # What a Redis restart without persistence does to the layer: the group is gone, and
        # group sends to it are dropped without an error.
        assert await database_sync_to_async(r.client().delete)(group_key(ns)) == 1
        await database_sync_to_async(store_fact)(
            ns=ns, fact="after the loss", category="c", actor=actor(alpha)
        )
        await publish(await database_sync_to_async(newest)("fact.stored"))
        lost = [await page.receive_from(timeout=30) for page in pages]  # from the health ticks
        rejoined = await database_sync_to_async(group_members)(ns)
        await database_sync_to_async(store_fact)(ns=ns, fact="and later", category="c", actor=actor(alpha))
        await publish(await database_sync_to_async(newest)("fact.stored"))
        later = [await page.receive_from(timeout=30) for page in pages]
        nothing = all([await page.receive_nothing(timeout=0.5) for page in pages])
        for page in pages:
            await page.disconnect(timeout=30)
        return lost, later, nothing, rejoined

    lost, later, nothing, rejoined = async_to_sync(scenario)()
    first, second = Fact.objects.filter(ns=ns).order_by("id")
    assert rejoined == 1
    assert all(f'id="fact-{first.pk}"' in html and f'id="fact-{second.pk}"' not in html for html in lost)
    assert all(f'id="fact-{second.pk}"' in html and f'id="fact-{first.pk}"' not in html for html in later)
    assert nothing


def test_one_health_tick_catches_every_socket_up_in_one_read_and_one_render_per_permission(
    ns, alpha, settings
):
    settings.CONSOLE_HEALTH_SECONDS = 1
    cookies = [login("olga", operate=True), login("oscar", operate=True), login("vera"), login("victor")]
    start = last_event_id(ns)

    async def scenario() -> tuple[list[str], int]:
        pages = [await open_page("/ws/ns/team/?page=facts", cookie, start) for cookie in cookies]
        sockets = list(feed._feeds[ns.pk].sockets)
        await until(lambda: all(s.cursor is not None and s.ready() for s in sockets))  # hellos answered
        mark = await database_sync_to_async(lambda: len(connection.queries))()
        # Committed, and never rung (a doorbell the layer lost): only the health tick brings it.
        await database_sync_to_async(store_fact)(ns=ns, fact="unrung", category="c", actor=actor(alpha))
        got = [await page.receive_from(timeout=30) for page in pages]
        for page in pages:
            await page.disconnect(timeout=30)
        return got, mark

    with CaptureQueriesContext(connection) as captured:
        got, mark = async_to_sync(scenario)()
    queries = captured.captured_queries[mark:]
    fact = Fact.objects.get(ns=ns)
    assert all(f'id="fact-{fact.pk}"' in html for html in got)
    # One tick for the process' four sockets (it was one each, a log read each) ...
    assert _reads(queries, Event._meta.db_table, '"position" >') == 1
    # ... and one render for each permission.
    assert _reads(queries, Fact._meta.db_table, '"id" IN') == 2


def test_a_feed_whose_receive_failed_catches_its_sockets_up_as_soon_as_it_receives_again(ns, alpha, settings):
    settings.CONSOLE_HEALTH_SECONDS = 60  # no health tick comes to the rescue during the test
    cookie, start = login("vera"), last_event_id(ns)

    async def scenario() -> tuple[list[str], int]:
        pages = [await open_page("/ws/ns/team/?page=facts", cookie, start) for _ in range(3)]
        sockets = list(feed._feeds[ns.pk].sockets)
        await until(lambda: all(s.cursor is not None and s.ready() for s in sockets))  # hellos answered
        # What a Redis restart does to the Feed: the group is gone, so the doorbell rung now is
        # dropped, and the connection its receive waits on is cut.
        assert await database_sync_to_async(r.client().delete)(group_key(ns)) == 1
        await database_sync_to_async(store_fact)(ns=ns, fact="rung in vain", category="c", actor=actor(alpha))
        await publish(await database_sync_to_async(newest)("fact.stored"))
        assert await database_sync_to_async(kill_blocked_receives)() >= 1
        got = [await page.receive_from(timeout=20) for page in pages]
        rejoined = await database_sync_to_async(group_members)(ns)
        for page in pages:
            await page.disconnect(timeout=30)
        return got, rejoined

    got, rejoined = async_to_sync(scenario)()
    fact = Fact.objects.get(ns=ns)
    assert all(f'id="fact-{fact.pk}"' in html for html in got)
    assert rejoined == 1


def test_consoles_close_for_a_reconnect_when_the_channel_layer_stays_away(ns, settings, monkeypatch):
    settings.CONSOLE_HEALTH_SECONDS = 0.5
    cookie, start = login("vera"), last_event_id(ns)

    async def scenario() -> list[dict]:
        pages = [await open_page("/ws/ns/team/?page=facts", cookie, start) for _ in range(3)]
        for page in pages:
            assert await page.receive_nothing(timeout=0.1)
        # The layer's Redis goes away: its connections close and new ones find nothing listening.
        channels = live.layer.layer()
        monkeypatch.setattr(channels, "hosts", decode_hosts(["redis://127.0.0.1:1/0"]))
        await channels.close_pools()
        closed = [await page.receive_output(timeout=60) for page in pages]
        for page in pages:
            await page.disconnect(timeout=60)
        return closed

    closed = async_to_sync(scenario)()
    assert closed == [{"type": "websocket.close", "code": 1011}] * 3
