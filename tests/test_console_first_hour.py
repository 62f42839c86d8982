"""The console as a newcomer reads it: JSON values as JSON (never a Python repr), times with
their date, custom events named once, the Django admin link labelled, a favicon, and the
overview's latest events not crowded out by status changes."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils.timezone import now

from memory_admin import live
from memory_admin.errors import VersionConflict
from memory_admin.models import Conflict, Event
from memory_admin.services.events import publish_event
from memory_admin.services.facts import store_fact
from memory_admin.services.records import write_record
from memory_admin.services.status import heartbeat
from memory_admin.templatetags.console import json_preview, when
from memory_admin.views.screens import View
from tests.conftest import actor, sequence_here

# What a Python repr of a JSON value shows and JSON never does: {'k', ['x', True, None.
PYTHON_REPR = r"[{\[]'|: (?:True|False|None)\b|\b(?:True|False|None)[,}\]]"
VALUE = {"ok": True, "gone": None, "sections": ["x"], "n": 1.5}


@pytest.fixture
def superuser(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "", None))
    return client


@pytest.fixture
def conflict(ns, alpha, beta) -> Conflict:
    write_record(ns=ns, key="plan", value=VALUE, expected_version=0, actor=actor(alpha))
    with pytest.raises(VersionConflict):
        write_record(
            ns=ns, key="plan", value={"sections": ["y"], "ok": False}, expected_version=0, actor=actor(beta)
        )
    return Conflict.objects.get(key="plan")


def pages(ns, conflict) -> dict[str, str]:
    return {
        "records": reverse("records", args=[ns.name]),
        "record": reverse("record", args=[ns.name, "plan"]),
        "conflicts": reverse("conflicts", args=[ns.name]),
        "conflict": reverse("conflict", args=[ns.name, conflict.pk]),
        "timeline": reverse("timeline", args=[ns.name]),
        "overview": reverse("overview", args=[ns.name]),
    }


def test_json_values_show_as_json_on_every_page_never_as_a_python_repr(superuser, ns, alpha, conflict):
    publish_event(ns=ns, type="plan_checked", payload={"result": VALUE}, actor=actor(alpha))
    for name, url in pages(ns, conflict).items():
        html = superuser.get(url).content.decode()
        text = html.replace("&#x27;", "'").replace("&quot;", '"')
        repr_like = re.findall(".{0,40}(?:" + PYTHON_REPR + ").{0,40}", text)
        assert not repr_like, (name, repr_like)
    records = superuser.get(pages(ns, conflict)["records"]).content.decode()
    assert "&quot;ok&quot;: true" in records and "&quot;gone&quot;: null" in records
    conflicts = superuser.get(pages(ns, conflict)["conflicts"]).content.decode()
    assert "&quot;sections&quot;: [&quot;y&quot;]" in conflicts and "&quot;ok&quot;: false" in conflicts


def test_a_long_value_is_cut_with_an_ellipsis():
    cut = json_preview({"text": "x" * 500}, 80)
    assert len(cut) == 80 and cut.endswith("…") and cut.startswith('{"text": "xxx')
    assert json_preview([1, 2], 80) == "[1, 2]"


def test_event_times_say_the_day_when_it_is_not_today():
    assert re.fullmatch(r"\d\d:\d\d:\d\d", when(now()))
    assert re.fullmatch(r"[A-Z][a-z]{2} \d\d \d\d:\d\d", when(now() - timedelta(days=2)))


def test_the_fact_page_shows_a_formatted_time_with_its_zone(superuser, ns, alpha):
    fact = store_fact(ns=ns, fact="f", category="c", actor=actor(alpha))
    html = superuser.get(reverse("fact", args=[ns.name, fact.pk])).content.decode()
    shown = re.search(r'<time class="when-full"[^>]*>([^<]*)</time>', html).group(1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown), shown


def test_a_custom_event_without_a_subject_shows_its_type_once(superuser, ns, alpha):
    publish_event(ns=ns, type="section_written", payload={"section": "intro"}, actor=actor(alpha))
    sequence_here()
    html = superuser.get(reverse("timeline", args=[ns.name])).content.decode()
    row = re.search(r'<li id="[^"]*" class="event kind-section_written.*?</li>', html, re.S).group(0)
    assert row.count("section_written") == 2  # the row's class and its type, not a link as well
    assert f'href="{reverse("agent", args=[ns.name, "alpha"])}"' in row  # the agent is the link


def test_the_second_admin_link_says_it_is_django_admin(superuser, ns):
    html = superuser.get(reverse("overview", args=[ns.name])).content.decode()
    assert re.search(r'<a href="/admin/"[^>]*>Django admin</a>', html)


def test_the_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:4] == b"\x00\x00\x01\x00"  # an ICO file


def test_status_changes_stay_off_the_overviews_latest_events(superuser, ns, alpha):
    publish_event(ns=ns, type="plan_checked", payload={}, actor=actor(alpha))
    first = heartbeat(agent=alpha, status="drafting", detail="one", actor=actor(alpha))
    assert first.state == "live"
    heartbeat(agent=alpha, status="drafting", detail="two", actor=actor(alpha))
    sequence_here()
    html = superuser.get(reverse("overview", args=[ns.name])).content.decode()
    latest = html.split('id="latest-events"', 1)[1].split("</ol>", 1)[0]
    assert "plan_checked" in latest and "status.changed" not in latest
    events = list(Event.objects.filter(ns=ns).order_by("position"))
    pushed = live.render_changes(ns, View("overview"), events)
    assert "plan_checked" in pushed and "status.changed" not in pushed.split("latest-events", 1)[1]
