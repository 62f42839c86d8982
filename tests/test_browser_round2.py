"""The console's second round in a real Chromium against the web server, the relay, Postgres
and Redis: an operator clears what a killed agent left behind, and parks and replays an event
of a consumer group."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin.models import Agent, Event, LockFence
from tests.browser_support import expect, live, shoot, still_same_document
from tests.conftest import ROOT, clear_of_a_minute_boundary, server_env, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

AGENT = textwrap.dedent(
    """
    import signal, sys, httpx
    url, token = sys.argv[1], sys.argv[2]
    api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": "Bearer " + token})
    api.put("/status", json={"status": "crunching", "ttl_seconds": 30}).raise_for_status()
    for resource in ("report-draft", "dataset"):
        api.post("/locks/" + resource, json={"ttl_seconds": 600}).raise_for_status()
    got = []
    while not got:
        read = api.post("/events/groups/workers/read", json={"consumer": "worker-1", "count": 10})
        got = [e for e in read.json()["items"] if e["type"] == "job"]
        others = [e["id"] for e in read.json()["items"] if e["type"] != "job"]
        api.post("/events/groups/workers/ack", json={"ids": others})
    print("holding", got[0]["id"], flush=True)
    signal.pause()  # holds its locks, status and delivery until it is killed
    """
)


def _client(web_server, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{web_server.url}/api/v1", headers={"Authorization": f"Bearer {token}"})


def _jobs(client: httpx.Client, consumer: str, **options) -> list[int]:
    items = client.post(
        "/events/groups/workers/read", json={"consumer": consumer, "count": 20, **options}
    ).json()["items"]
    others = [e["id"] for e in items if e["type"] != "job"]
    if others:
        client.post("/events/groups/workers/ack", json={"ids": others})
    return [e["id"] for e in items if e["type"] == "job"]


def test_an_operator_releases_what_a_killed_agent_left_and_another_consumer_gets_its_delivery(
    page,  # noqa: F811 - the fixture
    web_server,
    alpha,
    beta,
    make_token,
    tmp_path,
):
    other = _client(web_server, make_token(beta))
    assert _jobs(other, "worker-2") == []  # the group starts here
    job = other.post("/events", json={"type": "job", "payload": {"n": 1}}).json()["id"]
    log = tmp_path / "agent.log"
    with open(log, "w") as out:
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT, web_server.url, make_token(alpha)], env=server_env(), stdout=out
        )
    try:
        wait_for(lambda: "holding" in log.read_text(), timeout=30, message="the agent to take its work")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    assert f"holding {job}" in log.read_text()
    tokens = dict(LockFence.objects.filter(holder="alpha").values_list("resource", "token"))

    live(page, "/ns/team/")
    # Its heartbeat lapses (the clock moved, not waited out): the relay's sweep marks it stale.
    r.client().delete(r.status_key("team", "alpha"))
    r.client().zadd(r.heartbeats_index("team"), {"alpha": 1})
    Agent.objects.filter(name="alpha").update(expires=now() - timedelta(seconds=1))
    panel = page.locator("#stale-leftovers")
    expect(panel).to_contain_text("alpha")
    expect(panel).to_contain_text("2 locks · 1 unacked delivery")
    shoot(page, "overview-leftovers")

    panel.get_by_role("link", name="alpha").click()
    page.wait_for_url("**/ns/team/leftovers/alpha")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    locks = page.locator("#cascade-locks")
    for resource, token in tokens.items():
        expect(locks).to_contain_text(resource)
        expect(locks).to_contain_text(str(token))
    expect(page.locator("#cascade-deliveries")).to_contain_text(f"#{job}")
    expect(page.locator("#cascade-status .pill")).to_have_text("stale")
    shoot(page, "leftovers")

    page.fill("input[name=reason]", "alpha was killed mid-report")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#release-all")
    expect(page.locator("#release-notes")).to_contain_text("1 unacknowledged delivery handed back")
    expect(locks).to_contain_text("None.")
    expect(page.locator("#cascade-deliveries")).to_contain_text("None.")
    expect(page.locator("#nothing-left")).to_be_visible()
    expect(page.locator("#cascade-events")).to_contain_text("agent.released")
    assert not LockFence.objects.filter(holder="alpha", held=True).exists()
    # The other consumer's next read takes the delivery over, without waiting out reclaim_after_ms.
    assert _jobs(other, "worker-2", reclaim_after_ms=86_400_000) == [job]

    page.goto("/ns/team/agents/alpha")
    expect(page.locator("#leftovers-link")).to_have_attribute("href", "/ns/team/leftovers/alpha")


def _age(group: str, ms: int) -> None:
    """Move the clock for a group's deliveries: each looks `ms` old."""
    client, key = r.client(), r.stream_key("team")
    for p in client.xpending_range(key, group, min="-", max="+", count=100):
        client.xclaim(key, group, p["consumer"], 0, [p["message_id"]], idle=ms, justid=True)


