"""State and judgement the sync and async clients share; each adds only how it waits and sends."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

import httpx

from memory_admin_client import _core as core
from memory_admin_client.errors import (
    AgentMismatch,
    MemoryAdminError,
    StaleFence,
    Unavailable,
    from_response,
)
from memory_admin_client.wal import OfflineLog, Row

log = logging.getLogger("memory_admin_client")

MAX_SERVER_WAIT = 30.0  # the API's largest wait_seconds
STREAM_READ_TIMEOUT = 45.0  # the server sends a keepalive comment at least every ~20 s
OFFLINE_PROBE = 1.0  # after the server was found away, queueable calls skip trying it this long
NOT_QUEUED = (
    "record writes and locks are never queued offline (only store_fact, publish and set_agent_status are)"
)


# What a token looks like (services/tokens.py: "ma_" and URL-safe base64), to hide it in text.
_TOKEN_LIKE = re.compile(r"ma_[A-Za-z0-9_-]{8,}")


def checked_token(token: object) -> str:
    """The token without surrounding whitespace (a pasted trailing newline); ValueError for none
    at all or one that could not go in a header. The token itself is never in the message."""
    if not isinstance(token, str):
        kind = type(token).__name__
        raise ValueError(f"token must be a string (the ma_... token issue_token printed), not {kind}")
    token = token.strip()
    if not token:
        raise ValueError("token is empty: pass the ma_... token that `manage.py issue_token` printed")
    if any(not ("!" <= char <= "~") for char in token):
        raise ValueError(
            "token contains whitespace, a line break or a character that cannot go in an HTTP header;"
            " pass the ma_... token exactly as `manage.py issue_token` printed it"
        )
    return token


class _Again(Exception):
    """An attempt should be repeated after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay


class Base:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        wal_path: str | os.PathLike | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: core.Backoff | None = None,
        flush_interval: float | None = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_url = self.base_url if self.base_url.endswith("/api/v1") else self.base_url + "/api/v1"
        self.token = checked_token(token)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff or core.Backoff()
        self.conflict_backoff = core.Backoff(base=0.02, cap=1.0)
        self.flush_interval = flush_interval
        self.wal = OfflineLog(wal_path) if wal_path is not None else None
        self._identity: dict[str, Any] | None = None
        self._digest = core.token_digest(self.token)
        self._tokens: dict[str, int] = {}  # resource -> the fencing token this client holds it with
        self._offline_until = 0.0
        if self.wal is not None and self.wal.get("token") == self._digest:
            cached = self.wal.get("identity")  # lets agent_id checks work while offline
            self._identity = json.loads(cached) if cached else None

    def _redact(self, error: object) -> str:
        """`str(error)` without this client's token: an exception of the HTTP stack may quote
        the request's headers."""
        return _TOKEN_LIKE.sub("ma_…", str(error).replace(self.token, "…"))

    def _http_options(self) -> dict[str, Any]:
        return {
            "base_url": self.api_url,
            "headers": {"Authorization": f"Bearer {self.token}", "User-Agent": "memory-admin-client/0.1"},
            "timeout": self.timeout,
        }

    # --- identity -------------------------------------------------------------------------

    @property
    def agent_id(self) -> str | None:
        """The agent the token speaks for, once known (after the first call that needed it)."""
        return self._identity["agent_id"] if self._identity else None

    @property
    def namespace(self) -> str | None:
        """The token's namespace, once known (after the first call that needed it)."""
        return self._identity["namespace"] if self._identity else None

    def _remember(self, identity: dict[str, Any]) -> dict[str, Any]:
        self._identity = identity
        if self.wal is not None:
            self.wal.put("token", self._digest)
            self.wal.put("identity", json.dumps(identity))
        return identity

    def _refuse_other_agent(self, named: str | None) -> None:
        if named is not None and self._identity is not None and named != self._identity["agent_id"]:
            raise AgentMismatch(
                f"this client's token speaks for agent {self._identity['agent_id']!r}; it cannot act as"
                f" {named!r}. Issue a token for {named!r} and give it to that agent's client."
            )

    # --- locks and fences -------------------------------------------------------------------

    def fencing_token(self, resource: str) -> int | None:
        """The fencing token this client holds `resource` with (from acquire_lock or lock())."""
        return self._tokens.get(resource)

    def _fence(self, fence: Any) -> tuple[str, int] | None:
        """A fence from a Lock (refused here if it is known lost), a resource this client holds,
        or a `(resource, token)` pair."""
        if fence is None:
            return None
        if isinstance(fence, str):
            token = self._tokens.get(fence)
            if token is None:
                raise StaleFence(
                    f"this client holds no lock on {fence!r} to fence the write with", lock=fence
                )
            return fence, token
        if isinstance(fence, tuple):
            return fence[0], int(fence[1])
        fence.check()
        return fence.resource, fence.fencing_token

    # --- sending: the judgement of one attempt ------------------------------------------------

    def _timeout(self, call: core.Call) -> float:
        return self.timeout + call.wait

    def _judge(
        self,
        call: core.Call,
        attempt: int,
        response: httpx.Response | None,
        error: Exception | None,
        *,
        retry_unavailable: bool = True,
    ) -> Any:
        """The value of an attempt, or the error to raise; `_Again` when it should be repeated."""
        if error is not None:
            if retry_unavailable and attempt < self.retries and _transient(error):
                raise _Again(self.backoff.delay(attempt))
            note = (
                f"; {NOT_QUEUED}"
                if self.wal is not None and call.queue is None and call.method != "GET"
                else ""
            )
            raise Unavailable(
                f"cannot reach {self.base_url} ({type(error).__name__}: {self._redact(error)}){note}"
            ) from error
        status = response.status_code
        if status < 300:
            return call.then(response.json() if response.content else None)
        try:
            body = response.json()
        except ValueError:
            body = None
        wait = core.retry_after(response.headers)
        exc = from_response(status, body, wait)
        if status in (429, 503) and attempt < self.retries and (retry_unavailable or status == 429):
            raise _Again(self.backoff.delay(attempt, wait))
        if status == 404 and call.missing is not core.RAISE:
            return call.missing
        if isinstance(exc, StaleFence) and call.fence is not None:
            call.fence._mark_lost()
        raise exc

    def _replay_verdict(self, row: Row, exc: MemoryAdminError) -> str:
        """What a refused row becomes: kept to send later ("stop") or set aside ("fail")."""
        if isinstance(exc, Unavailable) or exc.status in (401, 403, 429):
            return "stop"  # the server or the token, not the row: keep it for later
        return "fail"

    def _offline(self) -> bool:
        return time.monotonic() < self._offline_until

    def _went_offline(self) -> None:
        self._offline_until = time.monotonic() + OFFLINE_PROBE

    def _queue(self, call: core.Call) -> None:
        self.wal.append(
            kind=call.queue,
            method=call.method,
            path=call.path,
            body=call.body,
            key=call.key,
            agent_id=call.agent_id,
        )
        log.info(
            "server away: %s %s queued in %s (%d waiting)",
            call.method,
            call.path,
            self.wal.path,
            self.wal.backlog,
        )

    def pending(self) -> list[dict[str, Any]]:
        """The calls waiting in the offline log, oldest first (empty without a log)."""
        return [row.describe() for row in self.wal.rows("queued")] if self.wal else []

    def failed(self) -> list[dict[str, Any]]:
        """Logged calls the server refused for good when replayed (bad input, another agent)."""
        return [row.describe() for row in self.wal.rows("failed")] if self.wal else []


