"""How the sync client sleeps, locks, stops and runs work in the background: the names of
`_aio_runtime` for threads (see there; sync.py is generated from aio.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

sleep = time.sleep
WalLock = threading.RLock  # held while the offline log is replayed or appended behind a backlog
Worker = threading.Thread
Stop = threading.Event  # set(), clear(), is_set(), wait(timeout) -> True when stopped


def spawn(work: Callable[[], None], name: str) -> Worker:
    """Run `work` in a daemon thread."""
    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    return worker


def join(worker: Worker, timeout: float) -> None:
    """Wait up to `timeout` for a stopped worker to end its round."""
    if worker is not threading.current_thread():
        worker.join(timeout)


def resolve(value: Any) -> Any:
    """The value itself (an update function's result; awaited by the asyncio client)."""
    return value
