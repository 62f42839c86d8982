"""What a newcomer sees in a real Chromium in the first hour: the API docs page renders under
our own Content-Security-Policy, the console's pages show no script errors in the browser
console, and a record page's history keeps the versions the operator picked."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from django.conf import settings
from django.test import Client as DjangoClient

from tests.browser_support import expect, live

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_api_docs_page_renders_its_operations_from_our_own_files(context, web_server):
    page = context.new_page()  # not logged in: the docs need no session
    refused: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: m.type == "error" and refused.append(m.text))
    page.on("pageerror", lambda exc: refused.append(str(exc)))
    page.on("request", lambda r: r.url.startswith(web_server.url) or outside.append(r.url))
    response = page.goto("/api/v1/docs")
    assert response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator(".opblock").first).to_be_visible()
    assert page.locator(".opblock-summary-path", has_text="/api/v1/records/{key}").count() >= 1
    assert page.locator(".opblock").count() >= 20
    assert not outside, outside  # no CDN
    assert not [text for text in refused if "Content Security Policy" in text], refused


def console_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    return errors


def test_rows_pushed_with_the_conflict_badge_land_in_their_table_without_browser_errors(page, api):
    errors = console_errors(page)
    live(page, "/ns/team/conflicts/")
    assert api.put("/records/plan", json={"value": {"v": 1}, "expected_version": 0}).status_code == 201
    # The refused write: its conflict row and the badge arrive in one message, the badge first.
    assert api.put("/records/plan", json={"value": {"v": 2}, "expected_version": 0}).status_code == 409
    expect(page.locator("#conflict-rows tr", has_text="plan")).to_be_visible()
    expect(page.locator("#nav-conflicts")).to_have_text("1")
    assert not [e for e in errors if "oobErrorNoTarget" in e], errors
    assert page.locator("#conflict-rows > tr:not(.empty-row)").count() == 1  # a row, not loose cells


def test_live_updates_keep_the_versions_picked_for_comparing(page, api):
    for version in range(3):
        api.put("/records/doc", json={"value": {"n": version}, "expected_version": version})
    live(page, "/ns/team/records/doc?a=1&b=2")
    expect(page.locator(".diff")).to_be_visible()
    api.put("/records/doc", json={"value": {"n": 3}, "expected_version": 3})
    expect(page.locator("#versions .version", has_text="v4")).to_be_visible()
    assert page.locator('#versions input[name="a"][value="1"]').is_checked()
    assert page.locator('#versions input[name="b"][value="2"]').is_checked()


def test_event_times_show_the_readers_own_zone_and_the_full_date_on_hover(
    browser, web_server, operator_user, api
):
    api.post("/events", json={"type": "plan_checked", "payload": {}})
    context = browser.new_context(base_url=web_server.url, timezone_id="Asia/Tokyo", locale="en-US")
    try:
        client = DjangoClient()
        client.force_login(operator_user)
        name = settings.SESSION_COOKIE_NAME
        context.add_cookies([{"name": name, "value": client.cookies[name].value, "url": web_server.url}])
        page = context.new_page()
        page.goto("/ns/team/timeline/")
        when = page.locator("#event-rows time.when").first
        expect(when).to_have_attribute("title", re.compile(r"\d{4}.*GMT\+9"))
        utc = when.get_attribute("datetime")
        tokyo_hour = (datetime.fromisoformat(utc.replace("Z", "+00:00")).hour + 9) % 24
        assert when.inner_text().startswith(f"{tokyo_hour:02d}:")
    finally:
        context.close()


def test_the_favicon_and_the_admin_link_in_the_browser(page, context, web_server):
    assert context.request.get(f"{web_server.url}/favicon.ico").status == 200
    page.goto("/ns/team/")
    expect(page.locator("link[rel=icon]")).to_have_count(1)