def test_an_event_failed_twice_is_parked_live_and_the_operator_replays_it(
    page,  # noqa: F811 - the fixture
    web_server,
    alpha,
    make_token,
):
    worker = _client(web_server, make_token(alpha))
    configured = worker.put("/events/groups/workers", json={"max_deliveries": 2})
    assert configured.status_code == 200, configured.text
    job = worker.post("/events", json={"type": "job", "payload": {"n": 7}}).json()["id"]
    wait_for(lambda: _jobs(worker, "c1") == [job], message="the first delivery")  # never acked
    live(page, "/ns/team/groups/")
    card = page.locator(".group-card", has_text="workers")
    expect(card).to_contain_text("Parks an event after 2 failed deliveries")
    pending = card.locator(".group-deliveries tr", has_text=f"#{job}")
    expect(pending).to_contain_text("1×")
    pending.locator("summary").click()
    expect(pending.locator("pre")).to_contain_text('"n": 7')
    _age("workers", 120_000)
    assert _jobs(worker, "c2") == [job]  # the second delivery, never acked either
    _age("workers", 120_000)
    assert _jobs(worker, "c3") == []  # parked instead of a third
    parked = card.locator(".parked", has_text=f"#{job}")
    expect(parked).to_contain_text("2 deliveries")  # pushed live by group.parked
    expect(card.locator(".group-parked")).to_have_text("1")
    parked.locator("summary").click()
    expect(parked.locator("pre")).to_contain_text('"n": 7')
    shoot(page, "groups")

    parked.get_by_role("button", name="Replay").click()
    expect(page.locator("#release-notes")).to_contain_text(f"Event #{job} replayed to workers")
    expect(card.locator(".parked")).to_have_count(0)
    assert _jobs(worker, "c3") == [job]
    assert worker.post("/events/groups/workers/ack", json={"ids": [job]}).json() == {"acked": 1}
    state = worker.get("/events/groups/workers").json()
    assert state["parked"] == 0 and state["max_deliveries"] == 2


def test_an_operator_restores_an_old_version_and_sees_the_new_version_and_its_event(
    page,  # noqa: F811 - the fixture
    api,  # noqa: F811 - the fixture
):
    for step in (1, 2, 3):
        written = api.put("/records/plan", json={"value": {"step": step, "note": f"draft {step}"}})
        assert written.status_code in (200, 201)
    live(page, "/ns/team/records/plan")
    page.locator("a.view-version[href*='at=1']").click()
    side = page.locator("#then-and-now")
    expect(side.locator("pre.then")).to_contain_text('"step": 1')
    expect(side.locator("pre.now")).to_contain_text('"step": 3')
    expect(side.locator("pre.then .l-del")).to_have_count(2)  # the lines that differ now
    shoot(page, "record-then-and-now")
    page.click("#restore")
    page.wait_for_url("**/ns/team/records/plan")
    expect(page.locator("#messages")).to_contain_text("Restored v1 of plan as version 4")
    expect(page.locator("#record-value .version")).to_have_text("v4")
    expect(page.locator("#record-value pre")).to_contain_text('"step": 1')

    live(page, "/ns/team/timeline/")
    expect(page.locator("#event-rows li").first).to_contain_text("record.written")
    expect(page.locator("#event-rows li").first).to_contain_text("operator:otto")

    # The record moved after the page opened: the restore is refused and kept as a conflict.
    page.goto("/ns/team/records/plan?at=2")
    api.put("/records/plan", json={"value": {"step": 5}})
    page.click("#restore")
    page.wait_for_url("**/ns/team/conflicts/*/")
    expect(page.locator("#messages")).to_contain_text("Restore refused")


def test_the_timeline_picker_opens_the_namespace_as_it_was_at_an_event(
    page,  # noqa: F811 - the fixture
    api,  # noqa: F811 - the fixture
):
    api.put("/records/plan", json={"value": {"step": 1}})
    held = api.post("/locks/report-draft", json={"ttl_seconds": 60}).json()
    api.put("/status", json={"status": "drafting", "ttl_seconds": 60})
    then = api.get("/events?after=0&limit=100").json()["items"][-1]["id"]
    api.put("/records/plan", json={"value": {"step": 2}})
    api.delete("/locks/report-draft", params={"fencing_token": held["fencing_token"]})
    api.put("/status", json={"status": "reviewing", "ttl_seconds": 60})
    live(page, "/ns/team/timeline/")
    page.fill("#asof-number", str(then))
    expect(page.locator("input[name=event]")).to_have_value(str(then))  # the slider follows the box
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(f"**/ns/team/as-of/?event={then}*")
    expect(page.locator("h1")).to_contain_text(f"as of event #{then}")
    expect(page.locator("#asof-records")).to_contain_text("v1")
    expect(page.locator("#asof-records")).to_contain_text('"step": 1')
    expect(page.locator("#asof-agents")).to_contain_text("drafting")
    expect(page.locator("#asof-locks")).to_contain_text(f"report-draft alpha · token {held['fencing_token']}")
    shoot(page, "as-of")