def _transient(error: Exception) -> bool:
    return isinstance(error, httpx.TransportError) and not isinstance(
        error, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError
    )


def row_call(row: Row) -> core.Call:
    return core.Call(row.method, row.path, body=row.body, key=row.idempotency_key, queue=row.kind)


class LockState:
    """What a held lock knows of itself, for the sync and async Lock alike."""

    def __init__(self, client: Any, resource: str, ttl: float, wait: float, renew: bool) -> None:
        if ttl < 1:
            raise ValueError("ttl must be at least 1 second")
        self.client = client
        self.resource = resource
        self.ttl = ttl
        self.wait = wait
        self.auto_renew = renew
        self.fencing_token: int | None = None
        self.expires_at: str | None = None
        self.lost = False
        self.released = False
        self._deadline = 0.0  # monotonic: the lease surely ends by then unless renewed

    def __repr__(self) -> str:
        state = (
            "lost" if self.lost else "released" if self.released else "held" if self.fencing_token else "new"
        )
        return f"<Lock {self.resource!r} token={self.fencing_token} {state}>"

    @property
    def held(self) -> bool:
        """Taken, and not released or known lost."""
        return (
            self.fencing_token is not None
            and not self.lost
            and not self.released
            and time.monotonic() < self._deadline
        )

    def _took(self, body: dict[str, Any], started: float) -> None:
        self.fencing_token = body["fencing_token"]
        self.expires_at = body["expires_at"]
        self._deadline = started + self.ttl  # measured from before the request: errs short
        self.lost = self.released = False
        self.client._tokens[self.resource] = self.fencing_token

    def _renewed(self, body: dict[str, Any], started: float) -> None:
        self.expires_at = body["expires_at"]
        self._deadline = started + self.ttl

    def _mark_lost(self) -> None:
        if not self.lost:
            log.warning("lock %r (token %s) is lost; fenced writes stop", self.resource, self.fencing_token)
        self.lost = True
        if self.client._tokens.get(self.resource) == self.fencing_token:
            del self.client._tokens[self.resource]

    def check(self) -> None:
        """Raise StaleFence, without asking the server, when this lock can no longer fence a write."""
        if self.fencing_token is None:
            raise StaleFence(f"lock {self.resource!r} was never acquired", lock=self.resource)
        if self.released:
            raise StaleFence(
                f"lock {self.resource!r} was released", lock=self.resource, token=self.fencing_token
            )
        if not self.lost and time.monotonic() >= self._deadline:
            self._mark_lost()  # the lease ran out before a renewal got through
        if self.lost:
            raise StaleFence(
                f"lock {self.resource!r} (token {self.fencing_token}) was lost; the write was not sent",
                lock=self.resource,
                token=self.fencing_token,
            )

    def _interval(self, failing: bool) -> float:
        if not failing:
            return self.ttl / 3
        return max(0.05, min(self.ttl / 3, (self._deadline - time.monotonic()) / 3))
