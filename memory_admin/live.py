"""The only module that touches the channel layer: what the relay broadcasts to pages,
and the fragments a console socket sends for it.

A broadcast is a doorbell carrying one event; the consumer answers it by reading the
Postgres log after the last event its page has (so a dropped or reordered message, a
reconnect or a paused feed all end the same way: every event, once, in order) and
rendering what those events changed on that page (views.screens.View). Fragments are
rendered from the current state, so a batch of events renders each changed row once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, TypedDict

from channels.layers import get_channel_layer
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


class Changed(TypedDict):
    """A doorbell: the namespace's log has grown to `event["id"]` (a position); every console
    socket of the namespace reads the log after its own cursor."""

    type: Literal["memory.changed"]
    ns: str
    event: dict


def group_name(ns_id: int) -> str:
    return f"ns-{ns_id}"


async def broadcast(ns_id: int, ns: str, position: int) -> None:
    message: Changed = {"type": "memory.changed", "ns": ns, "event": {"id": position}}
    await get_channel_layer().group_send(group_name(ns_id), message)


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


def render_changes(ns: Namespace, view: View, events: list[Event], *, can_operate: bool = False) -> str:
    """The oob fragments `events` changed on `view`, then the page's new cursor."""
    if not events:
        return ""
    ctx = {"ns": ns, "view": view, "oob": True, "fresh": True, "can_operate": can_operate}
    kinds = {e.type.split(".", 1)[0] for e in events}
    touched_agents = _unique(
        e.agent_id or e.subject for e in events if e.type.startswith(("status.", "agent."))
    )
    parts: list[str] = []

    def part(template: str, **extra) -> None:
        parts.append(render_to_string(f"memory_admin/{template}", {**ctx, **extra}))

    def rows(container: str, html: list[str], where: str = "afterbegin") -> None:
        if html:
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
                parts.insert(0, fragment)
            else:
                parts.append(fragment)

    def event_rows(shown: list[Event]) -> list[str]:
        # Newest first, as the lists show them.
        return [
            render_to_string("memory_admin/timeline.html#event-row", {**ctx, "oob": False, "event": e})
            for e in reversed(shown)
        ]

    def agent_fragments(template: str) -> list[str]:
        out = []
        for name in touched_agents:
            try:
                status = get_agent(ns=ns, agent_id=name)
            except NotFound:
                continue
            out.append(render_to_string(f"memory_admin/{template}", {**ctx, "oob": False, "a": status}))
        return out

    if "conflict" in kinds:
        parts.append(
            render_to_string(
                "base.html#nav-conflicts", {**ctx, "open_conflicts": screens.open_conflict_count(ns)}
            )
        )

    page = view.page
    if page == "overview":
        part("overview.html#counts", counts=screens.overview_counts(ns))
        rows("agent-grid", agent_fragments("overview.html#agent-card"), "beforeend")
        rows("latest-events", event_rows([e for e in events if e.type not in screens.OVERVIEW_HIDES]))
        if "conflict" in kinds:
            part("overview.html#open-conflicts", conflicts=list_conflicts(ns=ns, limit=5))
        if "lock" in kinds:
            part("overview.html#expiring-locks", expiring=list_locks(ns=ns, limit=5))
        part("overview.html#charts", charts=screens.overview_charts(ns))
        if kinds & {"lock", "agent", "group"}:
            part("overview.html#stale-leftovers", stale_leftovers=stale_with_leftovers(ns=ns))
    elif page == "agents":
        rows("agent-rows", agent_fragments("agents.html#agent-row"), "beforeend")
    elif page == "agent":
        agent = Agent.objects.filter(ns=ns, name=view.agent).first()
        if agent is not None:
            mine = [e for e in events if view.shows_event(e)]
            if any(e.type.startswith(("status.", "agent.")) and e.agent_id == agent.name for e in mine):
                part("agent.html#agent-status", status=get_agent(ns=ns, agent_id=agent.name))
            rows("agent-events", event_rows(mine))
            if mine:
                part("agent.html#agent-activity", agent=agent, activity=screens.agent_activity(ns, agent))
            new_facts = _facts([e for e in mine if e.type == "fact.stored"])
            rows("agent-facts", [_fact_row(ctx, f) for f in new_facts if f.agent_id == agent.pk])
            panels = screens.agent_panels(ns, agent)
            if any(e.type.startswith("lock.") for e in mine):
                part("agent.html#agent-locks", agent=agent, agent_locks=panels["agent_locks"])
            if any(e.type.startswith("record.") for e in mine):
                part("agent.html#agent-records", agent=agent, agent_records=panels["agent_records"])
            if any(e.type.startswith("agent.token_") for e in mine):
                part("agent.html#token-list", agent=agent, tokens=panels["tokens"])
    elif page == "leftovers":
        agent = Agent.objects.filter(ns=ns, name=view.agent).first()
        concerned = any(
            view.agent in (e.agent_id, e.actor, e.subject) or e.type.startswith("group.") for e in events
        )
        if agent is not None and concerned:
            part("leftovers.html#cascade", agent=agent, left=agent_leftovers(ns=ns, agent=agent))
    elif page == "groups":
        if kinds & {"group"}:
            part("groups.html#groups", **screens.groups_context(ns))
    elif page == "facts":
        new_facts = _facts([e for e in events if e.type == "fact.stored"])
        rows("fact-rows", [_fact_row(ctx, f) for f in new_facts if view.shows_fact(f)])
    elif page == "records":
        keys = _unique(
            e.subject for e in events if e.type.startswith("record.") and e.subject.startswith(view.prefix)
        )
        html = []
        for key in keys:
            record = Record.objects.filter(ns=ns, key=key).first()
            if record is not None:
                html.append(
                    render_to_string(
                        "memory_admin/records.html#record-row", {**ctx, "oob": False, "record": record}
                    )
                )
        rows("record-rows", html)
    elif page == "record":
        mine = [e for e in events if e.subject == view.key]
        record = Record.objects.filter(ns=ns, key=view.key).first()
        if record is not None and any(e.type.startswith("record.") for e in mine):
            part("record.html#record-value", record=record)
            part(
                "record.html#versions",
                record=record,
                versions=record_versions(ns=ns, key=record.key, limit=200),
            )
            part("record.html#edit-notice", record=record)
        if any(e.type.startswith("conflict.") for e in mine):
            part("record.html#record-conflicts", **screens.record_panels(ns, view.key))
    elif page == "conflicts":
        html = []
        for e in events:
            if e.type.startswith("conflict."):
                found = Conflict.objects.filter(ns=ns, pk=payload_id(e, "conflict_id")).first()
                if found is not None:
                    html.append(
                        render_to_string(
                            "memory_admin/conflicts.html#conflict-row",
                            {**ctx, "oob": False, "conflict": found},
                        )
                    )
        rows("conflict-rows", html)
    elif page == "conflict":
        if any(e.subject == view.key and e.type.startswith(("conflict.", "record.")) for e in events):
            found = Conflict.objects.filter(ns=ns, pk=view.conflict).first()
            if found is not None:
                part("conflict.html#conflict-status", **screens.conflict_context(found))
    elif page == "locks":
        html = []
        for resource in _unique(e.subject for e in events if e.type.startswith("lock.")):
            try:
                lock = get_lock(ns=ns, resource=resource)
            except NotFound:
                html.append(render_to_string("memory_admin/locks.html#lock-gone", {"resource": resource}))
                continue
            html.append(
                render_to_string("memory_admin/locks.html#lock-row", {**ctx, "oob": False, "lock": lock})
            )
        rows("lock-rows", html)
    elif page == "timeline":
        rows("event-rows", event_rows([e for e in events if view.shows_event(e)]))
    parts.append(cursor_html(events[-1].id))
    return "\n".join(parts)


def _unique(values) -> list:
    return list(dict.fromkeys(v for v in values if v))


def _facts(events: list[Event]) -> list[Fact]:
    ids = [payload_id(e, "fact_id") for e in events]
    found = {f.pk: f for f in Fact.objects.filter(pk__in=[i for i in ids if i]).select_related("agent")}
    return [found[i] for i in reversed(ids) if i in found]


def _fact_row(ctx: dict, fact: Fact) -> str:
    return render_to_string("memory_admin/facts.html#fact-row", {**ctx, "oob": False, "fact": fact})
