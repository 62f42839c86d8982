"""Chromium for the browser tests (Playwright): the fixtures (tests/conftest.py offers them to
every test module) and the helpers they share. Screenshots, at 1280 and 390 px wide, go to
test-artifacts/screenshots/."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.test import Client

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"  # conftest's ARTIFACTS
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]  # fmt: skip
WIDE, NARROW = {"width": 1280, "height": 900}, {"width": 390, "height": 844}


def _unavailable(message: str) -> None:
    """Skip where the browser is missing; under CI=true a missing browser is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # the browser fixture says so, in the tests that need it
    Page = expect = sync_playwright = None


@pytest.fixture(scope="module")
def browser(allow_orm_beside_playwright):
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`")
    if sync_playwright is None:
        _unavailable("the playwright package is missing: pip install -r requirements-dev.txt")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def allow_orm_beside_playwright():
    # Playwright's sync API keeps an event loop running in this thread; the tests' own ORM
    # calls (and the database flush after each test) are still plain synchronous code.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def context(browser, web_server, relay, ns):
    context = browser.new_context(viewport=WIDE, base_url=web_server.url)
    context.set_default_timeout(10_000)
    yield context
    context.close()


@pytest.fixture
def page(context, web_server, operator_user) -> Page:
    """A page logged in as an operator (with a session made here; the login form has its own test)."""
    client = Client()
    client.force_login(operator_user)
    name = settings.SESSION_COOKIE_NAME
    context.add_cookies([{"name": name, "value": client.cookies[name].value, "url": web_server.url}])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    assert not errors, errors  # no script errors on any page


@pytest.fixture
def api(web_server, alpha, make_token):
    with httpx.Client(
        base_url=f"{web_server.url}/api/v1", headers={"Authorization": f"Bearer {make_token(alpha)}"}
    ) as c:
        yield c


def live(page: Page, path: str) -> None:
    """Open a page and wait until its socket is connected and caught up."""
    page.goto(path)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads


def still_same_document(page: Page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-1280.png"), full_page=True)
    page.set_viewport_size(NARROW)
    page.screenshot(path=str(SHOTS / f"{name}-390.png"), full_page=True)
    # Nothing may stick out sideways on a phone.
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    page.set_viewport_size(WIDE)
    assert overflow <= 0, f"{name} is {overflow}px too wide at 390px"
