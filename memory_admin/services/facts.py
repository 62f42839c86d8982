"""Facts: shared discoveries, queried by category, agent and full text."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.search import SearchQuery
from django.db import connection
from django.utils.timezone import now

from memory_admin import sql
from memory_admin.errors import NotFound
from memory_admin.models import Fact, Namespace
from memory_admin.services import Actor
from memory_admin.services.events import current_txn, ring_after_write
from memory_admin.validation import check_category, check_json, dumps


def store_fact(
    *, ns: Namespace, fact: str, category: str, actor: Actor, metadata: dict[str, Any] | None = None
) -> Fact:
    """Store a fact any agent of the namespace can find."""
    check_category(category)
    check_json(fact, "fact")
    check_json(metadata or {}, "metadata")
    stored = Fact(
        ns=ns, agent=actor.agent, fact=fact, category=category, metadata=metadata or {}, created=now()
    )
    with connection.cursor() as cursor:  # the fact and its event: one statement, one commit
        cursor.execute(
            sql.STORE_FACT,
            {
                "ns": ns.pk,
                "agent": actor.agent.pk,
                "fact": fact,
                "category": category,
                "metadata": dumps(stored.metadata),
                "stamp": stored.created,
                "txn": current_txn(),
                "actor": actor.name,
                "agent_id": actor.agent_id,
            },
        )
        stored.pk = cursor.fetchone()[0]
    ring_after_write()
    return stored


def get_fact(*, ns: Namespace, fact_id: int) -> Fact:
    fact = Fact.objects.select_related("agent").filter(ns=ns, pk=fact_id).first()
    if fact is None:
        raise NotFound(f"no fact {fact_id}")
    return fact


def query_facts(
    *,
    ns: Namespace,
    category: str | None = None,
    agent_id: str | None = None,
    q: str | None = None,
    after: int | None = None,
    limit: int = 50,
) -> tuple[list[Fact], int | None]:
    """Facts newest first; `after` is the last id of the previous page. Returns (page, next cursor)."""
    facts = Fact.objects.filter(ns=ns).select_related("agent")
    if category:
        facts = facts.filter(category=category)
    if agent_id:
        facts = facts.filter(agent__name=agent_id)
    if q:
        facts = facts.filter(search=SearchQuery(q, search_type="websearch", config="english"))
    if after:
        facts = facts.filter(pk__lt=after)
    page = list(facts.order_by("-pk")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return page, (page[-1].pk if more else None)
