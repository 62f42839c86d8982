"""LangGraph's store API as langgraph-sdk's own `client.store` calls it, against a running server.

The SDK gets `get_client(url=<server>/api/v1, api_key=<token>)` and sends the token as
x-api-key. Every item is one of our versioned records, so a put shows in the console.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from datetime import timedelta

import httpx
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils.timezone import now
from langgraph_sdk import get_client, get_sync_client
from langgraph_sdk.errors import UnprocessableEntityError

from config import web
from memory_admin.models import Event, Record, RecordVersion, StoreItem
from memory_admin.services.store import record_key
from memory_admin.services.tokens import issue_token
from tests.conftest import free_port, server_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def store(web_server, alpha):
    client = get_sync_client(url=web_server.url + "/api/v1", api_key=issue_token(agent=alpha)[1])
    yield client.store
    client.http.client.close()


def test_put_get_search_list_and_delete_work_through_the_sdk(store):
    store.put_item(["users", "alice"], "pref", {"theme": "dark", "size": 3})
    store.put_item(["users", "bob"], "pref", {"theme": "light", "size": 5})
    store.put_item(["docs"], "readme", {"text": "hello"})

    item = store.get_item(["users", "alice"], "pref")
    assert item["namespace"] == ["users", "alice"]
    assert item["key"] == "pref"
    assert item["value"] == {"theme": "dark", "size": 3}
    assert item["created_at"] and item["updated_at"]

    found = store.search_items(["users"], filter={"theme": "light"})
    assert [i["namespace"] for i in found["items"]] == [["users", "bob"]]
    found = store.search_items(["users"], filter={"size": {"$gte": 3, "$lt": 5}})
    assert [i["value"]["theme"] for i in found["items"]] == ["dark"]
    assert len(store.search_items([], limit=2)["items"]) == 2

    assert store.list_namespaces()["namespaces"] == [["docs"], ["users", "alice"], ["users", "bob"]]
    assert store.list_namespaces(prefix=["users"], max_depth=1)["namespaces"] == [["users"]]
    assert store.list_namespaces(suffix=["*", "bob"])["namespaces"] == [["users", "bob"]]

    store.delete_item(["users", "alice"], "pref")
    with pytest.raises(httpx.HTTPStatusError) as missing:
        store.get_item(["users", "alice"], "pref")
    assert missing.value.response.status_code == 404
    store.delete_item(["users", "alice"], "pref")  # deleting a missing item is no error


def test_every_put_is_a_new_version_of_one_record_with_its_event(store, alpha):
    store.put_item(["notes"], "n1", {"v": 1})
    store.put_item(["notes"], "n1", {"v": 2})
    store.delete_item(["notes"], "n1")
    record = Record.objects.get(key=record_key(["notes"], "n1"))
    assert record.key == "~notes/n1"
    assert [(v.version, v.value, v.deleted) for v in record.versions.order_by("version")] == [
        (1, {"v": 1}, False),
        (2, {"v": 2}, False),
        (3, None, True),
    ]
    types = list(Event.objects.filter(subject=record.key).order_by("seq").values_list("type", "actor"))
    assert types == [("record.written", "alpha"), ("record.written", "alpha"), ("record.deleted", "alpha")]


def test_a_store_write_shows_in_the_console_as_a_record_with_its_history(store, alpha):
    store.put_item(["team", "plans"], "q3 plan", {"goal": "ship"})
    store.put_item(["team", "plans"], "q3 plan", {"goal": "ship", "by": "june"})
    key = record_key(["team", "plans"], "q3 plan")
    console = Client()
    console.force_login(User.objects.create_user("vera"))

    listing = console.get(reverse("records", args=[alpha.ns.name]))
    assert listing.status_code == 200
    assert key in listing.content.decode()

    page = console.get(reverse("record", args=[alpha.ns.name, key]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "~team/plans/q3%20plan" in html
    assert "june" in html
    assert re.search(r"\bv2\b|version 2|>2<", html)
    assert RecordVersion.objects.filter(record__key=key).count() == 2


def test_labels_are_whole_and_metacharacters_are_plain(store):
    store.put_item(["foo"], "a", {"n": 1})
    store.put_item(["foobar"], "b", {"n": 2})
    store.put_item(["f_o%"], "c", {"n": 3})
    store.put_item(["fxoo"], "d", {"n": 4})
    assert [i["key"] for i in store.search_items(["foo"])["items"]] == ["a"]
    assert [i["key"] for i in store.search_items(["f_o%"])["items"]] == ["c"]
    assert store.list_namespaces(prefix=["f_o%"])["namespaces"] == [["f_o%"]]


def test_non_ascii_and_awkward_labels_and_keys_reach_their_items(store):
    odd = ["用户", "a/b", "~x%41", "with space"]
    store.put_item(odd, "ключ/1", {"text": "这是中文"})
    assert store.get_item(odd, "ключ/1")["value"] == {"text": "这是中文"}
    long = ["l" * 300, "m" * 300]
    store.put_item(long, "k" * 500, {"n": 1})
    assert store.get_item(long, "k" * 500)["value"] == {"n": 1}
    assert store.list_namespaces(prefix=["l" * 300])["namespaces"] == [long]


def test_query_ranks_by_full_text_search_with_a_score(store):
    store.put_item(["docs"], "d1", {"text": "red apple pie"})
    store.put_item(["docs"], "d2", {"text": "blue car"})
    store.put_item(["docs"], "d3", {"text": "green apple"}, index=False)
    found = store.search_items(["docs"], query="apple")["items"]
    assert found[0]["key"] == "d1"
    assert found[0]["score"] > 0
    assert [i["key"] for i in found][-1] == "d3"  # not indexed: no score, last
    assert found[-1]["score"] is None
    assert all(i["score"] is None for i in store.search_items(["docs"])["items"])


def test_an_expired_item_is_never_returned_and_a_read_renews_the_ttl(store):
    store.put_item(["tmp"], "a", {"n": 1}, ttl=5)
    store.put_item(["tmp"], "b", {"n": 2})
    row = StoreItem.objects.get(key="a")
    assert row.ttl == 5
    # Move the expiry instead of waiting for it.
    StoreItem.objects.filter(key="a").update(expires=now() + timedelta(seconds=30))
    store.get_item(["tmp"], "a", refresh_ttl=False)
    assert StoreItem.objects.get(key="a").expires < now() + timedelta(minutes=1)
    store.get_item(["tmp"], "a")
    assert StoreItem.objects.get(key="a").expires > now() + timedelta(minutes=4)
    StoreItem.objects.filter(key="a").update(expires=now() + timedelta(seconds=30))
    store.search_items(["tmp"], refresh_ttl=True)
    assert StoreItem.objects.get(key="a").expires > now() + timedelta(minutes=4)

    StoreItem.objects.filter(key="a").update(expires=now() - timedelta(seconds=1))
    with pytest.raises(httpx.HTTPStatusError) as gone:
        store.get_item(["tmp"], "a")
    assert gone.value.response.status_code == 404
    assert [i["key"] for i in store.search_items(["tmp"])["items"]] == ["b"]
    store.delete_item(["tmp"], "b")
    assert store.list_namespaces()["namespaces"] == []
    # Put again, it is a new item.
    store.put_item(["tmp"], "a", {"n": 3})
    assert store.get_item(["tmp"], "a")["value"] == {"n": 3}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.put_item([], "k", {"a": 1}), "namespace"),
        (lambda s: s.put_item(["a", ""], "k", {"a": 1}), "namespace"),
        (lambda s: s.delete_item(["a.b"], "k"), "namespace"),
        (lambda s: s.search_items(["a.b"]), "namespace_prefix"),
        (lambda s: s.put_item(["langgraph", "x"], "k", {"a": 1}), "namespace"),
        (lambda s: s.search_items(["a"], filter={"n": {"$regex": "x"}}), "filter.n"),
        (lambda s: s.put_item(["a"], "k", [1, 2]), "value"),
        (lambda s: s.put_item(["a"], "k", "text"), "value"),
        (lambda s: s.put_item(["a"], "k", {"a": 1}, ttl=-1), "ttl"),
        (lambda s: s.search_items(["a"], limit=0), "limit"),
    ],
)
def test_bad_input_is_a_422_the_sdk_surfaces_and_writes_nothing(store, call, field):
    before = (Record.objects.count(), Event.objects.count())
    with pytest.raises(UnprocessableEntityError) as refused:
        call(store)
    body = refused.value.body
    assert body["error"]["code"] == "validation_error"
    assert field in body["error"]["fields"]
    assert str(refused.value)  # the SDK's message is ours
    assert (Record.objects.count(), Event.objects.count()) == before


def test_the_sdk_refuses_dotted_labels_itself_and_the_server_does_too(store, web_server, alpha):
    with pytest.raises(ValueError):
        store.put_item(["a.b"], "k", {"a": 1})
    response = httpx.put(
        web_server.url + "/api/v1/store/items",
        json={"namespace": ["a.b"], "key": "k", "value": {}},
        headers={"x-api-key": issue_token(agent=alpha)[1]},
    )
    assert response.status_code == 422
    assert "'.'" in response.json()["error"]["message"]


def test_a_read_only_token_searches_and_lists_but_cannot_put(web_server, alpha):
    client = get_sync_client(
        url=web_server.url + "/api/v1", api_key=issue_token(agent=alpha, read_only=True)[1]
    )
    assert client.store.search_items(["a"])["items"] == []
    assert client.store.list_namespaces()["namespaces"] == []
    with pytest.raises(httpx.HTTPStatusError) as refused:
        client.store.put_item(["a"], "k", {"a": 1})
    assert refused.value.response.status_code == 403


def test_ok_answers_200_without_a_token(web_server):
    response = httpx.get(web_server.url + "/api/v1/ok")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_store_items_never_collide_with_ordinary_records(store, alpha):
    store.put_item(["plan"], "q3", {"from": "store"})
    client = httpx.Client(
        base_url=store.http.client.base_url, headers={"x-api-key": store.http.client.headers["x-api-key"]}
    )
    ordinary = client.put("/records/plan/q3", json={"value": {"from": "records"}})
    assert ordinary.status_code == 201
    assert store.get_item(["plan"], "q3")["value"] == {"from": "store"}
    # The store item's record reads through the records API too, with its versions.
    versions = client.get("/records/" + record_key(["plan"], "q3") + "/versions")
    assert versions.status_code == 200
    assert [v["value"] for v in versions.json()["items"]] == [{"from": "store"}]
    refused = client.put("/records/" + record_key(["plan"], "q3"), json={"value": {}})
    assert refused.status_code == 422


def test_a_database_that_is_down_is_503_with_retry_after_through_the_sdk(tmp_path, alpha):
    env = {**server_env(), "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}
    port = free_port()
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 - the child writes to it for its whole life
    proc = subprocess.Popen(web.argv("127.0.0.1", port), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "web.log").read_text()
            time.sleep(0.1)
        client = get_sync_client(url=url, api_key="ma_whatever")
        with pytest.raises(httpx.HTTPStatusError) as down:
            client.store.put_item(["a"], "k", {"a": 1})
        assert down.value.response.status_code == 503
        assert down.value.response.headers["Retry-After"] == "1"
        assert down.value.response.json()["error"]["code"] == "unavailable"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_the_store_batch_answers_each_operation_as_its_own_call(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    reader = issue_token(agent=alpha, read_only=True)[1]
    url = web_server.url + "/api/v1/store/batch"
    ops = [
        {"put": {"namespace": ["a"], "key": "k", "value": {"n": 1}}},
        {"get": {"namespace": ["a"], "key": "k"}},
        {"get": {"namespace": ["a"], "key": "missing"}},
        {"put": {"namespace": ["a"], "key": "k", "value": [1]}},
        {"fly": {}},
        {"search": {"namespace_prefix": ["a"]}},
        {"list_namespaces": {}},
        {"delete": {"namespace": ["a"], "key": "k"}},
    ]
    answer = httpx.post(url, json={"ops": ops}, headers={"x-api-key": token})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [204, 200, 404, 422, 422, 200, 200, 204]
    assert results[1]["body"]["value"] == {"n": 1}
    assert "value" in str(results[3]["body"]["error"]["fields"])
    assert results[5]["body"]["items"][0]["key"] == "k"
    assert results[6]["body"] == {"namespaces": [["a"]]}

    read_only = httpx.post(url, json={"ops": ops[:3]}, headers={"x-api-key": reader}).json()["results"]
    assert [r["status"] for r in read_only] == [403, 404, 404]
    too_many = httpx.post(url, json={"ops": [ops[1]] * 501}, headers={"x-api-key": token})
    assert too_many.status_code == 422


def test_the_async_sdk_with_langgraph_api_key_from_the_environment_works_too(web_server, alpha, monkeypatch):
    monkeypatch.setenv("LANGGRAPH_API_KEY", issue_token(agent=alpha)[1])

    async def work():
        client = get_client(url=web_server.url + "/api/v1")
        await client.store.put_item(["async"], "k", {"text": "hello there"})
        item = await client.store.get_item(["async"], "k")
        found = await client.store.search_items(["async"], query="hello")
        listed = await client.store.list_namespaces()
        await client.store.delete_item(["async"], "k")
        await client.http.client.aclose()
        return item, found, listed

    item, found, listed = asyncio.run(work())
    assert item["value"] == {"text": "hello there"}
    assert found["items"][0]["score"] > 0
    assert listed == {"namespaces": [["async"]]}
    assert Record.objects.get(key="~async/k").updated_by == "alpha"
