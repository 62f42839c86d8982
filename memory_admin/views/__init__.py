"""Console pages (function views): viewers watch, operators (perm `memory_admin.operate`) act.

Every page renders one template whose fragments ({% partialdef %}) are also what htmx
requests (`?fragment=`) and the websocket (live.py) send. Every action is a POST through
a service with the operator as actor, so the event log names the person.
"""

from __future__ import annotations

from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import get_template
from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware
from django.views.decorators.http import require_POST

from memory_admin.errors import Invalid, NotFound, Unavailable, VersionConflict
from memory_admin.forms import ForceReleaseForm, IssueTokenForm, RecordEditForm, ReleaseAgentForm, ResolveForm
from memory_admin.models import Agent, Namespace, Record, RecordVersion, Token
from memory_admin.services import Actor, history
from memory_admin.services import conflicts as conflict_service
from memory_admin.services import groups as group_service
from memory_admin.services import tokens as token_service
from memory_admin.services.counts import distinct_values
from memory_admin.services.facts import get_fact, query_facts
from memory_admin.services.leftovers import agent_leftovers, release_and_reassign, stale_with_leftovers
from memory_admin.services.locks import count_locks, get_lock, list_locks
from memory_admin.services.locks import force_release as force_release_lock
from memory_admin.services.records import list_records, record_versions, write_record
from memory_admin.services.status import get_agent, list_agents
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
    open_conflict_count,
    overview_charts,
    overview_context,
    record_panels,
    search_results,
)

OPERATE = "memory_admin.operate"
# The fragments a screen serves on its own (`?fragment=`): the ones its htmx requests.
FRAGMENTS = {
    "overview.html": {"charts", "stale-leftovers"},
    "agents.html": {"agent-rows", "older-rows"},
    "agent.html": {"agent-activity"},
    "locks.html": {"lock-rows"},
    "facts.html": {"older-rows"},
    "records.html": {"older-rows"},
    "timeline.html": {"older-rows"},
    "groups.html": {"groups"},
    "leftovers.html": {"cascade"},
}
# The header's tab for each screen.
SECTIONS = {
    "agent": "agents",
    "leftovers": "agents",
    "fact": "facts",
    "record": "records",
    "conflict": "conflicts",
    "asof": "timeline",
}


def can_operate(user) -> bool:
    return user.has_perm(OPERATE)


def console(view_func):
    """Login required; resolves the `ns` URL argument to a Namespace and remembers it."""

    @wraps(view_func)
    @login_required
    def wrapper(request: HttpRequest, ns: str, *args, **kwargs) -> HttpResponse:
        namespace = get_object_or_404(Namespace, name=ns)
        request.session["ns"] = namespace.name
        try:
            return view_func(request, namespace, *args, **kwargs)
        except NotFound as exc:
            raise Http404(exc.message) from None
        except Unavailable as exc:
            return render(request, "memory_admin/unavailable.html", {"message": exc.message}, status=503)

    return wrapper


def operator(view_func):
    """Only operators act; everyone else gets 403. Actions are POSTs (CSRF-checked)."""

    @wraps(view_func)
    @require_POST
    def wrapper(request: HttpRequest, ns: Namespace, *args, **kwargs) -> HttpResponse:
        if not can_operate(request.user):
            raise PermissionDenied("operators only")
        return view_func(request, ns, *args, **kwargs)

    return console(wrapper)


def screen(request: HttpRequest, ns: Namespace, template: str, view: View, context: dict) -> HttpResponse:
    """Render a screen, or only the fragment an htmx request names with `?fragment=`."""
    base = {
        "ns": ns,
        "view": view,
        "section": SECTIONS.get(view.page, view.page),
        "can_operate": can_operate(request.user),
    }
    fragment = request.GET.get("fragment", "")
    if fragment:
        # Only the fragments the screen's own htmx asks for: the others (a row, a card) need a
        # context that only the page's loop or a push gives them.
        if fragment not in FRAGMENTS.get(template, ()):
            raise Http404("no such fragment")
        partial = get_template(f"memory_admin/{template}#{fragment}")
        return HttpResponse(partial.render({**base, **context}, request))
    base |= {
        "namespaces": Namespace.objects.values_list("name", flat=True),
        "open_conflicts": open_conflict_count(ns),
        "live_url": f"/ws/ns/{ns.name}/?{view.query()}",
    }
    return render(request, f"memory_admin/{template}", {**base, **context})


