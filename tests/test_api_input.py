"""What the API takes in: JSON sent as JSON, each key once, text Postgres can store and
integers every downstream can carry — refused with a clear 4xx naming the field, in every
body that takes JSON values, and nothing changes."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_admin import redis as r
from memory_admin.api import _NOT_PLAIN, plain_document
from memory_admin.errors import Invalid
from memory_admin.models import Agent, Event
from memory_admin.validation import MAX_INT, MIN_INT, check_document, nothing_to_check, unique_keys
from tests.api_support import api_for, error, state

pytestmark = pytest.mark.django_db

# Every endpoint that takes a JSON value from an agent, with `{x}` where the value goes and the
# field a refusal names.
JSON_VALUES = [
    ("PUT", "/records/plan", {"value": {"n": "{x}"}}, "value.n"),
    ("PUT", "/records/plan", {"value": ["{x}"]}, "value.0"),
    ("POST", "/facts", {"fact": "f", "category": "c", "metadata": {"n": "{x}"}}, "metadata.n"),
    ("POST", "/events", {"type": "x.big", "payload": {"n": "{x}"}}, "payload.n"),
    ("POST", "/events", {"type": "x.big", "payload": {"deep": [{"n": "{x}"}]}}, "payload.deep.0.n"),
]


def _with(body: dict, value) -> dict:
    return json.loads(json.dumps(body).replace('"{x}"', json.dumps(value)))


def _send(api, method: str, path: str, body):
    return api.call(method, path, raw=json.dumps(body))


def _redis_state() -> dict[str, object]:
    """Every key of the namespace and its value, but the rate limit's counters."""
    client = r.client()
    return {key: client.dump(key) for key in client.keys("ma:{*") if ":rate:" not in key}


@pytest.mark.parametrize(("method", "path", "body", "field"), JSON_VALUES)
@pytest.mark.parametrize("number", [MAX_INT + 1, MIN_INT - 1, 10**30, -(10**40)])
def test_an_integer_past_64_bits_is_422_naming_the_field_and_changes_nothing(
    alpha, method, path, body, field, number
):
    api = api_for(alpha)
    before, redis_before = state(), _redis_state()
    failure = error(_send(api, method, path, _with(body, number)), 422, "validation_error")
    assert field in failure["fields"], failure
    assert field in failure["message"]
    assert state() == before and _redis_state() == redis_before


@pytest.mark.parametrize(("method", "path", "body", "field"), JSON_VALUES)
@pytest.mark.parametrize("number", [MAX_INT, MIN_INT, 0, -1, 2**63])
def test_integers_within_64_bits_signed_or_unsigned_are_kept_exactly(
    alpha, method, path, body, field, number
):
    response = _send(api_for(alpha), method, path, _with(body, number))
    assert response.status_code in (200, 201), response.content
    assert str(number) in response.content.decode()


@pytest.mark.parametrize("text", ["NUL \x00 inside", "lone \ud800 surrogate", "\udfff"])
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PUT", "/status", {"status": "working", "detail": "{x}"}, "detail"),
        ("PUT", "/status", {"status": "{x}"}, "status"),
        ("POST", "/facts", {"fact": "{x}", "category": "c"}, "fact"),
        ("POST", "/facts", {"fact": "f", "category": "{x}"}, "category"),
        ("POST", "/facts", {"fact": "f", "category": "c", "metadata": {"k": "{x}"}}, "metadata.k"),
        ("PUT", "/records/plan", {"value": "{x}"}, "value"),
        ("PUT", "/records/plan", {"value": {"a": ["{x}"]}}, "value.a.0"),
        ("POST", "/events", {"type": "{x}", "payload": {}}, "type"),
        ("POST", "/events", {"type": "note.taken", "payload": {"k": "{x}"}}, "payload.k"),
        ("POST", "/events/groups/workers/read", {"consumer": "{x}"}, "consumer"),
        ("POST", "/locks/printer", {"ttl_seconds": 30, "note": "{x}"}, "note"),
    ],
)
def test_text_postgres_cannot_store_is_422_everywhere_and_changes_nothing(
    alpha, method, path, body, field, text
):
    api = api_for(alpha)
    before, redis_before = state(), _redis_state()
    failure = error(_send(api, method, path, _with(body, text)), 422, "validation_error")
    assert field in failure["fields"], failure
    assert state() == before and _redis_state() == redis_before


def test_a_nul_in_a_key_of_an_object_is_422_and_the_field_is_named_readably(alpha):
    api = api_for(alpha)
    failure = error(api.put("/records/plan", raw='{"value": {"a\\u0000b": 1}}'), 422, "validation_error")
    assert failure["fields"] == {"value.a\\0b": "NUL character"}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        # a lone surrogate written as raw UTF-8 bytes, not as a \u escape: json.loads reads
        # bytes with "surrogatepass"
        (b'{"value": {"a": "x\xed\xa0\x80"}}', "value.a"),
        # the whole body in UTF-16 (json.loads detects it): its bytes are ASCII and NULs
        ('{"value": ["\ud800"]}'.encode("utf-16-le", "surrogatepass"), "value.0"),
        (b'{"value": {"n": -9300000000000000000}}', "value.n"),  # 19 digits, below MIN_INT
    ],
)
def test_text_and_integers_that_only_the_bytes_give_away_are_refused_too(alpha, raw, field):
    api = api_for(alpha)
    before = state()
    failure = error(api.put("/records/plan", raw=raw), 422, "validation_error")
    assert field in failure["fields"], failure
    assert state() == before


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (b'{"success": [{"put": {"key": "k-01", "value": {"n": 7}, "expected_version": 3}}]}', True),
        (b'{"value": 999999999999999999}', True),  # 18 digits
        (b'{"value": 1000000000000000000}', False),  # 19 digits
        (b'{"value": "key-0000000000000000000"}', False),
        (b'{"value": "\\u00e9t\\u00e9"}', False),  # escapes
        ('{"value": "été"}'.encode(), False),  # raw UTF-8
        ('{"value": 1}'.encode("utf-16"), False),
    ],
)
def test_only_a_body_whose_bytes_show_nothing_to_refuse_skips_the_walk_of_its_fields(body, plain):
    """The usual body (ASCII, no escape, short numbers) skips check_document's walk; any other
    is walked, whatever it holds (these all pass it)."""
    assert nothing_to_check(body) is plain
    assert check_document(json.loads(body)) == json.loads(body)


