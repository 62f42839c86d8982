"""What the sync and async clients share, without any I/O: the calls they make, how answers
become return values, the retry schedule, cursors and the Server-Sent Events decoder.

A public method builds a `Call` (or a plan: a generator of calls, for paging); each client
only sends it. So both clients speak the API the same way by construction.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

RAISE = object()  # Call.missing: a 404 raises NotFound
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
MAX_PAGE = 500  # the API's largest `limit`
QUEUEABLE = ("fact", "event", "status")  # what may wait in the offline log

Plan = Generator["Call", Any, Any]


def encode(body: Any) -> bytes:
    """JSON bytes, made once per logical call: a retry sends the very same bytes, which the
    server's Idempotency-Key check requires."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def segment(value: str) -> str:
    """A key or resource in a URL path; `/` stays (keys may hold it), the rest is quoted."""
    return quote(str(value), safe="/:@")


def item(noun: str, key: str, sub: str = "") -> str:
    """The path of a record or lock, or of its sub-resource, in the form no key can be
    mistaken in: the key ends at `!`, which keys cannot contain (API.md: Reaching every key)."""
    return f"/{noun}/{segment(key)}!{sub}"


@dataclass
class Call:
    """One logical API call. Its idempotency key is made once and reused by every retry."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    body: bytes | None = None
    then: Callable[[Any], Any] = lambda body: body
    missing: Any = RAISE
    queue: str | None = None  # a QUEUEABLE kind: goes to the offline log when the server is away
    agent_id: str | None = None  # the agent the caller named; must be the token's
    wait: float = 0.0  # seconds the server may hold the request on purpose (lock wait, group block)
    fence: Any = None  # the Lock a fenced write used: marked lost on stale_fencing_token
    key: str | None = None
    stream: bool = False

    def __post_init__(self) -> None:
        if self.key is None and self.method != "GET":
            self.key = uuid.uuid4().hex

    def headers(self) -> dict[str, str]:
        headers = dict(JSON_HEADERS) if self.body is not None else {"Accept": "application/json"}
        if self.key is not None:
            headers["Idempotency-Key"] = self.key
        return headers


# --- shapes: the API's bodies, plus the names the three-class pattern used -----------------


def fact_shape(body: dict[str, Any]) -> dict[str, Any]:
    """A fact as API.md has it, plus `timestamp` (the pattern's name for when it was stored)."""
    return {**body, "timestamp": body.get("created_at")}


def event_shape(body: dict[str, Any]) -> dict[str, Any]:
    """An event as API.md has it, plus the pattern's names: event_type, event_id, timestamp."""
    return {
        **body,
        "event_type": body.get("type"),
        "event_id": body.get("id"),
        "timestamp": body.get("created_at"),
    }


def status_shape(body: dict[str, Any]) -> dict[str, Any] | None:
    if body.get("state") == "never_seen":
        return None
    return body


def items(body: dict[str, Any]) -> list[Any]:
    return body["items"]


def to_cursor(since: Any) -> int | None:
    """An event cursor from what callers pass: an id (int or digits), "0-0"/"0" for the
    beginning, and "$" or None for "from now" (None)."""
    if since is None or since == "$":
        return None
    if isinstance(since, bool):
        raise TypeError("an event cursor is an id, not a bool")
    if isinstance(since, int):
        return since
    text = str(since).strip()
    if text.endswith("-0"):  # a Redis stream id as the pattern used them: "0-0", "<id>-0"
        text = text[:-2]
    if not text.isdigit():
        raise ValueError(f"not an event cursor: {since!r} (an event id, '0-0' or '$')")
    return int(text)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- calls ---------------------------------------------------------------------------------


def me() -> Call:
    return Call("GET", "/me")


def health() -> Call:
    return Call("GET", "/health")


def store_fact(agent_id: str | None, fact: str, category: str, metadata: dict | None) -> Call:
    body = {"fact": fact, "category": category, "metadata": metadata or {}}
    return Call("POST", "/facts", body=encode(body), then=lambda b: b["id"], queue="fact", agent_id=agent_id)


def get_fact(fact_id: int) -> Call:
    return Call("GET", f"/facts/{int(fact_id)}", then=fact_shape)


def query_facts(**query: Any) -> Call:
    params = {name: value for name, value in query.items() if value is not None}
    return Call(
        "GET", "/facts", params=params, then=lambda b: {**b, "items": [fact_shape(f) for f in b["items"]]}
    )


def all_facts(category: str, limit: int | None) -> Plan:
    """Every fact of a category (newest first), page by page, up to `limit`."""
    found: list[dict] = []
    after = None
    while limit is None or len(found) < limit:
        size = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(found))
        page = yield query_facts(category=category, after=after, limit=size)
        found += page["items"]
        after = page["next"]
        if after is None:
            break
    return found