# --- pages ------------------------------------------------------------------------------


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
    return _agent_page(request, ns, get_object_or_404(Agent, ns=ns, name=name))


def _agent_page(request, ns, agent, **extra) -> HttpResponse:
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
    found = get_object_or_404(Agent, ns=ns, name=name)
    if request.method == "POST":
        return _release_agent(request, ns, found)
    return _leftovers_page(request, ns, found)


def _leftovers_context(ns, agent, form=None) -> dict:
    return {"agent": agent, "left": agent_leftovers(ns=ns, agent=agent), "form": form}


def _leftovers_page(request, ns, agent, form=None, status=200) -> HttpResponse:
    context = {"cursor": last_event_id(ns), **_leftovers_context(ns, agent, form)}
    response = screen(request, ns, "leftovers.html", View("leftovers", agent=agent.name), context)
    response.status_code = status
    return response


def _release_agent(request, ns, agent) -> HttpResponse:
    if not can_operate(request.user):
        raise PermissionDenied("operators only")
    form = ReleaseAgentForm(request.POST)
    base = {"ns": ns, "view": View("leftovers", agent=agent.name), "can_operate": True}
    if not form.is_valid():
        if request.htmx:
            context = {**base, **_leftovers_context(ns, agent, form)}
            return render(request, "memory_admin/leftovers.html#cascade", context, status=422)
        return _leftovers_page(request, ns, agent, form, status=422)
    done = release_and_reassign(
        ns=ns, agent=agent, reason=form.cleaned_data["reason"], actor=Actor.of_operator(request.user)
    )
    locks = ", ".join(f"{h.resource} (token {h.token})" for h in done.locks) or "no locks"
    note = (
        f"Released {locks} from {agent.name}; "
        f"{done.deliveries} unacknowledged deliver{'y' if done.deliveries == 1 else 'ies'} handed back."
    )
    if request.htmx:
        context = {**base, **_leftovers_context(ns, agent)}
        html = get_template("memory_admin/leftovers.html#cascade").render(context, request)
        html += get_template("memory_admin/locks.html#released").render({"note": note}, request)
        return HttpResponse(html)
    messages.info(request, note)
    return redirect("leftovers", ns.name, agent.name)


@console
def facts(request: HttpRequest, ns: Namespace) -> HttpResponse:
    view = View(
        "facts",
        category=request.GET.get("category", "").strip(),
        agent=request.GET.get("agent", "").strip(),
        q=request.GET.get("q", "").strip(),
    )
    cursor = last_event_id(ns)
    after = _int(request.GET.get("after"))
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
    view = View("records", prefix=request.GET.get("prefix", "").strip())
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
    if request.method == "POST":
        return _edit_record(request, ns, found)
    return _record_page(request, ns, found, RecordEditForm(initial=_edit_initial(found)))


def _edit_initial(record: Record) -> dict:
    from memory_admin.templatetags.console import pretty

    return {"value": pretty(record.value), "expected_version": record.version}


def _record_page(request, ns, record, form, status=200) -> HttpResponse:
    view = View("record", key=record.key)
    cursor = last_event_id(ns)
    versions = record_versions(ns=ns, key=record.key, limit=200)
    numbers = [v.version for v in versions]
    newer = _int(request.GET.get("b")) or (numbers[0] if numbers else 0)
    older = _int(request.GET.get("a")) or (numbers[1] if len(numbers) > 1 else newer)
    chosen = {v.version: v for v in RecordVersion.objects.filter(record=record, version__in=[older, newer])}
    diff = None
    if older in chosen and newer in chosen:
        diff = line_diff(chosen[older].value, chosen[newer].value)
    then = None
    at = _int(request.GET.get("at"))
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


