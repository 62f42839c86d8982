"""The console's pages (GET): viewers watch.

Every page renders one template whose fragments ({% partialdef %}) are also what htmx
requests (`?fragment=`) and the websocket (memory_admin.live) send.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware

from memory_admin.forms import IssueTokenForm, RecordEditForm, ResolveForm
from memory_admin.models import Agent, Namespace, Record, RecordVersion
from memory_admin.services import conflicts as conflict_service
from memory_admin.services import history
from memory_admin.services.counts import distinct_values
from memory_admin.services.facts import get_fact, query_facts
from memory_admin.services.leftovers import agent_leftovers, stale_with_leftovers
from memory_admin.services.locks import count_locks, list_locks
from memory_admin.services.records import list_records, record_versions
from memory_admin.services.status import get_agent, list_agents
from memory_admin.views.console import agent_choices, as_int, console, filters, screen
from memory_admin.views.diff import line_diff, three_way
from memory_admin.views.screens import (
    LIST_PAGE,
    PAGE_SIZE,
    View,
    agent_activity,
    agent_panels,
    conflict_context,
    groups_context,
    last_event_id,
    live_agents,
    overview_charts,
    overview_context,
    record_panels,
    search_results,
)


@login_required
def overview(request: HttpRequest, ns: str | None = None) -> HttpResponse:
    if ns is None:
        name = request.session.get("ns")
        namespace = Namespace.objects.filter(name=name).first() if name else None
        namespace = namespace or Namespace.objects.first()
        if namespace is None:
            return render(request, "memory_admin/empty.html")
        return redirect("overview", namespace.name)
    return _overview(request, ns)


@console
def _overview(request: HttpRequest, ns: Namespace) -> HttpResponse:
    view = View("overview")
    cursor = last_event_id(ns)
    # The panels that refresh themselves ask for their fragment only: build only its context.
    fragment = request.GET.get("fragment", "")
    if fragment == "charts":
        context = {"charts": overview_charts(ns, live=live_agents(ns))}
    elif fragment == "stale-leftovers":
        context = {"stale_leftovers": stale_with_leftovers(ns=ns)}
    else:
        context = overview_context(ns)
    return screen(request, ns, "overview.html", view, {"cursor": cursor, **context})


@login_required
def switch(request: HttpRequest) -> HttpResponse:
    """The header's namespace switcher: the same screen in another namespace."""
    ns = get_object_or_404(Namespace, name=request.GET.get("ns", ""))
    section = request.GET.get("section", "overview")
    if section not in ("overview", "agents", "facts", "records", "conflicts", "locks", "groups", "timeline"):
        section = "overview"
    return redirect(section, ns.name)


@console
def agents(request: HttpRequest, ns: Namespace) -> HttpResponse:
    cursor = last_event_id(ns)
    page = list_agents(ns=ns, after=request.GET.get("after", ""), limit=LIST_PAGE + 1)
    context = {
        "cursor": cursor,
        "agents": page[:LIST_PAGE],
        "next": page[LIST_PAGE - 1].agent.name if len(page) > LIST_PAGE else None,
        "total": Agent.objects.filter(ns=ns).count(),
    }
    return screen(request, ns, "agents.html", View("agents"), context)


@console
def agent(request: HttpRequest, ns: Namespace, name: str) -> HttpResponse:
    return agent_page(request, ns, get_object_or_404(Agent, ns=ns, name=name))


def agent_page(request, ns, agent, **extra) -> HttpResponse:
    view = View("agent", agent=agent.name)
    cursor = last_event_id(ns)
    facts, _ = query_facts(ns=ns, agent_id=agent.name, limit=20)
    context = {
        "cursor": cursor,
        "agent": agent,
        "status": get_agent(ns=ns, agent_id=agent.name),
        "facts": facts,
        "events": list(view.events(ns)[:30]),
        "activity": agent_activity(ns, agent),
        "token_form": IssueTokenForm(),
        **agent_panels(ns, agent),
        **extra,
    }
    return screen(request, ns, "agent.html", view, context)


@console
def leftovers(request: HttpRequest, ns: Namespace, name: str) -> HttpResponse:
    """The cascade of an agent that stopped: what it still holds, and one action to free it all."""
    return leftovers_page(request, ns, get_object_or_404(Agent, ns=ns, name=name))


