"""Filters the console's templates share: readable JSON, times for countdowns, event links."""

from __future__ import annotations

import json
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from django import template
from django.urls import NoReverseMatch, reverse
from django.utils.timezone import localtime, now

from memory_admin.models import HeldLock, iso, payload_id

register = template.Library()


@register.filter
def pretty(value: Any) -> str:
    """JSON indented for people, keys in a stable order so versions compare line by line."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@register.filter
def json_preview(value: Any, length: int = 80) -> str:
    """A JSON value on one line for a table cell, cut at `length` characters with an ellipsis:
    `{"ok": true}`, never a Python repr like `{'ok': True}`."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= length else text[: max(1, length - 1)] + "…"


@register.filter
def state_label(state: str) -> str:
    return state.replace("_", " ")


@register.filter
def jsonish(value: Any) -> str:
    """A payload value as JSON shows it (null, false), strings bare, cut at 60 characters."""
    return value if isinstance(value, str) else json_preview(value, 60)


@register.filter
def when(moment: datetime | None) -> str:
    """An event's time: 14:03:07 today, `Nov 29 14:03` on another day (console.js shows it in
    the reader's own zone, with the full date and zone on hover)."""
    if moment is None:
        return ""
    moment = localtime(moment)
    return moment.strftime("%H:%M:%S" if moment.date() == localtime().date() else "%b %d %H:%M")


@register.filter
def isotime(moment: datetime | None) -> str:
    return iso(moment) or ""


@register.filter
def seconds_until(moment: datetime | None) -> int:
    return 0 if moment is None else max(0, int((moment - now()).total_seconds()))


@register.filter
def duration(seconds: float | int | None) -> str:
    """12s, 3m 04s, 2h 05m: what a countdown shows before console.js takes over."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


@register.filter
def ms_duration(ms: int | None) -> str:
    return "" if ms is None else duration(ms / 1000)


@register.filter
def lag(seconds: float) -> str:
    """How far behind, for people: milliseconds under a second, else seconds."""
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    return f"{seconds:.1f} s"


@register.filter
def since(moment: datetime | None) -> str:
    return "" if moment is None else duration((now() - moment).total_seconds())


@register.filter
def event_kind(event_type: str) -> str:
    """The noun of an event type (record.written -> record), for its colour."""
    return event_type.split(".", 1)[0]


@register.simple_tag
def subject_url(ns: str, event) -> str:
    """Where an event's subject lives in the console, or '' when it has none.

    Total: events from before some types were reserved may pose as the server's with any
    payload (`conflict_id: "not-a-number"`); such a subject renders as text, not as a 500.
    """
    try:
        return _subject_url(ns, event)
    except NoReverseMatch:
        return ""


def _subject_url(ns: str, event) -> str:
    kind = event.type.split(".", 1)[0]
    if kind == "record" and event.subject:
        return reverse("record", args=[ns, event.subject])
    if kind == "conflict" and payload_id(event, "conflict_id"):
        return reverse("conflict", args=[ns, payload_id(event, "conflict_id")])
    if kind == "fact" and payload_id(event, "fact_id"):
        return reverse("fact", args=[ns, payload_id(event, "fact_id")])
    if kind == "lock":
        return reverse("locks", args=[ns]) + "#" + _lock_anchor(event.subject)
    if kind in ("status", "agent") and (event.agent_id or event.subject):
        return reverse("agent", args=[ns, event.agent_id or event.subject])
    if event.agent_id:
        return reverse("agent", args=[ns, event.agent_id])
    return ""


@register.filter
def lock_dom_id(resource: str) -> str:
    return _lock_anchor(resource)


def _lock_anchor(resource: str) -> str:
    # The same id the lock's row carries (HeldLock.dom_id), without a HeldLock at hand.
    return HeldLock.dom_id.fget(SimpleNamespace(resource=resource))
