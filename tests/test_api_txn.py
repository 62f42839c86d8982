"""POST /api/v1/txn and /batch (API.md: Transactions and batches): every compare, every
operation, the rollback paths and the errors, through the API on real Postgres and Redis."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from psycopg import pq

from memory_admin import redis as r
from memory_admin.models import Conflict, Event, Fact, Record, RecordVersion
from tests.api_support import api_for, error, state

pytestmark = pytest.mark.django_db


def put(key, value, expected_version=None):
    body = {"key": key, "value": value}
    if expected_version is not None:
        body["expected_version"] = expected_version
    return {"put": body}


def test_a_txn_whose_compares_hold_runs_success_and_answers_each_result(alpha):
    api = api_for(alpha)
    api.put("/records/a", {"value": 1})
    response = api.post(
        "/txn",
        {
            "compare": [{"key": "a", "version": 1}, {"key": "b", "version": 0}],
            "success": [put("a", 2, 1), put("b", 1, 0), {"get": {"key": "a"}}],
            "failure": [{"get": {"key": "a"}}],
        },
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["succeeded"] is True
    assert [result["status"] for result in body["results"]] == [200, 201, 200]
    assert body["results"][0]["body"]["version"] == 2
    assert body["results"][1]["body"] == {**body["results"][1]["body"], "key": "b", "value": 1, "version": 1}
    assert body["results"][2]["body"]["value"] == 2
    assert Record.objects.get(key="b").value == 1


def get(key):
    return {"get": {"key": key}}


def txn(api, compare, success=(), failure=(), **kwargs):
    return api.post(
        "/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)}, **kwargs
    )


def ran(response) -> bool:
    """Which branch ran: True for success, False for failure."""
    assert response.status_code == 200, response.content
    return response.json()["succeeded"]


def test_a_version_of_0_compares_equal_to_an_absent_or_deleted_record(alpha):
    api = api_for(alpha)
    assert ran(txn(api, [{"key": "nothing", "version": 0}]))
    api.put("/records/gone", {"value": 1})
    assert not ran(txn(api, [{"key": "gone", "version": 0}]))
    api.delete("/records/gone")
    assert ran(txn(api, [{"key": "gone", "version": 0}]))


@pytest.mark.parametrize(
    "op, value, holds",
    [
        ("=", 2, True), ("=", 3, False),
        ("!=", 3, True), ("!=", 2, False),
        ("<", 3, True), ("<", 2, False),
        (">", 1, True), (">", 2, False),
    ],
)  # fmt: skip
def test_each_version_comparison_holds_exactly_when_it_should(alpha, op, value, holds):
    api = api_for(alpha)
    api.put("/records/a", {"value": 1})
    api.put("/records/a", {"value": 2})
    assert ran(txn(api, [{"key": "a", "version": {"op": op, "value": value}}])) is holds


def test_exists_compares_on_live_records_only(alpha):
    api = api_for(alpha)
    api.put("/records/here", {"value": 1})
    api.put("/records/gone", {"value": 1})
    api.delete("/records/gone")
    assert ran(txn(api, [{"key": "here", "exists": True}, {"key": "gone", "exists": False}]))
    assert not ran(txn(api, [{"key": "here", "exists": False}]))
    assert not ran(txn(api, [{"key": "nothing", "exists": True}]))


def test_a_lock_compare_holds_only_for_the_caller_with_the_current_token(alpha, beta):
    api, other = api_for(alpha), api_for(beta)
    token = api.post("/locks/r", {}).json()["fencing_token"]
    assert ran(txn(api, [{"lock": "r", "fencing_token": token}]))
    assert not ran(txn(api, [{"lock": "r", "fencing_token": token - 1}]))
    assert not ran(txn(other, [{"lock": "r", "fencing_token": token}]))  # not the holder
    assert not ran(txn(api, [{"lock": "never", "fencing_token": token}]))
    assert api.delete(f"/locks/r?fencing_token={token}").status_code == 204
    assert not ran(txn(api, [{"lock": "r", "fencing_token": token}]))  # released


def test_a_compare_that_fails_runs_the_failure_branch_and_nothing_of_success(alpha):
    api = api_for(alpha)
    api.put("/records/a", {"value": 1})
    response = txn(
        api, [{"key": "a", "version": 5}], success=[put("a", "no")], failure=[get("a"), put("b", 1)]
    )
    assert response.json()["succeeded"] is False
    assert [result["status"] for result in response.json()["results"]] == [200, 201]
    assert response.json()["results"][0]["body"]["value"] == 1
    assert Record.objects.get(key="a").value == 1 and Record.objects.get(key="b").value == 1


def test_every_operation_answers_as_its_single_endpoint_and_appends_its_event(alpha):
    api = api_for(alpha)
    api.put("/records/old", {"value": 1})
    before = Event.objects.count()
    response = txn(
        api,
        [],
        success=[
            put("new", {"x": 1}, 0),
            put("old", 2, 1),
            {"delete": {"key": "old", "expected_version": 2}},
            get("new"),
            get("missing"),
            {"fact": {"fact": "sky is blue", "category": "obs", "metadata": {"k": 1}}},
            {"event": {"type": "work.done", "payload": {"n": 1}}},
            {"status": {"status": "busy", "detail": "txn", "ttl_seconds": 30}},
        ],
    )
    results = response.json()["results"]
    assert [result["status"] for result in results] == [201, 200, 204, 200, 404, 201, 201, 200]
    assert results[0]["body"]["version"] == 1 and results[1]["body"]["version"] == 2
    assert results[2]["body"] is None
    assert results[3]["body"]["value"] == {"x": 1}
    assert results[4]["body"]["error"]["code"] == "not_found"
    assert results[5]["body"]["fact"] == "sky is blue" and results[5]["body"]["agent_id"] == "alpha"
    assert results[6]["body"]["type"] == "work.done" and results[6]["body"]["payload"] == {"n": 1}
    assert results[7]["body"]["status"] == "busy" and results[7]["body"]["agent_id"] == "alpha"
    assert Record.objects.get(key="old").deleted
    assert Fact.objects.get().metadata == {"k": 1}
    types = list(
        Event.objects.order_by("-pk").values_list("type", flat=True)[: Event.objects.count() - before]
    )
    assert sorted(types) == sorted(
        ["record.written", "record.written", "record.deleted", "fact.stored", "work.done", "status.changed"]
    )


def everything_but_idempotency() -> dict:
    counts = state()
    del counts["idempotency"]
    return counts


def test_a_version_conflict_in_success_aborts_all_and_keeps_the_writes_as_one_conflict_group(alpha):
    api = api_for(alpha)
    api.put("/records/a", {"value": 1})
    api.put("/records/b", {"value": 1})
    before = everything_but_idempotency()
    response = txn(
        api,
        [{"key": "a", "version": 1}],
        success=[put("a", 2, 1), {"fact": {"fact": "f", "category": "c"}}, put("b", 2, 7), put("c", 1)],
    )
    failed = error(response, 409, "txn_aborted")
    assert failed["failed_op"] == 2
    assert failed["error"]["code"] == "version_conflict" and failed["error"]["current"]["version"] == 1
    assert Record.objects.get(key="a").value == 1 and not Record.objects.filter(key="c").exists()
    assert not Fact.objects.exists()
    group = Conflict.objects.filter(group=failed["txn"]).order_by("key")
    assert [(c.key, c.expected_version, c.current_version, c.proposed_value) for c in group] == [
        ("a", 1, 1, 2),
        ("b", 7, 1, 2),
        ("c", 0, None, 1),
    ]
    assert failed["conflict_group"] == failed["txn"]
    listed = api.get("/conflicts").json()["items"]
    assert sorted(c["key"] for c in listed if c["group"] == failed["txn"]) == ["a", "b", "c"]
    assert failed["error"]["conflict_id"] == group.get(key="b").pk
    after = everything_but_idempotency()
    assert after["records"] == before["records"] and after["versions"] == before["versions"]
    assert after["conflicts"] == before["conflicts"] + 3
    opened = Event.objects.filter(type="conflict.opened").order_by("pk")
    assert after["events"] == before["events"] + 3 == before["events"] + opened.count()
    assert {event.payload["group"] for event in opened} == {failed["txn"]}


def test_a_failing_delete_or_reserved_event_aborts_and_rolls_back_what_came_before(alpha):
    api = api_for(alpha)
    before = everything_but_idempotency()
    missing = txn(api, [], success=[put("a", 1), {"delete": {"key": "nothing"}}])
    assert error(missing, 409, "txn_aborted")["error"]["code"] == "not_found"
    reserved = txn(api, [], success=[put("a", 1), {"event": {"type": "record.written", "payload": {}}}])
    failed = error(reserved, 409, "txn_aborted")
    assert failed["failed_op"] == 1 and failed["error"]["code"] == "validation_error"
    assert not Record.objects.filter(key="a").exists()
    after = everything_but_idempotency()
    assert after["records"] == before["records"] and after["facts"] == before["facts"]
    assert Conflict.objects.filter(key="a").count() == 1  # kept once: the second refresh is the same open one


def test_the_failure_branch_aborts_the_same_way(alpha):
    api = api_for(alpha)
    response = txn(api, [{"key": "a", "exists": True}], failure=[put("b", 1), put("a", 1, 3)])
    assert error(response, 409, "txn_aborted")["failed_op"] == 1
    assert not Record.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"success": [{}]},
        {"success": [{"put": {"key": "a", "value": 1}, "get": {"key": "a"}}]},
        {"success": [{"put": {"key": "bad key", "value": 1}}]},
        {"success": [{"put": {"key": "a"}}]},
        {"success": [{"get": {"key": "a", "extra": 1}}]},
        {"success": [{"status": {"status": "x", "ttl_seconds": 1}}]},
        {"compare": [{"key": "a"}]},
        {"compare": [{"key": "a", "version": 1, "exists": True}]},
        {"compare": [{"key": "a", "version": {"op": "<=", "value": 1}}]},
        {"compare": [{"key": "a", "version": -1}]},
        {"compare": [{"lock": "r"}]},
        {"compare": [{"lock": "r", "fencing_token": 1, "key": "a"}]},
        {"compare": [], "else": []},
        {"success": [{"get": {"key": "a"}}] * 129},
        {"compare": [{"key": "a", "exists": True}] * 129},
    ],
)
def test_a_bad_txn_is_422_and_changes_nothing(alpha, body):
    api = api_for(alpha)
    before = state()
    error(api.post("/txn", body), 422, "validation_error")
    assert state() == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ops": [{"put": {"key": "a", "value": 1}}] * 129},
        {"ops": [{"delete": {"key": "a", "expected_version": "1"}}]},
        {"ops": [{"fact": {"fact": "", "category": "c"}}]},
        {"ops": [{"event": {"type": "x"}, "fact": {"fact": "f", "category": "c"}}]},
    ],
)
def test_a_bad_batch_is_422_and_changes_nothing(alpha, body):
    api = api_for(alpha)
    before = state()
    error(api.post("/batch", body), 422, "validation_error")
    assert state() == before


def test_a_body_over_the_limit_is_413(alpha, settings):
    settings.MAX_BODY_BYTES = 2048
    api = api_for(alpha)
    big = {"ops": [{"put": {"key": f"k{i}", "value": "x" * 100}} for i in range(30)]}
    error(api.post("/batch", big), 413, "payload_too_large")
    error(api.post("/txn", {"success": big["ops"]}), 413, "payload_too_large")
    assert not Record.objects.exists()


def test_a_read_only_token_may_send_gets_only(alpha):
    api_for(alpha).put("/records/a", {"value": 1})
    reader = api_for(alpha, read_only=True)
    assert (
        txn(reader, [{"key": "a", "version": 1}], success=[get("a")]).json()["results"][0]["body"]["value"]
        == 1
    )
    assert reader.post("/batch", {"ops": [get("a"), get("b")]}).json()["results"][1]["status"] == 404
    before = state()
    error(txn(reader, [], success=[get("a")], failure=[put("a", 2)]), 403, "forbidden")
    error(
        reader.post("/batch", {"ops": [get("a"), {"fact": {"fact": "f", "category": "c"}}]}), 403, "forbidden"
    )
    assert state() == before
    error(reader.put("/records/a", {"value": 2}), 403, "forbidden")  # the single endpoints are still closed


def test_txn_and_batch_need_a_token(db):
    from tests.api_support import Api

    error(Api().post("/txn", {}), 401, "unauthenticated")
    error(Api().post("/batch", {"ops": []}), 401, "unauthenticated")


def test_an_idempotency_key_replays_a_txn_and_a_batch_without_running_them_again(alpha):
    api = api_for(alpha)
    body = {"compare": [{"key": "a", "version": 0}], "success": [put("a", 1, 0)], "failure": [get("a")]}
    first = api.post("/txn", body, headers={"Idempotency-Key": "t1"})
    again = api.post("/txn", body, headers={"Idempotency-Key": "t1"})
    assert first.json()["succeeded"] is True and again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Record.objects.get(key="a").version == 1
    batch = {"ops": [{"fact": {"fact": "once", "category": "c"}}]}
    one = api.post("/batch", batch, headers={"Idempotency-Key": "b1"})
    two = api.post("/batch", batch, headers={"Idempotency-Key": "b1"})
    assert one.json() == two.json() and Fact.objects.count() == 1
    aborted = {"success": [put("z", 1, 4)]}
    refused = api.post("/txn", aborted, headers={"Idempotency-Key": "t2"})
    replayed = api.post("/txn", aborted, headers={"Idempotency-Key": "t2"})
    assert refused.status_code == replayed.status_code == 409 and refused.json() == replayed.json()
    assert Conflict.objects.filter(key="z").count() == 1


def test_a_batch_gives_each_operation_its_own_result_and_keeps_the_others(alpha, beta):
    api = api_for(alpha)
    api.put("/records/a", {"value": 1})
    response = api.post(
        "/batch",
        {
            "ops": [
                put("a", 2, 1),
                put("a", 3, 1),  # stale: its own 409, kept as a single conflict
                {"delete": {"key": "nothing"}},
                put("b", 1, 0),
                {"event": {"type": "lock.acquired", "payload": {}}},
                get("b"),
                {"fact": {"fact": "f", "category": "c"}},
            ]
        },
    )
    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert [result["status"] for result in results] == [200, 409, 404, 201, 422, 200, 201]
    assert results[1]["body"]["error"]["code"] == "version_conflict"
    conflict = Conflict.objects.get(pk=results[1]["body"]["error"]["conflict_id"])
    assert conflict.key == "a" and conflict.group == "" and conflict.status == "open"
    assert Record.objects.get(key="a").value == 2 and Record.objects.get(key="b").value == 1
    assert Fact.objects.count() == 1
    assert results[5]["body"]["value"] == 1


def test_an_empty_txn_and_an_empty_batch_are_fine(alpha):
    api = api_for(alpha)
    assert api.post("/txn", {}).json()["succeeded"] is True
    assert api.post("/batch", {"ops": []}).json() == {"results": []}


@pytest.mark.django_db(transaction=True)
def test_a_status_in_a_txn_reaches_redis_only_when_the_txn_commits(alpha):
    api = api_for(alpha)
    key = r.status_key("team", "alpha")
    aborted = txn(api, [], success=[{"status": {"status": "busy"}}, {"delete": {"key": "nothing"}}])
    error(aborted, 409, "txn_aborted")
    assert not r.client().exists(key)
    assert not Event.objects.filter(type="status.changed").exists()
    assert ran(txn(api, [], success=[{"status": {"status": "busy", "detail": "d"}}]))
    assert r.client().hget(key, "status") == "busy"
    assert r.client().zscore(r.heartbeats_index("team"), "alpha") is not None
    assert api.get("/agents/alpha").json()["state"] == "live"
    assert Event.objects.filter(type="status.changed").count() == 1
    assert ran(txn(api, [], success=[{"status": {"status": "busy", "detail": "d"}}]))  # a heartbeat
    assert Event.objects.filter(type="status.changed").count() == 1
    batch = api.post("/batch", {"ops": [{"status": {"status": "idle"}}]})
    assert batch.json()["results"][0]["status"] == 200
    assert r.client().hget(key, "status") == "idle"


def test_a_batch_of_puts_answers_each_form_as_the_single_write_does_in_one_statement(alpha):
    api = api_for(alpha)
    for key in ("live", "stale", "taken", "gone"):
        api.put(f"/records/{key}", {"value": key})
    api.delete("/records/gone")
    api.put("/records/stale", {"value": "lost", "expected_version": 7})  # alpha's open conflict
    api.put("/records/live", {"value": "lost", "expected_version": 7})  # superseded below
    ops = [
        put("live", "v2", 1),  # over its version
        put("stale", "x", 5),  # over a version it is not at: 409
        put("absent", "x", 3),  # over a version of a record that does not exist: 409
        put("taken", "x", 0),  # create only, over a live record: 409
        put("gone", "back", 0),  # create only, over a tombstone: brought back
        put("fresh", {"a": [1]}),  # unconditional, new
        put("taken2", "y"),  # unconditional, new
    ]
    with CaptureQueriesContext(connection) as queries:
        results = api.post("/batch", {"ops": ops}).json()["results"]
    assert [result["status"] for result in results] == [200, 409, 409, 409, 201, 201, 201]
    assert [results[i]["body"]["version"] for i in (0, 4, 5, 6)] == [2, 3, 1, 1]
    assert results[1]["body"]["error"]["current"]["version"] == 1
    assert results[2]["body"]["error"]["current"] is None
    assert results[3]["body"]["error"]["expected_version"] == 0
    assert Record.objects.get(key="fresh").value == {"a": [1]} and not Record.objects.get(key="gone").deleted
    # History, events in the request's order, and alpha's conflict on "live" closed by the write.
    assert list(RecordVersion.objects.filter(record__key="live").values_list("version", "value")) == [
        (2, "v2"),
        (1, "live"),
    ]
    written = Event.objects.filter(type="record.written").order_by("-seq")[:4]
    assert [(e.subject, e.payload["version"], e.payload["created"]) for e in reversed(written)] == [
        ("live", 2, False),
        ("gone", 3, True),
        ("fresh", 1, True),
        ("taken2", 1, True),
    ]
    assert Conflict.objects.get(key="live").resolution == "superseded"
    resolved = Event.objects.get(type="conflict.resolved")
    assert resolved.payload["key"] == "live" and resolved.seq > written[3].seq
    # Refused writes are kept as the single write keeps them: one open conflict per key and writer.
    assert sorted(Conflict.objects.filter(status="open").values_list("key", flat=True)) == [
        "absent",
        "stale",
        "taken",
    ]
    # The seven puts were one write statement, not seven.
    sql = [query["sql"] for query in queries.captured_queries]
    assert sum("INSERT INTO memory_admin_recordversion" in text for text in sql) == 1


# --- a txn of puts alone: one statement, committing by itself ------------------------------


@contextmanager
def sent_to_postgres() -> Iterator[list[str]]:
    """The messages this thread's connection sends to Postgres meanwhile (libpq's trace)."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    messages: list[str] = []
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield messages
        finally:
            pgconn.untrace()
            trace.seek(0)
            messages += [" ".join(line.rstrip("\n").split("\t")[2:]) for line in trace if line[0] == "F"]


