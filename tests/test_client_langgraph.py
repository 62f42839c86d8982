"""memory_admin_client.langgraph.MemoryAdminStore against a running server: LangGraph's own
implementation-agnostic store tests, ported from langchain-ai/langgraph
(libs/checkpoint-postgres/tests/test_store.py and libs/checkpoint/tests/test_store.py).

Where they differ:
- TTLs are not waited out: the test moves an item's expiry (StoreItem.expires) instead.
- `query` is ranked by full-text search, not by embeddings, so the vector tests keep the
  assertions a word ranking can meet (which item comes first for a word it holds; counts;
  pagination; non-ASCII), not those about a character-embedding's similarity.
- A namespace under "langgraph" is refused by the server on every path, also through
  `batch()` (InMemoryStore lets batch() past that check).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.utils.timezone import now
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from memory_admin_client import InvalidRequest
from memory_admin_client.langgraph import MemoryAdminStore

from memory_admin.models import Record, StoreItem
from memory_admin.services.tokens import issue_token

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def store(web_server, alpha):
    with MemoryAdminStore(web_server.url, issue_token(agent=alpha)[1]) as store:
        yield store


def test_batch_answers_in_the_order_of_its_operations(store) -> None:
    store.put(("test", "foo"), "key1", {"data": "value1"})
    store.put(("test", "bar"), "key2", {"data": "value2"})

    ops = [
        GetOp(namespace=("test", "foo"), key="key1"),
        PutOp(namespace=("test", "bar"), key="key2", value={"data": "value2"}),
        SearchOp(namespace_prefix=("test",), filter={"data": "value1"}, limit=10, offset=0),
        ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
        GetOp(namespace=("test",), key="key3"),
    ]
    results = store.batch(ops)
    assert len(results) == 5
    assert isinstance(results[0], Item)
    assert results[0].value == {"data": "value1"}
    assert results[0].key == "key1"
    assert results[1] is None
    assert isinstance(results[2], list) and len(results[2]) == 1
    assert isinstance(results[3], list) and len(results[3]) > 0
    assert results[4] is None

    reordered = store.batch(
        [
            SearchOp(namespace_prefix=("test",), filter=None, limit=5, offset=0),
            GetOp(namespace=("test", "bar"), key="key2"),
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=5, offset=0),
            PutOp(namespace=("test",), key="key3", value={"data": "value3"}),
            GetOp(namespace=("test", "foo"), key="key1"),
        ]
    )
    assert len(reordered[0]) >= 2
    assert reordered[1].value == {"data": "value2"}
    assert len(reordered[2]) > 0
    assert reordered[3] is None
    assert reordered[4].value == {"data": "value1"}


def test_batch_gets_find_what_exists_and_none_otherwise(store) -> None:
    store.put(("test",), "key1", {"data": "value1"})
    store.put(("test",), "key2", {"data": "value2"})
    results = store.batch(
        [
            GetOp(namespace=("test",), key="key1"),
            GetOp(namespace=("test",), key="key2"),
            GetOp(("test",), "key3"),
        ]
    )
    assert [r.key if r else None for r in results] == ["key1", "key2", None]


def test_batch_puts_write_and_a_none_value_deletes(store) -> None:
    results = store.batch(
        [
            PutOp(namespace=("test",), key="key1", value={"data": "value1"}),
            PutOp(namespace=("test",), key="key2", value={"data": "value2"}),
            PutOp(namespace=("test",), key="key3", value=None),
        ]
    )
    assert results == [None, None, None]
    assert store.get(("test",), "key1").value == {"data": "value1"}
    assert store.get(("test",), "key2").value == {"data": "value2"}
    assert store.get(("test",), "key3") is None


def test_batch_searches_filter_limit_and_stay_under_their_prefix(store) -> None:
    for namespace, key, value in [
        (("test", "foo"), "key1", {"data": "value1", "tag": "a"}),
        (("test", "bar"), "key2", {"data": "value2", "tag": "a"}),
        (("test", "baz"), "key3", {"data": "value3", "tag": "b"}),
    ]:
        store.put(namespace, key, value)
    results = store.batch(
        [
            SearchOp(namespace_prefix=("test",), filter={"tag": "a"}, limit=10, offset=0),
            SearchOp(namespace_prefix=("test",), filter=None, limit=2, offset=0),
            SearchOp(namespace_prefix=("test", "foo"), filter=None, limit=10, offset=0),
        ]
    )
    assert len(results[0]) == 2 and all(item.value["tag"] == "a" for item in results[0])
    assert len(results[1]) == 2
    assert [item.namespace for item in results[2]] == [("test", "foo")]


def test_batch_lists_namespaces_by_depth_and_suffix(store) -> None:
    data = [
        (("test", "documents", "public"), "doc1", {"content": "public doc"}),
        (("test", "documents", "private"), "doc2", {"content": "private doc"}),
        (("test", "images", "public"), "img1", {"content": "public image"}),
        (("prod", "documents", "public"), "doc3", {"content": "prod doc"}),
    ]
    for namespace, key, value in data:
        store.put(namespace, key, value)
    results = store.batch(
        [
            ListNamespacesOp(match_conditions=None, max_depth=None, limit=10, offset=0),
            ListNamespacesOp(match_conditions=None, max_depth=2, limit=10, offset=0),
            ListNamespacesOp(
                match_conditions=[MatchCondition("suffix", "public")], max_depth=None, limit=10, offset=0
            ),
        ]
    )
    assert len(results[0]) == len(data)
    assert all(len(ns) <= 2 for ns in results[1])
    assert all(ns[-1] == "public" for ns in results[2])


def test_basic_put_get_update_and_delete(store) -> None:
    namespace = ("test", "documents")
    store.put(namespace, "doc1", {"title": "Test Document", "content": "Hello, World!"})
    item = store.get(namespace, "doc1")
    assert item.namespace == namespace
    assert item.key == "doc1"
    assert item.value == {"title": "Test Document", "content": "Hello, World!"}

    store.put(namespace, "doc1", {"title": "Updated Document", "content": "Hello, Updated!"})
    updated = store.get(namespace, "doc1")
    assert updated.value == {"title": "Updated Document", "content": "Hello, Updated!"}
    assert updated.updated_at > item.updated_at
    assert store.get(("test", "other_documents"), "doc1") is None

    store.delete(namespace, "doc1")
    assert store.get(namespace, "doc1") is None


def test_list_namespaces_with_prefix_suffix_depth_and_limit(store) -> None:
    namespaces = [
        ("test", "documents", "public"),
        ("test", "documents", "private"),
        ("test", "images", "public"),
        ("test", "images", "private"),
        ("prod", "documents", "public"),
        ("prod", "documents", "private"),
    ]
    for namespace in namespaces:
        store.put(namespace, "dummy", {"content": "dummy"})
    assert len(store.list_namespaces()) == len(namespaces)
    test_prefixed = store.list_namespaces(prefix=["test"])
    assert len(test_prefixed) == 4 and all(ns[0] == "test" for ns in test_prefixed)
    public = store.list_namespaces(suffix=["public"])
    assert len(public) == 3 and all(ns[-1] == "public" for ns in public)
    assert all(len(ns) <= 2 for ns in store.list_namespaces(max_depth=2))
    assert len(store.list_namespaces(limit=3)) == 3
    for namespace in namespaces:
        store.delete(namespace, "dummy")
    assert store.list_namespaces() == []


def test_list_namespaces_basic(store) -> None:
    namespaces = [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
        ("users", "123"),
        ("users", "456", "settings"),
        ("admin", "users", "789"),
    ]
    for i, ns in enumerate(namespaces):
        store.put(namespace=ns, key=f"id_{i}", value={"data": f"value_{i:02d}"})

    assert sorted(store.list_namespaces(prefix=("a", "b"))) == [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
    ]
    assert sorted(store.list_namespaces(suffix=("f",))) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert sorted(store.list_namespaces(prefix=("a",), suffix=("f",))) == [("a", "b", "f"), ("a", "c", "f")]
    assert sorted(store.list_namespaces(prefix=("a", "b"), max_depth=3)) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert store.list_namespaces(prefix=("a", "b"), limit=2) == [("a", "b", "c"), ("a", "b", "d", "e")]
    assert store.list_namespaces(prefix=("a", "b"), offset=2) == [("a", "b", "d", "i"), ("a", "b", "f")]
    assert sorted(store.list_namespaces(prefix=("a", "*", "f"))) == [("a", "b", "f"), ("a", "c", "f")]
    assert sorted(store.list_namespaces(suffix=("*", "f"))) == [
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
    ]
    assert store.list_namespaces(prefix=("nonexistent",)) == []
    assert store.list_namespaces(prefix=("users", "123")) == [("users", "123")]


def test_list_namespaces_with_wildcards(store) -> None:
    for i, ns in enumerate(
        [
            ("users", "123"),
            ("users", "456"),
            ("users", "789", "settings"),
            ("admin", "users", "789"),
            ("guests", "123"),
            ("guests", "456", "preferences"),
        ]
    ):
        store.put(namespace=ns, key=f"id_{i}", value={"data": f"value_{i:02d}"})
    assert sorted(store.list_namespaces(prefix=("users", "*"))) == [
        ("users", "123"),
        ("users", "456"),
        ("users", "789", "settings"),
    ]
    assert store.list_namespaces(suffix=("*", "preferences")) == [("guests", "456", "preferences")]
    assert store.list_namespaces(prefix=("*", "users"), suffix=("*", "settings")) == []
    store.put(namespace=("admin", "users", "settings", "789"), key="foo", value={"data": "some_val"})
    assert store.list_namespaces(prefix=("*", "users"), suffix=("settings", "*")) == [
        ("admin", "users", "settings", "789")
    ]


def test_list_namespaces_pagination(store) -> None:
    for i in range(20):
        store.put(
            namespace=("namespace", f"sub_{i:02d}"), key=f"id_{i:02d}", value={"data": f"value_{i:02d}"}
        )
    assert store.list_namespaces(prefix=("namespace",), limit=5, offset=0) == [
        ("namespace", f"sub_{i:02d}") for i in range(5)
    ]
    assert store.list_namespaces(prefix=("namespace",), limit=5, offset=5) == [
        ("namespace", f"sub_{i:02d}") for i in range(5, 10)
    ]
    assert store.list_namespaces(prefix=("namespace",), limit=5, offset=15) == [
        ("namespace", f"sub_{i:02d}") for i in range(15, 20)
    ]


def test_list_namespaces_max_depth_and_no_conditions_and_empty(store) -> None:
    assert store.list_namespaces() == []
    for i, ns in enumerate(
        [("a", "b", "c", "d"), ("a", "b", "c", "e"), ("a", "b", "f"), ("a", "g"), ("h", "i", "j", "k")]
    ):
        store.put(namespace=ns, key=f"id_{i}", value={"data": f"value_{i:02d}"})
    assert sorted(store.list_namespaces(max_depth=2)) == [("a", "b"), ("a", "g"), ("h", "i")]
    assert len(store.list_namespaces()) == 5


def test_search_by_prefix_filter_and_page(store) -> None:
    data = [
        (("test", "docs"), "doc1", {"title": "First Doc", "author": "Alice", "tags": ["important"]}),
        (("test", "docs"), "doc2", {"title": "Second Doc", "author": "Bob", "tags": ["draft"]}),
        (("test", "images"), "img1", {"title": "Image 1", "author": "Alice", "tags": ["final"]}),
    ]
    for namespace, key, value in data:
        store.put(namespace, key, value)
    assert len(store.search(["test"])) == 3
    docs = store.search(["test", "docs"])
    assert len(docs) == 2 and all(item.namespace == ("test", "docs") for item in docs)
    alice = store.search(["test"], filter={"author": "Alice"})
    assert len(alice) == 2 and all(item.value["author"] == "Alice" for item in alice)
    assert len(store.search(["test"], limit=2)) == 2
    assert len(store.search(["test"], offset=2)) == 1


def test_numeric_comparison_filters_compare_numbers_as_numbers(store) -> None:
    namespace = ("test", "scores")
    for key, score in [("a", 2), ("b", 9), ("c", 10), ("d", 11)]:
        store.put(namespace, key, {"score": score})

    def scores(filter: dict) -> list:
        return sorted(item.value["score"] for item in store.search(namespace, filter=filter))

    assert scores({"score": {"$gte": 10}}) == [10, 11]
    assert scores({"score": {"$gt": 9}}) == [10, 11]
    assert scores({"score": {"$lt": 10}}) == [2, 9]
    assert scores({"score": {"$lte": 9}}) == [2, 9]
    assert scores({"score": {"$ne": 9}}) == [2, 10, 11]
    store.put(namespace, "e", {"score": 9.5})
    assert scores({"score": {"$gt": 9}}) == [9.5, 10, 11]
    for key, name in [("a", "apple"), ("b", "banana")]:
        store.put(("test", "names"), key, {"name": name})
    names = [
        item.value["name"] for item in store.search(("test", "names"), filter={"name": {"$gt": "apple"}})
    ]
    assert names == ["banana"]


def test_segment_boundaries_and_metacharacters_are_respected(store) -> None:
    store.put(("foo",), "a", {"n": 1})
    store.put(("foobar",), "b", {"n": 2})
    store.put(("f%o",), "c", {"n": 3})
    store.put(("f_o",), "d", {"n": 4})
    store.put(("fxo",), "e", {"n": 5})
    assert [i.key for i in store.search(("foo",))] == ["a"]
    assert [i.key for i in store.search(("f%o",))] == ["c"]
    assert [i.key for i in store.search(("f_o",))] == ["d"]
    assert store.list_namespaces(prefix=("f_o",)) == [("f_o",)]
    assert store.list_namespaces(prefix=("foo",)) == [("foo",)]


def test_cannot_put_an_invalid_namespace(store) -> None:
    doc = {"foo": "bar"}
    for namespace in [(), ("the", "thing.about"), ("some", "fun", ""), ("langgraph", "foo")]:
        with pytest.raises(InvalidNamespaceError):
            store.put(namespace, "foo", doc)
    # Past the public put API, the server refuses what LangGraph's put() would have.
    for namespace in [(), ("the", "thing.about"), ("langgraph", "foo")]:
        with pytest.raises(InvalidRequest) as refused:
            store.batch([PutOp(namespace, "bar", doc)])
        assert refused.value.status == 422
    assert not Record.objects.exists()

    store.put(("foo", "langgraph", "foo"), "bar", doc)
    assert store.get(("foo", "langgraph", "foo"), "bar").value == doc
    assert store.search(("foo", "langgraph", "foo"))[0].value == doc
    store.delete(("foo", "langgraph", "foo"), "bar")
    assert store.get(("foo", "langgraph", "foo"), "bar") is None
    assert store.get(("langgraph", "foo"), "bar") is None


def test_async_calls_work_the_same(store) -> None:
    async def work():
        doc = {"foo": "bar"}
        with pytest.raises(InvalidNamespaceError):
            await store.aput((), "foo", doc)
        with pytest.raises(InvalidNamespaceError):
            await store.aput(("langgraph", "foo"), "bar", doc)
        await store.aput(("valid", "namespace"), "key", doc)
        got = await store.aget(("valid", "namespace"), "key")
        found = await store.asearch(("valid",))
        listed = await store.alist_namespaces()
        await store.adelete(("valid", "namespace"), "key")
        gone = await store.aget(("valid", "namespace"), "key")
        results = await store.abatch([PutOp(("a",), "k", {"v": 1}), GetOp(("a",), "k")])
        await store.aclose()
        return got, found, listed, gone, results

    got, found, listed, gone, results = asyncio.run(work())
    assert got.value == {"foo": "bar"}
    assert [i.key for i in found] == ["key"]
    assert listed == [("valid", "namespace")]
    assert gone is None
    assert results[0] is None and results[1].value == {"v": 1}


def test_expired_items_are_omitted_and_reads_refresh_the_ttl(store) -> None:
    ns = ("foo",)
    store.put(ns, key="item1", value={"foo": "bar"}, ttl=5)
    soon = now() + timedelta(seconds=30)

    def expires():
        return StoreItem.objects.get(key="item1").expires

    StoreItem.objects.update(expires=soon)
    assert store.get(ns, key="item1", refresh_ttl=True) is not None
    assert expires() > now() + timedelta(minutes=4)
    StoreItem.objects.update(expires=soon)
    assert len(store.search(ns, query="bar", refresh_ttl=True)) == 1
    assert expires() > now() + timedelta(minutes=4)
    StoreItem.objects.update(expires=soon)
    assert store.get(ns, key="item1", refresh_ttl=False) is not None
    assert expires() == soon
    StoreItem.objects.update(expires=now() - timedelta(seconds=1))
    assert store.search(ns, query="bar", refresh_ttl=False) == []
    assert store.get(ns, key="item1") is None
    assert store.list_namespaces() == []


def test_a_store_ttl_config_sets_the_default_ttl(web_server, alpha) -> None:
    with MemoryAdminStore(
        web_server.url, issue_token(agent=alpha)[1], ttl={"default_ttl": 2, "refresh_on_read": False}
    ) as store:
        store.put(("t",), "k", {"v": 1})
        assert StoreItem.objects.get(key="k").ttl == 2
        store.put(("t",), "forever", {"v": 1}, ttl=None)
        assert StoreItem.objects.get(key="forever").expires is None


def test_query_ranks_items_holding_its_words_first(store) -> None:
    docs = [
        ("doc1", {"text": "red apple", "color": "red", "score": 4.5}),
        ("doc2", {"text": "red car", "color": "red", "score": 3.0}),
        ("doc3", {"text": "green apple", "color": "green", "score": 4.0}),
        ("doc4", {"text": "blue car", "color": "blue", "score": 3.5}),
    ]
    for key, value in docs:
        store.put(("test",), key, value)
    results = store.search(("test",), query="apple", filter={"color": "red"})
    assert [r.key for r in results] == ["doc1", "doc2"]
    assert results[0].score > 0
    results = store.search(("test",), query="car", filter={"color": "red"})
    assert [r.key for r in results] == ["doc2", "doc1"]
    assert len(store.search(("test",), query="bbbbluuu", filter={"score": {"$gt": 3.2}})) == 3
    results = store.search(("test",), query="apple", filter={"score": {"$gte": 4.0}, "color": "green"})
    assert [r.key for r in results] == ["doc3"]


def test_query_follows_updates_and_skips_unindexed_items(store) -> None:
    store.put(("test",), "doc1", {"text": "zany zebra Xerxes"})
    store.put(("test",), "doc2", {"text": "something about dogs"})
    store.put(("test",), "doc3", {"text": "text about birds"})
    initial = store.search(("test",), query="Zany Xerxes")
    assert initial[0].key == "doc1"
    store.put(("test",), "doc1", {"text": "new text about dogs"})
    after = store.search(("test",), query="Zany Xerxes")
    assert next(r.score for r in after if r.key == "doc1") < initial[0].score
    store.put(("test",), "doc4", {"text": "new text about dogs"}, index=False)
    assert not any(r.key == "doc4" for r in store.search(("test",), query="new text about dogs", limit=3))


def test_query_on_chosen_fields_only(store) -> None:
    store.put(("test",), "doc3", {"key0": "aaa", "key1": "bbb", "key2": "ccc"}, index=["key0", "key1"])
    store.put(("test",), "doc4", {"key0": "eee", "key1": "bbb", "key3": "ggg"}, index=["key1", "key3"])
    assert store.search(("test",), query="aaa")[0].key == "doc3"
    assert store.search(("test",), query="ggg")[0].key == "doc4"
    bbb = store.search(("test",), query="bbb")
    assert bbb[0].score == pytest.approx(bbb[1].score)
    assert all(not r.score for r in store.search(("test",), query="ccc"))
    store.put(("test",), "doc5", {"key0": "hhh"}, index=False)
    results = store.search(("test",))
    assert len(results) == 3 and all(r.score is None for r in results)


def test_query_pagination_and_edge_cases(store) -> None:
    for i in range(5):
        store.put(("test",), f"doc{i}", {"text": f"test document number {i}"})
    page1 = store.search(("test",), query="test", limit=2)
    page2 = store.search(("test",), query="test", limit=2, offset=2)
    assert len(page1) == len(page2) == 2
    assert {r.key for r in page1}.isdisjoint(r.key for r in page2)
    assert len(store.search(("test",), query="test", limit=10)) == 5
    for query in ["", None, "test " * 100, "test!@#$%^&*()"]:
        assert len(store.search(("test",), query=query)) == 5


def test_non_ascii_text_is_stored_and_found(store) -> None:
    texts = ["这是中文", "これは日本語です", "이건 한국어야", "Это русский", "यह रूसी है"]
    for i, text in enumerate(texts, start=1):
        store.put(("user_123", "memories"), str(i), {"text": text})
    for i, text in enumerate(texts, start=1):
        assert store.search(("user_123", "memories"), query=text)[0].key == str(i)
    store.put(("用户", "记忆"), "键", {"text": "值"})
    assert store.get(("用户", "记忆"), "键").value == {"text": "值"}
    assert store.list_namespaces(prefix=("用户",)) == [("用户", "记忆")]


def test_a_batch_is_one_request_whatever_its_operations(store) -> None:
    store.put(("warm",), "up", {"n": 0})  # opens the connection
    sent = []
    store._client.event_hooks["request"].append(sent.append)
    results = store.batch(
        [
            PutOp(("a",), "k1", {"n": 1}),
            PutOp(("a",), "k2", {"n": 2}, ttl=5),
            GetOp(("a",), "k1"),
            SearchOp(("a",), filter={"n": {"$gt": 1}}),
            ListNamespacesOp(match_conditions=None, max_depth=None),
            PutOp(("a",), "k1", None),
            GetOp(("a",), "k1"),
        ]
    )
    assert len(sent) == 1
    assert sent[0].url.path == "/api/v1/store/batch"
    assert results[:2] == [None, None]
    assert results[2].value == {"n": 1}
    assert [i.key for i in results[3]] == ["k2"]
    assert results[4] == [("a",), ("warm",)]
    assert results[5:] == [None, None]


def test_a_failed_operation_is_raised_after_the_others_ran(store) -> None:
    with pytest.raises(InvalidRequest) as refused:
        store.batch([PutOp(("a",), "k1", {"n": 1}), SearchOp(("a",), filter={"n": {"$near": 1}})])
    assert "$near" in str(refused.value)
    assert store.get(("a",), "k1").value == {"n": 1}
