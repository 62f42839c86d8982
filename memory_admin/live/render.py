"""The fragments a console socket sends for a batch of events: one renderer per screen.

A socket answers a doorbell by reading the Postgres log after the last event its page has
(so a dropped or reordered message, a reconnect or a paused feed all end the same way: every
event, once, in order) and rendering what those events changed on that page (a
views.screens.View). Fragments are rendered from the current state, so a batch of events
renders each changed row once, with the context builders the page itself uses
(views/screens.py): a pushed fragment is the same markup as the page's.

Each screen's renderer is registered with `@renders("<page>")`; a page without one gets
only its new cursor (and the header's conflict count).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from django.template.loader import render_to_string

from memory_admin.errors import NotFound
from memory_admin.models import Agent, Conflict, Event, Fact, Namespace, Record, payload_id
from memory_admin.services.conflicts import list_conflicts
from memory_admin.services.events import read_events
from memory_admin.services.leftovers import agent_leftovers, stale_with_leftovers
from memory_admin.services.locks import get_lock, list_locks
from memory_admin.services.records import record_versions
from memory_admin.services.status import get_agent
from memory_admin.views import screens
from memory_admin.views.screens import View

log = logging.getLogger("memory_admin.console")

# A page further behind than this reloads instead of replaying (console.js).
MAX_REPLAY = 1000
BATCH = 200
# Containers that are <tbody> elements; the rest hold <li> or cards.
TABLE_BODIES = {"agent-rows", "fact-rows", "record-rows", "conflict-rows", "lock-rows", "agent-facts"}
# An event's row is the same markup whenever it renders (the event never changes; its time
# shows the date once it is another day), while sockets at different cursors render batches
# that overlap: each row renders once per page and permission, and is kept for a while.
ROW_SECONDS = 60.0
KEEP_ROWS = 4096
_rows: OrderedDict[tuple, tuple[float, str]] = OrderedDict()
_rows_lock = threading.Lock()


def pending(ns: Namespace, after: int) -> tuple[list[Event], bool]:
    """The next batch of events after `after`, and whether more follow it."""
    events = read_events(ns=ns, after=after, limit=BATCH + 1)
    return events[:BATCH], len(events) > BATCH


@dataclass(frozen=True)
class Batch:
    """A read of the log: the events after `after` (at most BATCH), begun at `started`
    (time.monotonic). Positions are dense and final, so a batch holds every event of its
    namespace from `after` through its last one, whenever it is reused."""

    after: int
    events: list[Event]
    more: bool  # a full batch: more events follow it
    started: float

    @property
    def last(self) -> int:
        return self.events[-1].id if self.events else self.after

    def serves(self, *, since: float | None = None, need: int | None = None) -> bool:
        """Whether a socket at `after` may send this batch: it has events beyond what this read
        saw only if the read began before `since`, and only through its last id."""
        if self.more:
            return True  # complete as far as it goes; the socket asks again after its last id
        if since is not None and self.started >= since:
            return True
        return need is not None and self.last >= need


def read_batch(
    ns: Namespace, after: int, view: View, *, can_operate: bool, started: float
) -> tuple[Batch, str]:
    """Read the next batch and render it for `view` in one trip to the database thread."""
    events, more = pending(ns, after)
    return Batch(after, events, more, started), render_safely(ns, view, events, can_operate=can_operate)


def render_safely(ns: Namespace, view: View, events: list[Event], *, can_operate: bool) -> str:
    """render_changes, or only the new cursor if the fragments cannot render: a broken
    fragment must not wedge the page in a replay loop; the next page load shows the state."""
    try:
        return render_changes(ns, view, events, can_operate=can_operate)
    except Exception:
        log.exception("rendering events %s..%s failed", events[0].id, events[-1].id)
        return cursor_html(events[-1].id)


def cursor_html(event_id: int, reload: bool = False) -> str:
    return render_to_string("base.html#live-cursor", {"cursor": event_id, "oob": True, "reload": reload})


@dataclass
class Push:
    """One message being built: the events a page has not seen, and the fragments they changed."""

    ns: Namespace
    view: View
    events: list[Event]
    can_operate: bool
    parts: list[str] = field(default_factory=list)

    @cached_property
    def ctx(self) -> dict:
        return {"ns": self.ns, "view": self.view, "oob": True, "fresh": True, "can_operate": self.can_operate}

    @cached_property
    def kinds(self) -> set[str]:
        """The events' families: "fact", "record", "lock", "conflict", "status", "agent", ..."""
        return {e.type.split(".", 1)[0] for e in self.events}

    def render(self, template: str, **extra) -> str:
        """A fragment of a template under memory_admin/, as a row inside a container (not oob)."""
        return render_to_string(f"memory_admin/{template}", {**self.ctx, "oob": False, **extra})

    def part(self, template: str, **extra) -> None:
        """An oob fragment that replaces its element (by id) on the page."""
        self.parts.append(render_to_string(f"memory_admin/{template}", {**self.ctx, **extra}))

    def rows(self, container: str, html: list[str], where: str = "afterbegin") -> None:
        """Rows inserted into `container` (newest first: at its beginning, unless `where` says)."""
        if not html:
            return
        # Rows of a table only survive HTML parsing inside a table part.
        tag = "tbody" if container in TABLE_BODIES else "div"
        context = {"where": where, "container": container, "rows": html, "tag": tag}
        fragment = render_to_string("base.html#oob-rows", context)
        # ...and only as the message's first element: htmx parses a message as a template's
        # content, where a <tbody> after any other element is dropped and its rows' cells
        # come out loose (each then an oob swap without a target: `oobErrorNoTarget #null`).
        # After a leading <tbody>, the elements that follow still parse as themselves.
        # A page has one table of rows at most.
        if tag == "tbody":
            self.parts.insert(0, fragment)
        else:
            self.parts.append(fragment)

    def event_rows(self, shown: list[Event]) -> list[str]:
        """The events' rows, newest first as the lists show them, each rendered once (_rows)."""
        now, rows = time.monotonic(), []
        for e in reversed(shown):
            key = (self.ns.pk, self.view, self.can_operate, e.pk)
            kept = _rows.get(key)
            if kept is None or now - kept[0] > ROW_SECONDS:
                kept = (now, self.render("timeline.html#event-row", event=e))
                with _rows_lock:
                    _rows[key] = kept
                    while len(_rows) > KEEP_ROWS:
                        _rows.popitem(last=False)
            rows.append(kept[1])
        return rows

    def agent_rows(self, template: str) -> list[str]:
        """`template` for each agent whose status or registration the events changed."""
        touched = unique(
            e.agent_id or e.subject for e in self.events if e.type.startswith(("status.", "agent."))
        )
        out = []
        for name in touched:
            try:
                status = get_agent(ns=self.ns, agent_id=name)
            except NotFound:
                continue
            out.append(self.render(template, a=status))
        return out

    def fact_rows(self, container: str, events: Iterable[Event], shows: Callable[[Fact], bool]) -> None:
        """Into `container`: the facts the `fact.stored` events among `events` stored, those
        `shows` keeps, newest first."""
        ids = [payload_id(e, "fact_id") for e in events if e.type == "fact.stored"]
        found = {f.pk: f for f in Fact.objects.filter(pk__in=[i for i in ids if i]).select_related("agent")}
        facts = [found[i] for i in reversed(ids) if i in found]
        self.rows(container, [self.render("facts.html#fact-row", fact=f) for f in facts if shows(f)])


