"""Versioned JSON records with optimistic locking and fenced writes.

Keys may contain `/` and `:`, so the key is the rest of the path, and a sub-resource follows
it after `!`, which no key contains: `/records/{key}!versions` are the key's versions, and
`/records/{key}!` is the record itself for any key (API.md: Reaching every key). The older
`/records/{key}/versions` still reads the versions of the key before it; PUT and DELETE on such
a path reach the key that ends in `/versions`, as nothing else answers them there.
"""

from typing import Any

from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema

from memory_admin.api.common import (
    Id,
    In,
    Key,
    Limit,
    RecordKey,
    actor_of,
    and_exact,
    errors,
    json_response,
    ns_of,
)
from memory_admin.models import RecordVersion, iso
from memory_admin.services import records

router = Router(tags=["records"])


class FenceIn(In):
    lock: Key
    token: Id


class RecordIn(In):
    value: Any = Field(description="any JSON, null included")
    expected_version: Id | None = Field(
        None, description="absent: write unconditionally; 0: create only if absent; n: only over version n"
    )
    fence: FenceIn | None = Field(
        None, description="refuse the write if a newer token was issued for the lock"
    )


class RecordOut(Schema):
    key: str
    value: Any
    version: int
    updated_by: str
    updated_at: str


class RecordPage(Schema):
    items: list[RecordOut]
    next: str | None = Field(description="pass as `after` for the next page; null on the last page")


class RecordQuery(Schema):
    prefix: str = ""
    after: str = Field("", description="the `next` of the previous page")
    limit: Limit = 50


class VersionOut(Schema):
    version: int
    value: Any
    deleted: bool
    updated_by: str
    updated_at: str


class VersionPage(Schema):
    items: list[VersionOut]


class VersionQuery(Schema):
    limit: Limit = 50


class DeleteQuery(Schema):
    expected_version: Id | None = None


def _with_etag(record, status: int = 200) -> HttpResponse:
    response = json_response(records.record_body(record), status=status)
    response["ETag"] = f'"{record.version}"'
    return response


@router.get("/records", response={200: RecordPage, **errors()}, url_name="list_records")
def list_records(request: HttpRequest, query: Query[RecordQuery]):
    """Live records whose key starts with `prefix`, by key."""
    page = records.list_records(
        ns=ns_of(request), prefix=query.prefix, after=query.after, limit=query.limit + 1
    )
    more = len(page) > query.limit
    page = page[: query.limit]
    return {"items": [records.record_body(r) for r in page], "next": page[-1].key if more else None}


@router.get(
    "/records/{path:key}!versions",
    response={200: VersionPage, **errors(404)},
    url_name="record_versions",
    operation_id="record_versions",
)
def record_versions(request: HttpRequest, key: RecordKey, query: Query[VersionQuery]):
    """A key's versions, newest first; a delete is a version with `deleted` true and value null."""
    found = records.record_versions(ns=ns_of(request), key=key, limit=query.limit)
    return {"items": [version_body(version) for version in found]}


@router.get(
    "/records/{path:key}/versions",
    response={200: VersionPage, **errors(404)},
    url_name="record_versions_alias",
    operation_id="record_versions_alias",
    deprecated=True,
)
def record_versions_alias(request: HttpRequest, key: RecordKey, query: Query[VersionQuery]):
    """The older form of `/records/{key}!versions`: the versions of the key before `/versions`."""
    return record_versions(request, key, query)


@and_exact(router.get, "/records/{path:key}", response={200: RecordOut, **errors(404)}, url_name="get_record")
def get_record(request: HttpRequest, key: RecordKey):
    """The record with header `ETag: "<version>"`."""
    return _with_etag(records.get_record(ns=ns_of(request), key=key))


@and_exact(
    router.put,
    "/records/{path:key}",
    response={(200, 201): RecordOut, **errors(403, 409)},
    url_name="write_record",
)
def write_record(request: HttpRequest, key: Key, body: RecordIn):
    """Write with optimistic locking: 201 when created, 200 when updated, 409 `version_conflict`
    (kept as a conflict) or `stale_fencing_token`."""
    fence = records.Fence(lock=body.fence.lock, token=body.fence.token) if body.fence else None
    record, created = records.write_record(
        ns=ns_of(request),
        key=key,
        value=body.value,
        expected_version=body.expected_version,
        fence=fence,
        actor=actor_of(request),
    )
    return _with_etag(record, status=201 if created else 200)


@and_exact(
    router.delete,
    "/records/{path:key}",
    response={204: None, **errors(403, 404, 409)},
    url_name="delete_record",
)
def delete_record(request: HttpRequest, key: Key, query: Query[DeleteQuery]):
    """Delete; with `expected_version`, only if the stored version is still that."""
    records.delete_record(
        ns=ns_of(request), key=key, expected_version=query.expected_version, actor=actor_of(request)
    )
    return HttpResponse(status=204)


# The older versions path takes every URL ending in `/versions`; a write or delete there is
# of the key that ends so (its GET stays the alias above, which older agents rely on).
@router.put(
    "/records/{path:key}/versions",
    response={(200, 201): RecordOut, **errors(403, 409)},
    url_name="write_record_versions_key",
    include_in_schema=False,
)
def write_versions_key(request: HttpRequest, key: Key, body: RecordIn):
    return write_record(request, f"{key}/versions", body)


@router.delete(
    "/records/{path:key}/versions",
    response={204: None, **errors(403, 404, 409)},
    url_name="delete_record_versions_key",
    include_in_schema=False,
)
def delete_versions_key(request: HttpRequest, key: Key, query: Query[DeleteQuery]):
    return delete_record(request, f"{key}/versions", query)


def version_body(version: RecordVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "value": version.value,
        "deleted": version.deleted,
        "updated_by": version.updated_by,
        "updated_at": iso(version.updated),
    }