def leftovers_context(ns, agent, form=None) -> dict:
    return {"agent": agent, "left": agent_leftovers(ns=ns, agent=agent), "form": form}


def leftovers_page(request, ns, agent, form=None, status=200) -> HttpResponse:
    context = {"cursor": last_event_id(ns), **leftovers_context(ns, agent, form)}
    response = screen(request, ns, "leftovers.html", View("leftovers", agent=agent.name), context)
    response.status_code = status
    return response


@console
def facts(request: HttpRequest, ns: Namespace) -> HttpResponse:
    view = View("facts", **filters(request, "category", "agent", "q"))
    cursor = last_event_id(ns)
    after = as_int(request.GET.get("after"))
    page, next_cursor = query_facts(
        ns=ns, category=view.category or None, agent_id=view.agent or None, q=view.q or None, after=after
    )
    context = {
        "cursor": cursor,
        "facts": page,
        "next": next_cursor,
        "categories": distinct_values(ns, "categories"),
        "agent_names": agent_choices(ns),
    }
    return screen(request, ns, "facts.html", view, context)


@console
def fact(request: HttpRequest, ns: Namespace, fact_id: int) -> HttpResponse:
    return screen(request, ns, "fact.html", View("fact"), {"fact": get_fact(ns=ns, fact_id=fact_id)})


@console
def records(request: HttpRequest, ns: Namespace) -> HttpResponse:
    view = View("records", **filters(request, "prefix"))
    cursor = last_event_id(ns)
    page = list_records(ns=ns, prefix=view.prefix, after=request.GET.get("after", ""), limit=PAGE_SIZE + 1)
    context = {
        "cursor": cursor,
        "records": page[:PAGE_SIZE],
        "next": page[PAGE_SIZE - 1].key if len(page) > PAGE_SIZE else None,
    }
    return screen(request, ns, "records.html", view, context)


@console
def record(request: HttpRequest, ns: Namespace, key: str) -> HttpResponse:
    found = get_object_or_404(Record, ns=ns, key=key)
    return record_page(request, ns, found, RecordEditForm(initial=edit_initial(found)))


def edit_initial(record: Record) -> dict:
    from memory_admin.templatetags.console import pretty

    return {"value": pretty(record.value), "expected_version": record.version}


def record_page(request, ns, record, form, status=200) -> HttpResponse:
    view = View("record", key=record.key)
    cursor = last_event_id(ns)
    versions = record_versions(ns=ns, key=record.key, limit=200)
    numbers = [v.version for v in versions]
    newer = as_int(request.GET.get("b")) or (numbers[0] if numbers else 0)
    older = as_int(request.GET.get("a")) or (numbers[1] if len(numbers) > 1 else newer)
    chosen = {v.version: v for v in RecordVersion.objects.filter(record=record, version__in=[older, newer])}
    diff = None
    if older in chosen and newer in chosen:
        diff = line_diff(chosen[older].value, chosen[newer].value)
    then = None
    at = as_int(request.GET.get("at"))
    if at:
        then = RecordVersion.objects.filter(record=record, version=at, deleted=False).first()
    then_lines = now_lines = None
    if then is not None:
        current = None if record.deleted else record.value
        then_lines, now_lines, _ = three_way(then.value, current, current)  # two ways
    context = {
        "cursor": cursor,
        "record": record,
        "versions": versions,
        "then": then,
        "then_lines": then_lines,
        "now_lines": now_lines,
        "diff": diff,
        "diff_a": older,
        "diff_b": newer,
        "form": form,
        **record_panels(ns, record.key),
    }
    response = screen(request, ns, "record.html", view, context)
    response.status_code = status
    return response


