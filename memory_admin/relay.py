"""The relay: sequences the event log and publishes it to Redis, once per position, in order.

One relay is active at a time: it holds a session-level Postgres advisory lock on its own
connection; standbys retry the lock and take over when the active one's connection dies.
The active relay, each time a writer's doorbell rings (Redis PUBLISH after commit) or a poll
comes due:
  - sequences: stamps positions on the committed events below the horizon (services/events.py);
  - publishes, per namespace, the events after the namespace's `published` position: XADD to its
    stream with the explicit id `<position>-0` (a batch in one script call, redis.ADD_EVENTS), so
    Redis itself refuses a second copy after a crash between publish and cursor update, and the
    `seq:position` of each event of an agent's own type on the positions channel (what `POST
    /events` waits for; events.announced); then one
    doorbell to the namespace's Channels group (pages read the log themselves); the new
    `published` is stored in the next pass's sequencing transaction, or on its own once nothing
    rings for a moment (MARK_SECONDS);
  - sweeps lapsed locks and heartbeats into `lock.expired` / `agent.stale` events.
A namespace whose publishing fails is retried with backoff and reported to operators; the others
go on (one namespace's events never stall another's). The relay never parses a payload: bodies are
assembled around the payload's JSON text, so no event can be too big, deep or odd to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from json.encoder import encode_basestring as _string  # json.dumps of a str, ensure_ascii=False

import psycopg
import redis.asyncio
import redis.asyncio.cluster
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from memory_admin import live, sql
from memory_admin import redis as r
from memory_admin.models import iso_from_us
from memory_admin.services import events
from memory_admin.services.locks import sweep_expired_locks
from memory_admin.services.status import sweep_stale_agents

log = logging.getLogger("memory_admin.relay")

LOCK_KEY = 0x6D61_7265_6C61_7900  # "marelay\0": the advisory lock only the active relay holds
BATCH = 500
POLL_SECONDS = 1.0
SWEEP_SECONDS = 1.0
# While committed events wait for the horizon (an older transaction still open), look again
# soon: the transaction holding it back may append nothing, and so never ring.
HORIZON_POLL = (0.002, 0.1)
STALL_BACKOFF = (0.5, 30.0)  # seconds between attempts at a namespace whose publishing failed
STATUS_KEY = events.RELAY_STATUS_KEY
# How long a pass's new `published` positions may wait for the next pass's transaction before
# they are stored on their own: under load the next pass comes sooner, and one commit does both.
MARK_SECONDS = 0.05
# Characters of events one script call adds at most, unless one event alone has more: Redis reads a
# call's arguments whole and does nothing else while it runs (a batch of 500 events of 1 MB would
# be one call of 500 MB). Batches of the usual events (~200 characters) are one call.
CALL_SIZE = 1_000_000


def dsn() -> str:
    db = settings.DATABASES["default"]
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"],
        user=db["USER"],
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
    )


def body_json(position, type, actor, agent_id, subject, payload_text, created_us, txn) -> str:
    """An event's body (Event.body()) as JSON text, around the payload's own text: the text
    json.dumps(body, ensure_ascii=False) gives, written out with json's own string escaping. Two
    json.dumps of dicts and a datetime's isoformat took 20.6 us an event (timeit); this 3.0."""
    agent = _string(agent_id) if agent_id else "null"
    end = f', "txn": {_string(txn)}}}' if txn else "}"
    return (
        f'{{"id": {position}, "type": {_string(type)}, "agent_id": {agent}, "actor": {_string(actor)}, '
        f'"subject": {_string(subject)}, "payload": {payload_text}, '
        f'"created_at": "{iso_from_us(created_us)}"{end}'
    )


def call_texts(rows: list[tuple]) -> list[str]:
    """The events of RELAY_FETCH's `rows` as redis.ADD_EVENTS takes them (each one's id and body
    followed by RS), in as many calls' texts as keep each call near CALL_SIZE at most."""
    texts, parts, size = [], [], 0
    for *row, _ in rows:
        part = f"{row[0]}-0\x1e{body_json(*row)}\x1e"
        if parts and size + len(part) > CALL_SIZE:
            texts.append("".join(parts))
            parts, size = [], 0
        parts.append(part)
        size += len(part)
    texts.append("".join(parts))
    return texts


