"""The sync client is generated from the async one (client/generate_sync.py), so what they share
cannot drift: shown here for both against a real server, the offline log's replay under its lock
(concurrent flushers send each entry once) and connect()."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from memory_admin_client import AsyncMemoryClient, MemoryClient

from memory_admin.models import Fact
from memory_admin.services.tokens import issue_token
from tests.client_support import FAST, FaultProxy
from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BACKLOG = 60


def test_the_sync_client_is_what_the_async_one_generates():
    check = [sys.executable, "client/generate_sync.py", "--check"]
    result = subprocess.run(check, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def offline_log_with_backlog(tmp_path: Path, token: str) -> Path:
    """An offline log holding BACKLOG facts, written while no server answered."""
    wal = tmp_path / "agent.wal"
    away = MemoryClient(
        f"http://127.0.0.1:{free_port()}", token, wal_path=wal, flush_interval=None, backoff=FAST
    )
    for i in range(BACKLOG):
        assert away.store_fact(None, f"fact {i}", "replayed") is None
    away.close()
    return wal


def assert_each_entry_sent_once(proxy: FaultProxy) -> None:
    sent = [key for key in proxy.keys if key is not None]  # replays carry their Idempotency-Key
    assert len(sent) == BACKLOG, f"{len(sent) - len(set(sent))} entries sent more than once"
    facts = Fact.objects.filter(category="replayed").order_by("id")
    assert [f.fact for f in facts] == [f"fact {i}" for i in range(BACKLOG)]


def test_sync_flushers_racing_over_the_offline_log_send_each_entry_once(web_server, tmp_path, alpha):
    token = issue_token(agent=alpha)[1]
    wal = offline_log_with_backlog(tmp_path, token)
    proxy = FaultProxy(web_server.url)
    client = MemoryClient(proxy.url, token, wal_path=wal, flush_interval=0.01, backoff=FAST)
    start = threading.Barrier(4)

    def flush() -> None:
        start.wait()
        client.flush()

    def read() -> None:  # a call made while entries wait sends them first (read your own writes)
        start.wait()
        client.list_agents()

    try:
        threads = [threading.Thread(target=work) for work in (flush, flush, read, read)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        wait_for(lambda: not client.pending(), timeout=30, message="the offline log to drain")
    finally:
        client.close()
        proxy.close()
    assert_each_entry_sent_once(proxy)


def test_async_flushers_racing_over_the_offline_log_send_each_entry_once(web_server, tmp_path, alpha):
    token = issue_token(agent=alpha)[1]
    wal = offline_log_with_backlog(tmp_path, token)
    proxy = FaultProxy(web_server.url)

    async def run() -> None:
        async with AsyncMemoryClient(
            proxy.url, token, wal_path=wal, flush_interval=0.01, backoff=FAST
        ) as client:
            await asyncio.gather(client.flush(), client.flush(), client.list_agents(), client.list_agents())
            assert not client.pending()

    try:
        asyncio.run(run())
    finally:
        proxy.close()
    assert_each_entry_sent_once(proxy)


def test_connect_names_the_agent_and_replays_what_an_earlier_run_left(web_server, tmp_path, alpha):
    token = issue_token(agent=alpha)[1]
    wal = offline_log_with_backlog(tmp_path, token)
    with MemoryClient(web_server.url, token, wal_path=wal, flush_interval=None, backoff=FAST) as client:
        assert client.connect() is client
        assert client.agent_id == "alpha" and not client.pending()
    assert Fact.objects.filter(category="replayed").count() == BACKLOG

    async def run() -> None:
        async with AsyncMemoryClient(web_server.url, token, flush_interval=None, backoff=FAST) as client:
            assert await client.connect() is client
            assert client.agent_id == "alpha"

    asyncio.run(run())
