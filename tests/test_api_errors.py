"""Auth, limits and bad input: every refusal is the one error shape, a 4xx, and changes nothing."""

import json
import time

import pytest
from django.core.management import call_command

from memory_admin import redis as r
from memory_admin.models import Token
from tests.api_support import Api, api_for, error, redis_down, state

pytestmark = pytest.mark.django_db

WRITES = [
    ("POST", "/facts", {"fact": "sky is blue", "category": "colour"}),
    ("PUT", "/records/plan", {"value": {"step": 1}}),
    ("DELETE", "/records/plan", None),
    ("PUT", "/status", {"status": "working"}),
    ("POST", "/locks/printer", {}),
    ("POST", "/locks/printer/renew", {"fencing_token": 1}),
    ("DELETE", "/locks/printer?fencing_token=1", None),
    ("POST", "/events", {"type": "note.taken", "payload": {}}),
    ("POST", "/events/groups/workers/read", {"consumer": "c1"}),
    ("POST", "/events/groups/workers/ack", {"ids": [1]}),
]
READS = [
    "/me",
    "/facts",
    "/facts/1",
    "/records",
    "/records/plan",
    "/records/plan/versions",
    "/conflicts",
    "/agents",
    "/agents/alpha",
    "/locks",
    "/locks/printer",
    "/events",
]


def _send(api, method, path, body):
    return api.call(method, path, body) if body is not None else api.call(method, path)


@pytest.mark.parametrize("path", READS)
def test_every_read_without_a_token_is_401_unauthenticated(alpha, path):
    error(Api().get(path), 401, "unauthenticated")


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_every_write_with_an_unknown_token_is_401_and_changes_nothing(alpha, method, path, body):
    before = state()
    error(_send(Api("ma_not-a-token"), method, path, body), 401, "unauthenticated")
    assert state() == before


def test_a_malformed_authorization_header_is_401(alpha):
    api = Api()
    for header in ["Basic abc", "Bearer", "Bearer " + "x" * 5000, "bearer"]:
        error(api.get("/me", headers={"Authorization": header}), 401, "unauthenticated")


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_a_read_only_token_cannot_write_and_changes_nothing(alpha, method, path, body):
    api = api_for(alpha, read_only=True)
    before = state()
    failure = error(_send(api, method, path, body), 403, "forbidden")
    assert failure["scopes"] == ["read"]
    assert state() == before
    assert not r.client().exists("ma:{team}:lock:printer")


def test_a_read_only_token_can_read(alpha):
    api = api_for(alpha, read_only=True)
    assert api.get("/me").json() == {"agent_id": "alpha", "namespace": "team", "scopes": ["read"]}
    assert api.get("/facts").status_code == 200


def test_a_revoked_token_is_refused_at_once(alpha):
    api = api_for(alpha)
    assert api.get("/me").status_code == 200
    call_command("revoke_token", api.token[:10])
    error(api.get("/me"), 401, "unauthenticated")
    error(api.post("/facts", {"fact": "f", "category": "c"}), 401, "unauthenticated")


def test_revoke_token_accepts_the_whole_token(alpha):
    api = api_for(alpha)
    call_command("revoke_token", api.token)
    assert Token.objects.get(prefix=api.token[:10]).revoked is not None
    error(api.get("/me"), 401, "unauthenticated")


def test_issue_token_prints_a_working_token_last(capsys, db):
    call_command("issue_token", "--namespace", "fresh-ns", "--agent", "writer")
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert Api(token).get("/me").json() == {
        "agent_id": "writer",
        "namespace": "fresh-ns",
        "scopes": ["read", "write"],
    }


def test_me_names_the_agent_namespace_and_scopes(alpha):
    assert api_for(alpha).get("/me").json() == {
        "agent_id": "alpha",
        "namespace": "team",
        "scopes": ["read", "write"],
    }


def test_unknown_paths_under_the_api_are_404_not_found(alpha):
    api = api_for(alpha)
    error(api.get("/nothing/here"), 404, "not_found")
    error(api.post("/facts/1/extra", {}), 404, "not_found")
    error(Api().get("/"), 404, "not_found")


def test_an_unsupported_method_is_405_with_allow(alpha):
    api = api_for(alpha)
    failure = error(api.call("PATCH", "/facts", {}), 405, "method_not_allowed")
    assert set(failure["allowed"]) == {"GET", "POST"}
    assert api.call("PATCH", "/facts", {})["Allow"]


