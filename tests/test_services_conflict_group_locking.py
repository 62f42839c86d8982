"""An operator resolving a conflict group (several records) while a /txn writes the same keys in
another order: the two queue on the keys' locks, neither deadlocks."""

import psycopg
import pytest

from memory_admin.models import Conflict, Record
from memory_admin.relay import dsn
from memory_admin.services import Actor, conflicts, txn
from memory_admin.services.records import write_record
from tests.conftest import actor, on_own_connection, wait_for_waiters

pytestmark = pytest.mark.django_db(transaction=True)


def test_resolving_a_group_while_a_txn_writes_its_keys_in_another_order_does_not_deadlock(ns, alpha):
    agent = actor(alpha)
    for key in ("a", "b"):
        write_record(ns=ns, key=key, value=0, actor=agent)
    with pytest.raises(txn.TxnAborted):  # refused at b: b then a kept as one group
        txn.run_txn(
            ns=ns,
            agent=alpha,
            actor=agent,
            compare=[],
            success=[
                txn.Op("put", {"key": "b", "value": "b!", "expected_version": 7}),
                txn.Op("put", {"key": "a", "value": "a!", "expected_version": 7}),
            ],
            failure=[],
        )
    group = Conflict.objects.get(key="a").group
    on_b, on_a = conflicts.group_conflicts(ns=ns, group=group)
    operator = Actor(name="operator:admin")

    # The operator's resolution gets as far as record b and stops at the conflict on a, held here.
    gate = psycopg.connect(dsn())
    gate.execute("SELECT 1 FROM memory_admin_conflict WHERE id = %s FOR UPDATE", [on_a.pk])
    resolving, resolved = on_own_connection(
        lambda: conflicts.resolve_group(
            ns=ns, group=group, action="accept", actor=operator, versions={on_b.pk: 1, on_a.pk: 1}
        ),
        deadlock_timeout="10ms",
    )
    wait_for_waiters(1)
    # An agent's txn over a, then b.
    writing, written = on_own_connection(
        lambda: txn.run_txn(
            ns=ns,
            agent=alpha,
            actor=agent,
            compare=[],
            success=[
                txn.Op("put", {"key": "a", "value": "agent"}),
                txn.Op("get", {"key": "a"}),
                txn.Op("put", {"key": "b", "value": "agent"}),
            ],
            failure=[],
        ),
        deadlock_timeout="10s",
    )
    wait_for_waiters(2)
    gate.rollback()
    gate.close()
    resolving.join(timeout=30)
    writing.join(timeout=30)

    assert not isinstance(resolved[0], Exception), resolved[0]
    assert not isinstance(written[0], Exception), written[0]
    assert written[0].succeeded
    # The operator went first (it held the keys); the agent's txn wrote over both after.
    assert {r.key: r.value for r in Record.objects.filter(ns=ns)} == {"a": "agent", "b": "agent"}
    assert {r.key: r.version for r in Record.objects.filter(ns=ns)} == {"a": 3, "b": 3}
    assert not Conflict.objects.filter(ns=ns, group=group, status="open").exists()