Renderer = Callable[[Push], None]
# page name (View.page) -> the function that renders what a batch changed on it
RENDERERS: dict[str, Renderer] = {}


def renders(page: str) -> Callable[[Renderer], Renderer]:
    def register(renderer: Renderer) -> Renderer:
        RENDERERS[page] = renderer
        return renderer

    return register


def render_changes(ns: Namespace, view: View, events: list[Event], *, can_operate: bool = False) -> str:
    """The oob fragments `events` changed on `view`, then the page's new cursor."""
    if not events:
        return ""
    push = Push(ns, view, events, can_operate)
    if "conflict" in push.kinds:
        push.parts.append(
            render_to_string(
                "base.html#nav-conflicts", {**push.ctx, "open_conflicts": screens.open_conflict_count(ns)}
            )
        )
    renderer = RENDERERS.get(view.page)
    if renderer is not None:
        renderer(push)
    push.parts.append(cursor_html(events[-1].id))
    return "\n".join(push.parts)


def unique(values) -> list:
    return list(dict.fromkeys(v for v in values if v))


@renders("overview")
def overview(push: Push) -> None:
    ns, kinds = push.ns, push.kinds
    push.part("overview.html#counts", counts=screens.overview_counts(ns))
    push.rows("agent-grid", push.agent_rows("overview.html#agent-card"), "beforeend")
    push.rows(
        "latest-events", push.event_rows([e for e in push.events if e.type not in screens.OVERVIEW_HIDES])
    )
    if "conflict" in kinds:
        push.part("overview.html#open-conflicts", conflicts=list_conflicts(ns=ns, limit=5))
    if "lock" in kinds:
        push.part("overview.html#expiring-locks", expiring=list_locks(ns=ns, limit=5))
    push.part("overview.html#charts", charts=screens.overview_charts(ns))
    if kinds & {"lock", "agent", "group"}:
        push.part("overview.html#stale-leftovers", stale_leftovers=stale_with_leftovers(ns=ns))