def _edit_record(request, ns, record) -> HttpResponse:
    if not can_operate(request.user):
        raise PermissionDenied("operators only")
    form = RecordEditForm(request.POST)
    if not form.is_valid():
        return _record_page(request, ns, record, form, status=422)
    try:
        written, _ = write_record(
            ns=ns,
            key=record.key,
            value=form.cleaned_data["value"],
            expected_version=form.cleaned_data["expected_version"],
            actor=Actor.of_operator(request.user),
        )
    except VersionConflict as exc:
        messages.error(
            request,
            f"Your edit was refused: {exc.message}. It is kept as conflict #{exc.details['conflict_id']}.",
        )
        return redirect("conflict", ns.name, exc.details["conflict_id"])
    except Invalid as exc:
        form.add_error("value", exc.message)
        return _record_page(request, ns, record, form, status=422)
    messages.success(request, f"Saved {written.key} as version {written.version}.")
    return redirect("record", ns.name, written.key)


@operator
def restore_version(request: HttpRequest, ns: Namespace, key: str) -> HttpResponse:
    """Write an old version of a record again, over the version the operator saw."""
    version, expected = _int(request.POST.get("version")), _int(request.POST.get("expected_version"))
    if version is None or expected is None:
        messages.error(request, "Restore needs the version to restore and the version it replaces.")
        return redirect("record", ns.name, key)
    try:
        written, old = history.restore_version(
            ns=ns, key=key, version=version, expected_version=expected, actor=Actor.of_operator(request.user)
        )
    except VersionConflict as exc:
        messages.error(
            request,
            f"Restore refused: {exc.message}. It is kept as conflict #{exc.details['conflict_id']}.",
        )
        return redirect("conflict", ns.name, exc.details["conflict_id"])
    except Invalid as exc:
        messages.error(request, exc.message)
        return redirect("record", ns.name, key)
    messages.success(request, f"Restored v{old.version} of {key} as version {written.version}.")
    return redirect("record", ns.name, key)


@console
def as_of(request: HttpRequest, ns: Namespace) -> HttpResponse:
    """The namespace as it was at an event (or a time): records and agents' status then."""
    head = last_event_id(ns)
    event = _int(request.GET.get("event"))
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
    if request.method == "POST":
        return _resolve(request, ns, found)
    return _conflict_page(request, ns, found, None)


def _conflict_page(request, ns, found, form, status=200) -> HttpResponse:
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
        {"cursor": cursor, "form": form, "group": _group_rows(ns, found.group), **context},
    )
    response.status_code = status
    return response


def _resolve(request, ns, found) -> HttpResponse:
    if not can_operate(request.user):
        raise PermissionDenied("operators only")
    form = ResolveForm(request.POST)
    if not form.is_valid():
        return _conflict_page(request, ns, found, form, status=422)
    action = form.cleaned_data["action"]
    try:
        written = conflict_service.resolve_conflict(
            conflict=found,
            action=action,
            actor=Actor.of_operator(request.user),
            expected_version=form.cleaned_data["expected_version"],
            value=form.cleaned_data.get("value"),
        )
    except VersionConflict as exc:
        messages.error(
            request,
            f"Refused: {exc.message} — the record moved while you looked. "
            f"Your write is kept as conflict #{exc.details['conflict_id']}; this one stays open.",
        )
        return redirect("conflict", ns.name, found.pk)
    except Invalid as exc:
        messages.error(request, exc.message)
        return redirect("conflict", ns.name, found.pk)
    done = {
        "accept": "accepted the proposed value",
        "keep": "kept the current value",
        "merge": "wrote the merge",
    }
    version = f" — {found.key} is now version {written.version}" if written is not None else ""
    messages.success(request, f"Conflict #{found.pk} resolved: {done[action]}{version}.")
    if written is not None and not written.deleted:
        return redirect("record", ns.name, found.key)
    return redirect("conflicts", ns.name)


