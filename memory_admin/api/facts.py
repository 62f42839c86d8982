from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from memory_admin.api.common import Id, In, Limit, actor_of, errors, ns_of
from memory_admin.models import Fact, iso
from memory_admin.services import facts

router = Router(tags=["facts"])


class FactIn(In):
    fact: str = Field(min_length=1)
    category: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class FactOut(Schema):
    id: int
    fact: str
    category: str
    agent_id: str
    metadata: dict[str, Any]
    created_at: str


class FactPage(Schema):
    items: list[FactOut]
    next: int | None = Field(description="pass as `after` for the next page; null on the last page")


class FactQuery(Schema):
    category: str | None = None
    agent_id: str | None = None
    q: str | None = Field(None, description="full-text search (web search syntax)")
    after: Id | None = Field(None, description="the `next` of the previous page")
    limit: Limit = 50


def fact_body(fact: Fact) -> dict[str, Any]:
    return {
        "id": fact.pk,
        "fact": fact.fact,
        "category": fact.category,
        "agent_id": fact.agent.name,
        "metadata": fact.metadata,
        "created_at": iso(fact.created),
    }


@router.post("/facts", response={201: FactOut, **errors(403)}, url_name="store_fact")
def store_fact(request: HttpRequest, body: FactIn):
    """Store a fact any agent of the namespace can find."""
    fact = facts.store_fact(
        ns=ns_of(request),
        fact=body.fact,
        category=body.category,
        metadata=body.metadata,
        actor=actor_of(request),
    )
    return Status(201, fact_body(fact))


@router.get("/facts", response={200: FactPage, **errors()}, url_name="query_facts")
def query_facts(request: HttpRequest, query: Query[FactQuery]):
    """Facts newest first, by category, agent and full text."""
    page, cursor = facts.query_facts(
        ns=ns_of(request),
        category=query.category,
        agent_id=query.agent_id,
        q=query.q,
        after=query.after,
        limit=query.limit,
    )
    return {"items": [fact_body(fact) for fact in page], "next": cursor}


@router.get("/facts/{fact_id}", response={200: FactOut, **errors(404)}, url_name="get_fact")
def get_fact(request: HttpRequest, fact_id: Id):
    return fact_body(facts.get_fact(ns=ns_of(request), fact_id=fact_id))