def test_slash_focuses_the_search_box_and_a_saved_timeline_filter_is_a_link(
    page,  # noqa: F811 - the fixture
    api,  # noqa: F811 - the fixture
):
    api.post("/facts", json={"fact": "Latency doubled after the upgrade", "category": "ops"})
    live(page, "/ns/team/timeline/?type=fact.stored")
    page.keyboard.press("/")
    expect(page.locator("#search-box")).to_be_focused()
    page.keyboard.type("latency")
    page.keyboard.press("Enter")
    page.wait_for_url("**/ns/team/search/?q=latency")
    expect(page.locator("#found-facts")).to_contain_text("Latency doubled after the upgrade")
    shoot(page, "search")

    live(page, "/ns/team/timeline/?type=fact.stored")
    page.fill("[data-save-filter] input[name=name]", "new facts")
    page.click("[data-save-filter] button")
    saved = page.locator("#saved-filters a", has_text="new facts")
    expect(saved).to_have_attribute("href", "/ns/team/timeline/?type=fact.stored")
    page.goto("/ns/team/timeline/")
    page.locator("#saved-filters a", has_text="new facts").click()
    page.wait_for_url("**/ns/team/timeline/?type=fact.stored")
    expect(page.locator("select[name=type]")).to_have_value("fact.stored")


def test_the_overview_charts_move_as_agents_work(
    page,  # noqa: F811 - the fixture
    api,  # noqa: F811 - the fixture
):
    clear_of_a_minute_boundary(25)  # the five writes are counted in this minute's bucket
    live(page, "/ns/team/")
    events = page.locator("#chart-events .last")
    before = int(events.inner_text().replace("—", "0"))
    for n in range(5):
        api.put("/records/plan", json={"value": {"n": n}})
    # Pushed with the events, no reload.
    wait_for(lambda: int(events.inner_text().replace("—", "0")) >= before + 5, message="the chart to move")
    expect(page.locator("#chart-writes .last[data-series=writes]")).to_have_text("5")
    assert page.locator("#chart-events polyline").get_attribute("points")
    shoot(page, "overview-charts")


def test_a_lock_wait_shows_on_the_overview_beside_the_acquisition_it_ended_in(
    page,  # noqa: F811 - the fixture
    api,  # noqa: F811 - the fixture
    web_server,
    beta,
    make_token,
):
    live(page, "/ns/team/")
    waits = page.locator("#chart-locks .last[data-series=waits]")
    expect(waits).to_have_text("0")
    held = api.post("/locks/report-draft", json={"ttl_seconds": 60}).json()
    with ThreadPoolExecutor(1) as pool, _client(web_server, make_token(beta)) as other:
        waiting = pool.submit(other.post, "/locks/report-draft", json={"wait_seconds": 10})
        wait_for(lambda: r.client().zcard(r.lock_queue("team", "report-draft")), message="beta to queue")
        api.delete("/locks/report-draft", params={"fencing_token": held["fencing_token"]})
        assert waiting.result().status_code == 200
    # beta's acquire is an event: its push redraws the charts, the wait with them (its peak: a
    # minute may end between the wait and the look).
    expect(page.locator("#chart-locks .key-waits")).to_contain_text("peak 1")
    expect(page.locator("#chart-locks polyline.line-waits")).to_have_attribute("points", re.compile(r"\d"))
    assert still_same_document(page)


DEMO = ("--seconds", "40", "--copies", "2")
POINTS = "lines => lines.map(line => line.getAttribute('points'))"


def test_the_overview_charts_move_while_the_demo_team_runs(
    page,  # noqa: F811 - the fixture
    web_server,
    tmp_path,
):
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        demo = subprocess.Popen(
            [sys.executable, "manage.py", "demo", *DEMO, "--url", web_server.url],
            cwd=ROOT, env=server_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: Event.objects.filter(ns__name="report-team", type="fact.stored").exists(),
            timeout=30,
            message="the demo team to start",
        )
        live(page, "/ns/report-team/")
        charts = page.locator("#charts")

        def drawn() -> tuple[str, ...]:
            return tuple(charts.locator("polyline").evaluate_all(POINTS))

        def events_now() -> int:
            return int(charts.locator("#chart-events .last").inner_text().replace("—", "0"))

        before, counted = drawn(), events_now()
        # The team works on: its events are pushed and the lines move, without a reload.
        wait_for(
            lambda: drawn() != before and events_now() != counted, timeout=30, message="the charts to move"
        )
        expect(charts.locator("#chart-writes .last[data-series=writes]")).not_to_have_text("—")
        expect(charts.locator("#chart-locks .last[data-series=locks]")).not_to_have_text("—")
        assert still_same_document(page)
        shoot(page, "overview-demo")
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