def _group_rows(ns: Namespace, group: str) -> list[dict]:
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


@operator
def resolve_group(request: HttpRequest, ns: Namespace, group: str) -> HttpResponse:
    """Accept or keep every open conflict of an aborted transaction at once, all or nothing."""
    action = request.POST.get("action", "")
    versions = {}
    for name, value in request.POST.items():
        if name.startswith("v") and name[1:].isdigit() and value.isdigit():
            versions[int(name[1:])] = int(value)
    members = conflict_service.group_conflicts(ns=ns, group=group)
    back = redirect("conflict", ns.name, members[0].pk) if members else redirect("conflicts", ns.name)
    try:
        written = conflict_service.resolve_group(
            ns=ns, group=group, action=action, actor=Actor.of_operator(request.user), versions=versions
        )
    except VersionConflict as exc:
        messages.error(
            request,
            f"Refused: {exc.message} — a record of the group moved while you looked. "
            "Nothing was written; the group stays open.",
        )
        return back
    except (Invalid, NotFound) as exc:
        messages.error(request, exc.message)
        return back
    done = "accepted its writes" if action == "accept" else "kept the current values"
    messages.success(request, f"Transaction {group[:8]}: {len(written)} conflicts resolved together, {done}.")
    return redirect("conflicts", ns.name)


@console
def locks(request: HttpRequest, ns: Namespace) -> HttpResponse:
    cursor = last_event_id(ns)
    context = {"cursor": cursor, "locks": list_locks(ns=ns, limit=LIST_PAGE), "total": count_locks(ns=ns)}
    return screen(request, ns, "locks.html", View("locks"), context)


@console
def timeline(request: HttpRequest, ns: Namespace) -> HttpResponse:
    view = View(
        "timeline",
        type=request.GET.get("type", "").strip(),
        agent=request.GET.get("agent", "").strip(),
        txn=request.GET.get("txn", "").strip()[:40],
    )
    cursor = last_event_id(ns)
    events = view.events(ns)
    before = _int(request.GET.get("before"))
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


# --- actions ----------------------------------------------------------------------------


def _group_action(request: HttpRequest, ns: Namespace, act) -> HttpResponse:
    """Run one consumer-group action; answer htmx with the groups fragment and a note."""
    try:
        note = act(Actor.of_operator(request.user))
        level = messages.INFO
    except (NotFound, Invalid) as exc:
        note, level = exc.message, messages.ERROR
    if request.htmx:
        base = {"ns": ns, "view": View("groups"), "can_operate": True, **groups_context(ns)}
        html = get_template("memory_admin/groups.html#groups").render(base, request)
        html += get_template("memory_admin/locks.html#released").render({"note": note}, request)
        return HttpResponse(html)
    messages.add_message(request, level, note)
    return redirect("groups", ns.name)


@operator
def replay_parked(request: HttpRequest, ns: Namespace, parked_id: int) -> HttpResponse:
    def act(actor):
        parked = group_service.replay_parked(ns=ns, parked_id=parked_id, actor=actor)
        return f"Event #{parked.event} replayed to {parked.group.name}."

    return _group_action(request, ns, act)


@operator
def discard_parked(request: HttpRequest, ns: Namespace, parked_id: int) -> HttpResponse:
    def act(actor):
        parked = group_service.discard_parked(ns=ns, parked_id=parked_id, actor=actor)
        return f"Event #{parked.event} discarded for {parked.group.name}."

    return _group_action(request, ns, act)


@operator
def reset_group(request: HttpRequest, ns: Namespace) -> HttpResponse:
    group, after = request.POST.get("group", ""), _int(request.POST.get("after"))

    def act(actor):
        if after is None:
            raise Invalid("give the event id the group should continue after")
        group_service.reset_group(ns=ns, group=group, after=after, actor=actor)
        return f"{group} continues after event #{after}."

    return _group_action(request, ns, act)


