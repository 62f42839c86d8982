"""The rate limit's count (services/limits.py): taken in blocks far below the limit, one call at a
time near it, never more than the limit in a minute, with real threads on real Redis."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from memory_admin import redis as r
from memory_admin.services import limits

_tokens = itertools.count(10_000_000)  # token ids no other test's process took calls for


def take(token_id: int, limit: int, window: int = 7) -> bool:
    return limits.take_call(ns_name="ns-l", token_id=token_id, window=window, limit=limit, keep_seconds=120)


def counted(token_id: int, window: int = 7) -> int:
    return int(r.client().get(r.rate_key("ns-l", token_id, window)) or 0)


@pytest.mark.cluster
def test_far_below_the_limit_calls_are_taken_from_redis_a_block_at_a_time():
    token = next(_tokens)
    assert all(take(token, limit=6000) for _ in range(20))
    # Two round trips for 20 calls: the count says two blocks, not twenty calls.
    assert counted(token) == 2 * limits.BLOCK
    assert 0 < r.client().ttl(r.rate_key("ns-l", token, 7)) <= 120


@pytest.mark.cluster
def test_near_the_limit_every_call_is_counted_and_the_one_past_it_refused():
    token = next(_tokens)
    limit = limits.BLOCK * limits.HEADROOM + 5  # one block, then a call at a time
    assert all(take(token, limit) for _ in range(limit))
    assert not take(token, limit)
    assert counted(token) == limit + 1
    assert take(token, limit, window=8)  # a new minute starts over


@pytest.mark.cluster
def test_threads_racing_for_one_token_are_allowed_exactly_the_limit():
    token, limit = next(_tokens), 300
    start = threading.Barrier(8)

    def calls(_) -> int:
        start.wait()
        return sum(take(token, limit) for _ in range(60))

    with ThreadPoolExecutor(8) as pool:
        allowed = sum(pool.map(calls, range(8)))
    assert allowed == limit  # 480 calls: no block double-spent, none of this process's left over
    assert counted(token) >= limit


@pytest.mark.cluster
def test_a_lower_limit_set_meanwhile_is_not_passed_on_calls_taken_under_the_old_one():
    token = next(_tokens)
    assert take(token, limit=6000)  # a block taken: 15 calls left in this process
    assert not take(token, limit=limits.BLOCK)  # already past 16 counted: refused at once
