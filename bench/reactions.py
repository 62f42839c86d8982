"""Scenario 10, reaction times: how soon the service answers the moments an agent waits for.
The unit suite asserts that each reaction happens (issue 14 moved its timing bounds here); this
measures how soon, one at a time on an otherwise idle server, repeated `reps` times:

- a blocked group read is woken by a new event (from the start of the event's POST);
- a revoked token's blocked group read, and its open SSE stream, end (from the start of the
  operator's `revoke_token`);
- the client refuses a write and a lock, with its reason, when the server cannot be reached
  (its default retries and backoff included, as an agent gets them);
- a waiter gets a lock whose holder's lease lapsed (from the lease's `expires_at`), or that its
  holder released (from the start of the DELETE);
- an agent whose heartbeat lapsed reads stale, and the relay's `agent.stale` reaches the log
  (from the heartbeat's `expires_at`; its shortest TTL is 5 s, so these repetitions overlap,
  one agent each, started 0.2 s apart).

Each start is taken before the action that causes the reaction, so the times are upper bounds.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis.asyncio

from bench.loadgen import Http, Result

NS = "bench-react"
# Repetitions of each reaction: 30, fewer with BENCH_SCALE (0.01 gives 5, for harness work).
REPS = max(5, int(30 * float(os.environ.get("BENCH_SCALE", "1"))))
GROUP = "/api/v1/events/groups/{}"

# The bounds the unit tests held before issue 14 (ms): a reaction is met when every repetition
# is within its bound, as each test run had to be.
BOUNDS = {
    "group read woken by an event": 1000,
    "revoked token: blocked group read ends": 2000,
    "revoked token: SSE stream ends": 2000,
    "offline client refuses with a reason": 3000,
    "lapsed lock reaches the waiter": 1000,
    "released lock reaches the waiter": 100,
    # The status tests slept TTL + 0.1 s before reading stale, and gave the relay's agent.stale
    # 10 s after a 5 s heartbeat.
    "lapsed heartbeat reads stale": 100,
    "lapsed heartbeat's agent.stale in the log": 5000,
}


@dataclass
class Agents:
    """The scenario's agents, made before the servers are measured: a reader, a writer, a
    holder and a waiter of locks, one token per revocation, two agents with a heartbeat each
    per repetition."""

    reader: str
    writer: str
    holder: str
    waiter: str
    revocable: list[tuple[Any, str]]  # (Token row, secret)
    beating: list[str]


def prepare(reps: int) -> Agents:
    """The tokens, issued through the services as an operator would (Django is set up)."""
    from memory_admin.services.tokens import ensure_agent, issue_token

    def secret(name: str) -> str:
        return issue_token(agent=ensure_agent(namespace=NS, agent_id=name))[1]

    revokee = ensure_agent(namespace=NS, agent_id="revokee")
    return Agents(
        reader=secret("reader"),
        writer=secret("writer"),
        holder=secret("holder"),
        waiter=secret("waiter"),
        revocable=[issue_token(agent=revokee) for _ in range(2 * reps)],
        beating=[secret(f"beater-{i}") for i in range(2 * reps)],
    )


async def reaction_times(host: str, port: int, redis_url: str, agents: Agents, reps: int) -> list[dict]:
    """Every reaction `reps` times; one row each with p50/p99/max, its bound and met/missed."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    from memory_admin.services.tokens import revoke_token

    # The operator's revocation, on one thread of its own with its own database connection.
    revoke = sync_to_async(lambda token: revoke_token(token=token), thread_sensitive=True)
    watcher = redis.asyncio.Redis.from_url(redis_url)

    def api(secret: str) -> Http:
        return Http(host, port, {"Authorization": f"Bearer {secret}"})

    reader, writer, holder, waiter = (
        api(agents.reader),
        api(agents.writer),
        api(agents.holder),
        api(agents.waiter),
    )
    await drain(reader, "react", "c")  # the group starts here, after the tokens' events
    measures: dict[str, Callable[[int], Awaitable[float]]] = {
        "group read woken by an event": lambda i: group_wakeup(reader, writer, watcher, i),
        "revoked token: blocked group read ends": lambda i: revoked_read(
            api, agents.revocable[2 * i], revoke, watcher
        ),
        "revoked token: SSE stream ends": lambda i: revoked_stream(
            host, port, agents.revocable[2 * i + 1], revoke
        ),
        "offline client refuses with a reason": lambda i: asyncio.to_thread(offline_refusal, agents.reader),
        "lapsed lock reaches the waiter": lambda i: lapsed_lock(holder, waiter, f"react-lapse-{i}"),
        "released lock reaches the waiter": lambda i: released_lock(
            holder, waiter, watcher, f"react-release-{i}"
        ),
    }
    beats = {
        "lapsed heartbeat reads stale": lambda i: stale_read(
            api(agents.beating[2 * i]), f"beater-{2 * i}", i
        ),
        "lapsed heartbeat's agent.stale in the log": lambda i: stale_event(
            api(agents.beating[2 * i + 1]), f"beater-{2 * i + 1}", i
        ),
    }
    rows = []
    try:
        for name, measure in measures.items():
            rows.append(await repeat(name, measure, reps))
        for name, measure in beats.items():
            rows.append(await repeat(name, measure, reps, stagger=0.2))
    finally:
        for conn in (reader, writer, holder, waiter):
            await conn.close()
        await watcher.aclose()
        await sync_to_async(connections.close_all, thread_sensitive=True)()
    return rows


