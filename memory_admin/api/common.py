"""What every noun module of the API shares: the error schema, input rules, the caller."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
from asgiref.sync import sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import Schema
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from memory_admin import outage
from memory_admin.errors import DomainError, Invalid, NotFound, Unavailable
from memory_admin.models import Agent, Namespace, Token
from memory_admin.services import Actor
from memory_admin.validation import KEY_RE, RECORD_KEY_RE

log = logging.getLogger("memory_admin.api")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Keys, lock resources, group and agent names (API.md); a bad one is a 422 naming the field.
Key = Annotated[str, StringConstraints(pattern=KEY_RE.pattern)]
# What reads of a record take: a key, or the key of a LangGraph store item's record (`~...`).
RecordKey = Annotated[str, StringConstraints(pattern=RECORD_KEY_RE.pattern)]
Limit = Annotated[int, Field(ge=1, le=500)]
Id = Annotated[int, Field(ge=0, le=2**63 - 1)]  # ids, versions, cursors: what a bigint holds


# Errors only the HTTP layer raises; the domain's own kinds are in memory_admin/errors.py.
class MalformedJson(DomainError, status=400, code="malformed_json"): ...


class Unauthenticated(DomainError, status=401, code="unauthenticated"): ...


class MethodNotAllowed(DomainError, status=405, code="method_not_allowed"): ...


class PayloadTooLarge(DomainError, status=413, code="payload_too_large"): ...


class UnsupportedMediaType(DomainError, status=415, code="unsupported_media_type"): ...


class RateLimited(DomainError, status=429, code="rate_limited"):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class InternalError(DomainError, status=500, code="internal_error"): ...


class In(BaseModel):
    """A request body. Unknown fields are refused (422), so a misspelt field never passes silently;
    wrong types are refused rather than coerced ("5" is not a number).

    A plain pydantic model, not ninja's Schema: a Schema that forbids extra fields validates a
    body twice, and once more through ninja's attribute getter (api/txn.py `Body` measured it)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorDetail(Schema):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class Error(Schema):
    """Every error under /api/v1/: {"error": {"code", "message", ...details}} (API.md)."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int, type[Error]]:
    """The error responses an operation documents, besides the ones every call can return:
    400 `malformed_json` (any request may carry a body that is not JSON) and 404 (a path
    parameter with characters no route takes, a newline say, leaves the URL unrouted)."""
    return dict.fromkeys((*statuses, 400, 401, 404, 408, 413, 415, 422, 429, 500, 503), Error)


def and_exact(route: Callable[..., Callable[[F], F]], path: str, *, url_name: str, **options: Any):
    """Register a view at `path` and at `path!`, the form that reaches any key, even one that
    ends like another route (API.md: Reaching every key); `route` is `router.get`, `.put`, ...

    The `!` pattern is registered first: the plain one would otherwise take `key!` as a (bad) key.
    """

    def register(view: F) -> F:
        exact = f"{url_name}_exact"
        view = route(f"{path}!", url_name=exact, operation_id=exact, **options)(view)
        return route(path, url_name=url_name, **options)(view)

    return register


def error_response(exc: DomainError, *, headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse(exc.body(), status=exc.status)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def on_error(request: HttpRequest, exc: Exception) -> JsonResponse:
    """Any exception as the error shape: domain errors as they are, a store that is down as 503,
    anything else logged and answered with a 500 that carries no trace."""
    if isinstance(exc, DomainError):
        return error_response(exc)
    if isinstance(exc, Http404):
        return error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))
    if outage.is_postgres_error(exc):
        log.warning("Postgres unavailable on %s %s: %s", request.method, request.path, exc)
        outage.postgres_failed(exc)
        return postgres_unavailable()
    if outage.is_redis_error(exc):
        log.warning("Redis unavailable on %s %s: %s", request.method, request.path, exc)
        return error_response(Unavailable("Redis is unreachable; retry shortly"))
    if isinstance(exc, RecursionError):
        return error_response(Invalid("the input is nested too deeply", {"body": "too deeply nested"}))
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(InternalError("an unexpected error occurred; it has been logged"))


def postgres_unavailable() -> JsonResponse:
    return error_response(Unavailable("Postgres is unreachable; retry shortly"))


_DJANGO_JSON = DjangoJSONEncoder()
# Dates and what else orjson would write its own way go through DjangoJSONEncoder, as JsonResponse
# writes them; keys that are not strings are written as json.dumps writes them.
_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def json_response(data: Any, status: int = 200) -> HttpResponse:
    """`data` as JSON, written by orjson: the response of a /txn of 50 puts took json.dumps
    ~290 us and orjson 14 (a twentieth of the web process's CPU on that request)."""
    try:
        body = orjson.dumps(data, default=_DJANGO_JSON.default, option=_ORJSON)
    except orjson.JSONEncodeError:  # an integer past 64 bits: jsonb reads a stored 1e20 back as one
        body = json.dumps(data, cls=DjangoJSONEncoder, ensure_ascii=False).encode()
    return HttpResponse(body, status=status, content_type="application/json")


def list_response(data: Any) -> HttpResponse:
    """A long list as JSON, byte for byte as ninja renders it (json.dumps' defaults) but without
    validating each of thousands of items against the schema: their service builds them to it."""
    return HttpResponse(json.dumps(data), content_type="application/json; charset=utf-8")


def token_of(request: HttpRequest) -> Token:
    return request.auth


def agent_of(request: HttpRequest) -> Agent:
    return request.auth.agent


def ns_of(request: HttpRequest) -> Namespace:
    return request.auth.agent.ns


def actor_of(request: HttpRequest) -> Actor:
    return Actor.of_agent(request.auth.agent)


def in_thread(func: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`func` for an async view: run in the request's thread, which then gives its Postgres
    connection back to the pool, so a view that waits (a lock, a stream) holds none meanwhile."""

    def call(*args, **kwargs) -> T:
        try:
            return func(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:  # a test's transaction keeps its connection
                connection.close()

    return sync_to_async(call)
