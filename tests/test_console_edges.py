"""Console edges: `?fragment=` serves the fragments a page's htmx asks for and 404s any other
name (known to the template or not), never a 500; no page is kept by a cache."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from django.urls import reverse

from memory_admin.views.console import FRAGMENTS
from tests.conftest import ROOT
from tests.test_console_views import pages

TEMPLATES = ROOT / "templates" / "memory_admin"
SCREENS = {
    "overview": "overview.html",
    "agents": "agents.html",
    "agent": "agent.html",
    "facts": "facts.html",
    "fact": "fact.html",
    "records": "records.html",
    "record": "record.html",
    "conflicts": "conflicts.html",
    "conflict": "conflict.html",
    "locks": "locks.html",
    "timeline": "timeline.html",
    "leftovers": "leftovers.html",
    "asof": "asof.html",
    "search": "search.html",
    "groups": "groups.html",
}


def screen_urls(ns, world) -> dict[str, str]:
    return {
        **pages(ns, world),
        "leftovers": reverse("leftovers", args=[ns.name, "alpha"]),
        "asof": reverse("as_of", args=[ns.name]),
        "search": reverse("search", args=[ns.name]) + "?q=sky",
        "groups": reverse("groups", args=[ns.name]),
    }


def partials(template: str) -> set[str]:
    """Every {% partialdef %} of a screen's template, and of base.html it extends."""
    names = set()
    for path in (TEMPLATES / template, ROOT / "templates" / "base.html"):
        names |= set(re.findall(r"{%\s*partialdef\s+([\w-]+)", path.read_text()))
    return names


def test_the_fragments_a_page_requests_are_the_ones_it_serves():
    for page, template in SCREENS.items():
        asked = set(re.findall(r"fragment=([\w-]+)", (TEMPLATES / template).read_text()))
        assert asked == set(FRAGMENTS.get(template, ())), page


@pytest.mark.parametrize("page", sorted(SCREENS))
def test_every_fragment_name_is_served_or_404_never_500(as_viewer, ns, world, page):
    url = screen_urls(ns, world)[page]
    template = SCREENS[page]
    served = FRAGMENTS.get(template, set())
    names = partials(template) | {"nope", "../base.html", "base.html#live-cursor", "x#y", "%00", "a" * 500}
    for name in sorted(names):
        response = as_viewer.get(url + ("&" if "?" in url else "?") + urlencode({"fragment": name}))
        expected = 200 if name in served else 404
        assert response.status_code == expected, (page, name, response.status_code)
        assert b"Traceback" not in response.content


def no_store(response) -> bool:
    return "no-store" in [part.strip() for part in response.get("Cache-Control", "").split(",")]


def test_no_console_page_is_kept_by_a_cache(client, as_viewer, ns, world):
    assert no_store(client.get(reverse("login")))
    for name, url in screen_urls(ns, world).items():
        assert no_store(as_viewer.get(url)), name
    assert no_store(as_viewer.get(pages(ns, world)["locks"], {"fragment": "lock-rows"}))
    assert no_store(as_viewer.get(pages(ns, world)["timeline"], {"fragment": "nope"}))  # a 404 too
