"""The MCP server at /mcp: our services as tools for any MCP client (streamable HTTP, stateless).

Built on the official `mcp` SDK (MCPServer). Every request carries an agent token, as
`Authorization: Bearer <token>` or `x-api-key: <token>`: the token names the agent and its
one namespace, so no tool takes either. Tools call services only, in a worker thread.

Mounting (config/asgi.py routes `/mcp` here, around Django): Django's and Channels' routers
refuse the ASGI lifespan scope, and the web process runs uvicorn with `--lifespan off`. The
SDK's session manager still wants its task group running, even stateless; `McpEndpoint`
starts it on the first request of each worker process and keeps it for the process's life.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from django.http.request import split_domain_port, validate_host
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import Field

from memory_admin.api.auth import check_rate
from memory_admin.api.common import RateLimited
from memory_admin.api.facts import fact_body
from memory_admin.api.records import version_body
from memory_admin.errors import DomainError, Forbidden, VersionConflict
from memory_admin.models import Token, iso
from memory_admin.services import Actor, events, facts, locks, records, tokens
from memory_admin.services import status as statuses

T = TypeVar("T")
PATH = "/mcp"

server = MCPServer(
    name="memory-admin",
    instructions=(
        "Shared memory for a team of agents: facts, versioned records (optimistic locking), "
        "locks with fencing tokens, agent status and an event log, all in your token's namespace."
    ),
)

READ = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True, openWorldHint=False)
ADD = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
OVERWRITE = ToolAnnotations(
    readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=False
)

Key = Annotated[
    str, Field(description="1-200 characters of A-Z a-z 0-9 _ . : @ / -", min_length=1, max_length=200)
]


# --- the caller and the calls -----------------------------------------------------------


def token_from(headers: Mapping[str, str] | None) -> str | None:
    """The presented token: Authorization: Bearer first, then x-api-key."""
    headers = {name.lower(): value for name, value in (headers or {}).items()}
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return headers.get("x-api-key", "").strip() or None


def _in_thread(func: Callable[..., T]) -> Callable[..., Any]:
    def call(*args, **kwargs) -> T:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    return sync_to_async(call, thread_sensitive=False)


async def _call(ctx: Context, func: Callable[..., T], *, writes: bool, **kwargs) -> T:
    """Run `func(ns=..., actor=..., **kwargs)` for the token's agent; domain errors become tool errors."""

    def run() -> T:
        token = tokens.authenticate(token_from(ctx.headers) or "")
        if token is None:
            raise ToolError("unauthenticated: a valid token is required")
        if writes and token.read_only:
            raise Forbidden("this token is read-only")
        return func(token, **kwargs)

    try:
        return await _in_thread(run)()
    except VersionConflict as exc:
        current = exc.details.get("current")
        version = current["version"] if current else None
        raise ToolError(
            f"version_conflict: {exc.message}; current version: {version} "
            f"(read it, merge, and write again with expected_version={version or 0})"
        ) from None
    except DomainError as exc:
        details = {k: v for k, v in exc.details.items() if v not in (None, {}, [])}
        suffix = f" {json.dumps(details, default=str)}" if details else ""
        raise ToolError(f"{exc.code}: {exc.message}{suffix}") from None


def _actor(token: Token) -> Actor:
    return Actor.of_agent(token.agent)


# --- tools ------------------------------------------------------------------------------


@server.tool(annotations=ADD)
async def store_fact(
    fact: Annotated[str, Field(description="what was found out", min_length=1)],
    category: Annotated[str, Field(description="1-100 printable characters", min_length=1, max_length=100)],
    ctx: Context,
    metadata: Annotated[dict[str, Any] | None, Field(description="any JSON object")] = None,
) -> dict[str, Any]:
    """Share a fact with the team (facts are append-only)."""

    def run(token: Token) -> dict[str, Any]:
        found = facts.store_fact(
            ns=token.agent.ns, fact=fact, category=category, metadata=metadata or {}, actor=_actor(token)
        )
        return fact_body(found)

    return await _call(ctx, run, writes=True)


