"""LangGraph's store endpoints, as langgraph-sdk's `client.store` calls them (API.md: LangGraph
store). Give the SDK `get_client(url="<server>/api/v1", api_key=<token>)`: it sends its paths
(`/store/items`, ...) under that base URL and the token as `x-api-key`."""

import json
from collections.abc import Callable
from typing import Any, Literal

import pydantic
from django.http import HttpRequest, HttpResponse
from ninja import Field, Query, Router, Schema

from memory_admin.api.common import In, actor_of, errors, json_response, ns_of, token_of
from memory_admin.errors import DomainError, Forbidden, Invalid
from memory_admin.services import store

router = Router(tags=["store"])


class PutIn(In):
    namespace: list[str] = Field(description="the namespace path, label by label")
    key: str
    value: dict[str, Any] = Field(description="a JSON object")
    index: Literal[False] | list[str] | None = Field(
        None, description="null: index every text field for `query`; false: none; a list: those fields"
    )
    ttl: float | None = Field(None, description="minutes until the item expires; null: never")


class DeleteIn(In):
    namespace: list[str]
    key: str


class GetIn(In):
    namespace: list[str]
    key: str
    refresh_ttl: bool | None = None


class GetQuery(Schema):
    namespace: str = Field(description="the labels joined with '.'")
    key: str
    refresh_ttl: bool | None = None


class SearchIn(In):
    namespace_prefix: list[str] = Field([], description="whole labels; [] searches everything")
    filter: dict[str, Any] | None = Field(
        None, description='{field: value} or {field: {"$eq"|"$ne"|"$gt"|"$gte"|"$lt"|"$lte": value}}'
    )
    limit: int = 10
    offset: int = 0
    query: str | None = Field(None, description="ranked by full-text search; each item gets a `score`")
    refresh_ttl: bool | None = None


class NamespacesIn(In):
    prefix: list[str] | None = Field(None, description="'*' matches any one label")
    suffix: list[str] | None = None
    max_depth: int | None = None
    limit: int = 100
    offset: int = 0


class ItemOut(Schema):
    namespace: list[str]
    key: str
    value: dict[str, Any]
    created_at: str
    updated_at: str


class SearchItemOut(ItemOut):
    score: float | None


class SearchOut(Schema):
    items: list[SearchItemOut]


class NamespacesOut(Schema):
    namespaces: list[list[str]]


class OkOut(Schema):
    ok: bool


@router.get("/ok", auth=None, response=OkOut, url_name="store_ok")
def ok(request: HttpRequest):
    """What langgraph-sdk probes before it calls: always 200."""
    return {"ok": True}


@router.put("/store/items", response={204: None, **errors(403)}, url_name="store_put")
def put_item(request: HttpRequest, body: PutIn):
    """Put an item: an unconditional write of its record (a new version, `record.written`)."""
    store.put_item(
        ns=ns_of(request),
        namespace=body.namespace,
        key=body.key,
        value=body.value,
        index=body.index,
        ttl=body.ttl,
        actor=actor_of(request),
    )
    return HttpResponse(status=204)


@router.get("/store/items", response={200: ItemOut, **errors(404)}, url_name="store_get")
def get_item(request: HttpRequest, query: Query[GetQuery]):
    """The item, or 404; a read renews its TTL unless `refresh_ttl=false`."""
    if not query.namespace:
        raise Invalid("namespace cannot be empty", {"namespace": "empty namespace"})
    item = store.get_item(
        ns=ns_of(request),
        namespace=query.namespace.split("."),
        key=query.key,
        refresh_ttl=query.refresh_ttl,
    )
    return json_response(item.body())


@router.delete("/store/items", response={204: None, **errors(403)}, url_name="store_delete")
def delete_item(request: HttpRequest, body: DeleteIn):
    """Delete an item (its record gets a tombstone version); a missing item is no error."""
    store.delete_item(ns=ns_of(request), namespace=body.namespace, key=body.key, actor=actor_of(request))
    return HttpResponse(status=204)


