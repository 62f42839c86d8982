"""The store service below the HTTP layer: record keys, and the sweep of expired items."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils.timezone import now

from memory_admin.models import Event, Record, StoreItem
from memory_admin.services.store import get_item, put_item, record_key, sweep_expired_items
from memory_admin.validation import KEY_RE
from tests.conftest import actor

pytestmark = pytest.mark.django_db


def test_record_keys_are_never_ordinary_keys_and_never_repeat():
    samples = [
        (["a"], "b"),
        (["a", "b"], ""),
        (["a/b"], ""),
        (["a"], "b/"),
        (["a", "b%2F"], "c"),
        (["~"], "x"),
        (["%7E"], "x"),
        (["用户"], "键"),
        (["l" * 300], "k"),
        (["l" * 300], "k2"),
    ]
    keys = [record_key(path, key) for path, key in samples]
    assert len(set(keys)) == len(keys)
    assert all(len(k) <= 200 and k.startswith("~") and not KEY_RE.match(k) for k in keys)
    assert record_key(["team", "plans"], "q3 plan") == "~team/plans/q3%20plan"


def test_the_sweep_deletes_expired_items_as_the_system_and_keeps_the_rest(ns, alpha):
    put_item(ns=ns, namespace=["tmp"], key="old", value={"n": 1}, ttl=5, actor=actor(alpha))
    put_item(ns=ns, namespace=["tmp"], key="fresh", value={"n": 2}, ttl=5, actor=actor(alpha))
    put_item(ns=ns, namespace=["tmp"], key="forever", value={"n": 3}, actor=actor(alpha))
    StoreItem.objects.filter(key="old").update(expires=now() - timedelta(seconds=1))

    assert sweep_expired_items() == 1
    old = Record.objects.get(key=record_key(["tmp"], "old"))
    assert old.deleted and old.version == 2
    assert Event.objects.filter(type="record.deleted", subject=old.key, actor="system").count() == 1
    assert sorted(StoreItem.objects.values_list("key", flat=True)) == ["forever", "fresh"]
    assert get_item(ns=ns, namespace=["tmp"], key="fresh").value == {"n": 2}
    assert sweep_expired_items() == 0


def test_sweep_store_prints_how_many_went(ns, alpha, capsys):
    for key in ("a", "b"):
        put_item(ns=ns, namespace=["tmp"], key=key, value={}, ttl=1, actor=actor(alpha))
    StoreItem.objects.update(expires=now() - timedelta(seconds=1))
    call_command("sweep_store")
    assert capsys.readouterr().out.strip() == "2"
    assert not StoreItem.objects.exists()
