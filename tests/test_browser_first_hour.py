"""What a newcomer sees in a real Chromium in the first hour: the API docs page renders under
our own Content-Security-Policy, the console's pages show no script errors in the browser
console, and a record page's history keeps the versions the operator picked."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.test_browser_console import (  # noqa: F401 - fixtures
    allow_orm_beside_playwright,
    api,
    browser,
    context,
    live,
    operator,
    page,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_api_docs_page_renders_its_operations_from_our_own_files(context, web_server):  # noqa: F811
    page = context.new_page()  # noqa: F811 - not logged in: the docs need no session
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
