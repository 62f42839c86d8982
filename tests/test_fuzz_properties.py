"""Property tests of the input rules (API.md) through the API: keys, categories, event types
and JSON values. Each generated input is either stored and read back unchanged, or refused
— 422 for JSON the store cannot keep, 400 for a body that is not RFC 8259 JSON (NaN,
Infinity, an integer longer than any parser takes) — and a refusal stores nothing."""

from __future__ import annotations

import json
import math
import sys
from decimal import Decimal
from itertools import count
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory_admin.models import Event, Fact, Record
from memory_admin.validation import (
    EVENT_TYPE_RE,
    KEY_RE,
    MAX_INT,
    MAX_JSON_DEPTH,
    MIN_INT,
    RESERVED_EVENT_FAMILIES,
    reserved_event_type,
)
from tests.api_support import api_for

pytestmark = pytest.mark.django_db

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
ANY_CHAR = st.characters(exclude_categories=())  # surrogates and controls included
KEY_CHARS = st.sampled_from("abcXYZ019_.:@/-")
fresh = count()


@pytest.fixture
def api(alpha):
    return api_for(alpha)


def key_path(key: str) -> str:
    return "/records/" + quote(key.encode("utf-8", "surrogatepass"), safe="/")


# --- keys -------------------------------------------------------------------------------


@EXAMPLES
@given(key=st.text(KEY_CHARS, min_size=1, max_size=220) | st.text(ANY_CHAR, min_size=0, max_size=30))
def test_a_key_is_stored_and_read_back_exactly_when_it_follows_the_rule(api, key):
    before = Record.objects.count()
    written = api.put(key_path(key), {"value": 1})
    if (
        KEY_RE.fullmatch(key)
        and not key.startswith("/")
        and "//" not in key
        and not key.endswith("/versions")
    ):
        assert written.status_code in (200, 201), (key, written.content)
        read = api.get(key_path(key))
        assert read.status_code == 200 and read.json()["key"] == key
    elif not KEY_RE.fullmatch(key):
        # Refused: 422 naming the key, or 404 when the characters leave the URL unrouted.
        assert written.status_code in (404, 422), (key, written.status_code)
        assert Record.objects.count() == before


# --- categories and event types -----------------------------------------------------------


@EXAMPLES
@given(category=st.text(ANY_CHAR, min_size=0, max_size=110))
def test_a_category_is_kept_exactly_when_it_is_1_to_100_printable_characters(api, category):
    before = Fact.objects.count()
    stored = api.post("/facts", raw=json.dumps({"fact": "f", "category": category}))
    if 1 <= len(category) <= 100 and category.isprintable():
        assert stored.status_code == 201, stored.content
        assert api.get(f"/facts/{stored.json()['id']}").json()["category"] == category
    else:
        assert stored.status_code == 422, (category, stored.status_code)
        assert Fact.objects.count() == before


@EXAMPLES
@given(
    type=st.text(st.sampled_from("abz09_.-A "), min_size=0, max_size=70)
    | st.sampled_from(sorted(RESERVED_EVENT_FAMILIES)).flatmap(lambda f: st.sampled_from([f, f + ".x"]))
    | st.text(ANY_CHAR, max_size=10)
)
def test_an_event_type_is_kept_exactly_when_it_matches_and_is_not_reserved(api, type):
    before = Event.objects.count()
    published = api.post("/events", raw=json.dumps({"type": type, "payload": {}}))
    if EVENT_TYPE_RE.fullmatch(type) and not reserved_event_type(type):
        assert published.status_code == 201, published.content
        assert published.json()["type"] == type
    else:
        assert published.status_code == 422, (type, published.status_code)
        assert Event.objects.count() == before


# --- JSON values ------------------------------------------------------------------------

# 10**n by exponent: hypothesis cannot even print an integer past Python's 4300-digit guard.
HUGE = (
    st.sampled_from([308, 999, 1000, 4400]).map(lambda n: 10**n)
    | st.just(-(10**999) - 7)
    | st.sampled_from([MIN_INT - 1, MIN_INT, MAX_INT, MAX_INT + 1])
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | HUGE
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(ANY_CHAR, max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(ANY_CHAR, max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
DEEP = st.integers(min_value=MAX_JSON_DEPTH - 3, max_value=MAX_JSON_DEPTH + 40).flatmap(
    lambda depth: st.sampled_from([nested(depth, "list"), nested(depth, "dict")])
)


def nested(depth: int, kind: str):
    value = "bottom"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


def verdict(value, depth: int = 0) -> int:
    """What the API must answer for `value`: 201, 422 (JSON it cannot keep) or 400 (not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return 400
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 10 ** sys.get_int_max_str_digits():
            return 400
        return 201 if MIN_INT <= value <= MAX_INT else 422
    worst = 201
    if depth > MAX_JSON_DEPTH:
        worst = 422
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, dict) else []
    for text in texts:
        if "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text):
            worst = max(worst, 422) if worst != 400 else 400
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for child in children:
        answer = verdict(child, depth + 1)
        worst = 400 if 400 in (worst, answer) else max(worst, answer)
    return worst


def as_numbers(text: str):
    """JSON parsed with exact numbers: `1e+300` and `1000…0` are the same number."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


@EXAMPLES
@given(value=JSON | DEEP)
def test_a_json_value_is_read_back_unchanged_or_refused_without_a_trace(api, value):
    key = f"v{next(fresh)}"
    with _digits_unlimited():
        body = json.dumps({"value": value, "expected_version": 0}, allow_nan=True)
    before = Record.objects.count()
    written = api.put(f"/records/{key}", raw=body)
    expected = verdict(value, 0)
    assert written.status_code == expected, (expected, written.content[:300])
    if expected == 201:
        read = api.get(f"/records/{key}")
        with _digits_unlimited():
            assert as_numbers(read.content.decode())["value"] == as_numbers(body)["value"]
    else:
        assert written.json()["error"]["code"] == {400: "malformed_json", 422: "validation_error"}[expected]
        assert Record.objects.count() == before


class _digits_unlimited:
    """Lets this process write and read integers past Python's 4300-digit guard."""

    def __enter__(self):
        self.limit = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)

    def __exit__(self, *exc):
        sys.set_int_max_str_digits(self.limit)


@pytest.mark.parametrize(
    "path",
    [
        "/facts?category=a%00b",
        "/facts?q=%00",
        "/records?prefix=x%00",
        "/events?agent_id=%00",
        "/records?a%00=1",
    ],
)
def test_a_query_parameter_with_a_nul_character_is_refused_not_a_server_error(api, path):
    answer = api.get(path)
    assert answer.status_code == 422, answer.content
    assert answer.json()["error"]["code"] == "validation_error"