@server.tool(annotations=READ)
async def search_facts(
    ctx: Context,
    q: Annotated[str | None, Field(description="full-text search")] = None,
    category: Annotated[str | None, Field(description="only this category")] = None,
    limit: Annotated[int, Field(ge=1, le=500)] = 20,
) -> dict[str, Any]:
    """Facts of the namespace, newest first, by full-text query and/or category."""

    def run(token: Token) -> dict[str, Any]:
        found, _ = facts.query_facts(ns=token.agent.ns, q=q, category=category, limit=limit)
        return {"items": [fact_body(f) for f in found]}

    return await _call(ctx, run, writes=False)


@server.tool(annotations=READ)
async def get_record(key: Key, ctx: Context) -> dict[str, Any]:
    """A versioned record: its value and version (pass the version to write_record)."""

    def run(token: Token) -> dict[str, Any]:
        return records.record_body(records.get_record(ns=token.agent.ns, key=key))

    return await _call(ctx, run, writes=False)


@server.tool(annotations=OVERWRITE)
async def write_record(
    key: Key,
    value: Annotated[Any, Field(description="any JSON")],
    ctx: Context,
    expected_version: Annotated[
        int | None,
        Field(ge=0, description="the version you read (0: create only if absent); omit to overwrite blindly"),
    ] = None,
) -> dict[str, Any]:
    """Write a record with optimistic locking: refused, naming the current version, if someone
    wrote it since `expected_version`."""

    def run(token: Token) -> dict[str, Any]:
        record, created = records.write_record(
            ns=token.agent.ns, key=key, value=value, expected_version=expected_version, actor=_actor(token)
        )
        return {**records.record_body(record), "created": created}

    return await _call(ctx, run, writes=True)


@server.tool(annotations=READ)
async def record_history(
    key: Key, ctx: Context, limit: Annotated[int, Field(ge=1, le=500)] = 20
) -> dict[str, Any]:
    """A record's versions, newest first (a delete is a version with `deleted` true)."""

    def run(token: Token) -> dict[str, Any]:
        found = records.record_versions(ns=token.agent.ns, key=key, limit=limit)
        return {"items": [version_body(v) for v in found]}

    return await _call(ctx, run, writes=False)


@server.tool(annotations=ADD)
async def acquire_lock(
    resource: Key,
    ctx: Context,
    ttl_seconds: Annotated[int, Field(ge=1, le=3600)] = 30,
    wait_seconds: Annotated[float, Field(ge=0, le=30)] = 0,
) -> dict[str, Any]:
    """Take a lock; returns its fencing token (pass it to release_lock). Not re-entrant."""

    def run(token: Token) -> dict[str, Any]:
        lock = locks.acquire_lock(
            ns=token.agent.ns,
            resource=resource,
            ttl_seconds=ttl_seconds,
            wait_seconds=wait_seconds,
            actor=_actor(token),
        )
        return locks.held_item(lock)

    return await _call(ctx, run, writes=True)


@server.tool(annotations=OVERWRITE)
async def release_lock(
    resource: Key,
    fencing_token: Annotated[int, Field(ge=0, description="the token acquire_lock returned")],
    ctx: Context,
) -> dict[str, Any]:
    """Release a lock you hold with that fencing token."""

    def run(token: Token) -> dict[str, Any]:
        locks.release_lock(ns=token.agent.ns, resource=resource, token=fencing_token, actor=_actor(token))
        return {"released": True, "resource": resource}

    return await _call(ctx, run, writes=True)


@server.tool(annotations=OVERWRITE)
async def set_status(
    status: Annotated[str, Field(description="1-64 characters", min_length=1, max_length=64)],
    ctx: Context,
    detail: str = "",
    ttl_seconds: Annotated[int, Field(ge=5, le=86400)] = 60,
) -> dict[str, Any]:
    """Say what you are doing; repeat within ttl_seconds as a heartbeat or you turn stale."""

    def run(token: Token) -> dict[str, Any]:
        found = statuses.heartbeat(
            agent=token.agent, status=status, detail=detail, ttl_seconds=ttl_seconds, actor=_actor(token)
        )
        return _agent(found)

    return await _call(ctx, run, writes=True)


