"""The agents' JSON API v1 (API.md): one NinjaAPI, a router per noun, errors mapped once.

Around every operation, in order:
  1. the gate (every URL under /api/v1/): bodies over MAX_BODY_BYTES get 413 before any
     parsing, bodies not sent as application/json 415; ninja's plain-text 405 becomes the
     error shape; a catch-all answers unknown paths with 404 `not_found`;
  2. bearer auth (auth.py): 401, 403 for read-only tokens writing, the per-token rate limit;
  3. for POST/PUT/DELETE with `Idempotency-Key`: the response is stored with its effect in
     one transaction, and replayed for a retry (services/idempotency.py);
  4. ninja parses the body (strict JSON, unknown fields refused) and calls the view,
     which calls one service; every exception is mapped below to
     {"error": {"code", "message", ...}} and nothing else ever reaches an agent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable
from typing import Any

import orjson
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import re_path
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.operation import Operation, PathView
from ninja.parser import Parser

from memory_admin import outage
from memory_admin.api import (
    agents,
    conflicts,
    events,
    facts,
    groups,
    health,
    locks,
    me,
    records,
    store,
    txn,
)
from memory_admin.api.auth import bearer
from memory_admin.api.common import (
    MalformedJson,
    MethodNotAllowed,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedMediaType,
    error_response,
    on_error,
    postgres_unavailable,
)
from memory_admin.api.once import idempotent
from memory_admin.errors import Invalid, NotFound
from memory_admin.validation import check_document, check_key, nothing_to_check, unique_keys


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


class StrictJsonParser(Parser):
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON (and Postgres could not store them).

    Stricter than RFC 8259 where it leaves a choice: a key twice in one object is refused, and
    so is what no downstream can keep (text with NUL, integers past 64 bits), in any field.
    """

    def parse_body(self, request: HttpRequest) -> Any:
        body = request.body
        if nothing_to_check(body):
            document = plain_document(body)
            if document is not _NOT_PLAIN:
                return document
            return json.loads(body, parse_constant=_refuse_constant, object_pairs_hook=unique_keys)
        document = json.loads(body, parse_constant=_refuse_constant, object_pairs_hook=unique_keys)
        return check_document(document)


_NOT_PLAIN = object()
_SPACE_BEFORE_COLON = re.compile(rb'"[ \t\n\r]+:')


def plain_document(body: bytes) -> Any:
    """`body` parsed by orjson when that is what json.loads with StrictJsonParser's hooks would
    give, else _NOT_PLAIN (and the caller parses it that way, for its errors). For a body
    nothing_to_check passes (no `\\u` escape): each member of an object is a `"` and a `:`
    in a row, and so is each `\\"` followed by `:` in a string, the same in `body` and in the
    document written back; a key twice in one object leaves one member fewer in what is
    written back, which orjson's parse keeps the last of. What orjson refuses (NaN,
    integers past 64 bits, ...) is refused by json.loads too, with the errors it gives.

    Why: the object hook that refuses a key twice runs in Python for every object; a /txn of
    50 puts took 250 us to parse that way, 70 us this way (timeit)."""
    try:
        document = orjson.loads(body)
        written = orjson.dumps(document)  # refuses nesting deeper than 254 levels
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return _NOT_PLAIN
    if body.count(b'":') != written.count(b'":') or _SPACE_BEFORE_COLON.search(body):
        return _NOT_PLAIN
    return document


# Answered while Postgres is down: health says which store is, the schema needs none.
WITHOUT_POSTGRES = frozenset({"health", "openapi-json", "openapi-view"})