async def repeat(
    name: str, measure: Callable[[int], Awaitable[float]], reps: int, stagger: float | None = None
) -> dict:
    """`measure` `reps` times, one after the other (or with `stagger`, each started that many
    seconds after the one before, overlapping); a repetition that fails counts as an error."""
    latencies, errors = [], 0

    async def once(i: int) -> None:
        nonlocal errors
        if stagger:
            await asyncio.sleep(i * stagger)
        try:
            latencies.append(await asyncio.wait_for(measure(i), timeout=60))
        except Exception as exc:  # noqa: BLE001 - counted and shown; the other repetitions go on
            errors += 1
            print(f"     {name} #{i}: {exc!r}", flush=True)

    started = time.perf_counter()
    if stagger:
        await asyncio.gather(*(once(i) for i in range(reps)))
    else:
        for i in range(reps):
            await once(i)
    result = Result(f"10 {name}", "ours", 1, time.perf_counter() - started, len(latencies), errors, latencies)
    row = result.row()
    bound = BOUNDS[name]
    return {
        "reaction": name,
        "n": len(latencies),
        "errors": errors,
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "max_ms": row["max_ms"],
        "bound_ms": bound,
        "met": bool(latencies) and not errors and row["max_ms"] < bound,
    }


# --- the reactions: each returns its latency in seconds, or raises ---------------------------


async def drain(conn: Http, group: str, consumer: str) -> None:
    """Read and ack what `group` has for `consumer` until two reads 0.1 s apart find nothing:
    a blocked read that follows is woken by the event it waits for, not by an earlier one."""
    empty = 0
    while empty < 2:
        answer = await conn.request(
            "POST", GROUP.format(group) + "/read", {"consumer": consumer, "count": 100}
        )
        assert answer.status == 200, answer.body[:300]
        ids = [item["id"] for item in answer.json()["items"]]
        if ids:
            await conn.request("POST", GROUP.format(group) + "/ack", {"ids": ids})
        empty = 0 if ids else empty + 1
        await asyncio.sleep(0.1)


async def blocked_reads(watcher: redis.asyncio.Redis) -> int:
    """Redis clients blocked in a stream read: how a waiting group read or stream shows."""
    clients = await watcher.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


async def until_blocked(watcher: redis.asyncio.Redis, before: int, read: asyncio.Task) -> None:
    """Return once one more stream read blocks than `before` (the request is waiting)."""
    deadline = time.monotonic() + 10
    while await blocked_reads(watcher) <= before:
        if read.done() or time.monotonic() > deadline:
            raise RuntimeError("the read did not block")
        await asyncio.sleep(0.01)


async def group_wakeup(reader: Http, writer: Http, watcher: redis.asyncio.Redis, i: int) -> float:
    """A group read blocked with nothing new, then an event: from the POST's start to the answer."""
    before = await blocked_reads(watcher)
    body = {"consumer": "c", "count": 10, "block_ms": 10_000}
    read = asyncio.create_task(reader.request("POST", GROUP.format("react") + "/read", body))
    await until_blocked(watcher, before, read)
    start = time.perf_counter()
    written = asyncio.create_task(
        writer.request("POST", "/api/v1/events", {"type": "react.wake", "payload": {"i": i}})
    )
    answer = await read
    latency = time.perf_counter() - start
    assert (await written).status == 201
    items = answer.json()["items"]
    assert any(item["type"] == "react.wake" for item in items), answer.body[:300]
    await reader.request("POST", GROUP.format("react") + "/ack", {"ids": [item["id"] for item in items]})
    return latency


async def revoked_read(api, token: tuple[Any, str], revoke, watcher: redis.asyncio.Redis) -> float:
    """A group read of a token blocked for 30 s, then the token revoked: until its 401."""
    row, secret = token
    conn = api(secret)
    try:
        await drain(conn, "revoked", "r")
        before = await blocked_reads(watcher)
        body = {"consumer": "r", "count": 10, "block_ms": 30_000}
        read = asyncio.create_task(conn.request("POST", GROUP.format("revoked") + "/read", body))
        await until_blocked(watcher, before, read)
        start = time.perf_counter()
        await revoke(row)
        answer = await read
        latency = time.perf_counter() - start
        assert answer.status == 401, answer.body[:300]
        return latency
    finally:
        await conn.close()


