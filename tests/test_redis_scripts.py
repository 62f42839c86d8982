"""memory_admin.redis: its scripts run by SHA1 and survive a Redis that forgot them."""

import pytest

from memory_admin import redis as r
from memory_admin.services import limits


@pytest.mark.cluster
def test_a_script_redis_forgot_is_loaded_again_and_runs():
    def count() -> int:
        return limits.count_calls(ns_name="ns-a", token_id=1, window=7, calls=1, keep_seconds=120)

    assert count() == 1
    r.client().script_flush()  # what a restarted Redis, or one failed over to a replica, knows
    assert count() == 2
    assert r.client().script_exists(r.script(r.COUNT_CALL).sha) == [True]
