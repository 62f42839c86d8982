"""Agent status: a heartbeat with a TTL in Redis; the last known state in Postgres.

A heartbeat that changes nothing touches Redis only. A change of status or detail,
or an agent coming (back) to life, also updates Postgres and appends `status.changed`.
The relay's sweep turns lapsed heartbeats into one `agent.stale` each.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import BigIntegerField, Func, Q
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin.errors import Invalid, NotFound
from memory_admin.models import Agent, AgentStatus, Namespace
from memory_admin.services import SYSTEM_ACTOR, Actor
from memory_admin.services.events import append_event
from memory_admin.validation import check_text

MIN_TTL, MAX_TTL = 5, 86400
log = logging.getLogger("memory_admin.status")

LIVE, STALE, NEVER_SEEN = "live", "stale", "never_seen"


def agent_state(*, live: bool, seen: object) -> str:
    """An agent's state, the one rule behind GET /agents, the console and the counts: live while
    its last heartbeat's TTL has not lapsed (its status in Redis, `live`); else never_seen if it
    never sent one (`seen`, Postgres' time of its last recorded heartbeat, is None); else stale."""
    if live:
        return LIVE
    return NEVER_SEEN if seen is None else STALE


def state_counts(*, total: int, live: int, never_seen: int) -> dict[str, int]:
    """agent_state over a namespace, counted: of `total` agents, `live` with a heartbeat running
    and `never_seen` without any. An agent never seen is never live (a heartbeat records `seen`
    before Redis shows it live), so the live count is capped by those seen."""
    live = min(live, total - never_seen)
    return {LIVE: live, STALE: total - live - never_seen, NEVER_SEEN: never_seen}


@r.unavailable_on_error
def heartbeat(
    *,
    agent: Agent,
    status: str,
    detail: str = "",
    ttl_seconds: int = 60,
    actor: Actor,
    at_commit: bool = False,
) -> AgentStatus:
    """Publish `agent`'s status for `ttl_seconds`; repeating it is the heartbeat.

    With `at_commit` (an operation of /txn or /batch, inside their transaction) Redis is only
    read now and written once that transaction commits: a rolled-back transaction leaves the
    agent's live status as it was. Should Redis fail in the moment after the commit, the
    heartbeat is as good as lost (logged); the next one repairs it.
    """
    if not isinstance(status, str) or not 1 <= len(status) <= 64 or not status.isprintable():
        raise Invalid("status must be 1-64 printable characters", {"status": "1-64 printable characters"})
    if not isinstance(detail, str):
        raise Invalid("detail must be text", {"detail": "text"})
    check_text(detail, "detail")
    if not MIN_TTL <= ttl_seconds <= MAX_TTL:
        raise Invalid(f"ttl_seconds must be {MIN_TTL}-{MAX_TTL}", {"ttl_seconds": f"{MIN_TTL}-{MAX_TTL}"})
    ns = agent.ns
    stamp = now()
    expires = stamp + timedelta(seconds=ttl_seconds)
    keys = [r.status_key(ns.name, agent.name), r.heartbeats_index(ns.name)]
    args = [agent.name, status, detail, r.to_ms(stamp), ttl_seconds * 1000]

    def is_change(prev_status: str | None, prev_detail: str | None, was_live: int) -> bool:
        return not was_live or prev_status != status or (prev_detail or "") != detail

    def record_change(prev_status: str | None, prev_detail: str | None, was_live: int) -> None:
        Agent.objects.filter(pk=agent.pk).update(
            status=status, detail=detail, seen=stamp, expires=expires, stale=False
        )
        append_event(
            ns=ns,
            type="status.changed",
            actor=actor,
            agent_id=agent.name,
            subject=agent.name,
            payload={
                "status": status,
                "detail": detail,
                "previous": prev_status if was_live else None,
                "ttl_seconds": ttl_seconds,
            },
        )

    if at_commit:
        with transaction.atomic():
            pipe = r.client().pipeline(transaction=False)
            pipe.hmget(keys[0], "status", "detail")
            pipe.exists(keys[0])
            (prev_status, prev_detail), was_live = pipe.execute()
            transaction.on_commit(functools.partial(r.script(r.HEARTBEAT), keys=keys, args=args), robust=True)
            if is_change(prev_status, prev_detail, was_live):
                record_change(prev_status, prev_detail, was_live)
    else:
        # The script swaps the status in one step and says what it replaced: whether this is a
        # change cannot be known before it. So a change whose Postgres part then fails is undone
        # in Redis: a refused heartbeat leaves no live status that the log never recorded.
        replaced = r.script(r.HEARTBEAT)(keys=keys, args=args)
        if is_change(*replaced[:3]):  # else a renewal only: Redis alone
            try:
                with transaction.atomic():
                    record_change(*replaced[:3])
            except BaseException:
                _restore(keys, agent.name, r.to_ms(stamp), replaced)
                raise
    return AgentStatus(agent=agent, status=status, detail=detail, updated=stamp, expires=expires, state=LIVE)


def _restore(keys: list[str], name: str, written_ms: int, replaced: list) -> None:
    """Put back the status a heartbeat replaced (HEARTBEAT's reply), unless another heartbeat
    has written since."""
    prev_status, prev_detail, was_live, prev_updated, prev_expires, score = replaced
    args = [name, written_ms, was_live, prev_status or "", prev_detail or "", prev_updated or "",
            prev_expires or 0, score or "", r.to_ms(now())]  # fmt: skip
    try:
        r.script(r.RESTORE_STATUS)(keys=keys, args=args)
    except Exception:  # Redis went away too: the status lapses with its TTL
        log.warning("could not undo the heartbeat of %s in Redis", name, exc_info=True)


@r.unavailable_on_error
def list_agents(
    *,
    ns: Namespace,
    agent_id: str | None = None,
    after: str = "",
    limit: int | None = None,
    names: list[str] | None = None,
) -> list[AgentStatus]:
    """The agents of `ns` by name (or one, or those of `names`), with their live status from Redis
    where they have one; with `limit`, a page of them after the name `after`."""
    agents = Agent.objects.filter(ns=ns, **({"name": agent_id} if agent_id else {})).select_related("ns")
    if names is not None:
        agents = agents.filter(name__in=names)
    if after:
        agents = agents.filter(name__gt=after)
    agents = list(agents.order_by("name")[:limit] if limit else agents)
    if not agents:
        return []
    pipe = r.client().pipeline(transaction=False)
    for agent in agents:
        pipe.hgetall(r.status_key(ns.name, agent.name))
    return [_status(agent, live) for agent, live in zip(agents, pipe.execute(), strict=True)]


@r.unavailable_on_error
def agent_items(*, ns: Namespace, after: str = "", limit: int | None = None) -> list[dict[str, Any]]:
    """The items of GET /agents: every agent of `ns` by name (with `limit`, a page of them after
    the name `after`), as `list_agents` gives them but as plain dicts with times as text, built
    without a model object or a datetime per agent: 10,000 of them in tens of milliseconds."""
    agents = Agent.objects.filter(ns=ns, **({"name__gt": after} if after else {})).order_by("name")
    # Times as whole milliseconds: Django's loader of a timestamptz costs more than the rest of a row.
    rows = agents.values_list("name", "status", "detail", _EpochMs("seen"), _EpochMs("expires"))
    rows = list(rows[:limit] if limit else rows)
    keys = [r.status_key(ns.name, row[0]) for row in rows]
    lives = r.hmget_each(keys, "status", "detail", "updated", "expires")
    iso = r.iso_from_ms
    items = []
    for (name, status, detail, seen, expires), (live, live_detail, updated, live_expires) in zip(
        rows, lives, strict=True
    ):
        state = agent_state(live=live is not False, seen=seen)  # False: no heartbeat in Redis
        if state == LIVE:
            status, detail, seen, expires = live, live_detail or "", updated, live_expires
        items.append(
            {
                "agent_id": name,
                "status": status,
                "detail": detail,
                "updated_at": None if seen is None else iso(seen),
                "expires_at": None if expires is None else iso(expires),
                "state": state,
            }
        )
    return items


class _EpochMs(Func):
    """A time as Unix milliseconds, the part below one cut (as the API shows times); exact, as
    `extract` gives a numeric."""

    template = "floor(extract(epoch from %(expressions)s) * 1000)::bigint"
    output_field = BigIntegerField()


@r.unavailable_on_error
def count_agents(*, ns: Namespace) -> dict[str, int]:
    """How many agents are live, stale and never seen, without loading them (the overview's counts):
    live heartbeats from the Redis index, the others from Postgres (state_counts)."""
    live = r.client().zcount(r.heartbeats_index(ns.name), r.to_ms(now()), "+inf")
    total = Agent.objects.filter(ns=ns).count()
    never_seen = Agent.objects.filter(ns=ns, seen__isnull=True).count()
    return state_counts(total=total, live=live, never_seen=never_seen)


def get_agent(*, ns: Namespace, agent_id: str) -> AgentStatus:
    found = list_agents(ns=ns, agent_id=agent_id)
    if not found:
        raise NotFound(f"no agent {agent_id!r}")
    return found[0]


def _status(agent: Agent, live: dict[str, str]) -> AgentStatus:
    state = agent_state(live=bool(live), seen=agent.seen)
    if state == LIVE:
        return AgentStatus(
            agent=agent,
            status=live["status"],
            detail=live.get("detail", ""),
            updated=r.from_ms(live["updated"]),
            expires=r.from_ms(live["expires"]),
            state=state,
        )
    return AgentStatus(
        agent=agent,
        status=agent.status,
        detail=agent.detail,
        updated=agent.seen,
        expires=agent.expires,
        state=state,
    )


def sweep_stale_agents(*, limit: int = 500) -> int:
    """Record `agent.stale` once for each agent whose heartbeat lapsed (run by the relay)."""
    client = r.client()
    stamp = now()
    count = 0
    # Lapsed entries of the Redis index; and, should Redis have lost it, Postgres' last known expiry.
    lapsed: dict[tuple[int, str], datetime | None] = {}
    for ns in Namespace.objects.all():
        for name, score in client.zrangebyscore(
            r.heartbeats_index(ns.name), "-inf", r.to_ms(stamp), withscores=True
        ):
            lapsed[(ns.pk, name)] = r.from_ms(score)
    for agent in Agent.objects.filter(stale=False, expires__lte=stamp).select_related("ns")[:limit]:
        lapsed.setdefault((agent.ns_id, agent.name), None)
    for (ns_id, name), expired in list(lapsed.items())[:limit]:
        agent = Agent.objects.select_related("ns").filter(ns_id=ns_id, name=name).first()
        if agent is None:
            continue
        live = client.hget(r.status_key(agent.ns.name, name), "expires")
        if live is not None:  # heartbeating without a change: bring Postgres' copy up to date
            Agent.objects.filter(pk=agent.pk).update(expires=r.from_ms(live))
            continue
        with transaction.atomic():
            dropped = r.script(r.DROP_LAPSED)(
                keys=[r.status_key(agent.ns.name, name), r.heartbeats_index(agent.ns.name)], args=[name]
            )
            if not dropped:  # it heartbeat since the look above
                continue
            # A heartbeat after the drop brings it back to life in Postgres with a later expiry:
            # then this agent is not stale, whichever of the two commits first.
            marked = (
                Agent.objects.filter(pk=agent.pk, stale=False)
                .filter(Q(expires__lte=stamp) | Q(expires__isnull=True))
                .update(stale=True, expires=expired or agent.expires or stamp)
            )
            if marked:
                append_event(
                    ns=agent.ns,
                    type="agent.stale",
                    actor=SYSTEM_ACTOR,
                    agent_id=name,
                    subject=name,
                    payload={"last_status": agent.status},
                )
                count += 1
    return count
