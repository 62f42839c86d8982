"""The API's rate limit: calls counted per token and fixed minute in Redis.

Each web process takes a token's calls from the minute's count in blocks while the token is far
below its limit (one INCRBY of BLOCK, not a round trip a call: the round trip was ~6% of a
write's CPU in the web process, bench/README.md) and one at a time near it. So a minute never
allows more than the limit; what it costs is that a block a process took and did not use up
counts too: at most BLOCK - 1 calls a process, and only while the token's calls move between
processes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from memory_admin import redis as r

BLOCK = 16  # calls a process takes at once while the token is far below its limit
# Far below: this many processes' blocks still fit under the limit.
HEADROOM = 8
MAX_TOKENS = 10_000  # tokens a process keeps blocks for; past that it starts over


@dataclass
class _Block:
    window: int
    limit: int
    left: int  # calls taken from the count and not made yet
    count: int  # the window's count when this process last took calls


_blocks: dict[tuple[str, int], _Block] = {}
_lock = threading.Lock()


def take_call(*, ns_name: str, token_id: int, window: int, limit: int, keep_seconds: int) -> bool:
    """Count one call of the token in time window `window`: False once the window's calls are
    over `limit`. Unavailable when Redis does not answer."""
    key = (ns_name, token_id)
    with _lock:
        block = _blocks.get(key)
        if block is not None and (block.window, block.limit) != (window, limit):
            block = None
        if block is not None and block.left > 0:
            block.left -= 1
            return True
        seen = block.count if block is not None else 0
    taking = BLOCK if seen + BLOCK * HEADROOM <= limit else 1
    count = count_calls(
        ns_name=ns_name, token_id=token_id, window=window, calls=taking, keep_seconds=keep_seconds
    )
    first = count - taking + 1  # the number of this call in the window
    granted = max(0, min(taking, limit - first + 1))
    with _lock:
        block = _blocks.get(key)
        if block is not None and (block.window, block.limit) == (window, limit):
            block.left += max(0, granted - 1)  # another thread's block came first: keep both
            block.count = max(block.count, count)
        else:
            if len(_blocks) >= MAX_TOKENS:
                _blocks.clear()
            _blocks[key] = _Block(window=window, limit=limit, left=max(0, granted - 1), count=count)
    return granted > 0


@r.unavailable_on_error
def count_calls(*, ns_name: str, token_id: int, window: int, calls: int, keep_seconds: int) -> int:
    """Add `calls` to the token's count in window `window`; the window's count so far."""
    return r.script(r.COUNT_CALL)(keys=[r.rate_key(ns_name, token_id, window)], args=[keep_seconds, calls])