def set_status(agent_id: str | None, status: str, detail: str, ttl_seconds: int) -> Call:
    body = {"status": status, "detail": detail or "", "ttl_seconds": ttl_seconds}
    return Call("PUT", "/status", body=encode(body), queue="status", agent_id=agent_id)


def get_agent(agent_id: str) -> Call:
    return Call("GET", f"/agents/{segment(agent_id)}", then=status_shape, missing=None)


def list_agents() -> Call:
    return Call("GET", "/agents")


def acquire(resource: str, ttl_seconds: int, wait_seconds: float, agent_id: str | None = None) -> Call:
    body = {"ttl_seconds": int(ttl_seconds), "wait_seconds": wait_seconds}
    return Call("POST", item("locks", resource), body=encode(body), wait=wait_seconds, agent_id=agent_id)


def renew(resource: str, token: int, ttl_seconds: int) -> Call:
    body = {"fencing_token": token, "ttl_seconds": int(ttl_seconds)}
    return Call("POST", item("locks", resource, "renew"), body=encode(body))


def release(resource: str, token: int, agent_id: str | None = None) -> Call:
    return Call(
        "DELETE",
        item("locks", resource),
        params={"fencing_token": token},
        then=lambda b: True,
        agent_id=agent_id,
    )


def get_lock(resource: str) -> Call:
    return Call("GET", item("locks", resource), missing=None)


def list_locks() -> Call:
    return Call("GET", "/locks", then=items)


def publish(event: Any, payload: dict | None) -> Call:
    if isinstance(event, str):
        kind, agent_id, payload = event, None, payload or {}
    else:
        kind, agent_id, payload = event.event_type, event.agent_id or None, event.payload or {}
    body = {"type": kind, "payload": payload}
    return Call(
        "POST", "/events", body=encode(body), then=lambda b: b["id"], queue="event", agent_id=agent_id
    )


def events_page(after: int, limit: int, types: Iterable[str] | None, agent_id: str | None) -> Call:
    params: dict[str, Any] = {"after": after, "limit": limit}
    if types:
        params["type"] = ",".join(types)
    if agent_id:
        params["agent_id"] = agent_id
    return Call("GET", "/events", params=params)


def read_events(since: Any, count: int, types: Iterable[str] | None, agent_id: str | None) -> Plan:
    """Up to `count` events after `since`, oldest first."""
    after = to_cursor(since) or 0
    found: list[dict] = []
    while len(found) < count:
        page = yield events_page(after, min(MAX_PAGE, count - len(found)), types, agent_id)
        found += [event_shape(e) for e in page["items"]]
        if page["next"] is None or not page["items"]:
            break
        after = page["items"][-1]["id"]
    return found


def read_group(
    group: str, consumer: str, count: int, block_ms: int, start: str, reclaim_after_ms: int | None
):
    body: dict[str, Any] = {"consumer": consumer, "count": count, "block_ms": block_ms, "start": start}
    if reclaim_after_ms is not None:
        body["reclaim_after_ms"] = reclaim_after_ms
    return Call(
        "POST",
        f"/events/groups/{segment(group)}/read",
        body=encode(body),
        then=lambda b: [event_shape(e) for e in b["items"]],
        wait=block_ms / 1000,
    )


def ack(group: str, ids: Iterable[int]) -> Call:
    body = {"ids": [int(i) for i in ids]}
    return Call("POST", f"/events/groups/{segment(group)}/ack", body=encode(body), then=lambda b: b["acked"])


def read_record(key: str) -> Call:
    return Call("GET", item("records", key), missing=None)


def write_record(key: str, value: Any, expected_version: int | None, fence: tuple[str, int] | None) -> Call:
    body: dict[str, Any] = {"value": value}
    if expected_version is not None:
        body["expected_version"] = int(expected_version)
    if fence is not None:
        body["fence"] = {"lock": fence[0], "token": int(fence[1])}
    return Call("PUT", item("records", key), body=encode(body))


def delete_record(key: str, expected_version: int | None) -> Call:
    params = {"expected_version": int(expected_version)} if expected_version is not None else None
    return Call("DELETE", item("records", key), params=params, then=lambda b: None)


def list_records(prefix: str, after: str, limit: int) -> Call:
    return Call("GET", "/records", params={"prefix": prefix, "after": after, "limit": limit})


def versions(key: str, limit: int) -> Call:
    return Call("GET", item("records", key, "versions"), params={"limit": limit}, then=items)


def conflicts(status: str, limit: int) -> Call:
    return Call("GET", "/conflicts", params={"status": status, "limit": limit}, then=items)


# --- transactions and batches (API.md: Transactions and batches) ---------------------------


