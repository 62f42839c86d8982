"""`with client.lock(...)`: renewed while the block runs, fenced writes refused once it is lost."""

from __future__ import annotations

import pytest
from memory_admin_client import StaleFence

from memory_admin.models import Event
from memory_admin.services import Actor
from memory_admin.services.locks import force_release
from tests.client_support import LEASE, FaultProxy, client_for, outlive_lease
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

OPERATOR = Actor(name="operator:ops")


@pytest.fixture
def proxy(web_server):
    proxy = FaultProxy(web_server.url)
    yield proxy
    proxy.close()


def test_a_block_that_outlives_the_ttl_keeps_the_lock_through_renewal(web_server, alpha, beta):
    a, b = client_for(web_server.url, alpha), client_for(web_server.url, beta)
    with a.lock("report/intro", ttl=LEASE) as lock:
        token = lock.fencing_token
        for i in range(2):  # twice the TTL
            outlive_lease(lock)
            assert not b.acquire_lock("report/intro")
            assert lock.write("report/draft", {"intro": i})["version"] == i + 1
        assert lock.held and not lock.lost and lock.fencing_token == token
    assert a.get_lock("report/intro") is None and lock.released
    assert b.acquire_lock("report/intro")
    types = list(Event.objects.filter(subject="report/intro").values_list("type", flat=True))
    assert types == ["lock.acquired", "lock.released", "lock.acquired"]  # never expired in between


def test_a_force_released_lock_makes_the_next_fenced_write_raise_stale_fence(proxy, alpha, beta):
    a, b = client_for(proxy.url, alpha), client_for(proxy.url, beta)
    with a.lock("report/intro", ttl=30) as lock:
        lock.write("report/draft", {"by": "alpha"})
        force_release(ns=alpha.ns, resource="report/intro", reason="stuck", actor=OPERATOR)
        assert b.acquire_lock("report/intro")
        b.write("report/draft", {"by": "beta"}, fence="report/intro")
        with pytest.raises(StaleFence):
            lock.write("report/draft", {"by": "alpha, late"})
        assert lock.lost and not lock.held
        sent = proxy.seen["PUT /api/v1/records/report/draft!"]
        with pytest.raises(StaleFence, match="not sent"):
            lock.write("report/draft", {"by": "alpha, later"})
        with pytest.raises(StaleFence):
            a.update("report/draft", lambda v: {"by": "alpha, via update"}, fence=lock)
        assert proxy.seen["PUT /api/v1/records/report/draft!"] == sent  # refused here, never sent
    assert b.read("report/draft")["value"] == {"by": "beta"}
    assert b.get_lock("report/intro")["owner"] == "beta"  # alpha's exit did not release beta's lock


def test_a_lock_whose_renewals_fail_is_lost_when_its_lease_runs_out(proxy, alpha):
    a = client_for(proxy.url, alpha)
    with a.lock("report/intro", ttl=LEASE) as lock:  # time for the retries to show
        proxy.busy = 10_000  # every renewal is answered 503 from now on
        wait_for(lambda: lock.lost, message="the lease to run out unrenewed")
        with pytest.raises(StaleFence):
            lock.write("report/draft", {"late": True})
        assert proxy.seen["PUT /api/v1/records/report/draft!"] == 0
        assert proxy.seen["POST /api/v1/locks/report/intro!renew"] >= 2
    proxy.busy = 0
    # The client counts the lease from before its request, so it gives up first; the server's TTL follows.
    wait_for(lambda: a.get_lock("report/intro") is None, message="the server's TTL to lapse")


def test_a_fence_by_resource_name_uses_the_token_acquire_lock_kept(web_server, alpha, beta):
    a, b = client_for(web_server.url, alpha), client_for(web_server.url, beta)
    assert a.acquire_lock("plan", "alpha", ttl_seconds=30)
    a.write("plan/body", 1, fence="plan")
    token = a.fencing_token("plan")
    a.release_lock("plan", "alpha")
    with pytest.raises(StaleFence):
        a.write("plan/body", 2, fence="plan")  # no longer held by this client
    assert b.acquire_lock("plan", "beta")
    with pytest.raises(StaleFence):
        a.write("plan/body", 3, fence=("plan", token))  # the server refuses the old token
    assert a.read("plan/body")["value"] == 1
