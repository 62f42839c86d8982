"""A mixed load of agents for the fault suite, every call logged, records and locks in a History.

Each agent is a thread with its own httpx client and token, looping over what real agents
do: read-modify-write of shared records with `expected_version`, lock / fenced write /
release, status heartbeats, events, facts, paging the log, consumer groups and the agent
list. Every call lands in `Load.calls` (area, times, status, Retry-After, error) so a test
can say which calls failed when; record and lock calls also land in the History.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tests.faults.history import History, Op

RECORD_KEYS = [f"shared-{i}" for i in range(4)]
RESOURCES = [f"res-{i}" for i in range(3)]
LOCK_TTL = 2

# Every area of the API the load calls: after an outage each must answer 2xx again.
AREAS = frozenset({"records", "locks", "status", "events", "facts", "groups", "agents"})
# The areas that need Redis: during a Redis outage these may answer 503, nothing else may.
REDIS_AREAS = frozenset({"locks", "status", "agents", "groups"})


@dataclass
class Call:
    agent: str
    area: str
    method: str
    path: str
    invoke: float
    ret: float
    status: int | None
    retry_after: str | None
    error: str | None
    code: str | None  # the error code of an error answer

    @property
    def failed(self) -> bool:
        """No answer, or a 5xx: what no correct service gives."""
        return self.status is None or self.status >= 500

    def __str__(self) -> str:
        outcome = self.status if self.status is not None else self.error
        where = f"{self.agent} {self.method} {self.path} [{self.area}] at {self.invoke:.3f}"
        return f"{where} -> {outcome} {self.code or ''}"


class Load:
    def __init__(self, url: str, tokens: dict[str, str], history: History | None = None) -> None:
        self.url = url
        self.tokens = tokens
        self.history = history or History()
        self.calls: list[Call] = []
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # --- running ----------------------------------------------------------------------

    def start(self) -> Load:
        for name, token in self.tokens.items():
            thread = threading.Thread(target=self._agent, args=(name, token), name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in self.threads), "a load thread did not stop"

    def run_for(self, seconds: float) -> None:
        self.stopping.clear()
        self.threads = []
        self.start()
        time.sleep(seconds)
        self.stop()

    def _agent(self, name: str, token: str) -> None:
        rng = random.Random(name)
        with httpx.Client(
            base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=20
        ) as client:
            agent = _Agent(self, name, client, rng)
            while not self.stopping.is_set():
                agent.step()
                time.sleep(rng.uniform(0, 0.02))

    # --- what happened ----------------------------------------------------------------

    def log(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def between(self, start: float, end: float) -> list[Call]:
        """Calls invoked in [start, end)."""
        return [call for call in self.calls if start <= call.invoke < end]

    def summary(self, since: float = 0.0) -> str:
        """Numbers for the log: calls, failures, the slowest call, relative times after `since`."""
        failed = [c for c in self.calls if c.failed]
        slowest = max(self.calls, key=lambda c: c.ret - c.invoke)
        span = ""
        if failed:
            first, last = min(c.invoke for c in failed) - since, max(c.ret for c in failed) - since
            span = f", failures from {first:+.2f}s to {last:+.2f}s"
        return (
            f"{len(self.calls)} calls, {len(failed)} failed{span}; "
            f"slowest {slowest.ret - slowest.invoke:.2f}s ({slowest})"
        )

    def areas_ok_after(self, moment: float) -> set[str]:
        """Areas with at least one successful (2xx) call invoked after `moment`."""
        return {c.area for c in self.calls if c.invoke >= moment and c.status is not None and c.status < 300}


class _Agent:
    def __init__(self, load: Load, name: str, client: httpx.Client, rng: random.Random) -> None:
        self.load, self.name, self.client, self.rng = load, name, client, rng
        self.cursor = 0
        self.n = 0

    def step(self) -> None:
        self.n += 1
        choice = self.rng.choices(
            [self.rmw, self.lock, self.heartbeat, self.event, self.fact, self.page, self.group, self.agents],
            weights=[4, 3, 1, 1, 1, 1, 1, 1],
        )[0]
        choice()

    def call(self, area: str, method: str, path: str, body: Any = None, op: Op | None = None):
        invoke = History.clock()
        status = retry_after = error = code = None
        data = None
        try:
            response = self.client.request(method, path, json=body)
            status, retry_after = response.status_code, response.headers.get("Retry-After")
            if response.content and response.headers.get("content-type", "").startswith("application/json"):
                data = response.json()
                if status >= 400 and isinstance(data, dict):
                    code = data.get("error", {}).get("code")
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        ret = History.clock()
        self.load.log(Call(self.name, area, method, path, invoke, ret, status, retry_after, error, code))
        if op is not None:
            op.invoke, op.ret, op.status, op.body, op.error = invoke, ret, status, data, error
            self.load.history.add(op)
        return status, data

    def rmw(self) -> None:
        key = self.rng.choice(RECORD_KEYS)
        read = Op(self.name, "read", key, 0)
        status, body = self.call("records", "GET", f"/records/{key}", op=read)
        if status not in (200, 404):
            return
        expected = body["version"] if status == 200 else 0
        value = {"by": self.name, "n": self.n}
        write = Op(self.name, "write", key, 0, request={"expected_version": expected, "value": value})
        body = {"value": value, "expected_version": expected}
        self.call("records", "PUT", f"/records/{key}", body, op=write)

    def lock(self) -> None:
        resource = self.rng.choice(RESOURCES)
        request = {"ttl_seconds": LOCK_TTL, "wait_seconds": 0.2}
        acquire = Op(self.name, "acquire", resource, 0, request=request)
        status, body = self.call("locks", "POST", f"/locks/{resource}", request, op=acquire)
        if status != 200:
            return
        token = body["fencing_token"]
        key = f"fenced-{resource}"
        value = {"by": self.name, "token": token}
        write = Op(self.name, "write", key, 0, request={"value": value, "fence": token})
        fence = {"lock": resource, "token": token}
        self.call("records", "PUT", f"/records/{key}", {"value": value, "fence": fence}, op=write)
        release = Op(self.name, "release", resource, 0, request={"fencing_token": token})
        self.call("locks", "DELETE", f"/locks/{resource}?fencing_token={token}", op=release)

    def heartbeat(self) -> None:
        status = self.rng.choice(["thinking", "writing", "idle"])
        self.call("status", "PUT", "/status", {"status": status, "ttl_seconds": 30})

    def event(self) -> None:
        body = {"type": "load.tick", "payload": {"by": self.name, "n": self.n}}
        self.call("events", "POST", "/events", body)

    def fact(self) -> None:
        self.call("facts", "POST", "/facts", {"fact": f"{self.name} saw {self.n}", "category": "load"})

    def page(self) -> None:
        status, body = self.call("events", "GET", f"/events?after={self.cursor}&limit=100")
        if status == 200 and body["items"]:
            self.cursor = body["items"][-1]["id"]

    def group(self) -> None:
        read = {"consumer": self.name, "count": 10, "block_ms": 0, "start": "earliest"}
        status, body = self.call("groups", "POST", "/events/groups/workers/read", read)
        if status == 200 and body["items"]:
            ids = [event["id"] for event in body["items"]]
            self.call("groups", "POST", "/events/groups/workers/ack", {"ids": ids})

    def agents(self) -> None:
        self.call("agents", "GET", "/agents")
