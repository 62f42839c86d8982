"""How the asyncio client sleeps, locks, stops and runs work in the background.

`_sync_runtime` has the same names for threads: the sync client (sync.py) is generated from
aio.py (client/unasync.py), which swaps this module for that one, so each primitive the two
clients differ in lives here and nowhere in their shared code.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

sleep = asyncio.sleep
WalLock = asyncio.Lock  # held while the offline log is replayed or appended behind a backlog
Worker = asyncio.Task


class Stop:
    """Set once to stop a background worker; `wait` sleeps until then or for `timeout`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float) -> bool:
        """True when stopped, False when `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


def spawn(work: Callable[[], Coroutine[Any, Any, None]], name: str) -> Worker | None:
    """Run `work` in the background; None outside a running event loop (a client made before
    its loop runs starts its worker on its first call that needs one)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.create_task(work(), name=name)


async def join(worker: Worker, timeout: float) -> None:
    """Wait for a stopped worker to end its round (cancelled if it takes longer than `timeout`)."""
    if worker is asyncio.current_task():
        return
    await asyncio.wait({worker}, timeout=timeout)
    if not worker.done():
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def resolve(value: Any) -> Any:
    """The value, awaited when it is awaitable (an update function may be a coroutine function)."""
    if inspect.isawaitable(value):
        return await value
    return value