def test_malformed_json_is_400_and_changes_nothing(alpha):
    api = api_for(alpha)
    before = state()
    for raw in ["{bad", '{"fact": "x",}', "\xff\xfe", '{"fact": NaN, "category": "c"}', "[Infinity]"]:
        error(api.post("/facts", raw=raw), 400, "malformed_json")
    assert state() == before


@pytest.mark.parametrize(
    "body",
    [
        {"fact": 5, "category": "c"},
        {"fact": "x", "category": ["c"]},
        {"fact": "x"},
        {"fact": "x", "category": "c", "metadata": []},
        {"fact": "x", "category": "c", "colour": "unknown fields are refused"},
        {"fact": "x", "category": "tab\there"},
        {"fact": "x", "category": ""},
        {"fact": "x", "category": "c" * 101},
        {"fact": "NUL \u0000 inside", "category": "c"},
        [1, 2],
        "a string",
        None,
    ],
)
def test_wrong_types_and_values_are_422_with_fields_and_change_nothing(alpha, body):
    api = api_for(alpha)
    before = state()
    failure = error(api.post("/facts", body), 422, "validation_error")
    assert isinstance(failure["fields"], dict) and failure["fields"]
    assert state() == before


def test_numbers_are_not_coerced_from_strings(alpha):
    api = api_for(alpha)
    failure = error(api.put("/status", {"status": "x", "ttl_seconds": "60"}), 422, "validation_error")
    assert "ttl_seconds" in failure["fields"]
    error(api.post("/locks/printer", {"ttl_seconds": True}), 422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {"value": 1, "expected_version": "5"},
        {"value": 1, "expected_version": 1.0},
        {"value": 1, "expected_version": True},
        {"value": 1, "colour": "unknown fields are refused"},
        {"value": 1, "fence": {"lock": "printer", "token": "5"}},
        {"value": 1, "fence": {"lock": "printer", "token": 5, "colour": "red"}},
        {"expected_version": 0},
    ],
)
def test_a_record_body_is_strict_at_every_level(alpha, body):
    api = api_for(alpha)
    before = state()
    failure = error(api.put("/records/plan", body), 422, "validation_error")
    assert failure["fields"]
    assert state() == before


def test_a_10000_character_key_is_422_everywhere(alpha):
    api = api_for(alpha)
    key = "k" * 10_000
    before = state()
    error(api.get(f"/records/{key}"), 422, "validation_error")
    error(api.put(f"/records/{key}", {"value": 1}), 422, "validation_error")
    error(api.post(f"/locks/{key}", {}), 422, "validation_error")
    error(api.post(f"/events/groups/{key}/read", {"consumer": "c"}), 422, "validation_error")
    error(api.put("/records/plan", {"value": 1, "fence": {"lock": key, "token": 1}}), 422, "validation_error")
    assert state() == before


@pytest.mark.parametrize("key", ["has space", "semi;colon", "tab\tkey", "ümlaut", "a%00b", "a\x00b"])
def test_keys_outside_the_allowed_characters_are_422(alpha, key):
    from urllib.parse import quote

    api = api_for(alpha)
    before = state()
    error(api.put("/records/" + quote(key), {"value": 1}), 422, "validation_error")
    assert state() == before


def test_a_newline_in_a_path_is_the_error_shape_not_django_html(alpha):
    api = api_for(alpha)
    error(api.put("/records/new%0Aline", {"value": 1}), 404, "not_found")
    error(api.get("/locks/new%0Aline"), 404, "not_found")


def test_deeply_nested_json_is_422_and_never_500(alpha):
    api = api_for(alpha)
    before = state()
    for depth in [66, 200, 900, 5_000, 100_000]:
        raw = '{"value": ' + "[" * depth + "]" * depth + "}"
        response = api.put("/records/deep", raw=raw)
        error(response, 422, "validation_error")
    assert state() == before


def test_a_body_over_the_limit_is_413_before_parsing(alpha, settings):
    settings.MAX_BODY_BYTES = 2048
    api = api_for(alpha)
    before = state()
    big = json.dumps({"fact": "x" * 4096, "category": "c"})
    failure = error(api.post("/facts", raw=big), 413, "payload_too_large")
    assert failure["limit"] == 2048
    error(api.post("/facts", raw="{" * 4096), 413, "payload_too_large")  # not parsed first
    assert state() == before
    assert api.post("/facts", {"fact": "x" * 1000, "category": "c"}).status_code == 201


