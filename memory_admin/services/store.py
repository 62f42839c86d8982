"""LangGraph's store over our records: an item is one versioned record, so every put and
delete has its version, its history, its event and its place in the console.

An item (namespace path, key) lives in the record whose key `record_key()` builds:
`~` + the labels and the key, percent-encoded (every byte outside `A-Z a-z 0-9 _ . : @ -`
as `%XX`) and joined with `/`. `~` and `%` are outside the characters of ordinary keys
(API.md), so no ordinary record can ever be a store item, and any label or key reaches a
record. A key that would be longer than 200 characters keeps its first 135 and ends with
`~` and the SHA-256 of the whole (a second `~`, so it is never another item's short key).

Beside the record, a StoreItem row keeps the path and key as LangGraph names them (for
searches and namespace listings), the TTL and the search text. The row is written first and
the record last, in one transaction, so the record's event stays the last write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DurationField, ExpressionWrapper, F, Value
from django.utils.module_loading import import_string
from django.utils.timezone import now

from memory_admin import sql
from memory_admin.errors import Invalid, NotFound
from memory_admin.models import Namespace, StoreItem, iso
from memory_admin.services import SYSTEM_ACTOR, Actor
from memory_admin.services.records import delete_record, write_record
from memory_admin.validation import check_json, dumps

PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@-")
MAX_KEY = 200
OPERATORS = {"$eq": "=", "$ne": "<>", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
MAX_LIMIT = 1000
# The text an item is ranked by is cut here: a tsvector holds at most 1 MiB.
MAX_TEXT = 200_000


# --- names ------------------------------------------------------------------------------


def record_key(path: list[str], key: str) -> str:
    """The key of the record that holds the item `key` in namespace `path`."""
    full = "~" + "/".join(_encode(part) for part in [*path, key])
    if len(full) <= MAX_KEY:
        return full
    return full[:135] + "~" + hashlib.sha256(full.encode()).hexdigest()


def _encode(text: str) -> str:
    return "".join(chr(b) if b in PLAIN else f"%{b:02X}" for b in text.encode("utf-8"))


def check_namespace(
    path: Any, field: str = "namespace", *, empty: bool = False, put: bool = False
) -> list[str]:
    """A LangGraph namespace: labels that are non-empty strings without '.'; a put's is not
    under 'langgraph' (reserved by LangGraph; reading there finds nothing)."""
    if not isinstance(path, list | tuple) or not all(isinstance(label, str) for label in path):
        raise Invalid(f"{field} must be a list of strings", {field: "a list of strings"})
    if not path and not empty:
        raise Invalid(f"{field} cannot be empty", {field: "empty namespace"})
    for label in path:
        if not label:
            raise Invalid(f"{field} labels cannot be empty", {field: "empty label"})
        if "." in label:
            raise Invalid(
                f"{field} label {label!r} contains '.', which LangGraph forbids", {field: "label with '.'"}
            )
        check_json(label, field)
    if put and path and path[0] == "langgraph":
        raise Invalid(
            f"{field} cannot start with 'langgraph' (reserved by LangGraph)", {field: "reserved 'langgraph'"}
        )
    return list(path)


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise Invalid("key must be a string", {"key": "a string"})
    check_json(key, "key")
    return key


def _check_ttl(ttl: Any) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise Invalid(
            "ttl must be a positive number of minutes, or null", {"ttl": "positive minutes or null"}
        )
    if ttl > 10**8:
        raise Invalid("ttl is over 100,000,000 minutes", {"ttl": "too large"})
    return float(ttl)


# --- ranking ----------------------------------------------------------------------------


class FullTextRanking:
    """`query` ranked by Postgres full-text search: no embedding model can be fetched here.

    A ranking (settings.STORE_RANKING names its class) gives the text an item is indexed by
    and two SQL expressions: `index_sql` turns that text (one parameter) into the stored
    `search` column, `score_sql` scores `s.search` against the query (one parameter), null
    for an item put with index=False. Every word of the query counts (OR), as semantic
    search ranks partial matches too.
    """

    config = "english"
    index_sql = "to_tsvector('english', %s)"
    score_sql = "ts_rank(s.search, replace(plainto_tsquery('english', %s)::text, ' & ', ' | ')::tsquery)"

    def document(self, value: dict[str, Any], fields: list[str] | None) -> str:
        """The item's text: its string leaves, or those under `fields` (paths like "a.b", "$" for all)."""
        if fields is None:
            return " ".join(_strings(value))
        texts = []
        for field in fields:
            found: Any = value
            for part in [] if field == "$" else field.split("."):
                found = found.get(part) if isinstance(found, dict) else None
            texts.extend(_strings(found))
        return " ".join(texts)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    return []