class AgentAPI(NinjaAPI):
    def _get_urls(self) -> list:
        urls = super()._get_urls()
        for pattern in urls:
            circuit = pattern.name not in WITHOUT_POSTGRES
            view = pattern.callback
            pattern.callback = gate(view, circuit=circuit)
            operations = _path_view(view)
            if operations is not None and operations.is_async:
                # ninja serves every method of a path with one view, async when one operation is
                # (a lock's acquire makes its release and read async views too). config/asgi.py
                # answers the sync ones in one hop through `sync_view`, not through the async view,
                # and so an async one whose body does not ask to wait (`waits`), by its sync twin.
                threaded, waits = _in_thread(operations)
                pattern.callback.async_methods = frozenset(
                    method for op in threaded.operations if op.is_async for method in op.methods
                )
                pattern.callback.waits = waits
                pattern.callback.sync_view = gate(threaded._sync_view, circuit=circuit)
        urls.append(re_path(r"^[\s\S]*$", gate(_unknown_path, circuit=False), name="unknown"))
        return urls


api = AgentAPI(
    title="Memory Admin agent API",
    version="1",
    description=(
        "Shared facts, versioned records, fenced locks, status and an event log for agents. "
        "Every call but `health` needs `Authorization: Bearer <token>` (or `x-api-key: <token>`). "
        'Every error is `{"error": {"code", "message", ...}}`. Request bodies are strict: unknown fields and '
        "wrong types are refused with 422 `validation_error` (no coercion); unknown query "
        "parameters are ignored. POST, PUT and DELETE accept `Idempotency-Key`."
    ),
    urls_namespace="api",
    auth=bearer,
    parser=StrictJsonParser(),
)
api.add_decorator(idempotent, mode="view")  # ninja's "view" mode wraps the whole operation
api.add_router("", health.router)
api.add_router("", me.router)
api.add_router("", facts.router)
api.add_router("", records.router)
api.add_router("", conflicts.router)
api.add_router("", agents.router)
api.add_router("", locks.router)
api.add_router("", events.router)
api.add_router("", groups.router)
api.add_router("", txn.router)
api.add_router("", store.router)