@router.post("/store/items/search", response={200: SearchOut, **errors()}, url_name="store_search")
def search_items(request: HttpRequest, body: SearchIn):
    """Items under a namespace prefix, filtered, newest first, or best first by `query`."""
    found = store.search_items(
        ns=ns_of(request),
        namespace_prefix=body.namespace_prefix,
        filter=body.filter,
        limit=body.limit,
        offset=body.offset,
        query=body.query,
        refresh_ttl=body.refresh_ttl,
    )
    return json_response({"items": [item.body(scored=True) for item in found]})


@router.post("/store/namespaces", response={200: NamespacesOut, **errors()}, url_name="store_namespaces")
def list_namespaces(request: HttpRequest, body: NamespacesIn):
    """The namespaces of live items, matching prefix and suffix, cut at max_depth."""
    found = store.list_namespaces(
        ns=ns_of(request),
        prefix=body.prefix,
        suffix=body.suffix,
        max_depth=body.max_depth,
        limit=body.limit,
        offset=body.offset,
    )
    return json_response({"namespaces": found})


# --- many operations in one request ---------------------------------------------------

MAX_OPS = 500


class BatchIn(In):
    ops: list[dict[str, Any]] = Field(
        max_length=MAX_OPS,
        description='each {"get"|"put"|"delete"|"search"|"list_namespaces": {the body of that call}}',
    )


class BatchResult(Schema):
    status: int
    body: Any


class BatchOut(Schema):
    results: list[BatchResult]


@router.post("/store/batch", response={200: BatchOut, **errors()}, url_name="store_batch")
def batch(request: HttpRequest, body: BatchIn):
    """Store operations in one request, run in order, each with its own result (what
    MemoryAdminStore.batch sends): `{"results": [{"status", "body"}]}`, `status` as the single
    call would answer (200, 204, 404, 403, 422). A read-only token may send reads only."""
    return json_response({"results": [_run(request, op) for op in body.ops]})


def _get(request: HttpRequest, args: GetIn) -> tuple[int, Any]:
    item = store.get_item(
        ns=ns_of(request), namespace=args.namespace, key=args.key, refresh_ttl=args.refresh_ttl
    )
    return 200, item.body()


def _put(request: HttpRequest, args: PutIn) -> tuple[int, Any]:
    put_item(request, args)
    return 204, None


def _delete(request: HttpRequest, args: DeleteIn) -> tuple[int, Any]:
    delete_item(request, args)
    return 204, None


def _search(request: HttpRequest, args: SearchIn) -> tuple[int, Any]:
    return 200, json_loads(search_items(request, args))


def _namespaces(request: HttpRequest, args: NamespacesIn) -> tuple[int, Any]:
    return 200, json_loads(list_namespaces(request, args))


OPS: dict[str, tuple[type[In], Callable[[HttpRequest, Any], tuple[int, Any]], bool]] = {
    "get": (GetIn, _get, False),
    "put": (PutIn, _put, True),
    "delete": (DeleteIn, _delete, True),
    "search": (SearchIn, _search, False),
    "list_namespaces": (NamespacesIn, _namespaces, False),
}


def _run(request: HttpRequest, op: dict[str, Any]) -> dict[str, Any]:
    try:
        if len(op) != 1 or next(iter(op)) not in OPS or not isinstance(next(iter(op.values())), dict):
            raise Invalid(
                f"an operation is one of {', '.join(OPS)} with its arguments as an object",
                {"op": "one of " + ", ".join(OPS)},
            )
        [(name, raw)] = op.items()
        schema, call, writes = OPS[name]
        if writes and token_of(request).read_only:
            raise Forbidden("this token is read-only", scopes=token_of(request).scopes)
        try:
            args = schema.model_validate(raw)
        except pydantic.ValidationError as exc:
            fields = {f"{name}." + ".".join(str(p) for p in e["loc"]): e["msg"] for e in exc.errors()}
            message = "the operation is not valid: " + "; ".join(f"{k}: {v}" for k, v in fields.items())
            raise Invalid(message[:1000], fields) from None
        status, result = call(request, args)
    except DomainError as exc:
        return {"status": exc.status, "body": exc.body()}
    return {"status": status, "body": result}


def json_loads(response: HttpResponse) -> Any:
    return json.loads(response.content)