def ranking() -> FullTextRanking:
    return import_string(settings.STORE_RANKING)()


# --- items ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    namespace: list[str]
    key: str
    value: Any
    created: datetime
    updated: datetime
    score: float | None = None

    def body(self, *, scored: bool = False) -> dict[str, Any]:
        """The item as langgraph-sdk reads it (with `score` in search results)."""
        body = {
            "namespace": self.namespace,
            "key": self.key,
            "value": self.value,
            "created_at": iso(self.created),
            "updated_at": iso(self.updated),
        }
        if scored:
            body["score"] = self.score
        return body


def put_item(
    *,
    ns: Namespace,
    namespace: Any,
    key: Any,
    value: Any,
    actor: Actor,
    index: Any = None,
    ttl: Any = None,
) -> None:
    """Put `value` at (namespace, key): an unconditional write of the item's record.

    `index`: None indexes every text field for `query`, False none, a list those paths.
    `ttl`: minutes until the item expires (refreshed by reads), None for never.
    """
    path = check_namespace(namespace, put=True)
    key = _check_key(key)
    if not isinstance(value, dict):
        raise Invalid("value must be a JSON object", {"value": "a JSON object"})
    check_json(value)
    if not (
        index is None
        or index is False
        or (isinstance(index, list) and all(isinstance(f, str) for f in index))
    ):
        raise Invalid("index must be false, null or a list of field paths", {"index": "false, null or paths"})
    minutes = _check_ttl(ttl)
    rank = ranking()
    text = None if index is False else rank.document(value, index)[:MAX_TEXT]
    rkey = record_key(path, key)
    stamp = now()
    expires = stamp + timedelta(minutes=minutes) if minutes is not None else None
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                sql.store_upsert(rank.index_sql),
                [ns.pk, rkey, path, key, stamp, minutes, expires, text is not None, text or ""],
            )
        write_record(ns=ns, key=rkey, value=value, actor=actor)


def delete_item(*, ns: Namespace, namespace: Any, key: Any, actor: Actor) -> None:
    """Delete the item (its record gets a tombstone version); deleting a missing item is no error."""
    path = check_namespace(namespace)
    rkey = record_key(path, _check_key(key))
    with transaction.atomic():
        StoreItem.objects.filter(ns=ns, rkey=rkey).delete()
        with contextlib.suppress(NotFound):
            delete_record(ns=ns, key=rkey, actor=actor)


def get_item(*, ns: Namespace, namespace: Any, key: Any, refresh_ttl: bool | None = None) -> Item:
    """The live item; NotFound if absent, deleted or expired. A read renews its TTL unless
    `refresh_ttl` is false."""
    path = check_namespace(namespace)
    rkey = record_key(path, _check_key(key))
    stamp = now()
    with connection.cursor() as cursor:
        cursor.execute(sql.STORE_GET, [ns.pk, stamp, rkey])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no item {key!r} in namespace {path!r}")
    _refresh(ns, [row], stamp, refresh_ttl)
    return _item(row)


def search_items(
    *,
    ns: Namespace,
    namespace_prefix: Any = (),
    filter: Any = None,
    limit: int = 10,
    offset: int = 0,
    query: str | None = None,
    refresh_ttl: bool | None = None,
) -> list[Item]:
    """Live items under `namespace_prefix` (whole labels) whose value matches `filter`,
    newest first, or best first by `query` with a score."""
    prefix = check_namespace(namespace_prefix, "namespace_prefix", empty=True)
    _check_page(limit, offset)
    stamp = now()
    params = [ns.pk, stamp]
    if prefix:
        params += [len(prefix), prefix]
    where, values = _filter_sql(filter)
    params += values
    score = None
    if query:
        check_json(query, "query")
        score = ranking().score_sql
        params = [query, *params]
    params += [limit, offset]
    with connection.cursor() as cursor:
        cursor.execute(sql.store_search(prefix=bool(prefix), where=where, score=score), params)
        rows = cursor.fetchall()
    _refresh(ns, rows, stamp, refresh_ttl)
    return [_item(row, score=row[7]) for row in rows]


def _item(row: tuple, score: float | None = None) -> Item:
    path, key, value, created, updated = row[:5]
    # Django's psycopg setup hands jsonb over as its text (the ORM's JSONField parses it).
    return Item(path, key, json.loads(value) if isinstance(value, str) else value, created, updated, score)


