"""Events that pose as the server's: agents may no longer publish them (tests/test_api_events.py),
but a log from before that may hold any payload under our types. Every page still answers 200,
a subject that does not fit renders as text, and the live pushes go on."""

from __future__ import annotations

import pytest
from django.db import transaction

from memory_admin import live
from memory_admin.services.events import append_event, find_position
from memory_admin.views.screens import View
from tests.conftest import actor, sequence_here
from tests.test_console_views import pages

# What the probe published (before the types were reserved), and worse.
POSING = [
    ("conflict", "", {"conflict_id": "not-a-number"}),
    ("conflict.opened", "plan/q3", {"conflict_id": "not-a-number"}),
    ("conflict.resolved", "plan/q3", {"conflict_id": -5}),
    ("conflict.opened", "plan/q3", {"conflict_id": 2**70}),
    ("fact", "", {"fact_id": True}),
    ("fact.stored", "x", {"fact_id": [1, 2]}),
    ("fact.stored", "x", {"fact_id": "1; drop"}),
    ("record", "", {}),
    ("record.written", "new\nline", {"version": "v"}),
    ("lock", "", {"resource": None}),
    ("lock.acquired", "printer\n", {}),
    ("operator", "", {"anything": {"at": "all"}}),
    ("status.changed", "", {"status": 5}),
    ("agent.created", "", {}),
]


@pytest.fixture
def posing(ns, alpha, world):
    """The posing events in the log, as an agent of `ns` left them; returns them."""
    appended = []
    with transaction.atomic():
        for type, subject, payload in POSING:
            appended.append(
                append_event(ns=ns, type=type, actor=actor(alpha), subject=subject, payload=payload)
            )
        # A payload that is not even an object, and an agent id no URL can hold.
        appended.append(append_event(ns=ns, type="conflict.opened", actor=actor(alpha), payload=[1, 2]))
        appended.append(
            append_event(ns=ns, type="status.changed", actor=actor(alpha), agent_id="a\nb", payload={})
        )
    sequence_here()
    return [find_position(event) for event in appended]


def test_every_page_answers_200_over_events_that_pose_as_ours(as_viewer, ns, world, posing):
    for name, url in pages(ns, world).items():
        response = as_viewer.get(url)
        assert response.status_code == 200, (name, response.content[:300])
    timeline = as_viewer.get(pages(ns, world)["timeline"] + "?agent=alpha").content.decode()
    assert "not-a-number" in timeline  # shown, as text
    assert "/conflicts/not-a-number" not in timeline


def test_the_older_rows_of_the_timeline_render_them_too(as_viewer, ns, world, posing):
    url = pages(ns, world)["timeline"] + f"?before={posing[-1].id + 1}&fragment=older-rows"
    assert as_viewer.get(url).status_code == 200


@pytest.mark.parametrize(
    "page", ["overview", "timeline", "agent", "conflicts", "facts", "records", "locks", "agents"]
)
def test_live_pushes_render_them_and_move_the_cursor(ns, world, posing, page):
    view = View(page, agent="alpha") if page == "agent" else View(page)
    html = live.render_changes(ns, view, posing)
    assert f'data-event-id="{posing[-1].id}"' in html
    if page in ("timeline", "overview", "agent"):
        assert "not-a-number" in html  # the rows themselves rendered, not only the cursor