class Op:
    """The operations of a transaction or a batch, in the API's wire shape (plain dicts, so
    the shape itself may be passed too)."""

    @staticmethod
    def put(key: str, value: Any, expected_version: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"key": key, "value": value}
        if expected_version is not None:
            body["expected_version"] = int(expected_version)
        return {"put": body}

    @staticmethod
    def delete(key: str, expected_version: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"key": key}
        if expected_version is not None:
            body["expected_version"] = int(expected_version)
        return {"delete": body}

    @staticmethod
    def get(key: str) -> dict[str, Any]:
        return {"get": {"key": key}}

    @staticmethod
    def fact(fact: str, category: str, metadata: dict | None = None) -> dict[str, Any]:
        return {"fact": {"fact": fact, "category": category, "metadata": metadata or {}}}

    @staticmethod
    def event(type: str, payload: dict | None = None) -> dict[str, Any]:
        return {"event": {"type": type, "payload": payload or {}}}

    @staticmethod
    def status(status: str, detail: str = "", ttl_seconds: int = 60) -> dict[str, Any]:
        return {"status": {"status": status, "detail": detail, "ttl_seconds": int(ttl_seconds)}}


class Txn:
    """A /txn being built: compares, then the operations for when all hold (`then`) and for
    when one does not (`otherwise`); `commit()` sends it (awaitable on the async client).

        done = client.txn().if_version("a", 3).then(Op.put("a", 1, expected_version=3)).commit()
    """

    def __init__(self, commit: Callable[[Call], Any]) -> None:
        self._commit = commit
        self.compare: list[dict[str, Any]] = []
        self.success: list[dict[str, Any]] = []
        self.failure: list[dict[str, Any]] = []

    def if_version(self, key: str, op_or_version: str | int, version: int | None = None) -> Txn:
        """The record's version equals `version` (0: absent), or `if_version(key, "<", 5)`."""
        if version is None:
            self.compare.append({"key": key, "version": int(op_or_version)})
        else:
            self.compare.append({"key": key, "version": {"op": op_or_version, "value": int(version)}})
        return self

    def if_exists(self, key: str, exists: bool = True) -> Txn:
        self.compare.append({"key": key, "exists": exists})
        return self

    def if_absent(self, key: str) -> Txn:
        return self.if_exists(key, False)

    def if_holding(self, lock: Any, fencing_token: int | None = None) -> Txn:
        """The caller holds `lock` (a held Lock, or a resource with its `fencing_token`)."""
        if fencing_token is None:
            lock, fencing_token = lock.resource, lock.fencing_token
        self.compare.append({"lock": lock, "fencing_token": int(fencing_token)})
        return self

    def then(self, *ops: dict[str, Any]) -> Txn:
        self.success.extend(ops)
        return self

    def otherwise(self, *ops: dict[str, Any]) -> Txn:
        self.failure.extend(ops)
        return self

    def call(self) -> Call:
        body = {"compare": self.compare, "success": self.success, "failure": self.failure}
        return Call("POST", "/txn", body=encode(body))

    def commit(self) -> Any:
        """`{"succeeded", "results": [{"status", "body"}], "txn"}`; TxnAborted if an operation
        of the branch that ran failed (nothing was changed)."""
        return self._commit(self.call())


def batch(ops: Iterable[dict[str, Any]]) -> Call:
    """Independent operations: one `{"status", "body"}` per operation, in order."""
    return Call("POST", "/batch", body=encode({"ops": list(ops)}), then=lambda b: b["results"])


# --- retries -------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter, capped; Retry-After wins when the server sends it."""

    base: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), 60.0) + random.uniform(0, 0.1)
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * 2**attempt)


def retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# --- Server-Sent Events ------------------------------------------------------------------


@dataclass
class SSEDecoder:
    """Lines of a text/event-stream in, events (`{"id", "event", "data"}`) out, as the SSE spec
    dispatches them: on a blank line, when data was given; comments (`: keepalive`) are skipped."""

    data: list[str] = field(default_factory=list)
    event: str = ""
    id: str | None = None

    def feed(self, line: str) -> dict[str, Any] | None:
        if line == "":
            if not self.data:
                self.event = ""
                return None
            frame = {"id": self.id, "event": self.event or "message", "data": "\n".join(self.data)}
            self.data, self.event = [], ""
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id" and "\0" not in value:
            self.id = value
        return None


def start_cursor(cursor: int | None, decoder: SSEDecoder) -> int | None:
    """A stream started "from now" first says where it starts (an `id:` before any event):
    until an event comes, a reconnect resumes from there, not from a later "now"."""
    if cursor is None and decoder.id is not None and decoder.id.isdigit():
        return int(decoder.id)
    return cursor


def stream_event(frame: dict[str, Any]) -> dict[str, Any]:
    return event_shape(json.loads(frame["data"]))
