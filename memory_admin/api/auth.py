"""Agent tokens: who the caller is (agent and namespace come from the token only), whether
it may write, and the per-token rate limit.

A token comes as `Authorization: Bearer <token>` or as `x-api-key: <token>` (what
langgraph-sdk and several MCP clients send); when both come, the Authorization header counts.

Each web process keeps the live tokens it has looked up for a few seconds (TokenCache),
so a busy agent's requests do not each read Postgres; a revocation reaches every process
through Redis as soon as it commits."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from django.conf import settings
from django.http import HttpRequest
from ninja.security import HttpBearer

from memory_admin.api.common import RateLimited
from memory_admin.errors import DomainError, Forbidden, Unavailable
from memory_admin.models import Token
from memory_admin.services import limits, tokens
from memory_admin.services.wakeups import subscribed

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


class TokenCache:
    """This process's live tokens by digest, each kept settings.TOKEN_CACHE_SECONDS (5 s).

    Only used while the process's subscription to revocations (tokens.revoked_channel) is in
    place: a revocation's message drops its token; losing the subscription, or taking it again,
    drops every token, and until it is back every request reads Postgres. So a revocation is
    refused at once, and one whose message was missed for any reason lives TOKEN_CACHE_SECONDS
    at most. A lookup that began before a message (any message) is not kept: the token it read
    may be the one just revoked. Nothing else on a token, its agent or namespace that a request
    reads ever changes (names, read_only), and cached rows are only read, never saved."""

    MAX_ENTRIES = 10_000  # live tokens a process sees; past that it starts over

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, Token]] = {}
        self.up = False
        self.epoch = 0  # moves on every message and every change of the subscription
        self.lock = threading.Lock()

    def get(self, token_digest: str) -> Token | None:
        entry = self.entries.get(token_digest) if self.up else None
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, token_digest: str, token: Token, epoch: int) -> None:
        """Keep `token`, read from Postgres after the cache's epoch was `epoch`."""
        with self.lock:
            if not self.up or epoch != self.epoch or settings.TOKEN_CACHE_SECONDS <= 0:
                return
            if len(self.entries) >= self.MAX_ENTRIES:
                self.entries.clear()
            self.entries[token_digest] = (time.monotonic() + settings.TOKEN_CACHE_SECONDS, token)

    def revoked(self, message: str) -> list[tuple[str, None]]:
        """A revocation's message (the token's digest): forget the token. (A Subscription's parse:
        no request waits on this channel.)"""
        with self.lock:
            self.epoch += 1
            self.entries.pop(message, None)
        return []

    def subscribed(self, up: bool) -> None:
        with self.lock:
            self.epoch += 1
            self.up = up
            self.entries.clear()


token_cache = TokenCache()
_watching: asyncio.AbstractEventLoop | None = None  # the loop whose subscription feeds the cache


async def watch_revocations() -> None:
    """Make sure this event loop listens for revocations (the web server's one loop, from its
    first API request on); until it does, the cache is not used."""
    global _watching
    loop = asyncio.get_running_loop()
    if _watching is not loop:
        await subscribed(tokens.revoked_channel(), token_cache.revoked, on_state=token_cache.subscribed)
        _watching = loop


class BearerToken(HttpBearer):
    """`Authorization: Bearer <token>` or `x-api-key: <token>`, looked up by its SHA-256 in the
    process's TokenCache or else in Postgres; a revoked token is refused at once by every web
    process."""

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
        found = live_token(token.strip(), request)
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


def live_token(raw: str, request: HttpRequest) -> Token | None:
    """The live token for a presented secret (tokens.authenticate), from this process's cache
    when it holds it (then `request.token_cached` is set: the request may not have reached
    Postgres at all)."""
    if not raw or len(raw) > 200:
        return None
    token_digest = tokens.digest(raw)
    found = token_cache.get(token_digest)
    request.token_cached = found is not None
    if found is None:
        epoch = token_cache.epoch
        found = tokens.by_digest(token_digest)
        if found is not None:
            token_cache.put(token_digest, found, epoch)
    return found


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
    limit = settings.RATE_LIMIT_PER_MINUTE
    try:
        allowed = limits.take_call(
            ns_name=token.agent.ns.name,
            token_id=token.pk,
            window=window,
            limit=limit,
            keep_seconds=WINDOW * 2,
        )
    except Unavailable as exc:
        log.warning("rate limit skipped, Redis unavailable: %s", exc)
        _redis_down_until = time.monotonic() + REDIS_DOWN_PAUSE
        return
    if not allowed:
        retry_after = max(1, int((window + 1) * WINDOW - stamp + 0.999))
        raise RateLimited(f"over {limit} requests a minute for this token", retry_after=retry_after)