def test_a_status_with_a_nul_in_its_detail_is_refused_before_redis_sees_it(alpha):
    """The probe: this answered 500 while Redis already showed the new status as live."""
    api = api_for(alpha)
    api.put("/status", {"status": "idle", "detail": "before"})
    error(api.put("/status", {"status": "working", "detail": "a\x00b"}), 422, "validation_error")
    assert r.client().hget(r.status_key("team", "alpha"), "status") == "idle"
    assert api.get("/agents/alpha").json()["status"] == "idle"
    assert Event.objects.filter(type="status.changed").count() == 1
    assert Agent.objects.get(name="alpha").status == "idle"


@pytest.mark.parametrize(
    "raw",
    [
        '{"value": 1, "value": 2}',
        '{"value": {"a": 1, "b": 2, "a": 3}}',
        '{"value": [{"x": 1, "x": 1}]}',
    ],
)
def test_a_key_twice_in_one_object_is_422_not_last_wins(alpha, raw):
    api = api_for(alpha)
    before = state()
    failure = error(api.put("/records/plan", raw=raw), 422, "validation_error")
    assert "twice" in failure["message"]
    assert state() == before


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded"]
)
def test_a_body_not_sent_as_json_is_415_and_changes_nothing(alpha, content_type):
    api = api_for(alpha)
    before = state()
    response = api.client.post(
        "/api/v1/facts",
        data=json.dumps({"fact": "f", "category": "c"}),
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {api.token}",
    )
    failure = error(response, 415, "unsupported_media_type")
    assert failure["content_type"] == content_type
    assert state() == before


def test_json_with_a_charset_and_requests_without_a_body_are_accepted(alpha):
    api = api_for(alpha)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api.token}"}
    body = json.dumps({"fact": "f", "category": "c"})
    sent = api.client.post("/api/v1/facts", data=body, content_type="application/json; charset=utf-8", **auth)
    assert sent.status_code == 201
    # No body, no content type: a lock taken with its defaults.
    assert api.client.post("/api/v1/locks/printer", data=b"", content_type="", **auth).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        '{"value":1,"value":2}',
        '{"value" :1, "value":2}',  # white space before a colon
        '{"value": {"k\\"": 1, "k\\"": 2}}',  # a key with a quote in it
        '{"value": {"a": "x\\":", "a": "y"}}',  # a value with a quote and a colon in it
        '{"value": [1, {"x": {"y": 1, "y": 1}}]}',
    ],
)
def test_a_key_twice_is_refused_also_where_the_fast_parse_could_miss_it(alpha, raw):
    """plain_document's count of members (api/__init__.py) must see each of these."""
    api = api_for(alpha)
    before = state()
    failure = error(api.put("/records/plan", raw=raw), 422, "validation_error")
    assert "twice" in failure["message"]
    assert state() == before


_KEYS = st.text(alphabet=st.sampled_from('ab":\\ /{}[],'), max_size=4)
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _KEYS


def _render(value, colon: str, comma: str) -> str:
    """JSON text of `value`, where an object is a list of (key, value) pairs: keys may repeat."""
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        members = [json.dumps(key) + colon + _render(item, colon, comma) for key, item in value]
        return "{" + comma.join(members) + "}"
    if isinstance(value, list):
        return "[" + comma.join(_render(item, colon, comma) for item in value) + "]"
    return json.dumps(value)


_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(_KEYS, inner), min_size=1, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("depth", [200, 254, 255, 256, 1023, 1024, 1025, 5_000])
def test_the_fast_parse_steps_aside_where_orjson_stops_nesting(depth):
    """orjson reads 1,024 levels and writes 254: anything deeper goes the strict way (whose
    refusal of deep nesting is a 422, test_api_errors)."""
    body = ("[" * depth + "]" * depth).encode()
    fast = plain_document(body)
    assert fast is _NOT_PLAIN if depth > 254 else fast == json.loads(body)


@settings(max_examples=400, deadline=None)
@given(_VALUES, st.sampled_from([":", ": ", " :", "\n:"]), st.sampled_from([",", ", "]))
def test_the_fast_parse_gives_what_the_strict_parse_gives_or_steps_aside(value, colon, comma):
    """For any body nothing_to_check passes: plain_document gives exactly json.loads' document
    with the duplicate-key hook, or steps aside (_NOT_PLAIN) — always for a key twice."""
    body = _render(value, colon, comma).encode()
    if not nothing_to_check(body):
        return
    try:
        strict = json.loads(body, object_pairs_hook=unique_keys)
    except Invalid:
        strict = _NOT_PLAIN  # a key twice: the fast parse must not take it
    fast = plain_document(body)
    assert fast is _NOT_PLAIN or (strict is not _NOT_PLAIN and fast == strict and repr(fast) == repr(strict))