@renders("agents")
def agents(push: Push) -> None:
    push.rows("agent-rows", push.agent_rows("agents.html#agent-row"), "beforeend")


@renders("agent")
def agent(push: Push) -> None:
    ns = push.ns
    found = Agent.objects.filter(ns=ns, name=push.view.agent).first()
    if found is None:
        return
    mine = [e for e in push.events if push.view.shows_event(e)]
    if any(e.type.startswith(("status.", "agent.")) and e.agent_id == found.name for e in mine):
        push.part("agent.html#agent-status", status=get_agent(ns=ns, agent_id=found.name))
    push.rows("agent-events", push.event_rows(mine))
    if mine:
        push.part("agent.html#agent-activity", agent=found, activity=screens.agent_activity(ns, found))
    push.fact_rows("agent-facts", mine, lambda fact: fact.agent_id == found.pk)
    panels = screens.agent_panels(ns, found)
    if any(e.type.startswith("lock.") for e in mine):
        push.part("agent.html#agent-locks", agent=found, agent_locks=panels["agent_locks"])
    if any(e.type.startswith("record.") for e in mine):
        push.part("agent.html#agent-records", agent=found, agent_records=panels["agent_records"])
    if any(e.type.startswith("agent.token_") for e in mine):
        push.part("agent.html#token-list", agent=found, tokens=panels["tokens"])


@renders("leftovers")
def leftovers(push: Push) -> None:
    name = push.view.agent
    found = Agent.objects.filter(ns=push.ns, name=name).first()
    concerned = any(
        name in (e.agent_id, e.actor, e.subject) or e.type.startswith("group.") for e in push.events
    )
    if found is not None and concerned:
        push.part("leftovers.html#cascade", agent=found, left=agent_leftovers(ns=push.ns, agent=found))


@renders("groups")
def groups(push: Push) -> None:
    if "group" in push.kinds:
        push.part("groups.html#groups", **screens.groups_context(push.ns))


@renders("facts")
def facts(push: Push) -> None:
    push.fact_rows("fact-rows", push.events, push.view.shows_fact)


@renders("records")
def records(push: Push) -> None:
    prefix = push.view.prefix
    keys = unique(
        e.subject for e in push.events if e.type.startswith("record.") and e.subject.startswith(prefix)
    )
    html = []
    for key in keys:
        found = Record.objects.filter(ns=push.ns, key=key).first()
        if found is not None:
            html.append(push.render("records.html#record-row", record=found))
    push.rows("record-rows", html)


@renders("record")
def record(push: Push) -> None:
    ns, key = push.ns, push.view.key
    mine = [e for e in push.events if e.subject == key]
    found = Record.objects.filter(ns=ns, key=key).first()
    if found is not None and any(e.type.startswith("record.") for e in mine):
        push.part("record.html#record-value", record=found)
        push.part("record.html#versions", record=found, versions=record_versions(ns=ns, key=key, limit=200))
        push.part("record.html#edit-notice", record=found)
    if any(e.type.startswith("conflict.") for e in mine):
        push.part("record.html#record-conflicts", **screens.record_panels(ns, key))


@renders("conflicts")
def conflicts(push: Push) -> None:
    html = []
    for e in push.events:
        if e.type.startswith("conflict."):
            found = Conflict.objects.filter(ns=push.ns, pk=payload_id(e, "conflict_id")).first()
            if found is not None:
                html.append(push.render("conflicts.html#conflict-row", conflict=found))
    push.rows("conflict-rows", html)


@renders("conflict")
def conflict(push: Push) -> None:
    key = push.view.key
    if any(e.subject == key and e.type.startswith(("conflict.", "record.")) for e in push.events):
        found = Conflict.objects.filter(ns=push.ns, pk=push.view.conflict).first()
        if found is not None:
            push.part("conflict.html#conflict-status", **screens.conflict_context(found))


@renders("locks")
def locks(push: Push) -> None:
    html = []
    for resource in unique(e.subject for e in push.events if e.type.startswith("lock.")):
        try:
            lock = get_lock(ns=push.ns, resource=resource)
        except NotFound:
            html.append(render_to_string("memory_admin/locks.html#lock-gone", {"resource": resource}))
            continue
        html.append(push.render("locks.html#lock-row", lock=lock))
    push.rows("lock-rows", html)


@renders("timeline")
def timeline(push: Push) -> None:
    push.rows("event-rows", push.event_rows([e for e in push.events if push.view.shows_event(e)]))