def _path_view(view: Callable) -> PathView | None:
    """The PathView whose view ninja made `view` (it is in the view's closure)."""
    for cell in getattr(view, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            if isinstance(cell.cell_contents, PathView):
                return cell.cell_contents
    return None


def _in_thread(operations: PathView) -> tuple[PathView, dict[str, Callable[[bytes], bool]]]:
    """The path's operations as answered in the request's thread, and the methods answered so
    unless their body asks to wait (method -> `waits(body)`): an async operation whose view has a
    `sync_twin` (the same parameters and answers, for a body that does not wait: a lock acquire
    without `wait_seconds`) is run as that twin."""
    threaded = PathView()
    waits: dict[str, Callable[[bytes], bool]] = {}
    for operation in operations.operations:
        twin = getattr(operation.view_func, "sync_twin", None)
        if operation.is_async and twin is not None:
            waits.update(dict.fromkeys(operation.methods, operation.view_func.waits))
            operation = _sync_operation(operation, twin)
        threaded.operations.append(operation)
    return threaded, waits


def _sync_operation(operation: Operation, view: Callable) -> Operation:
    """A copy of async `operation` (its auth, parameters and answers) that calls sync `view`.
    The API's `idempotent` is not applied to it: like the async view, the twin keeps its answer
    under an Idempotency-Key itself (once.py), so both store and replay the same answers."""
    twin = operation.clone()
    twin.__class__ = Operation
    twin.is_async = False
    twin.view_func = view
    twin.api = operation.api
    return twin


# --- the gate -------------------------------------------------------------------------


def gate(view: Callable, *, circuit: bool = True) -> Callable:
    """Size limit before parsing, 503 at once while Postgres is known to be down (outage.py),
    the error shape for 405s and anything unexpected."""
    if iscoroutinefunction(view):

        async def async_gated(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            refused = _refuse(request, circuit)
            if refused is not None:
                return refused
            try:
                return _passed(request, await view(request, *args, **kwargs))
            except Exception as exc:  # a bug of ours: logged, and still the error shape
                return on_error(request, exc)

        return functools.wraps(view)(markcoroutinefunction(async_gated))

    @functools.wraps(view)
    def gated(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        refused = _refuse(request, circuit)
        if refused is not None:
            return refused
        try:
            return _passed(request, view(request, *args, **kwargs))
        except Exception as exc:
            return on_error(request, exc)

    return gated


def _passed(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    # Postgres answered: a call whose token was read there (not one from the process's token
    # cache, which may have used Redis alone) and that did not fail.
    if response.status_code < 500 and not getattr(request, "token_cached", False):
        outage.postgres.succeeded()
    return _shape(response)


def _refuse(request: HttpRequest, circuit: bool = True) -> HttpResponse | None:
    if circuit and not outage.postgres.allow():
        return postgres_unavailable()
    limit = settings.MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    # The declared length first (nothing is read), then the bytes that came (chunked bodies).
    if declared > limit or len(request.body) > limit:
        return error_response(PayloadTooLarge(f"the body is over the limit of {limit} bytes", limit=limit))
    # A body is JSON and says so: a form or text/plain body parsed as JSON would let a page of
    # another site post to the API (no CORS preflight for those types) and hides client bugs.
    if request.body and request.content_type != "application/json":
        sent = request.content_type or "none"
        return error_response(
            UnsupportedMediaType(
                f"the body must be sent as Content-Type: application/json, not {sent}"[:300],
                content_type=sent[:100],
            )
        )
    # Postgres cannot hold a NUL in text, so a filter value with one would fail in the query
    # (a 500, found by the fuzz tests); no valid value has one, so refuse it up front.
    with_nul = sorted({name for name, values in request.GET.lists() if "\x00" in name + "".join(values)})
    if with_nul:
        fields = {name.replace("\x00", "\\0"): "contains a NUL character" for name in with_nul}
        return error_response(Invalid("query parameters cannot contain NUL characters", fields))
    return None


def _shape(response: HttpResponse) -> HttpResponse:
    if response.status_code == 405 and not response.get("Content-Type", "").startswith("application/json"):
        allowed = response.get("Allow", "")
        return error_response(
            MethodNotAllowed(f"method not allowed here; allowed: {allowed}", allowed=allowed.split(", ")),
            headers={"Allow": allowed},
        )
    return response


# A keyed operation called with an empty key (`PUT /api/v1/records/`) is a bad key, not a
# missing endpoint: answered as the key check answers any other bad key.
_EMPTY_KEY = {"/api/v1/records/": "key", "/api/v1/locks/": "resource", "/api/v1/agents/": "agent_id"}


def _unknown_path(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    field = _EMPTY_KEY.get(request.path)
    if field is not None:
        try:
            check_key("", field)
        except Invalid as exc:
            return error_response(exc)
    return error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))


_unknown_path.csrf_exempt = True


# --- errors, mapped once --------------------------------------------------------------


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields = {}
    for error in exc.errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
        fields[".".join(loc) or "body"] = error.get("msg", "invalid")
    message = "the request is not valid: " + "; ".join(f"{name}: {msg}" for name, msg in fields.items())
    return error_response(Invalid(message[:1000], fields))


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(
        Unauthenticated("a valid token is required: `Authorization: Bearer <token>` or `x-api-key: <token>`")
    )


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 400:  # ninja could not parse the body; the parser's error is the cause
        cause = exc.__cause__
        if isinstance(cause, Invalid):  # JSON, but not what the API keeps (StrictJsonParser)
            return error_response(cause)
        if isinstance(cause, RecursionError):
            return error_response(Invalid("the body is nested too deeply", {"body": "too deeply nested"}))
        detail = f": {cause}" if isinstance(cause, ValueError) else ""
        return error_response(MalformedJson(f"the body is not valid JSON{detail}"[:300]))
    return on_error(request, exc)


@api.exception_handler(Exception)
def _any_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    return on_error(request, exc)