@operator
def configure_group(request: HttpRequest, ns: Namespace) -> HttpResponse:
    group, raw = request.POST.get("group", ""), request.POST.get("max_deliveries", "").strip()

    def act(actor):
        limit = _int(raw) if raw else None
        if raw and limit is None:
            raise Invalid("max deliveries must be a number from 1 to 1000, or empty for never")
        group_service.get_group(ns=ns, group=group)
        group_service.configure_group(ns=ns, group=group, max_deliveries=limit, actor=actor)
        return (
            f"{group} parks events after {limit} failed deliveries."
            if limit is not None
            else f"{group} never parks events."
        )

    return _group_action(request, ns, act)


@operator
def force_release(request: HttpRequest, ns: Namespace) -> HttpResponse:
    form = ForceReleaseForm(request.POST)
    if not form.is_valid():
        if request.htmx:
            try:
                lock = get_lock(ns=ns, resource=request.POST.get("resource", ""))
            except (NotFound, Invalid):  # released meanwhile, or no resource given
                lock = None
            if lock is not None:
                return render(
                    request,
                    "memory_admin/locks.html#lock-row",
                    {"ns": ns, "lock": lock, "can_operate": True, "form": form},
                    status=422,
                )
        messages.error(request, "Force release needs a reason.")
        return redirect("locks", ns.name)
    resource = form.cleaned_data["resource"]
    try:
        held = force_release_lock(
            ns=ns,
            resource=resource,
            reason=form.cleaned_data["reason"],
            actor=Actor.of_operator(request.user),
        )
        note = (
            f"Released {resource} from {held.owner}; writes fenced with token {held.token} are now refused."
        )
    except NotFound:
        note = f"{resource} was no longer held."
    except Invalid as exc:
        note = exc.message
    if request.htmx:
        # The row goes; the note takes its place in the page's message area.
        return render(request, "memory_admin/locks.html#released", {"note": note})
    messages.info(request, note)
    return redirect("locks", ns.name)


@operator
def issue_token(request: HttpRequest, ns: Namespace, name: str) -> HttpResponse:
    agent = get_object_or_404(Agent, ns=ns, name=name)
    form = IssueTokenForm(request.POST)
    form.is_valid()
    token, secret = token_service.issue_token(
        agent=agent,
        actor=Actor.of_operator(request.user),
        read_only=form.cleaned_data.get("read_only", False),
    )
    context = {"ns": ns, "agent": agent, "issued": token, "secret": secret, "can_operate": True}
    if request.htmx:
        context |= {"tokens": list(agent.tokens.all()), "htmx_response": True}
        return render(request, "memory_admin/agent.html#token-issued", context)
    # No redirect: the secret is shown once, in this response, and stored nowhere.
    return _agent_page(request, ns, agent, issued=token, secret=secret)


@operator
def revoke_token(request: HttpRequest, ns: Namespace, token_id: int) -> HttpResponse:
    token = get_object_or_404(Token, pk=token_id, agent__ns=ns)
    token = token_service.revoke_token(token=token, actor=Actor.of_operator(request.user))
    if request.htmx:
        return render(
            request, "memory_admin/agent.html#token-row", {"ns": ns, "token": token, "can_operate": True}
        )
    messages.info(request, f"Token {token.prefix}… revoked.")
    return redirect("agent", ns.name, token.agent.name)


def agent_choices(ns: Namespace) -> list[str] | None:
    """The agent filter's choices; None (a text box instead) when there are too many for a menu:
    10,000 names made the facts and timeline pages half a megabyte."""
    names = list(Agent.objects.filter(ns=ns).order_by("name").values_list("name", flat=True)[: LIST_PAGE + 1])
    return names if len(names) <= LIST_PAGE else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
