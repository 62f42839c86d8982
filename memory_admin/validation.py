"""Input rules shared by the API schemas and the services (API.md: keys, categories, types)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from memory_admin.errors import Invalid

KEY_RE = re.compile(r"^[A-Za-z0-9_.:@/\-]{1,200}$")
EVENT_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
RESERVED_EVENT_PREFIXES = (
    "fact.",
    "record.",
    "conflict.",
    "lock.",
    "status.",
    "agent.",
    "operator.",
    "group.",
)
MAX_JSON_DEPTH = 64


def check_key(value: str, field: str = "key") -> str:
    """Keys, lock resources, group and agent names: 1–200 of A–Z a–z 0–9 _ . : @ / -."""
    if not isinstance(value, str) or not KEY_RE.match(value):
        raise Invalid(
            f"{field} must be 1-200 characters of A-Z a-z 0-9 _ . : @ / -",
            {field: "1-200 characters of A-Z a-z 0-9 _ . : @ / -"},
        )
    return value


def check_category(value: str, field: str = "category") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 100 or not value.isprintable():
        raise Invalid(f"{field} must be 1-100 printable characters", {field: "1-100 printable characters"})
    return value


def check_event_type(value: str, *, custom: bool) -> str:
    if not isinstance(value, str) or not EVENT_TYPE_RE.match(value):
        raise Invalid("type must match ^[a-z0-9][a-z0-9_.-]{0,63}$", {"type": "^[a-z0-9][a-z0-9_.-]{0,63}$"})
    if custom and value.startswith(RESERVED_EVENT_PREFIXES):
        raise Invalid(f"type {value!r} is reserved for events the server writes", {"type": "reserved prefix"})
    return value


def check_json(value: Any, field: str = "value") -> Any:
    """JSON that Postgres' jsonb can store and give back unchanged.

    jsonb refuses NaN/Infinity and the NUL character, and UTF-8 cannot carry a lone
    surrogate; nesting is capped so nothing recurses without bound.
    """
    _walk(value, field, 0)
    return value


def _walk(value: Any, field: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise Invalid(f"{field} is nested deeper than {MAX_JSON_DEPTH} levels", {field: "too deeply nested"})
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{field} contains NaN or Infinity, which JSON cannot carry", {field: "not finite"})
    if isinstance(value, str):
        _check_text(value, field)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, field)
            _walk(item, field, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, field, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**1000:
        raise Invalid(f"{field} contains a number too large to store", {field: "number too large"})


def _check_text(text: str, field: str) -> None:
    if "\x00" in text:
        raise Invalid(f"{field} contains a NUL character", {field: "NUL character"})
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{field} contains a lone surrogate", {field: "invalid unicode"}) from None


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
