"""What an agent that stopped (stale, gone or hung) left behind — locks it still holds, open
conflicts, deliveries it never acked — and the operator's one action to clear it all."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count
from django.utils.timezone import now

from memory_admin import positions
from memory_admin import redis as r
from memory_admin.errors import Invalid, NotFound
from memory_admin.models import Agent, AgentStatus, Conflict, Event, HeldLock, LockFence, Namespace
from memory_admin.services import Actor, groups
from memory_admin.services.events import append_event
from memory_admin.services.locks import force_release, list_locks
from memory_admin.services.status import STALE, get_agent, list_agents


@dataclass(frozen=True)
class Leftovers:
    status: AgentStatus
    locks: list[HeldLock]
    conflicts: list[Conflict]
    deliveries: list[groups.Delivery]
    events: list[Event]

    @property
    def empty(self) -> bool:
        return not (self.locks or self.deliveries)


@dataclass(frozen=True)
class StaleAgent:
    """A row of the overview's "stale agents with leftovers" panel."""

    status: AgentStatus
    locks: int
    deliveries: int

    @property
    def dom_id(self) -> str:
        return f"leftover-{self.status.agent.pk}"


def agent_leftovers(*, ns: Namespace, agent: Agent) -> Leftovers:
    """Everything `agent` still holds or left open, with its last status and events."""
    return Leftovers(
        status=get_agent(ns=ns, agent_id=agent.name),
        locks=list_locks(ns=ns, owner=agent.name),
        conflicts=list(
            Conflict.objects.filter(ns=ns, actor=agent.name, status=Conflict.Status.OPEN).order_by("-id")[:50]
        ),
        deliveries=groups.agent_deliveries(ns=ns, agent_id=agent.name),
        # By agent_id only (the agent's own events carry it too): an indexed range, where an OR
        # with the unindexed actor read back through the log.
        events=list(positions.newest_first(positions.log(ns).filter(agent_id=agent.name))[:15]),
    )


# The panel looks at this many agents at most (the most recently lapsed first).
CANDIDATES = 100


def stale_with_leftovers(*, ns: Namespace, limit: int = 10) -> list[StaleAgent]:
    """Agents whose heartbeat lapsed that still hold locks or unacked deliveries, most held first."""
    # Candidates from Postgres: holders of fences marked held whose last known expiry passed,
    # with how many (a fence may still say held for a lease that lapsed: Redis decides below).
    lapsed = Agent.objects.filter(ns=ns, expires__lte=now()).values("name")
    fences = dict(
        LockFence.objects.filter(ns=ns, held=True, holder__in=lapsed)
        .values("holder")
        .annotate(n=Count("id"))
        .order_by("-n")
        .values_list("holder", "n")[:CANDIDATES]
    )
    pending = groups.pending_by_agent(ns=ns, agents=None)
    candidates = sorted(
        set(fences) | {name for name, n in pending.items() if n},
        key=lambda name: (-(fences.get(name, 0) + pending.get(name, 0)), name),
    )[:CANDIDATES]
    if not candidates:
        return []
    # A live agent whose Postgres copy lags (heartbeats that change nothing touch only Redis) is out.
    pipe = r.client().pipeline(transaction=False)
    for name in candidates:
        pipe.exists(r.status_key(ns.name, name))
    quiet = [name for name, live in zip(candidates, pipe.execute(), strict=True) if not live]
    statuses = {s.agent.name: s for s in list_agents(ns=ns, names=quiet)} if quiet else {}
    out = []
    for name in quiet:
        status = statuses.get(name)
        if status is None or status.state != STALE:  # never seen: nothing says it stopped
            continue
        held = len(list_locks(ns=ns, owner=name)) if fences.get(name) else 0
        if held or pending.get(name):
            out.append(StaleAgent(status=status, locks=held, deliveries=pending.get(name, 0)))
        if len(out) == limit:
            break
    return out


@dataclass(frozen=True)
class Released:
    locks: list[HeldLock]
    deliveries: int


def release_and_reassign(*, ns: Namespace, agent: Agent, reason: str, actor: Actor) -> Released:
    """Force-release every lock `agent` holds (one reason for all) and hand its unacked
    deliveries back to their groups; each step is its own event, and one event sums it up."""
    reason = reason.strip()
    if not reason:
        raise Invalid("a reason is required to release an agent's locks", {"reason": "required"})
    released = []
    for lock in list_locks(ns=ns, owner=agent.name):
        try:
            released.append(force_release(ns=ns, resource=lock.resource, reason=reason, actor=actor))
        except NotFound:  # released or expired meanwhile
            continue
    moved = groups.hand_back(ns=ns, agent_id=agent.name, actor=actor)
    with transaction.atomic():
        append_event(
            ns=ns,
            type="agent.released",
            actor=actor,
            agent_id=agent.name,
            subject=agent.name,
            payload={
                "reason": reason,
                "locks": [{"resource": h.resource, "fencing_token": h.token} for h in released],
                "deliveries": moved,
            },
        )
    return Released(locks=released, deliveries=moved)
