"""The active relay is SIGKILLed under load while a standby waits."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime

from tests.faults import checks
from tests.faults.cluster import wait_for
from tests.faults.load import Load

TAKEOVER_SECONDS = 5


def active_since(relay) -> float:
    """When `relay` logged that it became active (epoch seconds)."""
    line = next(line for line in relay.output().splitlines() if f"{relay.name} active from" in line)
    stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line).group(1)
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_standby_relay_takes_over_within_five_seconds_and_publishes_each_event_once_in_order(cluster, ns):
    tokens = cluster.provision(ns, [f"agent-{i:02d}" for i in range(8)])
    active = cluster.active_relay()
    standby = cluster.start_relay()
    load = Load(cluster.url, tokens).start()
    try:
        time.sleep(2)
        assert cluster.active_relay() is active
        active.kill(signal.SIGKILL)
        killed = time.time()
        wait_for(lambda: cluster.active_relay() is standby, timeout=TAKEOVER_SECONDS + 1, message="takeover")
        time.sleep(2)
    finally:
        load.stop()

    takeover = active_since(standby) - killed
    print(f"standby active {takeover:.2f}s after the kill; {load.summary()}")
    assert takeover < TAKEOVER_SECONDS
    assert [str(c) for c in load.calls if c.failed] == []
    checks.wait_for_relay(cluster, ns)
    assert checks.stream_ids(cluster, ns) == checks.event_ids(cluster, ns)
