"""The console and transactions: an aborted /txn's refused writes are one conflict group that
an operator resolves together; the timeline groups a transaction's events."""

from __future__ import annotations

import pytest
from django.urls import reverse

from memory_admin.models import Conflict, Event, Record
from tests.api_support import api_for
from tests.conftest import sequence_here

pytestmark = pytest.mark.django_db


@pytest.fixture
def aborted(alpha):
    """A transaction of three writes whose last was refused: its conflict group id."""
    api = api_for(alpha)
    api.put("/records/s3", {"value": "old"})
    api.put("/records/outline", {"value": ["s1"]})
    response = api.post(
        "/txn",
        {
            "success": [
                {"put": {"key": "s3", "value": "new", "expected_version": 1}},
                {"put": {"key": "fresh", "value": 1, "expected_version": 0}},
                {"put": {"key": "outline", "value": ["s1", "s3"], "expected_version": 9}},
            ]
        },
    )
    assert response.status_code == 409
    return response.json()["error"]["conflict_group"]


def test_the_conflict_page_shows_the_writes_refused_together_and_the_list_marks_them(
    as_operator, ns, aborted
):
    members = list(Conflict.objects.filter(group=aborted).order_by("id"))
    assert [c.key for c in members] == ["s3", "fresh", "outline"]
    page = as_operator.get(reverse("conflict", args=[ns.name, members[0].pk])).content.decode()
    assert "Refused together" in page and "Accept all 3" in page
    for member in members:
        assert f'name="v{member.pk}"' in page
    listing = as_operator.get(reverse("conflicts", args=[ns.name])).content.decode()
    assert listing.count(f"txn {aborted[:8]}") == 3


def test_an_operator_accepts_a_group_in_one_go(as_operator, ns, aborted):
    members = list(Conflict.objects.filter(group=aborted).order_by("id"))
    versions = {"s3": 1, "fresh": 0, "outline": 1}
    form = {"action": "accept", **{f"v{c.pk}": str(versions[c.key]) for c in members}}
    response = as_operator.post(reverse("resolve_group", args=[ns.name, aborted]), form)
    assert response.status_code == 302
    assert Record.objects.get(key="s3").value == "new"
    assert Record.objects.get(key="fresh").value == 1
    assert Record.objects.get(key="outline").value == ["s1", "s3"]
    assert set(Conflict.objects.filter(group=aborted).values_list("status", "resolution")) == {
        ("resolved", "accepted")
    }
    resolved = Event.objects.filter(type="conflict.resolved").values_list("actor", flat=True)
    assert list(resolved) == ["operator:otto"] * 3


def test_a_group_whose_record_moved_is_refused_whole_and_stays_open(as_operator, ns, aborted, beta):
    api_for(beta).put("/records/outline", {"value": "moved"})  # now v2; the operator saw v1
    members = list(Conflict.objects.filter(group=aborted).order_by("id"))
    versions = {"s3": 1, "fresh": 0, "outline": 1}
    form = {"action": "accept", **{f"v{c.pk}": str(versions[c.key]) for c in members}}
    response = as_operator.post(reverse("resolve_group", args=[ns.name, aborted]), form, follow=True)
    assert "Nothing was written" in response.content.decode()
    assert Record.objects.get(key="s3").value == "old" and not Record.objects.filter(key="fresh").exists()
    assert set(Conflict.objects.filter(group=aborted).values_list("status", flat=True)) == {"open"}


def test_an_operator_keeps_the_current_values_of_a_whole_group(as_operator, ns, aborted):
    response = as_operator.post(reverse("resolve_group", args=[ns.name, aborted]), {"action": "keep"})
    assert response.status_code == 302
    assert set(Conflict.objects.filter(group=aborted).values_list("resolution", flat=True)) == {"kept"}
    assert Record.objects.get(key="s3").value == "old"


def test_a_viewer_cannot_resolve_a_group(as_viewer, ns, aborted):
    response = as_viewer.post(reverse("resolve_group", args=[ns.name, aborted]), {"action": "keep"})
    assert response.status_code == 403
    assert set(Conflict.objects.filter(group=aborted).values_list("status", flat=True)) == {"open"}


def test_the_events_of_a_txn_share_its_id_and_the_timeline_groups_and_filters_them(as_viewer, ns, alpha):
    api = api_for(alpha)
    api.post("/events", {"type": "before.txn", "payload": {}})
    done = api.post(
        "/txn",
        {
            "success": [
                {"put": {"key": "g1", "value": 1}},
                {"event": {"type": "work.done", "payload": {"n": 1}}},
            ]
        },
    ).json()
    sequence_here()
    stamped = Event.objects.filter(txn=done["txn"])
    assert sorted(stamped.values_list("type", flat=True)) == ["record.written", "work.done"]
    assert done["results"][1]["body"]["type"] == "work.done"
    listed = [e for e in api.get("/events?limit=500").json()["items"] if e.get("txn") == done["txn"]]
    assert len(listed) == 2
    page = as_viewer.get(reverse("timeline", args=[ns.name])).content.decode()
    assert page.count(f'data-txn="{done["txn"]}"') == 2 and page.count("txn-start") == 1
    assert '<span class="etype">before.txn' in page
    only = as_viewer.get(reverse("timeline", args=[ns.name]) + f"?txn={done['txn']}").content.decode()
    assert only.count('class="event ') == 2 and '<span class="etype">before.txn' not in only


def test_an_aborted_txns_kept_conflicts_announce_themselves_under_its_id(ns, alpha, aborted):
    sequence_here()
    opened = Event.objects.filter(type="conflict.opened", txn=aborted)
    assert opened.count() == 3
