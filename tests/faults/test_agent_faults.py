"""Agents that die or stall: a SIGKILLed holder's locks and status lapse by themselves; a
holder paused past its lease (the Kleppmann case) cannot overwrite the next holder's write."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime

import httpx

from tests.faults import agent as child
from tests.faults.cluster import ROOT, wait_for

PASSWORD = "correct horse battery staple"


def spawn(cluster, token: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.agent", cluster.url, token, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def line_of(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line.startswith("{"), line + proc.stdout.read() if proc.poll() is not None else line
    return json.loads(line)


def api(cluster, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{cluster.url}/api/v1", headers={"Authorization": f"Bearer {token}"})


def console(cluster, username: str) -> httpx.Client:
    """A logged-in console session, as a browser gets one: the login form with its CSRF token."""
    browser = httpx.Client(base_url=cluster.url, follow_redirects=True)
    page = browser.get("/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    done = browser.post(
        "/login/", data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": csrf}
    )
    assert done.status_code == 200 and "log out" in done.text
    return browser


def events_of(watcher: httpx.Client, type: str) -> list[dict]:
    return watcher.get("/events", params={"type": type, "limit": 500}).json()["items"]


def test_a_killed_agents_locks_expire_at_their_ttl_and_it_turns_stale_and_the_events_and_console_say_so(
    cluster, ns
):
    tokens = cluster.provision(ns, ["doomed", "watcher"], operator="olga")
    watcher = api(cluster, tokens["watcher"])
    proc = spawn(cluster, tokens["doomed"], "hold", "printer", "scanner")
    try:
        held = line_of(proc)
        acquired = time.monotonic()
    finally:
        proc.kill()
        proc.wait()
    page = console(cluster, "olga")
    assert "printer" in page.get(f"/ns/{ns}/locks/").text

    expiries = {
        name: datetime.fromisoformat(lock["expires_at"]).timestamp() for name, lock in held["locks"].items()
    }
    time.sleep(max(0.0, min(expiries.values()) - 0.5 - time.time()))
    assert [watcher.get(f"/locks/{name}").status_code for name in expiries] == [200, 200], (
        "expired before TTL"
    )
    for name, expires in sorted(expiries.items(), key=lambda item: item[1]):
        wait_for(lambda n=name: watcher.get(f"/locks/{n}").status_code == 404, timeout=3, message=name)
        assert time.time() - expires < 1.0, f"{name} outlived its TTL"
    assert watcher.post("/locks/printer").json()["fencing_token"] > held["locks"]["printer"]["fencing_token"]

    deadline = child.STATUS_TTL + 5
    wait_for(
        lambda: watcher.get("/agents/doomed").json()["state"] == "stale",
        timeout=max(0.1, acquired + deadline - time.monotonic()),
        message="doomed to be stale",
    )
    wait_for(
        lambda: events_of(watcher, "agent.stale"),
        timeout=max(0.1, acquired + deadline - time.monotonic()),
        message="the agent.stale event",
    )
    expired = {e["payload"]["resource"]: e for e in events_of(watcher, "lock.expired")}
    assert set(expired) == {"printer", "scanner"}
    assert {e["payload"]["holder"] for e in expired.values()} == {"doomed"}
    assert [e["agent_id"] for e in events_of(watcher, "agent.stale")] == ["doomed"]

    agents_page = page.get(f"/ns/{ns}/agents/").text
    row = re.search(r'<tr id="agent-\d+" class="state-(\w+)[^"]*">\s*<td><a[^>]*><b>doomed</b>', agents_page)
    assert row is not None and row.group(1) == "stale", "the console does not show doomed as stale"
    locks_page = page.get(f"/ns/{ns}/locks/").text
    assert "<code>scanner</code>" not in locks_page


def test_a_paused_holders_write_with_its_old_token_is_refused_after_another_took_the_lock(cluster, ns):
    tokens = cluster.provision(ns, ["slow", "fast"])
    fast = api(cluster, tokens["fast"])
    proc = spawn(cluster, tokens["slow"], "fenced-write", "report", "report.md")
    try:
        old = line_of(proc)["fencing_token"]
        proc.send_signal(signal.SIGSTOP)  # mid-work, holding the lock
        time.sleep(child.FENCED_TTL + 0.5)

        taken = fast.post("/locks/report", json={"ttl_seconds": 10, "wait_seconds": 5})
        assert taken.status_code == 200
        new = taken.json()["fencing_token"]
        assert new > old
        fence = {"lock": "report", "token": new}
        assert (
            fast.put("/records/report.md", json={"value": {"by": "fast"}, "fence": fence}).status_code == 201
        )

        proc.send_signal(signal.SIGCONT)
        answer = line_of(proc)
        proc.wait(10)
    finally:
        proc.kill()
        proc.wait()

    assert answer["status"] == 409
    assert answer["body"]["error"]["code"] == "stale_fencing_token"
    record = fast.get("/records/report.md").json()
    assert (record["value"], record["version"], record["updated_by"]) == ({"by": "fast"}, 1, "fast")
    assert [v["value"] for v in fast.get("/records/report.md/versions").json()["items"]] == [{"by": "fast"}]
