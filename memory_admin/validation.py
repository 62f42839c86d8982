"""Input rules shared by the API schemas and the services (API.md: keys, categories, types)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from memory_admin.errors import Invalid

KEY_RE = re.compile(r"^[A-Za-z0-9_.:@/\-]{1,200}$")
# Keys of the records that hold LangGraph store items (services/store.py): `~` and `%` put them
# outside every key an agent can name, so they never collide with an ordinary record.
STORE_KEY_RE = re.compile(r"^~[A-Za-z0-9_.:@/%~\-]{0,199}$")
RECORD_KEY_RE = re.compile(f"{KEY_RE.pattern}|{STORE_KEY_RE.pattern}")
EVENT_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# The families of event types the server writes itself (the part before the first dot): an
# agent's event of one of them, `conflict` or `conflict.opened`, would pose as the server's.
# Besides the ones written today, a few nouns of the server are kept for it.
RESERVED_EVENT_FAMILIES = frozenset(
    {
        "fact",
        "record",
        "conflict",
        "lock",
        "status",
        "agent",
        "operator",
        "group",
        "relay",
        "system",
        "namespace",
        "token",
    }
)
MAX_JSON_DEPTH = 64
# What every downstream carries as a number: Postgres' jsonb any, but the channel layer's msgpack
# only a signed or unsigned 64-bit integer (a larger one killed the relay).
MIN_INT, MAX_INT = -(2**63), 2**64 - 1


def check_key(value: str, field: str = "key") -> str:
    """Keys, lock resources, group and agent names: 1–200 of A–Z a–z 0–9 _ . : @ / -."""
    if not isinstance(value, str) or not KEY_RE.match(value):
        raise Invalid(
            f"{field} must be 1-200 characters of A-Z a-z 0-9 _ . : @ / -",
            {field: "1-200 characters of A-Z a-z 0-9 _ . : @ / -"},
        )
    return value


def check_record_key(value: str) -> str:
    """A record key: an ordinary key, or the key of a store item's record."""
    if isinstance(value, str) and STORE_KEY_RE.match(value):
        return value
    return check_key(value)


def check_category(value: str, field: str = "category") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 100 or not value.isprintable():
        raise Invalid(f"{field} must be 1-100 printable characters", {field: "1-100 printable characters"})
    return value


def reserved_event_type(value: str) -> bool:
    """Whether `value` is of a family the server writes (`lock`, `lock.acquired`, `lock.x.y`)."""
    return value.split(".", 1)[0] in RESERVED_EVENT_FAMILIES


def check_event_type(value: str, *, custom: bool) -> str:
    if not isinstance(value, str) or not EVENT_TYPE_RE.match(value):
        raise Invalid("type must match ^[a-z0-9][a-z0-9_.-]{0,63}$", {"type": "^[a-z0-9][a-z0-9_.-]{0,63}$"})
    if custom and reserved_event_type(value):
        family = value.split(".", 1)[0]
        raise Invalid(
            f"type {value!r} is reserved: the server writes the {family!r} events", {"type": "reserved type"}
        )
    return value


def check_text(value: str, field: str) -> str:
    """Text Postgres can store: no NUL character, no lone surrogate (UTF-8 cannot carry one)."""
    _check_text(value, field)
    return value


def check_json(value: Any, field: str = "value") -> Any:
    """JSON that Postgres' jsonb can store and every downstream can carry unchanged.

    jsonb refuses NaN/Infinity and the NUL character, and UTF-8 cannot carry a lone
    surrogate; integers stay within 64 bits (MIN_INT..MAX_INT); nesting is capped so nothing
    recurses without bound.
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
    elif isinstance(value, int) and not isinstance(value, bool) and not MIN_INT <= value <= MAX_INT:
        raise Invalid(
            f"{field} contains an integer outside {INT_RANGE}", {field: f"integer outside {INT_RANGE}"}
        )


INT_RANGE = "-2**63..2**64-1"


def _check_text(text: str, field: str) -> None:
    if _storable(text):
        return
    if "\x00" in text:
        raise Invalid(f"{field} contains a NUL character", {field: "NUL character"})
    raise Invalid(f"{field} contains a lone surrogate", {field: "invalid unicode"})


def _storable(text: str) -> bool:
    """Whether _check_text passes `text`."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def check_document(document: Any) -> Any:
    """A whole request body: every string and key is text Postgres can store and every integer
    is within MIN_INT..MAX_INT, whatever field it is in. A refusal names the field by its path
    (`payload.n`, `value.items.3`), as the schema's refusals do."""
    stack: list[tuple[Any, tuple]] = [(document, ())]
    while stack:  # not recursive: the parser already allows deeper nesting than Python's stack
        value, path = stack.pop()
        # The field's name is built only for a refusal: most text passes, and a body of a
        # hundred operations has thousands of fields.
        if isinstance(value, dict):
            for key, item in value.items():
                if not _storable(key):
                    _check_text(key, _path((*path, key)))
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
        elif isinstance(value, str):
            if not _storable(value):
                _check_text(value, _path(path))
        elif isinstance(value, int) and not isinstance(value, bool) and not MIN_INT <= value <= MAX_INT:
            field = _path(path)
            raise Invalid(
                f"{field} is an integer outside {INT_RANGE}", {field: f"integer outside {INT_RANGE}"}
            )
    return document


# A JSON text's digits all read as 0: a run of 19 zeros is a number (or a part of a string) of
# 19 digits or more.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def nothing_to_check(body: bytes) -> bool:
    """Whether check_document can refuse nothing in what the JSON text `body` parses to, seen
    from its bytes in a few C scans (a walk of the ~300 fields of a /txn of 50 puts cost more
    than parsing them). True for the usual agent's body:
    - ASCII without a NUL byte is read as UTF-8 (json.detect_encoding), so every string is
      ASCII: no lone surrogate; and with neither a NUL byte nor a `\\u` escape, no NUL.
    - An integer of at most 18 digits lies within MIN_INT..MAX_INT (10**18 < 2**63)."""
    return (
        body.isascii()
        and b"\x00" not in body
        and b"\\u" not in body
        and _LONG_NUMBER not in body.translate(_DIGITS_AS_ZERO)
    )


def _path(path: tuple) -> str:
    # A NUL shown as \0, a lone surrogate as its escape: the field's name must itself be JSON.
    text = ".".join(str(part) for part in path) or "body"
    return text.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: an object that names a key twice is refused (which of
    the two was meant cannot be known; last-wins would silently drop one)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        name = _path((twice,))
        raise Invalid(f"the key {name!r} appears twice in one object", {name: "duplicate key"})
    return document
