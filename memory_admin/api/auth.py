"""Agent tokens: who the caller is (agent and namespace come from the token only), whether
it may write, and the per-token rate limit.

A token comes as `Authorization: Bearer <token>` or as `x-api-key: <token>` (what
langgraph-sdk and several MCP clients send); when both come, the Authorization header counts."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.http import HttpRequest
from ninja.security import HttpBearer

from memory_admin.api.common import RateLimited
from memory_admin.errors import DomainError, Forbidden, Unavailable
from memory_admin.models import Token
from memory_admin.services import limits, tokens

log = logging.getLogger("memory_admin.api")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# POSTs that may carry reads only: their views let a read-only token send get operations.
READS_CHECKED_IN_VIEW = frozenset({"/api/v1/txn", "/api/v1/batch", "/api/v1/store/batch"})
WINDOW = 60  # seconds: the rate limit is RATE_LIMIT_PER_MINUTE per token per fixed minute
REDIS_DOWN_PAUSE = 5.0  # seconds without rate limiting after Redis failed to answer

API_KEY_HEADER = "x-api-key"
# POSTs that only read (LangGraph's store search and namespace listing): read-only tokens may send them.
READING_POSTS = frozenset({"/api/v1/store/items/search", "/api/v1/store/namespaces"})

_redis_down_until = 0.0
_MISSING = object()


class BearerToken(HttpBearer):
    """`Authorization: Bearer <token>` or `x-api-key: <token>`, looked up by its SHA-256 on
    every request, so a revoked token is refused at once by every web process."""

    def __call__(self, request: HttpRequest) -> Token | None:
        # Memoized per request: the idempotency layer needs the token before ninja asks for it.
        cached = getattr(request, "_ma_auth", _MISSING)
        if cached is not _MISSING:
            if isinstance(cached, DomainError):
                raise cached
            return cached
        try:
            result = self._from_headers(request)
        except DomainError as exc:
            request._ma_auth = exc
            raise
        request._ma_auth = result
        return result

    def _from_headers(self, request: HttpRequest) -> Token | None:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return self.authenticate(request, credential)
        api_key = request.headers.get(API_KEY_HEADER)
        if api_key:
            return self.authenticate(request, api_key)
        return None

    def authenticate(self, request: HttpRequest, token: str) -> Token | None:
        found = tokens.authenticate(token.strip())
        if found is None:
            return None
        writing = (
            request.method not in SAFE_METHODS
            and request.path not in READS_CHECKED_IN_VIEW
            and request.path not in READING_POSTS
        )
        if writing and found.read_only:
            raise Forbidden("this token is read-only", scopes=found.scopes)
        check_rate(found)
        return found


bearer = BearerToken()


def check_rate(token: Token) -> None:
    """Count the call against the token's minute; RateLimited once over the limit.

    Fails open while Redis is down: agents keep working on what Postgres serves, and a
    dead Redis is not asked again for a few seconds.
    """
    global _redis_down_until
    if time.monotonic() < _redis_down_until:
        return
    stamp = time.time()
    window = int(stamp // WINDOW)
    try:
        count = limits.count_call(
            ns_name=token.agent.ns.name, token_id=token.pk, window=window, keep_seconds=WINDOW * 2
        )
    except Unavailable as exc:
        log.warning("rate limit skipped, Redis unavailable: %s", exc)
        _redis_down_until = time.monotonic() + REDIS_DOWN_PAUSE
        return
    limit = settings.RATE_LIMIT_PER_MINUTE
    if count > limit:
        retry_after = max(1, int((window + 1) * WINDOW - stamp + 0.999))
        raise RateLimited(f"over {limit} requests a minute for this token", retry_after=retry_after)