@server.tool(annotations=READ)
async def list_agents(ctx: Context) -> dict[str, Any]:
    """The namespace's agents with their status and state (live, stale, never_seen)."""

    def run(token: Token) -> dict[str, Any]:
        return {"items": [_agent(a) for a in statuses.list_agents(ns=token.agent.ns)]}

    return await _call(ctx, run, writes=False)


@server.tool(annotations=ADD)
async def publish_event(
    type: Annotated[
        str, Field(description="^[a-z0-9][a-z0-9_.-]{0,63}$, not a server type (record.*, lock.* ...)")
    ],
    ctx: Context,
    payload: Annotated[dict[str, Any] | None, Field(description="any JSON object")] = None,
) -> dict[str, Any]:
    """Append your own event to the namespace's log."""

    def run(token: Token) -> dict[str, Any]:
        return events.publish_event(
            ns=token.agent.ns, type=type, payload=payload or {}, actor=_actor(token)
        ).body()

    return await _call(ctx, run, writes=True)


@server.tool(annotations=READ)
async def read_events(
    ctx: Context,
    after: Annotated[int, Field(ge=0, description="the last id you saw; 0 from the start")] = 0,
    type: Annotated[str | None, Field(description="only this type")] = None,
    limit: Annotated[int, Field(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Events after `after`, oldest first; pass the last id as `after` to go on."""

    def run(token: Token) -> dict[str, Any]:
        found = events.read_events(
            ns=token.agent.ns, after=after, types=[type] if type else None, limit=limit
        )
        return {"items": [e.body() for e in found], "next": found[-1].id if found else after}

    return await _call(ctx, run, writes=False)


def _agent(found) -> dict[str, Any]:
    return {
        "agent_id": found.agent.name,
        "status": found.status,
        "detail": found.detail,
        "updated_at": iso(found.updated),
        "expires_at": iso(found.expires),
        "state": found.state,
    }


# --- the ASGI endpoint ------------------------------------------------------------------


class McpEndpoint:
    """/mcp as an ASGI app: the token checked (401 before any MCP message), the host checked
    against ALLOWED_HOSTS as Django would, then the SDK's stateless streamable-HTTP app."""

    def __init__(self) -> None:
        self.app = server.streamable_http_app(
            streamable_http_path=PATH,
            stateless_http=True,
            json_response=True,
            max_request_body_size=settings.MAX_BODY_BYTES,
            # Requests carry a token, and the host is checked below against ALLOWED_HOSTS.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._running: asyncio.Future | None = None

    async def __call__(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host, _ = split_domain_port(headers.get("host", ""))
        if not validate_host(host, settings.ALLOWED_HOSTS):
            await _refuse(send, 400, "bad_request", "this host is not allowed")
            return
        presented = token_from(headers)
        token = await _in_thread(tokens.authenticate)(presented) if presented else None
        if token is None:
            await _refuse(
                send,
                401,
                "unauthenticated",
                "a valid token is required: `Authorization: Bearer <token>` or `x-api-key: <token>`",
            )
            return
        try:
            await _in_thread(check_rate)(token)  # the same per-token limit as the JSON API
        except RateLimited as exc:
            await _refuse(send, 429, exc.code, exc.message, retry_after=exc.retry_after)
            return
        await self._start()
        await self.app(scope, receive, send)

    async def _start(self) -> None:
        if self._running is None:
            self._running = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self._run())
        await asyncio.shield(self._running)

    async def _run(self) -> None:
        # The session manager's task group, for the life of this worker process.
        async with self.app.router.lifespan_context(self.app):
            self._running.set_result(None)
            await asyncio.Event().wait()


async def _refuse(send, status_code: int, code: str, message: str, retry_after: int | None = None) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
