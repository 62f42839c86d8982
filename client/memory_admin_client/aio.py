"""The agent API, with the three-class pattern's method names: AsyncMemoryClient for asyncio code
(aio.py) and MemoryClient for synchronous code (sync.py).

aio.py is the source of both: sync.py is generated from it by client/generate_sync.py, which
drops `async` and `await`, renames the async names (AsyncMemoryClient -> MemoryClient, AsyncLock ->
Lock, aclose -> close, ...) and swaps `_aio_runtime` (tasks) for `_sync_runtime` (threads). Edit
aio.py, then run `python client/generate_sync.py`; a test fails while sync.py is not current.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx

from memory_admin_client import _aio_runtime as runtime
from memory_admin_client import _core as core
from memory_admin_client._base import (
    MAX_SERVER_WAIT,
    STREAM_READ_TIMEOUT,
    Base,
    LockState,
    _Again,
    log,
    row_call,
)
from memory_admin_client.errors import (
    ConflictError,
    LockHeld,
    MemoryAdminError,
    NotLockHolder,
    Unavailable,
    from_response,
)
from memory_admin_client.events import AgentEvent


class AsyncMemoryClient(Base):
    """One agent's connection to Memory Admin. Close it (`close()`, or use it as a context manager)
    when done. The sync client is thread-safe; the async one belongs to one event loop.

    `wal_path` turns on the offline log: while the server cannot be reached, store_fact,
    publish and set_agent_status are kept in that SQLite file and replayed in order later.
    """

    def __init__(self, base_url: str, token: str, **options: Any) -> None:
        super().__init__(base_url, token, **options)
        self._http = httpx.AsyncClient(**self._http_options())
        self._wal_lock = runtime.WalLock()
        self._flusher: runtime.Worker | None = None
        self._closed = runtime.Stop()
        if self.wal is not None and self.wal.backlog:
            self._start_flusher()  # what a crashed run left is sent once the server answers

    async def __aenter__(self) -> AsyncMemoryClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def connect(self) -> AsyncMemoryClient:
        """Ask who the token speaks for (and replay what an earlier run left in the offline log).
        Optional: every call connects on its own; kept for code written as `db.connect()`."""
        await self.me()
        if self.wal is not None and self.wal.backlog:
            await self._try_flush_locked()
        return self

    async def aclose(self) -> None:
        """Stop the offline log's replay, close the connections and the offline log."""
        self._closed.set()
        if self._flusher is not None:
            await runtime.join(self._flusher, 5)
        await self._http.aclose()
        if self.wal is not None:
            self.wal.close()

    close = aclose  # async only

    # --- sending ------------------------------------------------------------------------------

    async def _send(self, call: core.Call, *, retry_unavailable: bool = True) -> Any:
        attempt = 0
        while True:
            response = error = None
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    content=call.body,
                    headers=call.headers(),
                    timeout=self._timeout(call),
                )
            except httpx.TransportError as exc:
                error = exc
            try:
                return self._judge(call, attempt, response, error, retry_unavailable=retry_unavailable)
            except _Again as again:
                await runtime.sleep(again.delay)
                attempt += 1

    async def _run(self, work: core.Call | core.Plan) -> Any:
        if isinstance(work, core.Call):
            return await self._execute(work)
        try:
            call = next(work)
            while True:
                call = work.send(await self._execute(call))
        except StopIteration as done:
            return done.value

    async def _execute(self, call: core.Call) -> Any:
        await self._check_agent(call.agent_id, queueable=bool(call.queue))
        if call.queue and self.wal is not None:
            return await self._send_or_queue(call)
        if self.wal is not None and self.wal.backlog and not self._offline():
            await self._try_flush_locked()  # read your own writes: what waits goes first
        return await self._send(call)

    async def _check_agent(self, named: str | None, queueable: bool = False) -> None:
        """AgentMismatch when `named` is not the token's agent (asks /me once to know it). A call
        that may wait in the offline log is not held up by a server that is away: its replay
        checks it instead."""
        if named is None:
            return
        lenient = queueable and self.wal is not None
        if self._identity is None and not (lenient and self._offline()):
            try:
                self._remember(await self._send(core.me(), retry_unavailable=not lenient))
            except Unavailable:
                if not lenient:
                    raise
                self._went_offline()
        self._refuse_other_agent(named)

    async def _send_or_queue(self, call: core.Call) -> Any:
        async with self._wal_lock:
            if self.wal.backlog and (self._offline() or not await self._try_flush()):
                self._queue(call)  # behind what waits, to keep the order
                self._start_flusher()
                return None
            try:
                return await self._send(call, retry_unavailable=False)
            except Unavailable:
                self._went_offline()
                self._queue(call)
                self._start_flusher()
                return None

    # --- the offline log ----------------------------------------------------------------------

    async def flush(self) -> int:
        """Send what waits in the offline log, in order; returns how many were sent. Raises
        Unavailable (rows kept) when the server is still away, Unauthenticated / Forbidden when
        the token is refused."""
        if self.wal is None:
            return 0
        async with self._wal_lock:
            return await self._flush()

    async def _try_flush_locked(self) -> bool:
        async with self._wal_lock:
            return await self._try_flush()

    async def _try_flush(self) -> bool:
        try:
            await self._flush()
        except MemoryAdminError as exc:
            log.info("offline log not flushed yet: %s", exc)
            return False
        return True

    async def _flush(self) -> int:
        sent = 0
        while self.wal.backlog:
            for row in self.wal.queued():
                if row.agent_id is not None:
                    if self._identity is None:
                        self._remember(await self._send(core.me(), retry_unavailable=False))
                    if row.agent_id != self._identity["agent_id"]:
                        self.wal.fail(row.seq, f"named agent {row.agent_id!r}, token is {self.agent_id!r}")
                        continue
                try:
                    await self._send(row_call(row), retry_unavailable=False)
                except MemoryAdminError as exc:
                    if self._replay_verdict(row, exc) == "stop":
                        if exc.status is None or exc.status >= 500:
                            self._went_offline()
                        raise
                    log.warning("offline log: %s %s refused for good: %s", row.method, row.path, exc)
                    self.wal.fail(row.seq, f"{exc.code}: {exc}")
                    continue
                self.wal.done(row.seq)
                sent += 1
        if sent:
            log.info("offline log: %d calls replayed", sent)
        return sent

    def _start_flusher(self) -> None:
        if self.flush_interval is None or self._flusher is not None or self._closed.is_set():
            return
        self._flusher = runtime.spawn(self._flush_loop, name="memory-admin-offline-log")

    async def _flush_loop(self) -> None:
        while not await self._closed.wait(self.flush_interval):
            async with self._wal_lock:
                if not self.wal.backlog or self._closed.is_set():
                    self._flusher = None
                    return
                try:
                    await self._try_flush()
                except Exception:  # never let the replay die with rows waiting; the next round retries
                    log.exception("offline log: replay failed")

    # --- identity -------------------------------------------------------------------------------

    async def me(self) -> dict[str, Any]:
        """`{"agent_id", "namespace", "scopes"}` of the token."""
        return self._remember(await self._send(core.me()))

    async def health(self) -> dict[str, Any]:
        """`{"status", "postgres", "redis"}` of the server; needs no token."""
        return await self._send(core.health())

    # --- facts (RedisAgentMemory) -----------------------------------------------------------------

    async def store_fact(
        self, agent_id: str | None, fact: str, category: str, metadata: dict | None = None
    ) -> int | None:
        """Store a fact any agent of the namespace can find; returns its id (None when queued offline)."""
        return await self._run(core.store_fact(agent_id, fact, category, metadata))

    async def get_facts_by_category(self, category: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Every fact of `category` from any agent, newest first (at most `limit`)."""
        return await self._run(core.all_facts(category, limit))

    async def query_facts(
        self,
        *,
        category: str | None = None,
        agent_id: str | None = None,
        q: str | None = None,
        after: int | None = None,
        limit: int = 50,
    ) -> dict[str, Any]:
        """One page `{"items", "next"}`, newest first; `q` is full-text search."""
        return await self._run(
            core.query_facts(category=category, agent_id=agent_id, q=q, after=after, limit=limit)
        )

    async def get_fact(self, fact_id: int) -> dict[str, Any]:
        """Fact `fact_id`: `{"id", "fact", "category", "agent_id", "metadata", "created_at"}`; NotFound."""
        return await self._run(core.get_fact(fact_id))

    # --- status -----------------------------------------------------------------------------------

    async def set_agent_status(
        self, agent_id: str | None, status: str, detail: str = "", ttl_seconds: int = 60
    ) -> dict[str, Any] | None:
        """Publish this agent's status for `ttl_seconds`; repeat it as the heartbeat."""
        return await self._run(core.set_status(agent_id, status, detail, ttl_seconds))

    async def heartbeat(self, status: str, detail: str = "", ttl_seconds: int = 60) -> dict[str, Any] | None:
        """set_agent_status for this client's own agent: `status` (required), `detail`, `ttl_seconds`."""
        return await self.set_agent_status(None, status, detail, ttl_seconds)

    async def get_agent_status(self, agent_id: str) -> dict[str, Any] | None:
        """`{"agent_id", "status", "detail", "updated_at", "expires_at", "state"}`; None when the
        agent does not exist or never reported. `state` is "stale" once its TTL lapsed."""
        return await self._run(core.get_agent(agent_id))

    async def list_agents(self) -> list[dict[str, Any]]:
        """Every agent of the namespace with its status and state (live, stale, never seen)."""
        return await self._run(core.list_agents())

    # --- locks ------------------------------------------------------------------------------------

    async def acquire_lock(
        self, resource: str, agent_id: str | None = None, ttl_seconds: int = 30, wait_seconds: float = 0
    ) -> bool:
        """Take `resource` for `ttl_seconds`; False when another holds it (after `wait_seconds`).
        The fencing token is kept (`fencing_token(resource)`) for release and fenced writes."""
        try:
            body = await self._acquire(resource, ttl_seconds, wait_seconds, agent_id)
        except LockHeld:
            return False
        self._tokens[resource] = body["fencing_token"]
        return True

    async def _acquire(
        self, resource: str, ttl: float, wait: float, agent_id: str | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + wait
        while True:
            chunk = max(0.0, min(MAX_SERVER_WAIT, deadline - time.monotonic()))
            try:
                return await self._run(core.acquire(resource, ttl, round(chunk, 3), agent_id))
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise

    async def release_lock(self, resource: str, agent_id: str | None = None) -> bool:
        """Release `resource` if this client holds it; False when it does not (any more)."""
        token = self._tokens.get(resource)
        if token is None:
            await self._check_agent(agent_id)
            return False
        try:
            return await self._run(core.release(resource, token, agent_id))
        except NotLockHolder:
            return False
        finally:
            if self._tokens.get(resource) == token:
                del self._tokens[resource]

    async def renew_lock(self, resource: str, ttl_seconds: int = 30) -> dict[str, Any]:
        """Extend this client's lock on `resource` to `ttl_seconds` from now; NotLockHolder if it is gone."""
        token = self._tokens.get(resource)
        if token is None:
            raise NotLockHolder(f"this client holds no lock on {resource!r}")
        return await self._run(core.renew(resource, token, ttl_seconds))

    async def get_lock(self, resource: str) -> dict[str, Any] | None:
        """`{"resource", "owner", "fencing_token", "acquired_at", "expires_at"}`, or None when free."""
        return await self._run(core.get_lock(resource))

    async def list_locks(self) -> list[dict[str, Any]]:
        """The namespace's held locks."""
        return await self._run(core.list_locks())

    def lock(self, resource: str, ttl: float = 30, wait: float = 0, *, renew: bool = True) -> AsyncLock:
        """`with client.lock("res", ttl=30, wait=5) as lock:` (`async with` for the async client) —
        acquired on entry (LockHeld if not free within `wait`), renewed every ttl/3 while the
        block runs, released at its end."""
        return AsyncLock(self, resource, ttl, wait, renew)

    # --- events (EventStore) ----------------------------------------------------------------------

    async def publish(self, event: AgentEvent | str, payload: dict[str, Any] | None = None) -> int | None:
        """Append an event: an AgentEvent, or a type and a payload. Returns its id (None when queued)."""
        return await self._run(core.publish(event, payload))

    async def read_events(
        self,
        since: Any = "0-0",
        count: int = 100,
        *,
        types: Iterable[str] | None = None,
        agent_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `count` events after the event id `since` ("0-0": from the start), oldest first."""
        return await self._run(core.read_events(since, count, types, agent_id))

    async def subscribe(
        self,
        after: Any = None,
        *,
        last_id: Any = None,
        types: Iterable[str] | None = None,
        reconnect: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Events as they happen, after `after` (an id; "0-0" replays all; None or "$": from now).

        A dropped connection (a server restart) is resumed with Last-Event-ID: no event is
        missed and none is repeated, also for a stream started "from now" that has seen no
        event yet (the server says where it started).
        """
        cursor = core.to_cursor(after if after is not None else last_id)
        params = {"type": ",".join(types)} if types else None
        attempt = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if cursor is not None:
                headers["Last-Event-ID"] = str(cursor)
            try:
                async with self._http.stream(
                    "GET",
                    "/events/stream",
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        exc = _error_of(response)
                        if response.status_code not in (429, 503) or not reconnect:
                            raise exc
                    else:
                        decoder = core.SSEDecoder()
                        async for line in response.aiter_lines():
                            frame = decoder.feed(line)
                            if frame is None:
                                cursor = core.start_cursor(cursor, decoder)
                                continue
                            event = core.stream_event(frame)
                            if cursor is not None and event["id"] <= cursor:
                                continue  # already delivered before a reconnect
                            cursor, attempt = event["id"], 0
                            yield event
            except httpx.TransportError as exc:
                if not reconnect:
                    broke = f"event stream from {self.base_url} broke: {self._redact(exc)}"
                    raise Unavailable(broke) from exc
                log.info("event stream dropped (%s); resuming after %s", type(exc).__name__, cursor)
            if not reconnect:
                return
            await runtime.sleep(self.backoff.delay(min(attempt, 5)))
            attempt += 1

    async def read_group(
        self,
        group: str,
        consumer: str,
        count: int = 10,
        block_ms: int = 0,
        start: str = "latest",
        reclaim_after_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """Events for one consumer of `group`: each event of the namespace goes to one consumer.
        Ack them with `ack`; unacked ones go to another consumer after `reclaim_after_ms`."""
        return await self._run(core.read_group(group, consumer, count, block_ms, start, reclaim_after_ms))

    async def ack(self, group: str, ids: Iterable[int]) -> int:
        """Acknowledge events `ids` read with read_group; returns how many were pending."""
        return await self._run(core.ack(group, ids))

    # --- records (SharedAgentDB) --------------------------------------------------------------------

    async def read(self, key: str) -> dict[str, Any] | None:
        """`{"key", "value", "version", "updated_by", "updated_at"}`, or None when absent."""
        return await self._run(core.read_record(key))

    async def write(
        self,
        key: str,
        value: Any,
        agent_id: str | None = None,
        expected_version: int | None = None,
        *,
        fence: Any = None,
    ) -> dict[str, Any]:
        """Write `value`; with `expected_version` only over that version (0: only if absent), else
        ConflictError carrying the current record. `fence` (a Lock, a held resource, or a
        `(resource, token)` pair) refuses the write with StaleFence once the lock is not ours."""
        call = core.write_record(key, value, expected_version, self._fence(fence))
        call.agent_id, call.fence = agent_id, fence if isinstance(fence, AsyncLock) else None
        return await self._run(call)

    async def update(
        self, key: str, fn: Callable[[Any], Any], retries: int = 10, *, fence: Any = None
    ) -> dict[str, Any]:
        """Read, apply `fn` to the value (None when absent), write with expected_version; on a
        conflict apply `fn` to the newer value and try again, up to `retries` times. For the async
        client `fn` may be a coroutine function."""
        current = await self.read(key)
        for attempt in range(retries + 1):
            value, version = (current["value"], current["version"]) if current else (None, 0)
            new = await runtime.resolve(fn(value))
            try:
                return await self.write(key, new, expected_version=version, fence=fence)
            except ConflictError as exc:
                if attempt == retries:
                    raise
                current = exc.current
                await runtime.sleep(self.conflict_backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def delete(self, key: str, expected_version: int | None = None) -> None:
        """Delete `key` (a version with `deleted` true); with `expected_version` only over that version."""
        await self._run(core.delete_record(key, expected_version))

    async def list_records(self, prefix: str = "", after: str = "", limit: int = 50) -> dict[str, Any]:
        """One page `{"items", "next"}` of records whose key starts with `prefix`, after key `after`."""
        return await self._run(core.list_records(prefix, after, limit))

    async def versions(self, key: str, limit: int = 50) -> list[dict[str, Any]]:
        """The key's versions, newest first (a delete is a version with `deleted` true)."""
        return await self._run(core.versions(key, limit))

    def txn(self) -> core.Txn:
        """A transaction to build and `commit()`: compares, then operations (`Op`) for when
        they all hold and for when not, all or nothing on the server (API.md)."""
        return core.Txn(self._run)

    async def batch(self, ops: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Independent operations (`Op.put(...)`, ...) in one request: a `{"status", "body"}` for
        each, in order; one failing does not stop the others."""
        return await self._run(core.batch(ops))

    async def conflicts(self, status: str = "open", limit: int = 50) -> list[dict[str, Any]]:
        """This agent's rejected writes: "open", "resolved" or "all"."""
        return await self._run(core.conflicts(status, limit))


class AsyncLock(LockState):
    """A held lock with its fencing token, renewed in the background; see the client's `lock`."""

    client: AsyncMemoryClient

    def __init__(
        self, client: AsyncMemoryClient, resource: str, ttl: float, wait: float, renew: bool
    ) -> None:
        super().__init__(client, resource, ttl, wait, renew)
        self._stop = runtime.Stop()
        self._renewer: runtime.Worker | None = None

    async def __aenter__(self) -> AsyncLock:
        if not self.held:
            await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.release()
        except MemoryAdminError as error:  # the TTL frees it; don't hide the block's own error
            log.warning(
                "lock %r not released (%s); it expires in at most %ss", self.resource, error, self.ttl
            )

    async def acquire(self) -> AsyncLock:
        """Take the lock (waiting up to `wait` seconds; LockHeld if not free) and start renewing it."""
        started = time.monotonic()
        self._took(await self.client._acquire(self.resource, self.ttl, self.wait), started)
        if self.auto_renew:
            self._stop.clear()
            self._renewer = runtime.spawn(self._renew_loop, name=f"lock-{self.resource}")
        return self

    async def renew(self) -> None:
        """Extend the lease by `ttl` now; NotLockHolder (and the lock marked lost) if it is gone."""
        self.check()
        started = time.monotonic()
        try:
            body = await self.client._send(
                core.renew(self.resource, self.fencing_token, self.ttl), retry_unavailable=False
            )
        except NotLockHolder:
            self._mark_lost()
            raise
        self._renewed(body, started)

    async def _renew_loop(self) -> None:
        failing = False
        while not await self._stop.wait(self._interval(failing)):
            try:
                await self.renew()
                failing = False
            except NotLockHolder:
                return
            except MemoryAdminError as exc:
                if self.lost:
                    return
                failing = True  # keep trying until the lease would have run out
                log.info("renewing lock %r failed (%s); retrying", self.resource, exc)
                if time.monotonic() >= self._deadline:
                    self._mark_lost()
                    return

    async def write(self, key: str, value: Any, expected_version: int | None = None) -> dict[str, Any]:
        """A write fenced by this lock: StaleFence (and not sent) once the lock is known lost."""
        return await self.client.write(key, value, expected_version=expected_version, fence=self)

    async def update(self, key: str, fn: Callable[[Any], Any], retries: int = 10) -> dict[str, Any]:
        """A read-modify-write (as the client's `update`) fenced by this lock."""
        return await self.client.update(key, fn, retries, fence=self)

    async def release(self) -> bool:
        """Stop renewing and give the lock back; False when it was already lost or released."""
        self._stop.set()
        if self._renewer is not None:
            await runtime.join(self._renewer, self.client.timeout + 1)
        if self.fencing_token is None or self.released or self.lost:
            return False
        self.released = True
        try:
            return await self.client._run(core.release(self.resource, self.fencing_token))
        except NotLockHolder:
            self.lost = True
            return False
        finally:
            if self.client._tokens.get(self.resource) == self.fencing_token:
                del self.client._tokens[self.resource]


def _error_of(response: httpx.Response) -> MemoryAdminError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return from_response(response.status_code, body, core.retry_after(response.headers))
