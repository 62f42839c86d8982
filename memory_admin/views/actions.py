"""The console's actions (POST): operators (perm `memory_admin.operate`) act.

Every action goes through a service with the operator as actor, so the event log names the
person. An action whose form has errors answers with its page again (pages.py), status 422.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import get_template

from memory_admin.errors import Invalid, NotFound, VersionConflict
from memory_admin.forms import ForceReleaseForm, IssueTokenForm, RecordEditForm, ReleaseAgentForm, ResolveForm
from memory_admin.models import Agent, Namespace, Record, Token
from memory_admin.services import Actor, history
from memory_admin.services import conflicts as conflict_service
from memory_admin.services import groups as group_service
from memory_admin.services import tokens as token_service
from memory_admin.services.leftovers import release_and_reassign
from memory_admin.services.locks import force_release as force_release_lock
from memory_admin.services.locks import get_lock
from memory_admin.services.records import write_record
from memory_admin.views.console import as_int, operator
from memory_admin.views.pages import agent_page, conflict_page, leftovers_context, leftovers_page, record_page
from memory_admin.views.screens import (
    View,
    groups_context,
)


@operator
def release_agent(request: HttpRequest, ns: Namespace, name: str) -> HttpResponse:
    """Free everything a stopped agent holds: its locks, and its unacked deliveries handed back."""
    agent = get_object_or_404(Agent, ns=ns, name=name)
    form = ReleaseAgentForm(request.POST)
    base = {"ns": ns, "view": View("leftovers", agent=agent.name), "can_operate": True}
    if not form.is_valid():
        if request.htmx:
            context = {**base, **leftovers_context(ns, agent, form)}
            return render(request, "memory_admin/leftovers.html#cascade", context, status=422)
        return leftovers_page(request, ns, agent, form, status=422)
    done = release_and_reassign(
        ns=ns, agent=agent, reason=form.cleaned_data["reason"], actor=Actor.of_operator(request.user)
    )
    locks = ", ".join(f"{h.resource} (token {h.token})" for h in done.locks) or "no locks"
    note = (
        f"Released {locks} from {agent.name}; "
        f"{done.deliveries} unacknowledged deliver{'y' if done.deliveries == 1 else 'ies'} handed back."
    )
    if request.htmx:
        context = {**base, **leftovers_context(ns, agent)}
        html = get_template("memory_admin/leftovers.html#cascade").render(context, request)
        html += get_template("memory_admin/locks.html#released").render({"note": note}, request)
        return HttpResponse(html)
    messages.info(request, note)
    return redirect("leftovers", ns.name, agent.name)


@operator
def edit_record(request: HttpRequest, ns: Namespace, key: str) -> HttpResponse:
    record = get_object_or_404(Record, ns=ns, key=key)
    form = RecordEditForm(request.POST)
    if not form.is_valid():
        return record_page(request, ns, record, form, status=422)
    try:
        written, _ = write_record(
            ns=ns,
            key=record.key,
            value=form.cleaned_data["value"],
            expected_version=form.cleaned_data["expected_version"],
            actor=Actor.of_operator(request.user),
        )
    except VersionConflict as exc:
        return _kept_as_conflict(request, ns, "Your edit was refused", exc)
    except Invalid as exc:
        form.add_error("value", exc.message)
        return record_page(request, ns, record, form, status=422)
    messages.success(request, f"Saved {written.key} as version {written.version}.")
    return redirect("record", ns.name, written.key)


@operator
def restore_version(request: HttpRequest, ns: Namespace, key: str) -> HttpResponse:
    """Write an old version of a record again, over the version the operator saw."""
    version, expected = as_int(request.POST.get("version")), as_int(request.POST.get("expected_version"))
    if version is None or expected is None:
        messages.error(request, "Restore needs the version to restore and the version it replaces.")
        return redirect("record", ns.name, key)
    try:
        written, old = history.restore_version(
            ns=ns, key=key, version=version, expected_version=expected, actor=Actor.of_operator(request.user)
        )
    except VersionConflict as exc:
        return _kept_as_conflict(request, ns, "Restore refused", exc)
    except Invalid as exc:
        messages.error(request, exc.message)
        return redirect("record", ns.name, key)
    messages.success(request, f"Restored v{old.version} of {key} as version {written.version}.")
    return redirect("record", ns.name, key)


def _kept_as_conflict(request: HttpRequest, ns: Namespace, refused: str, exc: VersionConflict):
    """A write of the operator's that lost: to the conflict it is kept as, saying so."""
    conflict_id = exc.details["conflict_id"]
    messages.error(request, f"{refused}: {exc.message}. It is kept as conflict #{conflict_id}.")
    return redirect("conflict", ns.name, conflict_id)


@operator
def resolve(request: HttpRequest, ns: Namespace, conflict_id: int) -> HttpResponse:
    found = conflict_service.get_conflict(ns=ns, conflict_id=conflict_id)
    form = ResolveForm(request.POST)
    if not form.is_valid():
        return conflict_page(request, ns, found, form, status=422)
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


def _parked_action(service, done: str):
    """The view that hands a parked event to `service` (replay or discard); `done` says what
    became of the event, before the group's name."""

    @operator
    def view(request: HttpRequest, ns: Namespace, parked_id: int) -> HttpResponse:
        def act(actor):
            parked = service(ns=ns, parked_id=parked_id, actor=actor)
            return f"Event #{parked.event} {done} {parked.group.name}."

        return _group_action(request, ns, act)

    view.__name__ = view.__qualname__ = service.__name__
    return view


replay_parked = _parked_action(group_service.replay_parked, "replayed to")
discard_parked = _parked_action(group_service.discard_parked, "discarded for")


@operator
def reset_group(request: HttpRequest, ns: Namespace) -> HttpResponse:
    group, after = request.POST.get("group", ""), as_int(request.POST.get("after"))

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
        limit = as_int(raw) if raw else None
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
    return agent_page(request, ns, agent, issued=token, secret=secret)


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