@dataclass
class Stall:
    """A namespace whose publishing failed: when to try again, and why it failed."""

    attempts: int
    retry_at: float
    error: str


class Relay:
    def __init__(self, *, name: str = "relay") -> None:
        self.name = name
        self.conn: psycopg.AsyncConnection | None = None
        self.redis = r.async_client()
        self.pubsub = None
        self.last_sweep = 0.0
        self.stalls: dict[int, Stall] = {}
        self.stopping = asyncio.Event()
        self.published = 0  # events published since start (for the log and tests)
        self.marks: dict[int, int] = {}  # ns id -> `published` position not stored yet
        self.pending: list[tuple] = []  # namespaces with events to publish, as the last pass read them
        self.waiting = False  # committed events wait for the horizon (the last pass saw)

    async def run(self) -> None:
        """Wait to become active, then relay until stopped or the lock is lost."""
        while not self.stopping.is_set():
            try:
                if await self._become_active():
                    log.info("%s active from the published positions of each namespace", self.name)
                    await self._loop()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("%s lost Postgres (%s); standing by", self.name, exc)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("%s lost Redis (%s); retrying", self.name, exc)
            await self._close()
            await self._sleep(POLL_SECONDS)
        await self._close()

    async def _become_active(self) -> bool:
        self.conn = await psycopg.AsyncConnection.connect(dsn(), autocommit=True)
        await self.conn.execute(sql.relay_prepare())  # the pass's statements, planned once
        while not self.stopping.is_set():
            row = await (await self.conn.execute(sql.RELAY_LOCK, [LOCK_KEY])).fetchone()
            if row[0]:
                await self._listen()
                return True
            await self._sleep(POLL_SECONDS)
        return False

    async def _listen(self) -> None:
        """Subscribe to the writers' doorbell; without Redis, the relay polls."""
        try:
            self.pubsub = await r.pubsub(self.redis)
            await self.pubsub.subscribe(events.doorbell_channel())
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("%s cannot hear the doorbell (%s); polling", self.name, exc)
            self.pubsub = None

    async def _loop(self) -> None:
        pause = HORIZON_POLL[0]
        while not self.stopping.is_set():
            while await self.sequence() == events.SEQUENCE_BATCH:
                pass  # a full batch: more may wait
            await self.publish_pending()
            if time.monotonic() - self.last_sweep >= SWEEP_SECONDS:
                await self._sweep()
            timeout = pause if self.waiting else POLL_SECONDS
            if self.marks and timeout > MARK_SECONDS:
                if await self._wait_for_doorbell(MARK_SECONDS):
                    continue  # the next pass stores them
                await self._store_marks()  # nothing rang: no pass will carry them soon
                timeout -= MARK_SECONDS
            await self._wait_for_doorbell(timeout)
            pause = min(pause * 2, HORIZON_POLL[1]) if self.waiting else HORIZON_POLL[0]

    async def sequence(self) -> int:
        """One pass of the sequencer, in one round trip and one transaction (sql.relay_pass): the
        sequencer's lock, the previous pass's `published` positions stored, positions stamped; then
        what waits to be published. Returns how many events got a position."""
        marks = dict(self.marks)
        marking = [list(marks), list(marks.values())] if marks else []
        cursor = psycopg.AsyncClientCursor(self.conn)
        await cursor.execute(
            sql.relay_pass(marking=bool(marks)),
            [events.SEQUENCER_LOCK, *marking, events.SEQUENCE_BATCH],
        )
        results = []
        while True:
            results.append(await cursor.fetchall() if cursor.description else None)
            if not cursor.nextset():
                break
        stamped, self.pending, waiting = results[-3:]
        self.waiting = waiting[0][0]
        self._stored(marks)
        return sum(count for _, _, count in stamped)

    async def _store_marks(self) -> None:
        marks = dict(self.marks)
        await self.conn.execute(sql.RELAY_MARK, [list(marks), list(marks.values())])
        self._stored(marks)

    def _stored(self, marks: dict[int, int]) -> None:
        for ns_id, position in marks.items():
            if self.marks.get(ns_id) == position:
                del self.marks[ns_id]

    async def publish_pending(self) -> int:
        """Publish what each namespace has sequenced beyond its `published` (as the last pass of
        sequence() read it); returns how many batches."""
        total = 0
        for ns_id, ns, published, head in self.pending:
            stall = self.stalls.get(ns_id)
            if stall is not None and time.monotonic() < stall.retry_at:
                continue
            try:
                while published < head:
                    published = await self._publish(ns_id, ns, published, min(head, published + BATCH))
                    total += 1
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                redis.ConnectionError,
                redis.TimeoutError,
            ):
                raise  # the stores, not this namespace: the outer loop waits for them
            except Exception as exc:
                self._stalled(ns_id, ns, exc)
            else:
                if self.stalls.pop(ns_id, None) is not None:
                    log.info("%s publishes namespace %s again", self.name, ns)
                    await self._report()
        return total

    async def _publish(self, ns_id: int, ns: str, after: int, through: int) -> int:
        rows = await (await self.conn.execute(sql.RELAY_FETCH, [ns_id, after, through])).fetchall()
        if len(rows) != through - after:  # positions are dense: anything else is a broken log
            raise RuntimeError(f"positions {after + 1}..{through} of {ns} read {len(rows)} events")
        add, keys, maxlen = r.script(r.ADD_EVENTS), [r.stream_key(ns)], settings.EVENT_STREAM_MAXLEN
        *earlier, last = call_texts(rows)
        for entries in earlier:  # in order: a call's first id must be above the previous call's
            await add.run(self.redis, keys, [maxlen, entries])
        heard = " ".join(f"{row[-1]}:{row[0]}" for row in rows if events.announced(row[1]))
        if isinstance(self.redis, redis.asyncio.cluster.RedisCluster):  # its pipeline takes no PUBLISH
            await add.run(self.redis, keys, [maxlen, last])
            if heard:
                await self.redis.publish(events.positions_channel(), heard)
        else:
            pipe = self.redis.pipeline(transaction=False)
            pipe.execute_command(*add.command(keys, [maxlen, last]))
            if heard:
                pipe.publish(events.positions_channel(), heard)
            added, *_ = await pipe.execute(raise_on_error=False)
            if isinstance(added, redis.exceptions.NoScriptError):  # a restarted or flushed Redis
                await add.run(self.redis, keys, [maxlen, last])
            elif isinstance(added, Exception):
                raise added
        await live.broadcast(ns_id, ns, through)
        self.marks[ns_id] = through
        self.published += len(rows)
        return through

    def _stalled(self, ns_id: int, ns: str, exc: Exception) -> None:
        previous = self.stalls.get(ns_id)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(STALL_BACKOFF[0] * 2 ** (attempts - 1), STALL_BACKOFF[1])
        self.stalls[ns_id] = Stall(attempts, time.monotonic() + delay, f"{type(exc).__name__}: {exc}"[:500])
        log.error(
            "%s cannot publish namespace %s (attempt %s, next in %.1fs): %s",
            self.name,
            ns,
            attempts,
            delay,
            exc,
        )
        asyncio.ensure_future(self._report())

    async def _report(self) -> None:
        """What operators see of the relay (views: the overview's relay panel)."""
        stalled = {
            str(ns_id): json.dumps({"attempts": s.attempts, "error": s.error})
            for ns_id, s in self.stalls.items()
        }
        with contextlib.suppress(Exception):
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(STATUS_KEY)
            if stalled:
                pipe.hset(STATUS_KEY, mapping=stalled)
            await pipe.execute()

    async def _sweep(self) -> None:
        self.last_sweep = time.monotonic()
        await sync_to_async(_sweep_once, thread_sensitive=True)()

    async def _wait_for_doorbell(self, timeout: float) -> bool:
        """Wait up to `timeout` for a writer's doorbell; whether one rang."""
        if self.pubsub is None:
            await self._sleep(timeout)
            return False
        try:
            message = rang = await self.pubsub.get_message(timeout=timeout)
            # Everything that rang meanwhile is answered by the one pass that follows.
            while message is not None:
                message = await self.pubsub.get_message(timeout=0)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("%s lost the doorbell (%s); polling", self.name, exc)
            self.pubsub = None
            return False
        return rang is not None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _close(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            self.pubsub = None
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
