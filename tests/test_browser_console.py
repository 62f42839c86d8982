"""The console in a real Chromium against the web process, the relay, Postgres and Redis: agents
act through the JSON API while an operator watches and steps in (fixtures: tests/browser_support.py)."""

from __future__ import annotations

import re

import httpx
import pytest

from memory_admin.models import Conflict, Fact, Record
from tests.browser_support import expect, live, shoot, still_same_document

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_an_operator_logs_in_and_sees_a_status_change_without_reloading(context, operator_user, api, beta):
    operator_user.set_password("console-pass-1")
    operator_user.save()
    page = context.new_page()
    page.goto("/ns/team/agents/")
    page.wait_for_url("**/login/?next=/ns/team/agents/")
    shoot(page, "login")
    page.fill("#id_username", "otto")
    page.fill("#id_password", "console-pass-1")
    page.click("button[type=submit]")
    page.wait_for_url("**/ns/team/agents/")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.evaluate("window.__sameDocument = true")
    row = page.locator("#agent-rows tr", has_text="alpha")
    expect(row.locator(".pill")).to_have_text("never seen")
    assert (
        api.put("/status", json={"status": "drafting", "detail": "section 2", "ttl_seconds": 60}).status_code
        == 200
    )
    expect(row).to_contain_text("drafting")
    expect(row.locator(".pill")).to_have_text("live")
    expect(row.locator(".countdown")).to_have_text(re.compile(r"^\d+s$"))  # counting down in the browser
    assert still_same_document(page)
    shoot(page, "agents")
    page.goto("/ns/team/agents/alpha")
    shoot(page, "agent")
    live(page, "/ns/team/")
    expect(page.locator("#counts")).to_contain_text("agents live")
    shoot(page, "overview")


def test_a_fact_stored_through_the_api_appears_at_the_top_of_the_facts_page(page, api):
    api.post("/facts", json={"fact": "first finding", "category": "notes"})
    live(page, "/ns/team/facts/")
    response = api.post("/facts", json={"fact": "Agents share memory through facts", "category": "notes"})
    assert response.status_code == 201
    first = page.locator("#fact-rows tr").first
    expect(first).to_contain_text("Agents share memory through facts")
    expect(page.locator("#fact-rows tr")).to_have_count(2)
    assert still_same_document(page)
    shoot(page, "facts")
    page.goto(f"/ns/team/facts/{Fact.objects.get(fact__startswith='Agents').pk}/")
    shoot(page, "fact")

    live(page, "/ns/team/timeline/")
    page.click("#pause")
    expect(page.locator("#live")).to_have_attribute("data-state", "paused")
    count = page.locator("#event-rows li").count()
    api.post("/facts", json={"fact": "arrives while paused", "category": "notes"})
    expect(page.locator("#paused-note")).to_contain_text("1 update waiting")
    assert page.locator("#event-rows li").count() == count
    page.click("#pause")  # resume: the page asks for what it missed
    expect(page.locator("#event-rows li")).to_have_count(count + 1)
    expect(page.locator("#event-rows li").first).to_contain_text("fact.stored")
    assert still_same_document(page)
    shoot(page, "timeline")


def test_force_release_removes_the_lock_and_fences_out_the_old_holder(page, api):
    live(page, "/ns/team/locks/")
    taken = api.post("/locks/report-draft", json={"ttl_seconds": 120}).json()
    row = page.locator("#lock-rows tr", has_text="report-draft")
    expect(row).to_contain_text(str(taken["fencing_token"]))  # pushed live
    shoot(page, "locks")
    row.locator("summary").click()
    row.locator("input[name=reason]").fill("alpha hung mid-write")
    dialogs: list[str] = []

    def confirm(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", confirm)
    row.locator("button.danger").click()
    expect(page.locator("#lock-rows tr", has_text="report-draft")).to_have_count(0)
    assert "fenced writes will be refused" in dialogs[0]
    expect(page.locator("#release-notes")).to_contain_text("now refused")
    refused = api.put(
        "/records/report",
        json={"value": {"late": True}, "fence": {"lock": "report-draft", "token": taken["fencing_token"]}},
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "stale_fencing_token"
    assert not Record.objects.filter(key="report").exists()


def test_resolving_a_conflict_with_an_edited_merge_writes_a_new_version(page, api, beta, make_token):
    assert (
        api.put(
            "/records/plan", json={"value": {"goal": "ship", "owner": "alpha"}, "expected_version": 0}
        ).status_code
        == 201
    )
    with httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {make_token(beta)}"}) as b:
        assert (
            b.put(
                "/records/plan", json={"value": {"goal": "ship", "owner": "beta"}, "expected_version": 1}
            ).status_code
            == 200
        )
    conflict_response = api.put(
        "/records/plan", json={"value": {"goal": "rest", "owner": "alpha"}, "expected_version": 1}
    )
    assert conflict_response.status_code == 409
    conflict = Conflict.objects.get(pk=conflict_response.json()["error"]["conflict_id"])

    live(page, "/ns/team/conflicts/")
    expect(page.locator(f"#conflict-{conflict.pk}")).to_be_visible()
    shoot(page, "conflicts")
    page.click(f"#conflict-{conflict.pk} a")
    expect(page.locator(".three .l-add").first).to_be_visible()  # differences marked
    shoot(page, "conflict")
    page.fill("textarea[name=value]", '{"goal": "ship, then rest", "owner": "alpha and beta"}')
    page.click(".merge-form button")
    page.wait_for_url("**/ns/team/records/plan")
    expect(page.locator("#record-value")).to_contain_text("v3")
    expect(page.locator("#record-value")).to_contain_text("alpha and beta")
    expect(page.locator(".msg-success")).to_contain_text("version 3")
    record = Record.objects.get(key="plan")
    assert record.version == 3 and record.updated_by == "operator:otto"
    conflict.refresh_from_db()
    assert conflict.status == "resolved" and conflict.resolution == "merged"
    shoot(page, "record")
    page.goto("/ns/team/records/")
    shoot(page, "records")
