"""The API's rate limit: calls counted per token and minute in Redis."""

from __future__ import annotations

from memory_admin import redis as r


@r.unavailable_on_error
def count_call(*, ns_name: str, token_id: int, window: int, keep_seconds: int) -> int:
    """Count one call of the token in time window `window`; the window's count so far. Unavailable
    when Redis does not answer."""
    return r.script(r.COUNT_CALL)(keys=[r.rate_key(ns_name, token_id, window)], args=[keep_seconds])
