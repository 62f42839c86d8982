"""What every console view shares: the namespace from the URL, who may act, and rendering a
screen whole or as the one fragment an htmx request names."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import get_template
from django.views.decorators.http import require_POST

from memory_admin.errors import NotFound, Unavailable
from memory_admin.models import Agent, Namespace
from memory_admin.views.screens import LIST_PAGE, View, open_conflict_count

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


def agent_choices(ns: Namespace) -> list[str] | None:
    """The agent filter's choices; None (a text box instead) when there are too many for a menu:
    10,000 names made the facts and timeline pages half a megabyte."""
    names = list(Agent.objects.filter(ns=ns).order_by("name").values_list("name", flat=True)[: LIST_PAGE + 1])
    return names if len(names) <= LIST_PAGE else None


def as_int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def filters(request: HttpRequest, *names: str) -> dict[str, str]:
    """A page's text filters, from its query string, white space stripped ("" when not given)."""
    return {name: request.GET.get(name, "").strip() for name in names}


def page_or_action(page, action):
    """One URL for a page and the form it posts to itself: GET (or HEAD) the page, POST the action."""

    @wraps(page)
    def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return (action if request.method == "POST" else page)(request, *args, **kwargs)

    return view
