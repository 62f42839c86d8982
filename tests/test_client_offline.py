"""The offline log and the event stream across a server that stops and starts again
(a web process of the test's own, restarted on the same port)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from memory_admin_client import AgentEvent, MemoryClient, Unavailable

from memory_admin.models import Event, Fact
from memory_admin.services.events import head, publish_event, sequence
from memory_admin.services.tokens import issue_token
from tests.client_support import FAST, client_for, run_agent
from tests.conftest import actor, gauge, start_web, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class Server:
    """A web process of this module's own, stopped and started again on the same port."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.live = start_web(tmp)
        self.url = self.live.url
        self.port = int(self.url.rsplit(":", 1)[1])
        self.running = True

    def stop(self) -> None:
        self.live.process.stop()
        self.running = False

    def start(self) -> None:
        if not self.running:
            self.live = start_web(self.tmp, port=self.port)
            self.running = True


@pytest.fixture(scope="module")
def own_server(django_db_setup, tmp_path_factory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("own-web"))
    yield server
    server.stop()


@pytest.fixture
def server(own_server) -> Server:
    own_server.start()  # running at the start of every test, whatever the last one left
    return own_server


def assert_exactly_n_of_each_in_order(n: int, after: int = 0) -> None:
    """n facts and n events, none twice, in the order they were made: fact, event, fact, ..."""
    facts = Fact.objects.filter(category="offline").order_by("id")
    assert [f.fact for f in facts] == [f"fact {i}" for i in range(n)]
    events = Event.objects.filter(type="offline_event").order_by("seq")
    assert [e.payload["i"] for e in events] == list(range(n))
    sequence()  # give positions to what no reader or relay has yet
    kinds = Event.objects.filter(position__gt=after, type__in=["fact.stored", "offline_event"])
    kinds = kinds.order_by("position")
    assert list(kinds.values_list("type", flat=True)) == ["fact.stored", "offline_event"] * n


def test_calls_made_while_the_server_is_away_are_replayed_in_order_when_it_is_back(server, tmp_path, alpha):
    client = MemoryClient(
        server.url,
        issue_token(agent=alpha)[1],
        wal_path=tmp_path / "alpha.wal",
        flush_interval=0.2,
        backoff=FAST,
    )
    try:
        assert client.store_fact("alpha", "before", "online") is not None
        start = head(alpha.ns)
        server.stop()
        for i in range(20):  # the agent-process test below makes the 100 of each
            assert client.store_fact("alpha", f"fact {i}", "offline") is None
            assert client.publish(AgentEvent("offline_event", "alpha", {"i": i})) is None
        assert client.set_agent_status("alpha", "working offline") is None
        assert client.store_fact("alpha", "x", "") is None  # bad input: refused when replayed, set aside
        pending = client.pending()
        assert len(pending) == 42
        assert [p["kind"] for p in pending[:3]] == ["fact", "event", "fact"]
        assert pending[0]["body"] == {"fact": "fact 0", "category": "offline", "metadata": {}}
        assert len({p["idempotency_key"] for p in pending}) == 42

        with pytest.raises(Unavailable, match="never queued"):
            client.write("draft", {"v": 1}, expected_version=0)
        with pytest.raises(Unavailable):
            client.lock("report").acquire()
        assert len(client.pending()) == 42

        server.start()
        wait_for(lambda: not client.pending(), timeout=30, message="the offline log to drain")
        assert_exactly_n_of_each_in_order(20, after=start)
        assert client.get_agent_status("alpha")["status"] == "working offline"
        [refused] = client.failed()
        assert refused["body"]["category"] == "" and refused["error"].startswith("validation_error")
    finally:
        client.close()


def test_an_agent_killed_mid_replay_loses_nothing_and_duplicates_nothing(server, tmp_path, alpha):
    url, token, wal = server.url, issue_token(agent=alpha)[1], tmp_path / "research.wal"
    server.stop()
    out = run_agent(url, token, wal, "enqueue", "alpha").communicate(timeout=60)[0]
    assert "pending 200" in out, out

    server.start()
    agent = run_agent(url, token, wal, "replay", "alpha")
    wait_for(lambda: Fact.objects.filter(category="offline").count() >= 10, timeout=30, interval=0.005)
    agent.kill()
    agent.wait()
    assert Fact.objects.filter(category="offline").count() < 100, "the kill came after the replay"

    out = run_agent(url, token, wal, "replay", "alpha").communicate(timeout=60)[0]
    assert "left 0" in out, out
    assert_exactly_n_of_each_in_order(100)


def test_a_second_process_cannot_share_an_offline_log(tmp_path, alpha):
    from memory_admin_client import LogInUse

    wal = tmp_path / "shared.wal"
    with MemoryClient("http://127.0.0.1:9", "ma_x", wal_path=wal):
        out = run_agent("http://127.0.0.1:9", "ma_x", wal, "replay", "alpha").communicate(timeout=30)[0]
    assert LogInUse.__name__ in out


def test_subscribe_across_a_server_restart_misses_nothing_and_repeats_nothing(server, alpha):
    publisher = client_for(server.url, alpha)
    start = head(alpha.ns)
    got: list[int] = []

    def listen() -> None:
        with client_for(server.url, alpha) as listener:
            for event in listener.subscribe(after=start, types=["tick"]):
                got.append(event["payload"]["i"])
                if event["payload"]["i"] == 29:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    for i in range(10):
        publisher.publish("tick", {"i": i})
    wait_for(lambda: len(got) >= 10, timeout=20, message="the first ten events")
    server.stop()
    for i in range(10, 20):  # while no web server runs
        publish_event(ns=alpha.ns, type="tick", payload={"i": i}, actor=actor(alpha))
    server.start()
    for i in range(20, 30):
        publisher.publish("tick", {"i": i})
    thread.join(30)
    assert got == list(range(30))


def test_a_stream_from_now_that_drops_before_its_first_event_misses_nothing(server, alpha):
    got: list[int] = []

    def listen() -> None:
        with client_for(server.url, alpha) as listener:
            for event in listener.subscribe(types=["tick"]):  # from now: no cursor given
                got.append(event["payload"]["i"])
                if event["payload"]["i"] == 9:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    # The stream is open once the server counts it; its opening line (where it starts) is
    # what it sends next, before it reads the log.
    opened = lambda: gauge(server.url, "memory_admin_event_streams_open") >= 1  # noqa: E731
    wait_for(opened, timeout=20, message="the stream")
    server.stop()
    for i in range(5):  # while the stream is down, before it saw any event
        publish_event(ns=alpha.ns, type="tick", payload={"i": i}, actor=actor(alpha))
    server.start()
    publisher = client_for(server.url, alpha)
    for i in range(5, 10):
        publisher.publish("tick", {"i": i})
    thread.join(30)
    assert got == list(range(10))
