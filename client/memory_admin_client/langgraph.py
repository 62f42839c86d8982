"""LangGraph's `BaseStore` over a Memory Admin server: `pip install memory-admin-client[langgraph]`.

    from memory_admin_client.langgraph import MemoryAdminStore

    store = MemoryAdminStore("http://127.0.0.1:8000", token)
    graph = builder.compile(store=store)

Every item is one of the server's versioned records (history, events, a page in the
console). `batch` and `abatch` send one request per operation, in order, on one kept-alive
connection: the server has no multi-operation endpoint for store items yet.
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
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        results = []
        for op in ops:
            request = _request(op)
            if request is None:
                results.append(None)
                continue
            response = self._client.request(**request)
            results.append(_result(op, response))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(
                base_url=self.base_url, headers=self._headers, timeout=self._timeout
            )
        results = []
        for op in ops:
            request = _request(op)
            if request is None:
                results.append(None)
                continue
            response = await self._aclient.request(**request)
            results.append(_result(op, response))
        return results

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


def _request(op: Op) -> dict[str, Any] | None:
    """The HTTP request for one operation (None: answered without asking the server)."""
    if isinstance(op, GetOp):
        if any("." in label for label in op.namespace) or not op.namespace:
            return None  # no such item can exist: labels never hold "."
        params: dict[str, Any] = {"namespace": ".".join(op.namespace), "key": op.key}
        params["refresh_ttl"] = "true" if op.refresh_ttl else "false"
        return {"method": "GET", "url": "/store/items", "params": params}
    if isinstance(op, PutOp):
        if op.value is None:
            body = {"namespace": list(op.namespace), "key": op.key}
            return {"method": "DELETE", "url": "/store/items", "json": body}
        body = {"namespace": list(op.namespace), "key": op.key, "value": op.value, "ttl": op.ttl}
        if op.index is not None:
            body["index"] = op.index if op.index is False else list(op.index)
        return {"method": "PUT", "url": "/store/items", "json": body}
    if isinstance(op, SearchOp):
        body = {
            "namespace_prefix": list(op.namespace_prefix),
            "filter": op.filter,
            "limit": op.limit,
            "offset": op.offset,
            "query": op.query,
            "refresh_ttl": op.refresh_ttl,
        }
        return {"method": "POST", "url": "/store/items/search", "json": body}
    if isinstance(op, ListNamespacesOp):
        body = {"max_depth": op.max_depth, "limit": op.limit, "offset": op.offset}
        for condition in op.match_conditions or ():
            body[condition.match_type] = list(condition.path)
        return {"method": "POST", "url": "/store/namespaces", "json": body}
    raise ValueError(f"unknown store operation: {op!r}")


def _result(op: Op, response: httpx.Response) -> Result:
    if isinstance(op, GetOp) and response.status_code == 404:
        return None
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        retry_after = response.headers.get("Retry-After")
        raise from_response(response.status_code, body, float(retry_after) if retry_after else None)
    if isinstance(op, PutOp):
        return None
    body = response.json()
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


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