async def revoked_stream(host: str, port: int, token: tuple[Any, str], revoke) -> float:
    """An open SSE stream (GET /events/stream, its first frame read), then the token revoked:
    until the server ends the response."""
    row, secret = token
    reader, out = await asyncio.open_connection(host, port)
    try:
        out.write(
            f"GET /api/v1/events/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {secret}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n", 1)[0], head[:200]
        seen = b""
        while b"id: " not in seen:  # the stream's start, sent first
            seen += await reader.read(4096)
        start = time.perf_counter()
        await revoke(row)
        # Chunked: the response ends with an empty chunk (or the connection closes).
        while not seen.endswith(b"0\r\n\r\n"):
            chunk = await reader.read(4096)
            if not chunk:
                break
            seen += chunk
        return time.perf_counter() - start
    finally:
        out.close()


def offline_refusal(secret: str) -> float:
    """The client with its offline log, the server's address answering nothing: a versioned
    write (never queued) and a lock acquire, both refused with Unavailable and a reason."""
    from memory_admin_client import MemoryClient, Unavailable

    from config.processes import free_port

    with tempfile.TemporaryDirectory(prefix="mab-offline-") as folder:
        client = MemoryClient(f"http://127.0.0.1:{free_port()}", secret, wal_path=Path(folder) / "agent.wal")
        try:
            start = time.perf_counter()
            try:
                client.write("draft", {"v": 1}, expected_version=0)
            except Unavailable as exc:
                assert "never queued" in str(exc), exc  # the reason: not kept for later
            else:
                raise AssertionError("the write was not refused")
            try:
                client.lock("report").acquire()
            except Unavailable as exc:
                assert "cannot reach" in str(exc), exc
            else:
                raise AssertionError("the acquire was not refused")
            return time.perf_counter() - start
        finally:
            client.close()


async def lapsed_lock(holder: Http, waiter: Http, resource: str) -> float:
    """A 1 s lease left to lapse while another agent waits: from its `expires_at` to the
    waiter's lock (both on this machine's clock)."""
    path = f"/api/v1/locks/{resource}"
    held = await holder.request("POST", path, {"ttl_seconds": 1})
    assert held.status == 200, held.body[:300]
    expires = datetime.fromisoformat(held.json()["expires_at"]).timestamp()
    got = await waiter.request("POST", path, {"ttl_seconds": 30, "wait_seconds": 10})
    latency = time.time() - expires
    assert got.status == 200, got.body[:300]
    await waiter.request("DELETE", f"{path}?fencing_token={got.json()['fencing_token']}")
    return latency


async def released_lock(holder: Http, waiter: Http, watcher: redis.asyncio.Redis, resource: str) -> float:
    """A held lock, a waiter in its queue, then the release: from the DELETE's start to the
    waiter's lock."""
    from memory_admin import redis as r

    path = f"/api/v1/locks/{resource}"
    held = await holder.request("POST", path, {"ttl_seconds": 30})
    assert held.status == 200, held.body[:300]
    wait = asyncio.create_task(waiter.request("POST", path, {"ttl_seconds": 30, "wait_seconds": 10}))
    deadline = time.monotonic() + 10
    while not await watcher.zcard(r.lock_queue(NS, resource)):  # its first look found the lock held
        if wait.done() or time.monotonic() > deadline:
            raise RuntimeError("the waiter did not queue")
        await asyncio.sleep(0.005)
    start = time.perf_counter()
    released = await holder.request("DELETE", f"{path}?fencing_token={held.json()['fencing_token']}")
    got = await wait
    latency = time.perf_counter() - start
    assert released.status == 204 and got.status == 200, (released.body[:300], got.body[:300])
    await waiter.request("DELETE", f"{path}?fencing_token={got.json()['fencing_token']}")
    return latency


async def lapsing_heartbeat(conn: Http, i: int) -> float:
    """A heartbeat with the shortest TTL; its `expires_at` on this machine's clock, slept up to
    50 ms before it (so the polls that follow are few)."""
    beat = await conn.request(
        "PUT", "/api/v1/status", {"status": "working", "detail": f"#{i}", "ttl_seconds": 5}
    )
    assert beat.status == 200, beat.body[:300]
    expires = datetime.fromisoformat(beat.json()["expires_at"]).timestamp()
    await asyncio.sleep(max(0.0, expires - time.time() - 0.05))
    return expires


async def stale_read(conn: Http, agent_id: str, i: int) -> float:
    """From the heartbeat's `expires_at` to the first read of the agent that says stale (polled
    every 10 ms)."""
    try:
        expires = await lapsing_heartbeat(conn, i)
        while (await conn.request("GET", f"/api/v1/agents/{agent_id}")).json()["state"] != "stale":
            await asyncio.sleep(0.01)
        return time.time() - expires
    finally:
        await conn.close()


async def stale_event(conn: Http, agent_id: str, i: int) -> float:
    """From the heartbeat's `expires_at` to the first page of the log that holds the agent's
    `agent.stale` (the relay's sweep; polled every 20 ms)."""
    path = f"/api/v1/events?type=agent.stale&agent_id={agent_id}"
    try:
        expires = await lapsing_heartbeat(conn, i)
        while not (await conn.request("GET", path)).json()["items"]:
            await asyncio.sleep(0.02)
        return time.time() - expires
    finally:
        await conn.close()
