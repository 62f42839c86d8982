"""Past one machine: two web nodes and two relays on one Postgres and a real Redis Cluster.

Agents write through both nodes (as behind a load balancer), a console watches on each, a
consumer group is read through both; then the active relay is SIGKILLed. Nothing is lost,
nothing is published twice (the stream, the group's deliveries), the standby takes over within
TAKEOVER_SECONDS, and both consoles keep updating.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
from websockets.sync.client import connect

from tests.faults import checks
from tests.faults.cluster import Cluster, wait_for
from tests.faults.load import Load
from tests.faults.test_agent_faults import console
from tests.faults.test_relay_kill import TAKEOVER_SECONDS, active_since

CURSOR = re.compile(r'id="live-cursor" data-event-id="(\d+)"')


@dataclass
class Console:
    """A timeline page open on one web node: the cursor of each message and when it came."""

    node: Cluster
    ns: str
    cookie: str
    seen: list[tuple[float, int]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, stack: contextlib.ExitStack, after: int) -> Console:
        url = f"ws{self.node.url[4:]}/ws/ns/{self.ns}/?page=timeline"
        headers = {"Cookie": self.cookie, "Origin": self.node.url}
        self.socket = stack.enter_context(connect(url, additional_headers=headers))
        self.socket.send(f'{{"after": {after}}}')
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        while not self.stopping.is_set():
            try:
                text = self.socket.recv(timeout=0.5)
            except TimeoutError:
                continue
            for cursor in CURSOR.findall(text):
                self.seen.append((time.time(), int(cursor)))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)

    @property
    def cursor(self) -> int:
        return self.seen[-1][1] if self.seen else 0


class GroupReader:
    """One consumer of group `audit`, reading through each node in turn and acking what it got."""

    def __init__(self, nodes: list[Cluster], token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        self.apis = [httpx.Client(base_url=f"{n.url}/api/v1", headers=headers, timeout=20) for n in nodes]
        self.delivered: list[int] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read_once(self, api: httpx.Client) -> int:
        body = {"consumer": "auditor", "count": 50, "block_ms": 0, "start": "earliest"}
        resp = api.post("/events/groups/audit/read", json=body)
        assert resp.status_code == 200, resp.text
        ids = [event["id"] for event in resp.json()["items"]]
        if ids:
            assert api.post("/events/groups/audit/ack", json={"ids": ids}).status_code == 200
        self.delivered += ids
        return len(ids)

    def _run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            self.read_once(self.apis[n % 2])
            time.sleep(0.05)

    def drain(self) -> None:
        while self.read_once(self.apis[0]):
            pass


def test_two_web_nodes_and_two_relays_on_a_redis_cluster_lose_nothing_when_the_active_relay_dies(
    cluster, cluster_of_redis, ns
):
    for relay in cluster.relays:
        relay.stop()  # the suite's own relay publishes to its Valkey; these publish to the cluster
    nodes = []
    for name in ("node-a", "node-b"):
        (cluster.root / name).mkdir(exist_ok=True)
        nodes.append(
            Cluster(cluster.root / name, database_url=cluster.database_url, redis_cluster=cluster_of_redis)
        )
    agents = [f"agent-{i:02d}" for i in range(6)]
    tokens = cluster.provision(ns, [*agents, "auditor"], operator="nadia")  # the suite shares one database
    consoles: list[Console] = []
    stack = contextlib.ExitStack()  # the consoles' sockets
    try:
        for node in nodes:
            node.start_web()
        active = nodes[0].start_relay("relay-a", wait_active=True)
        standby = nodes[1].start_relay("relay-b")
        for node in nodes:
            cookies = console(node, "nadia").cookies
            consoles.append(
                Console(node, ns, "; ".join(f"{k}={v}" for k, v in cookies.items())).start(stack, 0)
            )
        loads = [
            Load(nodes[0].url, {a: tokens[a] for a in agents[:3]}).start(),
            Load(nodes[1].url, {a: tokens[a] for a in agents[3:]}).start(),
        ]
        reader = GroupReader(nodes, tokens["auditor"])
        reader.thread.start()
        try:
            wait_for(lambda: all(c.cursor > 0 for c in consoles), timeout=15, message="both consoles live")
            time.sleep(1)
            assert "relay-a active from" in active.output()
            active.kill(signal.SIGKILL)
            killed = time.time()
            wait_for(
                lambda: nodes[1].active_relay() is standby, timeout=TAKEOVER_SECONDS + 5, message="takeover"
            )
            time.sleep(2)
        finally:
            for load in loads:
                load.stop()
            reader.stopping.set()
            reader.thread.join(30)

        takeover = active_since(standby) - killed
        calls = [call for load in loads for call in load.calls]
        print(f"standby active {takeover:.2f}s after the kill; {len(calls)} calls through two nodes")
        assert takeover < TAKEOVER_SECONDS
        assert [str(c) for load in loads for c in load.calls if c.failed] == []

        # Nothing lost, nothing twice: the stream holds the log, each position once. (The
        # sweeper may still append: agents of the load go stale.)
        checks.wait_for_relay(nodes[1], ns)
        logged = checks.event_ids(nodes[1], ns)
        wait_for(lambda: checks.stream_ids(nodes[1], ns)[: len(logged)] == logged, message="the stream")
        # The group delivered each event once (acked as read), across the takeover.
        reader.drain()
        assert len(reader.delivered) == len(set(reader.delivered))
        assert max(reader.delivered) >= logged[-1]
        assert sorted(reader.delivered) == [
            p for p in checks.event_ids(nodes[1], ns) if p <= max(reader.delivered)
        ]
        # Both consoles heard the standby, in order, up to the log's head.
        wait_for(
            lambda: all(c.cursor >= logged[-1] for c in consoles), timeout=15, message="consoles at the head"
        )
        for c in consoles:
            assert any(at > killed + takeover for at, _ in c.seen), (
                f"{c.node.url} heard nothing after the takeover"
            )
            cursors = [cursor for _, cursor in c.seen]
            assert cursors == sorted(cursors)  # in order, never back
    finally:
        for c in consoles:
            c.stop()
        stack.close()
        for node in nodes:
            node.stop_app()
