"""What wakes the API's waiting requests, so the API reaches Redis only through here.

The namespace's stream in Redis is what the long waits on events (the event stream's tail, a
consumer group's blocking read) are woken by (StreamWatch); Postgres stays the source of what
they then read; a Redis that is down turns the wait into polling. A Subscription to a pub/sub
channel wakes the others (a lock's waiters, a revoked token's cache, an append's position)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

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


Parse = Callable[[str], Iterable[tuple[str, Any]]]  # a message as (name, value) pairs


class Subscription:
    """This process's one subscription to a Redis channel whose messages wake waiting requests:
    `parse` turns a message into (name, value) pairs, and the request waiting under a name (if it
    is here) gets the value at once. With `keep`, the last `keep` values no request waited for
    are kept, for a request that arms only after its message came. `on_state` (if given) is told
    True each time the subscription is (again) in place and False each time it is lost, so a
    cache kept by the channel's messages can drop what it may have missed meanwhile."""

    def __init__(
        self, channel: str, parse: Parse, keep: int = 0, on_state: Callable[[bool], None] | None = None
    ) -> None:
        self.channel, self.parse, self.keep = channel, parse, keep
        self.on_state = on_state or (lambda up: None)
        self.futures: dict[str, asyncio.Future] = {}
        # Oldest first. An OrderedDict, not a dict: a dict's first key, after many deleted from
        # the front, is found by stepping over every deleted slot (7.8 us a name at 10,000 kept,
        # 1.3 us this way; bench/README.md, round 9).
        self.heard: OrderedDict[str, Any] = OrderedDict()
        self.client = r.async_client()
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()

    def arm(self, name: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if name in self.heard:
            future.set_result(self.heard.pop(name))
        else:
            self.futures[name] = future
        return future

    def forget(self, name: str) -> None:
        self.futures.pop(name, None)

    async def wait(self, future: asyncio.Future | None, timeout: float) -> Any:
        """The future's value, or None after `timeout` seconds."""
        if future is None or timeout <= 0:
            return None
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        return None

    async def listen(self) -> None:
        while True:
            pubsub = None
            try:
                pubsub = await r.pubsub(self.client)
                await pubsub.subscribe(self.channel)
                self.on_state(True)
                self.ready.set()
                while True:
                    message = await pubsub.get_message(timeout=30)
                    if message is not None:
                        self._heard(message["data"])
            except asyncio.CancelledError:
                self.on_state(False)
                raise
            except Exception:  # Redis away: waiters still look for themselves after their timeout
                self.on_state(False)
                self.ready.set()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # its connection, before the next subscription takes one
                await asyncio.sleep(1)

    def _heard(self, data: str) -> None:
        for name, value in self.parse(data):
            future = self.futures.pop(name, None)
            if future is not None and not future.done():
                future.set_result(value)
            elif self.keep:
                self.heard[name] = value
                if len(self.heard) > self.keep:
                    self.heard.popitem(last=False)  # the oldest


_subscriptions: dict[tuple[asyncio.AbstractEventLoop, str], Subscription] = {}


async def subscribed(
    channel: str, parse: Parse, keep: int = 0, on_state: Callable[[bool], None] | None = None
) -> Subscription:
    """The event loop's subscription to `channel`, started on first use."""
    loop = asyncio.get_running_loop()
    subscription = _subscriptions.get((loop, channel))
    if subscription is None:
        subscription = _subscriptions[(loop, channel)] = Subscription(channel, parse, keep, on_state)
        subscription.task = loop.create_task(subscription.listen())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(subscription.ready.wait(), 1)
    return subscription
