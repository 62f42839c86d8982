"""Idempotency-Key for POST, PUT and DELETE (API.md: Idempotency), on top of
services/idempotency.py, which stores a response in the transaction of its effect."""

from __future__ import annotations

import functools
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse

from memory_admin.api.auth import SAFE_METHODS, bearer
from memory_admin.api.common import error_response, on_error
from memory_admin.errors import DomainError
from memory_admin.services import idempotency

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEPT_HEADERS = ("Content-Type", "ETag", "Location")
# Not stored, so a retry runs again: refusals before the call and failures of the stores.
UNSTORED = frozenset({401, 403, 413, 429})


def idempotent(run: Callable) -> Callable:
    """Wrap a synchronous operation so a keyed write runs once and is replayed after.

    Asynchronous operations (lock acquire, consumer groups) call `once` per attempt
    themselves: a transaction cannot span their waits.
    """
    if iscoroutinefunction(run):
        return run

    @functools.wraps(run)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method in SAFE_METHODS or HEADER not in request.headers:
            return run(request, *args, **kwargs)
        try:
            token = bearer(request)
        except DomainError:
            token = None
        if token is None:  # refused: ninja gives the same answer the same way
            return run(request, *args, **kwargs)
        return once(request, lambda: run(request, *args, **kwargs))

    return wrapper


def once(
    request: HttpRequest,
    compute: Callable[[], HttpResponse],
    *,
    ready: Callable[[HttpResponse], bool] | None = None,
) -> HttpResponse | None:
    """`compute()`'s response, stored under the request's Idempotency-Key with its effect,
    or the stored one for a retry. When `ready(response)` is false the effect is rolled
    back and None returned, so the caller may try again (a lock not free yet)."""
    key = request.headers.get(HEADER)
    if key is None or request.method in SAFE_METHODS:
        response = compute()
        return response if ready is None or ready(response) else None
    computed: list[HttpResponse] = []

    def reply() -> idempotency.Reply:
        response = compute()
        computed.append(response)
        headers = {name: response[name] for name in KEPT_HEADERS if name in response}
        return idempotency.Reply(response.status_code, response.content, headers)

    def keep(stored: idempotency.Reply) -> bool:
        return _storable(stored.status) and (ready is None or ready(computed[-1]))

    try:
        stored, replayed = idempotency.respond_once(
            agent=(getattr(request, "auth", None) or bearer(request)).agent,
            key=key,
            fingerprint=idempotency.fingerprint(
                method=request.method, path=request.get_full_path(), body=request.body
            ),
            compute=reply,
            keep=keep,
        )
    except DomainError as exc:
        return error_response(exc)
    except Exception as exc:
        return on_error(request, exc)
    if replayed:
        response = HttpResponse(stored.body, status=stored.status)
        for name, value in stored.headers.items():
            response[name] = value
        response[REPLAYED] = "true"
        return response
    response = computed[-1]
    if _storable(response.status_code) and ready is not None and not ready(response):
        return None
    return response


def _storable(status: int) -> bool:
    return status < 500 and status not in UNSTORED