def test_a_huge_body_at_the_default_limit_is_413(alpha):
    api = api_for(alpha)
    before = state()
    error(api.put("/records/big", raw=json.dumps({"value": "x" * (1024 * 1024)})), 413, "payload_too_large")
    assert state() == before


@pytest.mark.cluster
def test_the_rate_limit_answers_429_with_retry_after(alpha, settings):
    settings.RATE_LIMIT_PER_MINUTE = 3
    api, other = api_for(alpha), api_for(alpha)
    for _ in range(3):
        assert api.get("/me").status_code == 200
    response = api.post("/facts", {"fact": "x", "category": "c"})
    failure = error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert failure["retry_after"] == int(response["Retry-After"])
    assert other.get("/me").status_code == 200  # per token
    # Each window's count lapses: its key has a time to live (-1: none; -2: no such key).
    minute = int(time.time() // 60)
    ttls = [
        r.client().ttl(r.rate_key(alpha.ns.name, token.pk, window))
        for token in Token.objects.filter(agent=alpha)
        for window in (minute - 1, minute)
    ]
    kept = [ttl for ttl in ttls if ttl != -2]
    assert len(kept) >= 2 and all(0 < ttl <= 120 for ttl in kept)


@pytest.mark.parametrize("down", ["redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1,127.0.0.1:2"])
def test_redis_down_is_503_with_retry_after_and_changes_nothing(alpha, settings, down):
    api = api_for(alpha)
    before = state()
    with redis_down(settings, down):
        for method, path, body in [
            ("POST", "/locks/printer", {}),
            ("PUT", "/status", {"status": "working"}),
            ("GET", "/locks", None),
            ("GET", "/agents", None),
        ]:
            response = _send(api, method, path, body)
            error(response, 503, "unavailable")
            assert response["Retry-After"] == "1"
        # What Postgres alone serves keeps working (the rate limit fails open).
        assert api.get("/facts").status_code == 200
    assert state() == before


def test_the_openapi_document_describes_every_path_and_its_errors(alpha):
    spec = Api().get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        "/api/v1/health": {"get"},
        "/api/v1/me": {"get"},
        "/api/v1/facts": {"get", "post"},
        "/api/v1/facts/{fact_id}": {"get"},
        "/api/v1/records": {"get"},
        "/api/v1/records/{key}": {"get", "put", "delete"},
        "/api/v1/records/{key}!": {"get", "put", "delete"},
        "/api/v1/records/{key}!versions": {"get"},
        "/api/v1/records/{key}/versions": {"get"},
        "/api/v1/conflicts": {"get"},
        "/api/v1/status": {"put"},
        "/api/v1/agents": {"get"},
        "/api/v1/agents/{agent_id}": {"get"},
        "/api/v1/locks": {"get"},
        "/api/v1/locks/{resource}": {"get", "post", "delete"},
        "/api/v1/locks/{resource}!": {"get", "post", "delete"},
        "/api/v1/locks/{resource}!renew": {"post"},
        "/api/v1/locks/{resource}/renew": {"post"},
        "/api/v1/events": {"get", "post"},
        "/api/v1/events/stream": {"get"},
        "/api/v1/events/groups/{group}/read": {"post"},
        "/api/v1/events/groups/{group}/ack": {"post"},
        "/api/v1/txn": {"post"},
        "/api/v1/batch": {"post"},
        "/api/v1/events/groups/{group}": {"get", "put"},
        "/api/v1/events/groups/{group}!": {"get", "put"},
        "/api/v1/ok": {"get"},
        "/api/v1/store/items": {"get", "put", "delete"},
        "/api/v1/store/items/search": {"post"},
        "/api/v1/store/namespaces": {"post"},
        "/api/v1/store/batch": {"post"},
    }
    assert {path: set(ops) for path, ops in paths.items()} == expected
    error_ref = "#/components/schemas/Error"
    put = paths["/api/v1/records/{key}"]["put"]["responses"]
    assert {"200", "201", "409", "422", "401", "403", "429", "503"} <= set(put)
    assert put["409"]["content"]["application/json"]["schema"]["$ref"] == error_ref
    assert "409" in paths["/api/v1/locks/{resource}"]["post"]["responses"]
    assert Api().get("/docs").status_code == 200