@console
def as_of(request: HttpRequest, ns: Namespace) -> HttpResponse:
    """The namespace as it was at an event (or a time): records and agents' status then."""
    head = last_event_id(ns)
    event = as_int(request.GET.get("event"))
    try:
        at = parse_datetime(request.GET.get("at", "").strip())
    except ValueError:  # well formed but not a time (a 31st of February)
        at = None
    if at is not None and is_naive(at):
        at = make_aware(at)
    if event is None and at is None:
        event = head
    if at is not None:  # the time box wins over the slider, which always sends a number
        event = None
    when = history.moment(ns=ns, event=min(event, head) if event is not None else None, at=at)
    context = {
        "cursor": head,
        "head": head,
        "when": when,
        "records": history.records_at(ns=ns, when=when, after=request.GET.get("after", ""), limit=PAGE_SIZE),
        "statuses": history.statuses_at(ns=ns, when=when, limit=PAGE_SIZE),
        "locks": history.locks_at(ns=ns, when=when, limit=PAGE_SIZE),
        "around": history.events_around(ns=ns, when=when),
        "page_size": PAGE_SIZE,
    }
    return screen(request, ns, "asof.html", View("asof"), context)


@console
def conflicts(request: HttpRequest, ns: Namespace) -> HttpResponse:
    status = "resolved" if request.GET.get("status") == "resolved" else "open"
    cursor = last_event_id(ns)
    found = conflict_service.list_conflicts(ns=ns, status=status, limit=200)
    return screen(
        request,
        ns,
        "conflicts.html",
        View("conflicts"),
        {"cursor": cursor, "conflicts": found, "status": status},
    )


@console
def conflict(request: HttpRequest, ns: Namespace, conflict_id: int) -> HttpResponse:
    found = conflict_service.get_conflict(ns=ns, conflict_id=conflict_id)
    return conflict_page(request, ns, found, None)


def conflict_page(request, ns, found, form, status=200) -> HttpResponse:
    cursor = last_event_id(ns)
    context = conflict_context(found)
    if form is None:
        from memory_admin.templatetags.console import pretty

        merge_from = (
            found.proposed_value if not found.delete else context["record"] and context["record"].value
        )
        form = ResolveForm(
            initial={
                "action": "merge",
                "expected_version": context["write_over"],
                "value": pretty(merge_from),
            }
        )
    response = screen(
        request,
        ns,
        "conflict.html",
        View("conflict", conflict=found.pk, key=found.key),
        {"cursor": cursor, "form": form, "group": group_rows(ns, found.group), **context},
    )
    response.status_code = status
    return response


def group_rows(ns: Namespace, group: str) -> list[dict]:
    """The conflicts refused together with one (an aborted /txn), each with the version its
    record is at now: what a resolve-together writes over."""
    members = conflict_service.group_conflicts(ns=ns, group=group)
    if not members:
        return []
    live = dict(
        Record.objects.filter(ns=ns, key__in={c.key for c in members}, deleted=False).values_list(
            "key", "version"
        )
    )
    return [{"conflict": c, "write_over": live.get(c.key, 0)} for c in members]


@console
def locks(request: HttpRequest, ns: Namespace) -> HttpResponse:
    cursor = last_event_id(ns)
    context = {"cursor": cursor, "locks": list_locks(ns=ns, limit=LIST_PAGE), "total": count_locks(ns=ns)}
    return screen(request, ns, "locks.html", View("locks"), context)


@console
def timeline(request: HttpRequest, ns: Namespace) -> HttpResponse:
    view = View("timeline", **filters(request, "type", "agent"), txn=request.GET.get("txn", "").strip()[:40])
    cursor = last_event_id(ns)
    events = view.events(ns)
    before = as_int(request.GET.get("before"))
    if before:
        events = events.filter(position__lt=before)
    page = list(events[: PAGE_SIZE + 1])
    context = {
        "cursor": cursor,
        "events": page[:PAGE_SIZE],
        "next": page[PAGE_SIZE - 1].id if len(page) > PAGE_SIZE else None,
        "types": distinct_values(ns, "types"),
        "agent_names": agent_choices(ns),
    }
    return screen(request, ns, "timeline.html", view, context)


@console
def search(request: HttpRequest, ns: Namespace) -> HttpResponse:
    """One box over facts (full text), record keys (by prefix) and agents (by name)."""
    q = request.GET.get("q", "").strip()[:200]
    context = {"cursor": last_event_id(ns), "q": q, **search_results(ns, q)}
    return screen(request, ns, "search.html", View("search", q=q), context)


@console
def groups(request: HttpRequest, ns: Namespace) -> HttpResponse:
    context = {"cursor": last_event_id(ns), **groups_context(ns)}
    return screen(request, ns, "groups.html", View("groups"), context)
