"""Status and agents: who is alive and doing what."""

from typing import Any, Literal
from urllib.parse import urlencode

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from memory_admin.api.common import In, Key, Limit, actor_of, agent_of, errors, list_response, ns_of
from memory_admin.errors import Invalid
from memory_admin.models import AgentStatus, iso_ms
from memory_admin.services import status as statuses

router = Router(tags=["status"])


class StatusIn(In):
    status: str = Field(min_length=1, max_length=64)
    detail: str = Field("", max_length=10_000)
    ttl_seconds: int = Field(60, ge=statuses.MIN_TTL, le=statuses.MAX_TTL)


class StatusOut(Schema):
    agent_id: str
    status: str
    detail: str
    updated_at: str | None
    expires_at: str | None


class AgentOut(StatusOut):
    state: Literal["live", "stale", "never_seen"]


class PageQuery(Schema):
    limit: Limit | None = Field(None, description="a page of at most this many, by name; none: every agent")
    after: Key | None = Field(None, description="the last `agent_id` of the previous page (needs `limit`)")


def status_body(found: AgentStatus) -> dict[str, Any]:
    return {
        "agent_id": found.agent.name,
        "status": found.status,
        "detail": found.detail,
        "updated_at": iso_ms(found.updated),
        "expires_at": iso_ms(found.expires),
        "state": found.state,
    }


@router.put("/status", response={200: StatusOut, **errors(403)}, url_name="heartbeat")
def heartbeat(request: HttpRequest, body: StatusIn):
    """Publish the caller's status for `ttl_seconds`; repeating it is the heartbeat. Only a
    change of `status` or `detail` makes a `status.changed` event."""
    found = statuses.heartbeat(
        agent=agent_of(request),
        status=body.status,
        detail=body.detail,
        ttl_seconds=body.ttl_seconds,
        actor=actor_of(request),
    )
    body = status_body(found)
    del body["state"]
    return body


@router.get("/agents", response={200: list[AgentOut], **errors()}, url_name="list_agents")
def list_agents(request: HttpRequest, query: Query[PageQuery]):
    """Every agent of the namespace by `agent_id`: `live`, `stale` (its TTL lapsed) or
    `never_seen`. With `limit`, a page of them after `after`; when more follow, the header
    `Link: <...>; rel="next"` gives the next page's URL."""
    ns = ns_of(request)
    if query.limit is None:
        if query.after is not None:
            raise Invalid("after needs limit", {"limit": "required with after"})
        return list_response(statuses.agent_items(ns=ns))
    page = statuses.agent_items(ns=ns, after=query.after or "", limit=query.limit + 1)
    response = list_response(page[: query.limit])
    if len(page) > query.limit:
        following = urlencode({"limit": query.limit, "after": page[query.limit - 1]["agent_id"]})
        response["Link"] = f'<{request.path}?{following}>; rel="next"'
    return response


@router.get("/agents/{path:agent_id}", response={200: AgentOut, **errors(404)}, url_name="get_agent")
def get_agent(request: HttpRequest, agent_id: Key):
    return status_body(statuses.get_agent(ns=ns_of(request), agent_id=agent_id))
