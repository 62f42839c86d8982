"""Postgres down: calls fail fast (503 with Retry-After within a second), health names the
store, the console shows a banner, and everything comes back by itself (memory_admin/outage.py).

Measured here, printed with the test's output: time to 503 (from invoke to answer, every call
made while Postgres was down) and time to recover (from Postgres answering again to the last
area of the API answering 2xx again)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.load import AREAS, Load

AGENTS = 16
DOWN_FOR = 4.0


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_with_postgres_down_calls_answer_503_within_a_second_and_recover_by_themselves(cluster, ns):
    tokens = cluster.provision(ns, [f"agent-{i:02d}" for i in range(AGENTS)])
    load = Load(cluster.url, tokens).start()
    try:
        time.sleep(2)
        down = load.history.note("postgres crashed")
        cluster.crash_postgres()
        time.sleep(1)
        health = httpx.get(f"{cluster.url}/api/v1/health", timeout=5)
        time.sleep(DOWN_FOR - 1)
        cluster.start_postgres()
        back = load.history.note("postgres started again")
        time.sleep(6)
    finally:
        load.stop()

    assert health.status_code == 503 and health.headers["Retry-After"]
    assert health.json() | {"redis": "ok"} == {"status": "unavailable", "postgres": "down", "redis": "ok"}

    during = [c for c in load.between(down, back)]
    assert [str(c) for c in during if c.failed and (c.status != 503 or not c.retry_after)] == []
    to_503 = [c.ret - c.invoke for c in during if c.status == 503]
    assert len(to_503) > 100, "the outage was not seen"
    first_ok = {}
    for call in sorted(load.calls, key=lambda c: c.ret):
        if call.invoke >= back and call.status is not None and call.status < 300:
            first_ok.setdefault(call.area, call.ret)
    assert set(first_ok) == AREAS
    to_recover = max(first_ok.values()) - back
    print(
        f"time to 503: p50 {sorted(to_503)[len(to_503) // 2]:.3f}s p99 {p99(to_503):.3f}s "
        f"max {max(to_503):.3f}s over {len(to_503)} calls; time to recover {to_recover:.2f}s"
    )
    assert p99(to_503) < 1.0
    assert to_recover < 5.0
    assert load.areas_ok_after(back + 5) == AREAS


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists() and os.environ.get("CI") != "true", reason="no Chromium")
def test_an_open_console_shows_which_store_is_down_and_clears_when_it_is_back(cluster, ns):
    from playwright.sync_api import expect, sync_playwright

    operator = f"op-{ns}"[:30]
    cluster.provision(ns, ["agent-00"], operator=operator)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            page = browser.new_context(base_url=cluster.url).new_page()
            page.goto(f"/ns/{ns}/agents/")
            page.fill("#id_username", operator)
            page.fill("#id_password", "correct horse battery staple")
            page.click("button[type=submit]")
            page.wait_for_url(f"**/ns/{ns}/agents/")
            banner = page.locator("#outage .outage")
            expect(banner).to_have_count(0)

            cluster.crash_postgres()
            expect(banner).to_contain_text("Postgres is unreachable", timeout=10_000)
            page.evaluate("window.__sameDocument = true")  # the banner came without a reload
            cluster.start_postgres()
            expect(banner).to_have_count(0, timeout=30_000)
            assert page.evaluate("window.__sameDocument") is True
        finally:
            browser.close()
