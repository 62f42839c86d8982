"""What each console screen shows, shared by the page views and the live pushes.

A `View` names one open page (its screen and filters); the page view renders it whole,
live.render_changes renders only the fragments an event changed, both from the same
context builders here, so a pushed fragment is the same markup as the page's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlencode

from django.contrib.postgres.search import SearchQuery

from memory_admin import positions
from memory_admin.models import Agent, Conflict, Event, Fact, Namespace, Record, RecordVersion
from memory_admin.services import SYSTEM, activity
from memory_admin.services import groups as group_service
from memory_admin.services.conflicts import list_conflicts
from memory_admin.services.counts import tally
from memory_admin.services.events import head as log_head
from memory_admin.services.events import log_status
from memory_admin.services.leftovers import stale_with_leftovers
from memory_admin.services.locks import count_locks, list_locks
from memory_admin.services.status import count_agents, list_agents
from memory_admin.views.diff import three_way

PAGE_SIZE = 50


@dataclass(frozen=True)
class View:
    """One open page: its screen and filters (also the websocket's query string)."""

    page: str
    agent: str = ""
    category: str = ""
    q: str = ""
    type: str = ""
    key: str = ""
    prefix: str = ""
    conflict: int = 0
    txn: str = ""  # the timeline of one /txn: its events alone

    @classmethod
    def parse(cls, params: dict[str, Any]) -> View:
        """From a websocket query string; unknown parameters are ignored."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for name in known:
            raw = params.get(name)
            if isinstance(raw, list):
                raw = raw[0] if raw else None
            if raw in (None, ""):
                continue
            if name == "conflict":
                try:
                    values[name] = int(raw)
                except ValueError:
                    continue
            else:
                values[name] = str(raw)[:200]
        return cls(**{"page": "overview", **values})

    def query(self) -> str:
        return urlencode({k: v for k, v in asdict(self).items() if v not in ("", 0)})

    def events(self, ns: Namespace):
        """The page's events, newest first (timeline and agent page filters)."""
        events = Event.objects.filter(ns=ns)
        if self.type:
            events = (
                events.filter(type__startswith=self.type)
                if "." not in self.type
                else events.filter(type=self.type)
            )
        if self.agent:
            events = events.filter(**{self._agent_field(): self.agent})
        if self.txn:
            events = events.filter(txn=self.txn)
        return events.filter(position__isnull=False).order_by("-position")

    def shows_event(self, event: Event) -> bool:
        if self.type and not (
            event.type == self.type if "." in self.type else event.type.startswith(self.type)
        ):
            return False
        if self.txn and event.txn != self.txn:
            return False
        return not self.agent or getattr(event, self._agent_field()) == self.agent

    def _agent_field(self) -> str:
        """Where the events of `agent` name it. Every event an agent appends names it as its
        agent_id (append_event's default), as do those done to it (a force-release, a token, a
        release-all): one range of event_ns_agent_idx. `agent_id OR actor` read the log backwards
        row by row: 200 ms for an agent's page at a million events. Operators and the system are
        no agent: their events are found by actor."""
        return "actor" if self.agent == SYSTEM or self.agent.startswith("operator:") else "agent_id"

    def shows_fact(self, fact: Fact) -> bool:
        if self.category and fact.category != self.category:
            return False
        if self.agent and fact.agent.name != self.agent:
            return False
        return not self.q or Fact.objects.filter(pk=fact.pk, search=_search(self.q)).exists()


def _search(q: str) -> SearchQuery:
    return SearchQuery(q, search_type="websearch", config="english")


def last_event_id(ns: Namespace) -> int:
    """Where this page's live feed starts: read before the page's data, so nothing falls between."""
    return log_head(ns)


def open_conflict_count(ns: Namespace) -> int:
    return Conflict.objects.filter(ns=ns, status=Conflict.Status.OPEN).count()


# The overview shows this many agent cards; the agents page lists the rest, a page at a time.
AGENT_CARDS = 48
# The agents and locks pages show this many rows at a time (10,000 rows make a 5 MB page).
LIST_PAGE = 200


def overview_counts(ns: Namespace) -> dict[str, Any]:
    """The overview's numbers, counted in the stores without loading the agents or locks."""
    states = count_agents(ns=ns)
    return {
        "agents_live": states["live"],
        "agents_stale": states["stale"],
        "agents_never_seen": states["never_seen"],
        "facts": tally(Fact.objects.filter(ns=ns)),
        "records": tally(Record.objects.filter(ns=ns, deleted=False)),
        "conflicts": open_conflict_count(ns),
        "locks": count_locks(ns=ns),
        "per_minute": activity.last_minute(ns),
        "log": log_status(ns),
    }


# Status changes come with every heartbeat that says something new: on the overview they
# would push everything else out of its latest events, and its agent cards show them anyway.
OVERVIEW_HIDES = ("status.changed",)


def overview_context(ns: Namespace) -> dict[str, Any]:
    counts = overview_counts(ns)
    total = counts["agents_live"] + counts["agents_stale"] + counts["agents_never_seen"]
    return {
        "counts": counts,
        "agents": list_agents(ns=ns, limit=AGENT_CARDS),
        "agents_hidden": max(0, total - AGENT_CARDS),
        "latest": list(
            Event.objects.filter(ns=ns, position__isnull=False)
            .exclude(type__in=OVERVIEW_HIDES)
            .order_by("-position")[:15]
        ),
        "conflicts": list_conflicts(ns=ns, limit=5),
        "expiring": list_locks(ns=ns, limit=5),  # soonest to expire first
        "stale_leftovers": stale_with_leftovers(ns=ns),
        "charts": overview_charts(ns, live=lambda: counts["agents_live"]),
    }


def live_agents(ns: Namespace) -> Callable[[], int]:
    return lambda: count_agents(ns=ns)["live"]


def overview_charts(ns: Namespace, *, live: Callable[[], int] | None = None) -> dict[str, Any]:
    """The overview's charts of the last hour; `live` says how many agents are live now, to
    sample into the chart when the buckets are counted (not when reused)."""
    buckets = activity.recent_hour(ns, live_agents=live)
    return {
        "events": activity.chart(buckets, ("events",)),
        "writes": activity.chart(buckets, ("writes", "conflicts")),
        "locks": activity.chart(buckets, ("locks", "waits")),
        "agents": activity.chart(buckets, ("agents",)),
    }


def agent_activity(ns: Namespace, agent: Agent) -> dict[str, Any]:
    return activity.chart(activity.recent_hour(ns, agent=agent.name), ("events",))


SEARCH_LIMIT = 20


def search_results(ns: Namespace, q: str) -> dict[str, Any]:
    """Facts matching `q` as full text (newest first), records whose key starts with it and agents
    whose name contains it; each list cut at SEARCH_LIMIT."""
    if not q:
        return {"facts": [], "records": [], "agents": []}
    facts = list(
        Fact.objects.filter(ns=ns, search=_search(q)).select_related("agent").order_by("-id")[:SEARCH_LIMIT]
    )
    # Keys sort bytewise (collation C): a prefix is a range of the (ns, key) index.
    records = list(
        Record.objects.filter(ns=ns, key__startswith=q, deleted=False).order_by("key")[:SEARCH_LIMIT]
    )
    agents = list(Agent.objects.filter(ns=ns, name__icontains=q).order_by("name")[:SEARCH_LIMIT])
    return {"facts": facts, "records": records, "agents": agents}


def groups_context(ns: Namespace) -> dict[str, Any]:
    """The consumer-groups page: each group with its first unacked deliveries and parked events."""
    states = group_service.list_groups(ns=ns)
    parked = group_service.list_parked(ns=ns, limit=500)
    deliveries = {
        state.row.pk: group_service.pending_deliveries(ns=ns, group=state.row.name, limit=20)
        for state in states
        if state.pending
    }
    # The delivered events themselves, to inspect: one query for every group's first twenty.
    numbers = {d.event for found in deliveries.values() for d in found}
    bodies = {positions.of(e): e.body() for e in positions.numbered(ns, list(numbers))} if numbers else {}
    shown = [
        GroupView(
            state=state,
            deliveries=[(d, bodies.get(d.event)) for d in deliveries.get(state.row.pk, [])],
            parked_events=[p for p in parked if p.group_id == state.row.pk][:50],
        )
        for state in states
    ]
    return {"groups": shown, "head": positions.head(ns)}


@dataclass(frozen=True)
class GroupView:
    state: group_service.GroupState
    deliveries: list
    parked_events: list

    def __getattr__(self, name: str) -> Any:  # the template reads the state's fields directly
        return getattr(self.state, name)


def agent_panels(ns: Namespace, agent: Agent) -> dict[str, Any]:
    return {
        "agent_records": list(
            Record.objects.filter(ns=ns, updated_by=agent.name, deleted=False).order_by("-updated")[:20]
        ),
        "agent_locks": list_locks(ns=ns, owner=agent.name),
        "tokens": list(agent.tokens.all()),
    }


def record_panels(ns: Namespace, key: str) -> dict[str, Any]:
    return {
        "record_conflicts": list(
            Conflict.objects.filter(ns=ns, key=key, status=Conflict.Status.OPEN).order_by("-id")[:50]
        )
    }


def conflict_context(conflict: Conflict) -> dict[str, Any]:
    record = Record.objects.filter(ns=conflict.ns, key=conflict.key).first()
    live = record if record is not None and not record.deleted else None
    base = None
    if record is not None and conflict.expected_version:
        base = RecordVersion.objects.filter(record=record, version=conflict.expected_version).first()
    base_lines, current_lines, proposed_lines = three_way(
        base.value if base and not base.deleted else None,
        live.value if live else None,
        None if conflict.delete else conflict.proposed_value,
    )
    return {
        "conflict": conflict,
        "record": live,
        "base": base,
        # An accept or merge is a versioned write over the version the operator sees now.
        "write_over": live.version if live else 0,
        "base_lines": base_lines,
        "current_lines": current_lines,
        "proposed_lines": proposed_lines,
    }
