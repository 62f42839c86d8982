"""The relay: every committed event reaches Redis once, in order, whatever dies when."""

from __future__ import annotations

import json
import signal
import time

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from memory_admin import live
from memory_admin import redis as r
from memory_admin.models import Event, RelayCursor
from memory_admin.services.events import publish_event
from tests.conftest import actor, start_relay, wait_for


def stream_ids(ns) -> list[int]:
    return [int(entry_id.split("-")[0]) for entry_id, _ in r.client().xrange(r.stream_key(ns.name))]


def publish(ns, agent, count: int) -> list[int]:
    return [publish_event(ns=ns, type="tick", payload={"i": i}, actor=actor(agent)).id for i in range(count)]


@pytest.mark.django_db(transaction=True)
def test_a_new_relay_publishes_what_a_killed_one_left_each_event_exactly_once_in_order(ns, alpha, tmp_path):
    first = start_relay(tmp_path, "relay-1")
    try:
        ids = publish(ns, alpha, 30)
        wait_for(lambda: stream_ids(ns)[-1:] == ids[-1:], message="first batch published")
        first.proc.send_signal(signal.SIGSTOP)
        ids += publish(ns, alpha, 70)  # committed, not published
    finally:
        first.stop(signal.SIGKILL)
    # And as if it had died between XADD and storing its cursor: the cursor lags the stream.
    RelayCursor.objects.filter(pk=1).update(published=ids[10])

    second = start_relay(tmp_path, "relay-2")
    try:
        every = list(Event.objects.filter(ns=ns).order_by("id").values_list("id", flat=True))
        wait_for(lambda: stream_ids(ns)[-1:] == ids[-1:], message="the rest published")
        time.sleep(0.5)
        assert stream_ids(ns) == every
        assert RelayCursor.objects.get(pk=1).published == ids[-1]
    finally:
        second.stop()


@pytest.mark.django_db(transaction=True)
def test_a_standby_relay_takes_over_within_five_seconds(ns, alpha, tmp_path):
    active = start_relay(tmp_path, "relay-a")
    standby = None
    try:
        publish(ns, alpha, 1)
        wait_for(lambda: stream_ids(ns), message="relay-a active")
        standby = start_relay(tmp_path, "relay-b")
        assert "relay-b active" not in standby.output()
        active.stop(signal.SIGKILL)
        killed = time.monotonic()
        ids = publish(ns, alpha, 5)
        wait_for(lambda: stream_ids(ns)[-5:] == ids, timeout=5, message="standby publishing")
        assert time.monotonic() - killed < 5
        assert "relay-b active" in standby.output()
    finally:
        active.stop(signal.SIGKILL)
        if standby:
            standby.stop()


@pytest.mark.django_db(transaction=True)
def test_each_event_reaches_the_namespaces_channel_group(ns, alpha, outsider, relay):
    layer = get_channel_layer()
    mine, theirs = async_to_sync(layer.new_channel)(), async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(live.group_name(ns.pk), mine)
    async_to_sync(layer.group_add)(live.group_name(outsider.ns.pk), theirs)

    event = publish_event(ns=ns, type="tick", payload={"n": 1}, actor=actor(alpha))
    message = async_to_sync(layer.receive)(mine)
    assert message["type"] == "memory.changed"
    assert message["event"] == json.loads(json.dumps(Event.objects.get(pk=event.id).body()))

    other = publish_event(ns=outsider.ns, type="tick", payload={}, actor=actor(outsider))
    assert async_to_sync(layer.receive)(theirs)["event"]["id"] == other.id
