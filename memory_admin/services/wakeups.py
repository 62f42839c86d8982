"""Waiting for new events: the namespace's stream in Redis is what the API's long waits (the
event stream's tail, a consumer group's blocking read) are woken by. Postgres stays the source
of what they then read; a Redis that is down turns the wait into polling."""

from __future__ import annotations

import redis

from memory_admin import redis as r

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)


class StreamWatch:
    """One waiter on a namespace's stream, on an asyncio connection of its own (asyncio pools
    belong to one event loop): `await watch.close()` when done."""

    def __init__(self, ns_name: str) -> None:
        self._client = r.async_client()
        self._key = r.stream_key(ns_name)

    async def top(self) -> str | None:
        """The id of the stream's newest entry ("0-0" when empty), or None while Redis is down."""
        try:
            newest = await self._client.xrevrange(self._key, count=1)
        except REDIS_DOWN:
            return None
        return newest[0][0] if newest else "0-0"

    async def wait_past(self, entry: str, block_ms: int, count: int = 1) -> str | None:
        """Wait up to `block_ms` for entries after `entry`: the newest of up to `count` that
        came (`entry` itself when none did), or None while Redis is down."""
        try:
            woken = await self._client.xread({self._key: entry}, block=block_ms, count=count)
        except REDIS_DOWN:
            return None
        return woken[0][1][-1][0] if woken else entry

    async def close(self) -> None:
        await self._client.aclose()
