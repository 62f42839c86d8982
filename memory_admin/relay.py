"""The relay: publishes the committed event log to Redis, in order, once per event id.

One relay is active at a time: it holds a session-level Postgres advisory lock on its
own connection; standbys retry the lock and take over when the active one's connection
dies. The active relay
  - reads events after its cursor (ids are gapless and in commit order, services/events.py),
  - XADDs each to its namespace's stream with the explicit id `<event id>-0`, so Redis
    itself refuses a second copy after a crash between publish and cursor update,
  - broadcasts each to the namespace's Channels group (pages drop repeats by id),
  - then stores the cursor in Postgres;
and it sweeps lapsed locks and heartbeats into `lock.expired` / `agent.stale` events.
It is woken by LISTEN/NOTIFY and polls as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import psycopg
import redis.asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from memory_admin import live
from memory_admin import redis as r
from memory_admin.models import Event
from memory_admin.services.events import CHANNEL
from memory_admin.services.locks import sweep_expired_locks
from memory_admin.services.status import sweep_stale_agents

log = logging.getLogger("memory_admin.relay")

LOCK_KEY = 0x6D61_7265_6C61_7900  # "marelay\0": the advisory lock only the active relay holds
BATCH = 500
POLL_SECONDS = 1.0
SWEEP_SECONDS = 1.0

_FETCH = """
SELECT e.id, e.ns_id, n.name, e.type, e.actor, e.agent_id, e.subject, e.payload, e.created
FROM memory_admin_event e JOIN memory_admin_namespace n ON n.id = e.ns_id
WHERE e.id > %s ORDER BY e.id LIMIT %s
"""


def dsn() -> str:
    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
    )


class Relay:
    def __init__(self, *, name: str = "relay") -> None:
        self.name = name
        self.conn: psycopg.AsyncConnection | None = None
        self.redis = r.async_client()
        self.published = 0
        self.last_sweep = 0.0
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Wait to become active, then publish until stopped or the lock is lost."""
        while not self.stopping.is_set():
            try:
                if await self._become_active():
                    log.info("%s active from event %s", self.name, self.published)
                    await self._publish_loop()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("%s lost Postgres (%s); standing by", self.name, exc)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("%s lost Redis (%s); retrying", self.name, exc)
            await self._close()
            await self._sleep(POLL_SECONDS)
        await self._close()

    async def _become_active(self) -> bool:
        self.conn = await psycopg.AsyncConnection.connect(dsn(), autocommit=True)
        while not self.stopping.is_set():
            row = await (await self.conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])).fetchone()
            if row[0]:
                await self.conn.execute(f"LISTEN {CHANNEL}")
                cur = await self.conn.execute(
                    "INSERT INTO memory_admin_relaycursor (id, published, updated) VALUES (1, 0, now()) "
                    "ON CONFLICT (id) DO UPDATE SET id = 1 RETURNING published"
                )
                self.published = (await cur.fetchone())[0]
                return True
            await self._sleep(POLL_SECONDS)
        return False

    async def _publish_loop(self) -> None:
        while not self.stopping.is_set():
            while await self.publish_pending():
                pass
            if time.monotonic() - self.last_sweep >= SWEEP_SECONDS:
                await self._sweep()
            await self._wait_for_notify()

    async def publish_pending(self) -> int:
        """Publish the next batch after the cursor; returns how many events it held."""
        cur = await self.conn.execute(_FETCH, [self.published, BATCH])
        rows = await cur.fetchall()
        if not rows:
            return 0
        events = [
            (
                ns_id,
                ns,
                Event(
                    id=id,
                    type=type,
                    actor=actor,
                    agent_id=agent_id,
                    subject=subject,
                    payload=payload,
                    created=created,
                ).body(),
            )
            for id, ns_id, ns, type, actor, agent_id, subject, payload, created in rows
        ]
        pipe = self.redis.pipeline(transaction=False)
        for _, ns, body in events:
            pipe.xadd(
                r.stream_key(ns),
                {"event": json.dumps(body)},
                id=f"{body['id']}-0",
                maxlen=settings.EVENT_STREAM_MAXLEN,
                approximate=True,
            )
        for result in await pipe.execute(raise_on_error=False):
            # A stream that already has this id got it before a crash: exactly once, by Redis' rule.
            if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                raise result
        for ns_id, ns, body in events:
            await live.broadcast(ns_id, ns, body)
        self.published = events[-1][2]["id"]
        await self.conn.execute(
            "UPDATE memory_admin_relaycursor SET published = %s, updated = now() WHERE id = 1",
            [self.published],
        )
        return len(events)

    async def _sweep(self) -> None:
        self.last_sweep = time.monotonic()
        await sync_to_async(_sweep_once, thread_sensitive=True)()

    async def _wait_for_notify(self) -> None:
        # Let the generator finish by itself (stop_after): leaving it with `break` would keep
        # the connection's lock held by the suspended generator and stall the next query.
        async for _ in self.conn.notifies(timeout=POLL_SECONDS, stop_after=1):
            pass

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _close(self) -> None:
        if self.conn is not None:
            await self.conn.close()  # closing the session releases the advisory lock
            self.conn = None


def _sweep_once() -> None:
    close_old_connections()
    try:
        expired = sweep_expired_locks()
        stale = sweep_stale_agents()
        if expired or stale:
            log.info("swept %s expired locks, %s stale agents", expired, stale)
    except Exception:
        log.exception("sweep failed; will retry")
