"""LangGraph's `BaseStore` over a Memory Admin server: `pip install memory-admin-client[langgraph]`.

    from memory_admin_client.langgraph import MemoryAdminStore

    store = MemoryAdminStore("http://127.0.0.1:8000", token)
    graph = builder.compile(store=store)

Every item is one of the server's versioned records (history, events, a page in the
console). `batch` and `abatch` send all their operations in one request (`POST
/api/v1/store/batch`); the server runs them in order, each on its own, and the first that
failed is raised here after all have run (as LangGraph's stores raise).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import httpx
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)

from memory_admin_client.errors import from_response

__all__ = ["MemoryAdminStore"]


class MemoryAdminStore(BaseStore):
    """A LangGraph store whose items live on a Memory Admin server, in the token's namespace.

    `url` is the server (`http://host:port`); `token` an agent token (sent as x-api-key).
    `ttl` is LangGraph's TTLConfig (`default_ttl` minutes, `refresh_on_read`).
    """

    supports_ttl = True

    def __init__(self, url: str, token: str, *, ttl: TTLConfig | None = None, timeout: float = 30.0) -> None:
        self.base_url = url.rstrip("/") + "/api/v1"
        self.ttl_config = ttl
        self._headers = {"x-api-key": token, "User-Agent": "memory-admin-client-langgraph"}
        self._timeout = timeout
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    # --- BaseStore ----------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops, wire, sent = _plan(ops)
        if not sent:
            return [None] * len(ops)
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        return _results(ops, wire, self._client.post("/store/batch", json={"ops": sent}))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops, wire, sent = _plan(ops)
        if not sent:
            return [None] * len(ops)
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers, timeout=self._timeout
            )
        return _results(ops, wire, await self._aclient.post("/store/batch", json={"ops": sent}))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def __enter__(self) -> MemoryAdminStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> MemoryAdminStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _plan(ops: Iterable[Op]) -> tuple[list[Op], list[dict[str, Any] | None], list[dict[str, Any]]]:
    """The operations, each as sent (None where answered locally), and what goes to the server."""
    ops = list(ops)
    wire = [_wire(op) for op in ops]
    return ops, wire, [w for w in wire if w is not None]


def _wire(op: Op) -> dict[str, Any] | None:
    """The operation as the store batch takes it (None: answered without asking the server)."""
    if isinstance(op, GetOp):
        if not op.namespace or any("." in label or not label for label in op.namespace):
            return None  # no item can live there: every put's labels are non-empty, without "."
        return {"get": {"namespace": list(op.namespace), "key": op.key, "refresh_ttl": op.refresh_ttl}}
    if isinstance(op, PutOp):
        if op.value is None:
            return {"delete": {"namespace": list(op.namespace), "key": op.key}}
        body = {"namespace": list(op.namespace), "key": op.key, "value": op.value, "ttl": op.ttl}
        if op.index is not None:
            body["index"] = op.index if op.index is False else list(op.index)
        return {"put": body}
    if isinstance(op, SearchOp):
        return {
            "search": {
                "namespace_prefix": list(op.namespace_prefix),
                "filter": op.filter,
                "limit": op.limit,
                "offset": op.offset,
                "query": op.query,
                "refresh_ttl": op.refresh_ttl,
            }
        }
    if isinstance(op, ListNamespacesOp):
        body = {"max_depth": op.max_depth, "limit": op.limit, "offset": op.offset}
        for condition in op.match_conditions or ():
            body[condition.match_type] = list(condition.path)
        return {"list_namespaces": body}
    raise ValueError(f"unknown store operation: {op!r}")


def _results(ops: list[Op], wire: list[dict[str, Any] | None], response: httpx.Response) -> list[Result]:
    if response.status_code >= 400:
        raise _error(response.status_code, _json(response), response.headers.get("Retry-After"))
    answers = iter(response.json()["results"])
    results: list[Result] = []
    failed = None
    for op, sent in zip(ops, wire, strict=True):
        if sent is None:
            results.append(None)
            continue
        answer = next(answers)
        status, body = answer["status"], answer["body"]
        if isinstance(op, GetOp) and status == 404:
            results.append(None)
        elif status >= 400:
            failed = failed or _error(status, body, None)
            results.append(None)
        else:
            results.append(_result(op, body))
    if failed is not None:
        raise failed
    return results


def _result(op: Op, body: Any) -> Result:
    if isinstance(op, PutOp):
        return None
    if isinstance(op, GetOp):
        return Item(
            value=body["value"],
            key=body["key"],
            namespace=tuple(body["namespace"]),
            created_at=_time(body["created_at"]),
            updated_at=_time(body["updated_at"]),
        )
    if isinstance(op, SearchOp):
        return [
            SearchItem(
                namespace=tuple(item["namespace"]),
                key=item["key"],
                value=item["value"],
                created_at=_time(item["created_at"]),
                updated_at=_time(item["updated_at"]),
                score=item.get("score"),
            )
            for item in body["items"]
        ]
    return [tuple(namespace) for namespace in body["namespaces"]]


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error(status: int, body: Any, retry_after: str | None) -> Exception:
    return from_response(status, body, float(retry_after) if retry_after else None)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
