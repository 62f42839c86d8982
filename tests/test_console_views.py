"""Console pages and actions: viewers watch, operators act, every action is a CSRF-checked
POST through a service and lands in the event log with the operator's name."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from memory_admin.errors import NotFound, StaleFence
from memory_admin.models import Conflict, Event, Record, Token
from memory_admin.services.facts import store_fact
from memory_admin.services.locks import acquire_lock, get_lock
from memory_admin.services.records import Fence, write_record
from tests.conftest import actor


def pages(ns, world) -> dict[str, str]:
    return {
        "overview": reverse("overview", args=[ns.name]),
        "agents": reverse("agents", args=[ns.name]),
        "agent": reverse("agent", args=[ns.name, "alpha"]),
        "facts": reverse("facts", args=[ns.name]),
        "fact": reverse("fact", args=[ns.name, world["fact"].pk]),
        "records": reverse("records", args=[ns.name]),
        "record": reverse("record", args=[ns.name, "plan/q3"]),
        "conflicts": reverse("conflicts", args=[ns.name]),
        "conflict": reverse("conflict", args=[ns.name, world["conflict"].pk]),
        "locks": reverse("locks", args=[ns.name]),
        "timeline": reverse("timeline", args=[ns.name]),
    }


def post(client: Client, url: str, data: dict, **headers):
    return client.post(url, data, **headers)


# --- watching ---------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_login_page(client, ns, world):
    for url in [reverse("overview"), *pages(ns, world).values()]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")), url


def test_login_lands_on_the_overview_of_a_namespace(client, ns):
    User.objects.create_user("vera", password="pw-vera-123")
    response = client.post(reverse("login"), {"username": "vera", "password": "pw-vera-123"})
    assert response.status_code == 302 and response["Location"] == reverse("overview")
    response = client.get(reverse("overview"))
    assert response.status_code == 302 and response["Location"] == reverse("overview", args=[ns.name])


def test_the_overview_without_namespaces_explains_how_to_make_one(as_viewer):
    response = as_viewer.get(reverse("overview"))
    assert response.status_code == 200
    assert b"issue_token" in response.content


def test_every_page_renders_for_viewers(as_viewer, ns, world):
    for name, url in pages(ns, world).items():
        response = as_viewer.get(url)
        assert response.status_code == 200, name
        html = response.content.decode()
        assert 'ws-connect="/ws/ns/team/' in html, name
        assert 'id="live-cursor"' in html, name
        assert "<script>" not in html and " onclick=" not in html, name  # CSP-ready
        # Viewers see no action forms.
        assert "Force release" not in html and "Issue token" not in html and "Save merge" not in html, name


@pytest.mark.django_db(transaction=True)  # the log shows committed events only
def test_pages_show_their_data(as_viewer, ns, world):
    urls = pages(ns, world)
    assert b"researching" in as_viewer.get(urls["agents"]).content
    assert b"The sky is blue" in as_viewer.get(urls["facts"]).content
    assert b"plan/q3" in as_viewer.get(urls["records"]).content
    record = as_viewer.get(urls["record"]).content.decode()
    assert "&quot;june&quot;" in record and "v2" in record  # pretty JSON and version history
    assert "d-add" in record  # the default diff, v1 -> v2
    conflict = as_viewer.get(urls["conflict"]).content.decode()
    assert "&quot;rest&quot;" in conflict and "l-add" in conflict and "l-chg" in conflict
    locks = as_viewer.get(urls["locks"]).content.decode()
    assert "report/draft" in locks and f">{world['lock'].token}<" in locks and "data-expires" in locks
    timeline = as_viewer.get(urls["timeline"]).content.decode()
    assert (
        "conflict.opened" in timeline
        and reverse("conflict", args=[ns.name, world["conflict"].pk]) in timeline
    )
    overview = as_viewer.get(urls["overview"]).content.decode()
    assert 'id="counts"' in overview and "alpha" in overview


def test_fragments_render_alone_for_htmx(as_viewer, ns, world):
    urls = pages(ns, world)
    rows = as_viewer.get(urls["agents"] + "?fragment=agent-rows", HTTP_HX_REQUEST="true").content.decode()
    assert rows.lstrip().startswith('<tbody id="agent-rows"') and "<html" not in rows
    rows = as_viewer.get(urls["locks"] + "?fragment=lock-rows", HTTP_HX_REQUEST="true").content.decode()
    assert rows.lstrip().startswith('<tbody id="lock-rows"') and "report/draft" in rows
    assert as_viewer.get(urls["locks"] + "?fragment=nope").status_code == 404


@pytest.mark.django_db(transaction=True)  # the log shows committed events only
def test_timeline_filters_and_pages_back_by_cursor(as_viewer, ns, alpha):
    for i in range(60):
        store_fact(ns=ns, fact=f"fact {i}", category="bulk", actor=actor(alpha))
    url = reverse("timeline", args=[ns.name])
    first = as_viewer.get(url, {"type": "fact.stored"}).content.decode()
    ids = [int(i) for i in re.findall(r'id="event-(\d+)"', first)]
    assert len(ids) == 50 and ids == sorted(ids, reverse=True)
    older = as_viewer.get(url, {"type": "fact.stored", "before": ids[-1], "fragment": "older-rows"})
    older_ids = [int(i) for i in re.findall(r'id="event-(\d+)"', older.content.decode())]
    assert len(older_ids) == 10 and max(older_ids) < ids[-1]
    assert '"etype">agent.created' not in first
    assert '"etype">agent.created' in as_viewer.get(url, {"type": "agent.created"}).content.decode()


def test_facts_filter_by_category_agent_and_full_text(as_viewer, ns, alpha, beta):
    store_fact(ns=ns, fact="Rivers flow downhill", category="geo", actor=actor(alpha))
    store_fact(ns=ns, fact="Mountains are tall", category="geo", actor=actor(beta))
    store_fact(ns=ns, fact="Paris is in France", category="places", actor=actor(beta))
    url = reverse("facts", args=[ns.name])
    geo = as_viewer.get(url, {"category": "geo"}).content.decode()
    assert "Rivers" in geo and "Mountains" in geo and "Paris" not in geo
    betas = as_viewer.get(url, {"agent": "beta"}).content.decode()
    assert "Rivers" not in betas and "Paris" in betas
    found = as_viewer.get(url, {"q": "river"}).content.decode()
    assert "Rivers" in found and "Mountains" not in found


def test_the_namespace_switcher_keeps_the_section(as_viewer, ns, outsider):
    response = as_viewer.get(reverse("switch"), {"ns": "other", "section": "locks"})
    assert response["Location"] == reverse("locks", args=["other"])
    assert as_viewer.get(reverse("switch"), {"ns": "nope"}).status_code == 404
    assert as_viewer.get(reverse("agents", args=["nope"])).status_code == 404


def test_pages_of_one_namespace_show_nothing_of_another(as_viewer, ns, world, outsider):
    other = as_viewer.get(reverse("facts", args=["other"])).content.decode()
    assert "The sky is blue" not in other
    assert as_viewer.get(reverse("conflict", args=["other", world["conflict"].pk])).status_code == 404


# --- acting -----------------------------------------------------------------------------


def action_requests(ns, world, alpha):
    token = Token.objects.filter(agent=alpha).first()
    return [
        (reverse("force_release", args=[ns.name]), {"resource": "report/draft", "reason": "stuck"}),
        (reverse("issue_token", args=[ns.name, "alpha"]), {}),
        (reverse("revoke_token", args=[ns.name, token.pk]), {}),
        (reverse("record", args=[ns.name, "plan/q3"]), {"value": '{"x": 1}', "expected_version": 2}),
        (
            reverse("conflict", args=[ns.name, world["conflict"].pk]),
            {"action": "keep", "expected_version": 2},
        ),
    ]


def test_viewers_are_refused_every_action(as_viewer, ns, world, alpha, make_token):
    make_token(alpha)
    before = Event.objects.count()
    for url, data in action_requests(ns, world, alpha):
        assert as_viewer.post(url, data).status_code == 403, url
    assert Event.objects.count() == before
    assert get_lock(ns=ns, resource="report/draft").owner == "beta"


def test_actions_need_a_csrf_token(operator_user, ns, world, alpha, make_token):
    make_token(alpha)
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator_user)
    for url, data in action_requests(ns, world, alpha):
        assert client.post(url, data).status_code == 403, url
    assert not Event.objects.filter(actor="operator:otto").exists()
    # With the token from the page, the same POST goes through.
    page = client.get(reverse("locks", args=[ns.name])).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(
        reverse("force_release", args=[ns.name]),
        {"resource": "report/draft", "reason": "stuck", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302
    assert Event.objects.filter(type="lock.force_released", actor="operator:otto").exists()


def test_operator_force_release_needs_a_reason_and_fences_out_the_old_holder(as_operator, ns, world, beta):
    url = reverse("force_release", args=[ns.name])
    as_operator.post(url, {"resource": "report/draft", "reason": "   "})
    assert get_lock(ns=ns, resource="report/draft").owner == "beta"
    # From the page (htmx), the row comes back with the form's error, the lock still held.
    refused = as_operator.post(url, {"resource": "report/draft", "reason": ""}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 422
    assert "report/draft" in refused.content.decode() and "beta" in refused.content.decode()
    assert get_lock(ns=ns, resource="report/draft").owner == "beta"

    response = as_operator.post(
        url, {"resource": "report/draft", "reason": "holder hung"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert "fenced with token" in response.content.decode()
    with pytest.raises(NotFound):
        get_lock(ns=ns, resource="report/draft")
    event = Event.objects.get(type="lock.force_released")
    assert event.actor == "operator:otto" and event.payload["reason"] == "holder hung"
    with pytest.raises(StaleFence):
        write_record(
            ns=ns, key="report", value={"late": True}, actor=actor(beta),
            fence=Fence(lock="report/draft", token=world["lock"].token),
        )  # fmt: skip


def test_locks_page_warns_that_fenced_writes_will_be_refused(as_operator, ns, world):
    html = as_operator.get(reverse("locks", args=[ns.name])).content.decode()
    assert "Force release" in html and "hx-confirm=" in html
    assert "fenced writes will be refused" in html


def test_operator_edit_is_a_versioned_write(as_operator, ns, world):
    url = reverse("record", args=[ns.name, "plan/q3"])
    response = as_operator.post(url, {"value": '{"goal": "ship", "by": "july"}', "expected_version": 2})
    assert response.status_code == 302 and response["Location"] == url
    record = Record.objects.get(ns=ns, key="plan/q3")
    assert record.version == 3 and record.value["by"] == "july" and record.updated_by == "operator:otto"
    assert Event.objects.filter(type="record.written", actor="operator:otto").exists()


def test_a_stale_edit_is_refused_and_shown_as_a_conflict(as_operator, ns, world):
    url = reverse("record", args=[ns.name, "plan/q3"])
    response = as_operator.post(url, {"value": '{"goal": "old"}', "expected_version": 1})
    conflict = Conflict.objects.get(actor="operator:otto")
    assert response["Location"] == reverse("conflict", args=[ns.name, conflict.pk])
    assert Record.objects.get(ns=ns, key="plan/q3").version == 2
    page = as_operator.get(response["Location"]).content.decode()
    assert "refused" in page and "operator:otto" in page


def test_an_edit_that_is_not_json_is_refused_with_the_form(as_operator, ns, world):
    response = as_operator.post(
        reverse("record", args=[ns.name, "plan/q3"]), {"value": "{nope", "expected_version": 2}
    )
    assert response.status_code == 422 and b"Not valid JSON" in response.content
    assert Record.objects.get(ns=ns, key="plan/q3").version == 2


@pytest.mark.parametrize(
    ("action", "value", "expected"),
    [
        ("accept", None, {"goal": "rest"}),
        ("keep", None, {"goal": "ship", "by": "june"}),
        ("merge", '{"goal": "both"}', {"goal": "both"}),
    ],
)
def test_operator_resolves_a_conflict(as_operator, ns, world, action, value, expected):
    conflict = world["conflict"]
    data = {"action": action, "expected_version": 2, **({"value": value} if value else {})}
    response = as_operator.post(reverse("conflict", args=[ns.name, conflict.pk]), data)
    assert response.status_code == 302
    conflict.refresh_from_db()
    assert conflict.status == "resolved" and conflict.resolved_by == "operator:otto"
    assert Record.objects.get(ns=ns, key="plan/q3").value == expected
    assert Event.objects.filter(type="conflict.resolved", actor="operator:otto").exists()


def test_a_merge_over_a_moved_record_is_refused_and_the_conflict_stays_open(as_operator, ns, world, alpha):
    write_record(ns=ns, key="plan/q3", value={"goal": "moved"}, expected_version=2, actor=actor(alpha))
    conflict = world["conflict"]
    response = as_operator.post(
        reverse("conflict", args=[ns.name, conflict.pk]),
        {"action": "merge", "expected_version": 2, "value": "{}"},
    )
    assert response.status_code == 302
    conflict.refresh_from_db()
    assert conflict.status == "open"
    assert Record.objects.get(ns=ns, key="plan/q3").value == {"goal": "moved"}
    assert Conflict.objects.filter(actor="operator:otto", status="open").exists()


def test_a_merge_needs_a_value(as_operator, ns, world):
    response = as_operator.post(
        reverse("conflict", args=[ns.name, world["conflict"].pk]), {"action": "merge", "expected_version": 2}
    )
    assert response.status_code == 422
    assert Conflict.objects.get(pk=world["conflict"].pk).status == "open"


def test_operator_issues_a_token_shown_once_and_revokes_it(as_operator, ns, alpha):
    url = reverse("issue_token", args=[ns.name, "alpha"])
    response = as_operator.post(url, {"read_only": "on"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    secret = re.search(r'class="secret-value"[^>]*>(ma_[^<]+)<', html).group(1)
    token = Token.objects.get(agent=alpha)
    assert token.read_only and token.created_by == "operator:otto"
    assert secret not in as_operator.get(reverse("agent", args=[ns.name, "alpha"])).content.decode()
    response = as_operator.post(reverse("revoke_token", args=[ns.name, token.pk]), HTTP_HX_REQUEST="true")
    assert "revoked" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked is not None
    assert Event.objects.filter(type="agent.token_revoked", actor="operator:otto").exists()


@pytest.mark.django_db(transaction=True)  # the log shows committed events only
def test_an_agent_page_shows_its_work(as_viewer, ns, world):
    html = as_viewer.get(reverse("agent", args=[ns.name, "beta"])).content.decode()
    assert "report/draft" in html  # the lock it holds
    assert "conflict.opened" in html  # its events


@pytest.mark.django_db(transaction=True)  # the log shows committed events only
def test_an_agents_events_are_its_own_acts_and_those_done_to_it_and_an_operators_are_its_own(
    as_operator, alpha, beta
):
    from memory_admin.services import Actor
    from memory_admin.services.events import sequence
    from memory_admin.services.locks import force_release
    from memory_admin.views.screens import View

    write_record(ns=alpha.ns, key="plan", value=1, actor=actor(alpha))
    acquire_lock(ns=alpha.ns, resource="draft", actor=actor(alpha), ttl_seconds=60)
    write_record(ns=alpha.ns, key="other", value=1, actor=actor(beta))
    force_release(ns=alpha.ns, resource="draft", reason="stuck", actor=Actor(name="operator:otto"))
    sequence()  # no relay runs here
    alphas = [(e.type, e.actor) for e in View("agent", agent="alpha").events(alpha.ns)]
    assert ("record.written", "alpha") in alphas and ("lock.acquired", "alpha") in alphas
    assert ("lock.force_released", "operator:otto") in alphas
    assert all(actor_name != "beta" for _, actor_name in alphas)
    otto = View("timeline", agent="operator:otto")
    assert [e.type for e in otto.events(alpha.ns)] == ["lock.force_released"]
    page = as_operator.get("/ns/team/timeline/?agent=operator:otto").content.decode()
    rows = page[page.index('id="event-rows"') :]
    assert "lock.force_released" in rows and "record.written" not in rows
    assert "lock.force_released" in as_operator.get("/ns/team/agents/alpha").content.decode()