def list_namespaces(
    *,
    ns: Namespace,
    prefix: Any = None,
    suffix: Any = None,
    max_depth: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[list[str]]:
    """The distinct namespaces of live items, cut at `max_depth`, by path; `*` in `prefix` or
    `suffix` matches any one label."""
    _check_page(limit, offset)
    if max_depth is not None and (
        isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= 1000
    ):
        raise Invalid("max_depth must be 1-1000", {"max_depth": "1-1000"})
    where, params = "", []
    for field, labels in (("prefix", prefix), ("suffix", suffix)):
        if labels is None:
            continue
        if not isinstance(labels, list | tuple) or not all(isinstance(label, str) for label in labels):
            raise Invalid(f"{field} must be a list of strings", {field: "a list of strings"})
        check_json(list(labels), field)
        where += sql.STORE_PATH_LONGER
        params.append(len(labels))
        for i, label in enumerate(labels):
            if label == "*":
                continue
            if field == "prefix":
                where += sql.STORE_LABEL_FROM_START
                params += [i + 1, label]
            else:
                where += sql.STORE_LABEL_FROM_END
                params += [len(labels) - 1 - i, label]
    head = [] if max_depth is None else [max_depth]
    with connection.cursor() as cursor:
        cursor.execute(
            sql.store_namespaces(where=where, depth=max_depth is not None),
            [*head, ns.pk, now(), *params, limit, offset],
        )
        return [row[0] for row in cursor.fetchall()]


def sweep_expired_items(*, limit: int = 500) -> int:
    """Delete up to `limit` items whose TTL has passed (their records get a tombstone version by
    the system), so the console stops showing them as live; returns how many. Reads already hide
    them: this only tidies up, and may run late."""
    stamp = now()
    due = list(StoreItem.objects.filter(expires__lte=stamp).values_list("ns_id", "rkey")[:limit])
    swept = 0
    for ns_id, rkey in due:
        with transaction.atomic():
            # Locked, and checked again: a put or a read may have renewed it since.
            item = (
                StoreItem.objects.select_for_update()
                .filter(ns_id=ns_id, rkey=rkey, expires__lte=stamp)
                .first()
            )
            if item is None:
                continue
            item.delete()
            with contextlib.suppress(NotFound):
                delete_record(ns=item.ns, key=rkey, actor=SYSTEM_ACTOR)
            swept += 1
    return swept


def _check_page(limit: Any, offset: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be 1-{MAX_LIMIT}", {"limit": f"1-{MAX_LIMIT}"})
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= 10**9:
        raise Invalid("offset must be 0 or more", {"offset": "0 or more"})


def _filter_sql(filter: Any) -> tuple[str, list[Any]]:
    """LangGraph's filter: {field: value} (equal) or {field: {"$op": value, ...}}."""
    if filter is None:
        return "", []
    if not isinstance(filter, dict):
        raise Invalid("filter must be a JSON object", {"filter": "a JSON object"})
    check_json(filter, "filter")
    where, params = "", []
    for field, condition in filter.items():
        if isinstance(condition, dict) and any(name.startswith("$") for name in condition):
            for name, operand in condition.items():
                if name not in OPERATORS:
                    known = ", ".join(OPERATORS)
                    raise Invalid(
                        f"unknown filter operator {name!r} on {field!r}; known: {known}",
                        {f"filter.{field}": f"unknown operator {name!r}"},
                    )
                where, params = _compare(where, params, field, OPERATORS[name], operand)
        else:
            where, params = _compare(where, params, field, "=", condition)
    return where, params


def _compare(where: str, params: list[Any], field: str, op: str, operand: Any) -> tuple[str, list[Any]]:
    operand = dumps(operand)
    if op in ("=", "<>"):
        return where + sql.store_value_compare(op), [*params, field, operand]
    # Orders compare like with like: numbers as numbers, strings as strings.
    return where + sql.store_value_compare(op), [*params, field, operand, field, operand]


def _refresh(ns: Namespace, rows: list[tuple], stamp: datetime, refresh_ttl: bool | None) -> None:
    """Renew the TTL of the items read (LangGraph's refresh on read, on unless asked not to)."""
    if refresh_ttl is False:
        return
    rkeys = [row[5] for row in rows if row[6] is not None]
    if not rkeys:
        return
    StoreItem.objects.filter(ns=ns, rkey__in=rkeys, ttl__isnull=False).update(
        expires=Value(stamp) + ExpressionWrapper(F("ttl") * Value(timedelta(minutes=1)), DurationField())
    )
