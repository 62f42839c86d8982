from typing import Any, Literal

from django.http import HttpRequest
from ninja import Query, Router, Schema

from memory_admin.api.common import Limit, actor_of, errors, ns_of
from memory_admin.models import Conflict, iso
from memory_admin.services import conflicts

router = Router(tags=["records"])


class ConflictOut(Schema):
    id: int
    key: str
    agent_id: str | None
    expected_version: int
    current_version: int | None
    proposed_value: Any
    delete: bool
    status: Literal["open", "resolved"]
    resolution: str
    group: str | None  # the txn id of an aborted /txn whose writes were refused together
    created_at: str


class ConflictPage(Schema):
    items: list[ConflictOut]


class ConflictQuery(Schema):
    status: Literal["open", "resolved", "all"] = "open"
    limit: Limit = 50


@router.get("/conflicts", response={200: ConflictPage, **errors()}, url_name="list_conflicts")
def list_conflicts(request: HttpRequest, query: Query[ConflictQuery]):
    """The caller's own rejected writes, newest first (open ones by default)."""
    found = conflicts.list_conflicts(
        ns=ns_of(request),
        status=None if query.status == "all" else query.status,
        actor_name=actor_of(request).name,
        limit=query.limit,
    )
    return {"items": [conflict_body(conflict) for conflict in found]}


def conflict_body(conflict: Conflict) -> dict[str, Any]:
    return {
        "id": conflict.pk,
        "key": conflict.key,
        "agent_id": conflict.actor,
        "expected_version": conflict.expected_version,
        "current_version": conflict.current_version,
        "proposed_value": conflict.proposed_value,
        "delete": conflict.delete,
        "status": conflict.status,
        "resolution": conflict.resolution,
        "group": conflict.group or None,
        "created_at": iso(conflict.created),
    }
