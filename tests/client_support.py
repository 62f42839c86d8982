"""Helpers for the client tests (no tests here): clients for the standing agents, a fault
injector in front of the real server, and agent processes that run client code only."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
from memory_admin_client import Backoff, Lock, MemoryClient

from memory_admin.models import Agent
from memory_admin.services.tokens import issue_token
from tests.conftest import PATIENCE, ROOT, free_port, wait_for

FAST = Backoff(base=0.05, cap=0.2)  # retries in tests wait milliseconds, not seconds


def lease_over(expires_at: str) -> bool:
    """The lease that ends at `expires_at` (the API's time) has ended on this machine's clock."""
    return datetime.now(UTC) > datetime.fromisoformat(expires_at)


# The TTL of the locks whose renewal the tests wait for. Renewed every third of it, a lock keeps
# two thirds as slack for a renewal's round trip: with 1 s, a renewal slower than 0.7 s on a
# machine other suites load lost the lock, and with 3 s one slower than 2 s did at load 10-20.
LEASE = 6


def outlive_lease(lock: Lock) -> None:
    """Return once the lease `lock` holds now has ended on the clock and the lock was renewed
    since: a wait for the renewal to have mattered, instead of a sleep past the TTL."""
    lease = lock.expires_at

    def renewed() -> bool:
        assert not lock.lost, "the lock was lost instead of renewed"
        return lock.expires_at != lease and lease_over(lease)

    wait_for(renewed, timeout=30, message="a renewal")


async def outlive_lease_async(lock) -> None:
    """outlive_lease for an AsyncLock (its renewals run on this event loop, so the wait yields)."""
    lease = lock.expires_at
    deadline = time.monotonic() + 30 * PATIENCE
    while lock.expires_at == lease or not lease_over(lease):
        assert not lock.lost, "the lock was lost instead of renewed"
        assert time.monotonic() < deadline, "timed out waiting for a renewal"
        await asyncio.sleep(0.05)


def client_for(url: str, agent: Agent, **options) -> MemoryClient:
    options.setdefault("backoff", FAST)
    return MemoryClient(url, issue_token(agent=agent)[1], **options)


class FaultProxy:
    """An HTTP proxy to a real server that can lose answers: `drop` makes the next N requests
    reach the server and have their response thrown away (the connection closes unanswered);
    `busy` answers the next N with `busy_status` (503 or 429) and `retry_after` seconds as
    Retry-After (a fraction, which the client takes, so its retries wait milliseconds), without
    forwarding. `seen` counts the requests that arrived, by method and path."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.drop = 0
        self.busy = 0
        self.busy_status = 503
        self.retry_after = "0.2"
        self.seen: Counter[str] = Counter()
        self.keys: list[str | None] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.seen[f"{self.command} {self.path.split('?')[0]}"] += 1
                    proxy.keys.append(self.headers.get("Idempotency-Key"))
                    busy = proxy.busy > 0
                    proxy.busy -= busy
                    drop = not busy and proxy.drop > 0
                    proxy.drop -= drop
                if busy:
                    code = {503: "unavailable", 429: "rate_limited"}[proxy.busy_status]
                    payload = json.dumps({"error": {"code": code, "message": "busy"}}).encode()
                    self.send_response(proxy.busy_status)
                    self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                answer = httpx.request(self.command, proxy.target + self.path, headers=headers, content=body)
                if drop:  # the server did the work; its answer is lost on the way back
                    self.close_connection = True
                    return
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


AGENT_SCRIPT = r"""
import sys, time
sys.modules["django"] = None  # an agent process has the client and httpx, never Django
from memory_admin_client import AgentEvent, Backoff, MemoryClient

url, token, wal, mode, name = sys.argv[1:6]
client = MemoryClient(url, token, wal_path=wal, flush_interval=None, backoff=Backoff(0.05, 0.2))
if mode == "enqueue":
    for i in range(100):
        assert client.store_fact(name, f"fact {i}", "offline") is None
        assert client.publish(AgentEvent("offline_event", name, {"i": i})) is None
    print("pending", len(client.pending()), flush=True)
elif mode == "replay":
    print("replaying", len(client.pending()), flush=True)
    print("sent", client.flush(), flush=True)
print("left", len(client.pending()), flush=True)
client.close()
"""


def run_agent(url: str, token: str, wal: Path, mode: str, name: str, **popen) -> subprocess.Popen:
    """An agent process running client code only (Django cannot be imported in it)."""
    return subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, url, token, str(wal), mode, name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
