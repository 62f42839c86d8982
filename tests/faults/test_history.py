"""The history checker finds each kind of violation it looks for, and only those."""

from __future__ import annotations

import json

from tests.faults.history import History, Op, check, check_locks, check_records


def write(who, key, invoke, ret, version, expected=None, value=None, status=200) -> Op:
    request = {"value": value if value is not None else {"v": version}}
    if expected is not None:
        request["expected_version"] = expected
    body = {"version": version, "value": request["value"]} if status < 300 else None
    return Op(who, "write", key, invoke, ret, request, status, body)


def read(who, key, invoke, ret, version, value=None) -> Op:
    return Op(who, "read", key, invoke, ret, {}, 200, {"version": version, "value": value or {"v": version}})


def acquire(who, resource, invoke, ret, token, ttl=10) -> Op:
    return Op(who, "acquire", resource, invoke, ret, {"ttl_seconds": ttl}, 200, {"fencing_token": token})


def release(who, resource, invoke, ret, token) -> Op:
    return Op(who, "release", resource, invoke, ret, {"fencing_token": token}, 204, None)


def test_a_linear_history_passes():
    ops = [
        write("a", "k", 0, 1, 1, expected=0),
        read("b", "k", 1.5, 2, 1),
        write("b", "k", 2, 3, 2, expected=1),
        write("a", "k", 2.5, 3.5, 2, expected=1, status=409),  # lost the race: refused
        read("a", "k", 3.6, 4, 2),
        acquire("a", "r", 0, 1, 10),
        release("a", "r", 2, 2.1, 10),
        acquire("b", "r", 2.05, 3, 11),
    ]
    assert check_records(ops) == []
    assert check_locks(ops) == []


def test_a_version_written_twice_is_found():
    ops = [write("a", "k", 0, 1, 1, expected=0), write("b", "k", 0, 1, 1, expected=0)]
    assert any("version 1 written twice" in p for p in check_records(ops))


def test_a_write_that_skipped_a_version_is_found():
    assert any("wrote over version 1" in p for p in check_records([write("a", "k", 0, 1, 3, expected=1)]))


def test_a_stale_read_is_found():
    ops = [
        write("a", "k", 0, 1, 1, expected=0),
        write("a", "k", 2, 3, 2, expected=1),
        read("b", "k", 4, 5, 1),
    ]
    assert any("read version 1" in p for p in check_records(ops))


def test_a_read_that_goes_back_behind_an_earlier_read_is_found():
    ops = [read("a", "k", 0, 1, 5), read("b", "k", 2, 3, 4)]
    assert any("version 5 (by a)" in p for p in check_records(ops))


def test_a_read_concurrent_with_a_write_may_see_either_version():
    ops = [
        write("a", "k", 0, 1, 1, expected=0),
        write("a", "k", 2, 4, 2, expected=1),
        read("b", "k", 3, 5, 1),
    ]
    assert check_records(ops) == []


def test_a_read_of_a_value_nobody_wrote_is_found():
    ops = [write("a", "k", 0, 1, 1, expected=0), read("b", "k", 2, 3, 1, value={"v": "forged"})]
    assert any("no write of it sent" in p for p in check_records(ops))


def test_overlapping_lock_holds_are_found():
    ops = [acquire("a", "r", 0, 1, 10), acquire("b", "r", 2, 3, 11), release("a", "r", 5, 6, 10)]
    assert any("a held it (token 10)" in p for p in check_locks(ops))


def test_a_hold_ends_at_its_ttl_counted_from_the_acquires_invoke():
    ops = [acquire("a", "r", 0, 1, 10, ttl=2), acquire("b", "r", 2.1, 3, 11)]
    assert check_locks(ops) == []
    assert check_locks([acquire("a", "r", 0, 1, 10, ttl=2), acquire("b", "r", 1.5, 1.9, 11)]) != []


def test_a_lease_break_ends_every_hold_that_began_before_it():
    ops = [acquire("a", "r", 0, 1, 10), acquire("b", "r", 3, 4, 11)]
    assert check_locks(ops) != []
    assert check_locks(ops, lease_breaks=[2.0]) == []


def test_a_token_that_did_not_grow_is_found():
    ops = [acquire("a", "r", 0, 1, 10, ttl=1), acquire("b", "r", 5, 6, 9)]
    assert any("not larger than 10" in p for p in check_locks(ops))


def test_a_failing_history_is_saved_with_its_violations(tmp_path):
    history = History()
    history.add(write("a", "k", 0, 1, 1, expected=0))
    history.add(write("b", "k", 0, 1, 1, expected=0))
    history.note("nothing broken")
    problems = check(history, "unit", folder=tmp_path)
    assert problems and problems[-1].startswith("history saved to ")
    saved = json.loads(next(tmp_path.glob("history-unit-*.json")).read_text())
    assert saved["violations"] == problems[:-1]
    assert len(saved["ops"]) == 2 and saved["notes"][0]["what"] == "nothing broken"
