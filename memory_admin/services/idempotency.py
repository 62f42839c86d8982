"""Idempotent retries (API.md: Idempotency, DESIGN.md rule 4).

The first response to a POST/PUT/DELETE carrying `Idempotency-Key` is stored in the same
Postgres transaction as the change it made: a process killed mid-request leaves either
both or neither, never an effect without its stored response. The row is inserted first,
so a concurrent duplicate waits on its unique index until the first commits, then replays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction
from django.utils.timezone import now

from memory_admin.errors import DomainError
from memory_admin.models import Agent, Idempotency

MAX_KEY = 255
PENDING = 0  # status of a claimed row whose response is not stored yet; never committed


class KeyReused(DomainError):
    status, code = 422, "idempotency_key_reused"


class BadKey(DomainError):
    status, code = 422, "validation_error"

    def __init__(self) -> None:
        super().__init__(
            f"Idempotency-Key must be 1-{MAX_KEY} printable ASCII characters",
            fields={"Idempotency-Key": f"1-{MAX_KEY} printable ASCII characters"},
        )


@dataclass(frozen=True)
class Reply:
    """A response as stored: status, body and the headers worth replaying."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY or not all(" " <= c <= "~" for c in key):
        raise BadKey()
    return key


def fingerprint(*, method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same request" for a key."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def respond_once(
    *,
    agent: Agent,
    key: str,
    fingerprint: str,
    compute: Callable[[], Reply],
    keep: Callable[[Reply], bool],
) -> tuple[Reply, bool]:
    """The stored reply for `agent`'s `key`, or compute one and store it with its effect if `keep(reply)`.

    Returns (reply, replayed). A reply that is not kept rolls back everything `compute` did.
    """
    check_key(key)
    with transaction.atomic():
        row = _claim(agent=agent, key=key, fingerprint=fingerprint)
        if row.status != PENDING:
            if row.fingerprint != fingerprint:
                raise KeyReused("this Idempotency-Key was used for a different request in the last 24 hours")
            return Reply(row.status, bytes(row.body), row.headers), True
        reply = compute()
        if not keep(reply):
            transaction.set_rollback(True)
            return reply, False
        Idempotency.objects.filter(pk=row.pk).update(
            status=reply.status, body=reply.body, headers=reply.headers
        )
        return reply, False


def _claim(*, agent: Agent, key: str, fingerprint: str) -> Idempotency:
    """This transaction's row for (agent, key): inserted now, or the committed one, row-locked."""
    # An expired key starts afresh; old keys of the agent go with it.
    Idempotency.objects.filter(agent=agent, created__lt=now() - Idempotency.KEEP).delete()
    # Waits on the unique index while a duplicate is in flight; nothing if one committed.
    Idempotency.objects.bulk_create(
        [Idempotency(agent=agent, key=key, fingerprint=fingerprint, status=PENDING, body=b"")],
        ignore_conflicts=True,
    )
    return Idempotency.objects.select_for_update().get(agent=agent, key=key)


def update_body(*, agent: Agent, key: str, body: bytes) -> None:
    """Complete a stored reply with what became known after its commit (an event's position)."""
    Idempotency.objects.filter(agent=agent, key=key).update(body=body)