@pytest.mark.django_db(transaction=True)
def test_a_txn_of_puts_alone_is_one_statement_that_commits_by_itself(alpha):
    api = api_for(alpha)
    api.put("/records/a", {"value": 1})
    with sent_to_postgres() as sent:
        response = txn(api, [], success=[put("a", 2, 1), put("b", 1, 0), put("c", "x")])
    assert ran(response)
    assert [result["status"] for result in response.json()["results"]] == [200, 201, 201]
    # No BEGIN and no COMMIT: the write statement is a transaction of its own.
    assert not [message for message in sent if '"BEGIN"' in message or '"COMMIT"' in message], sent
    assert sum(message.startswith("Execute") for message in sent) == 1, sent
    assert [(r.key, r.version, r.value) for r in Record.objects.order_by("key")] == [
        ("a", 2, 2),
        ("b", 1, 1),
        ("c", 1, "x"),
    ]
    written = Event.objects.filter(type="record.written").exclude(subject="a", payload__version=1)
    assert {event.txn for event in written} == {response.json()["txn"]} and written.count() == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("puts", "failed_op"),
    [
        ([put("a", 2, 1), put("b", 2, 7), put("c", 1)], 1),  # one refused by the statement: it keeps none
        ([put("a", 2, 5), put("b", 2, 7)], 0),  # all refused: none made
    ],
)
def test_a_txn_of_puts_alone_with_one_refused_keeps_none_and_says_which(alpha, puts, failed_op):
    api = api_for(alpha)
    api.put("/records/a", {"value": 1})
    api.put("/records/b", {"value": 1})
    before = everything_but_idempotency()
    failed = error(txn(api, [], success=puts), 409, "txn_aborted")
    assert failed["failed_op"] == failed_op
    assert [(r.key, r.version, r.value) for r in Record.objects.order_by("key")] == [("a", 1, 1), ("b", 1, 1)]
    after = everything_but_idempotency()
    assert after["records"] == before["records"] and after["versions"] == before["versions"]
    assert not Event.objects.filter(type="record.written", txn=failed["txn"]).exists()
    # The writes kept as one conflict group, as any aborted txn keeps them.
    if failed["error"]["code"] == "version_conflict":
        group = Conflict.objects.filter(group=failed["txn"])
        assert sorted(group.values_list("key", flat=True)) == sorted(p["put"]["key"] for p in puts)
