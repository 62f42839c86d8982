"""Agent identities and their bearer tokens: issued once, stored as a hash, revocable."""

from __future__ import annotations

import hashlib
import logging
import secrets

import redis
from django.db import connection, transaction
from django.utils.timezone import now

from memory_admin import redis as r
from memory_admin import rows, sql
from memory_admin.errors import Invalid, NotFound
from memory_admin.models import Agent, Namespace, Token
from memory_admin.services import SYSTEM_ACTOR, Actor
from memory_admin.services.events import append_event, doorbell_channel
from memory_admin.validation import check_key

PREFIX = "ma_"

log = logging.getLogger("memory_admin.tokens")


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def ensure_agent(*, namespace: str, agent_id: str, actor: Actor = SYSTEM_ACTOR) -> Agent:
    """The agent `agent_id` of `namespace`, creating either if new."""
    check_key(namespace, "namespace")
    check_key(agent_id, "agent_id")
    ns, _ = Namespace.objects.get_or_create(name=namespace)
    agent, created = Agent.objects.get_or_create(ns=ns, name=agent_id)
    if created:
        append_event(ns=ns, type="agent.created", actor=actor, agent_id=agent_id, subject=agent_id)
    return agent


@transaction.atomic
def issue_token(*, agent: Agent, actor: Actor = SYSTEM_ACTOR, read_only: bool = False) -> tuple[Token, str]:
    """A new token for `agent`; returns (token row, the secret), the secret is shown once and never stored."""
    raw = PREFIX + secrets.token_urlsafe(32)  # 256 bits
    token = Token.objects.create(
        agent=agent, digest=digest(raw), prefix=raw[:10], read_only=read_only, created_by=actor.name
    )
    append_event(
        ns=agent.ns,
        type="agent.token_issued",
        actor=actor,
        agent_id=agent.name,
        subject=agent.name,
        payload={"token_id": token.pk, "prefix": token.prefix, "read_only": read_only},
    )
    return token, raw


@transaction.atomic
def revoke_token(*, token: Token, actor: Actor = SYSTEM_ACTOR) -> Token:
    """Revoke at once: once committed, every web process is told to forget the token
    (revoked_channel), and its next request reads the database."""
    token = Token.objects.select_for_update().select_related("agent__ns").get(pk=token.pk)
    if token.revoked is None:
        token.revoked = now()
        token.save(update_fields=["revoked"])
        transaction.on_commit(lambda: announce_revoked(token.digest))
        append_event(
            ns=token.agent.ns,
            type="agent.token_revoked",
            actor=actor,
            agent_id=token.agent.name,
            subject=token.agent.name,
            payload={"token_id": token.pk, "prefix": token.prefix},
        )
    return token


def token_is_live(token_id: int) -> bool:
    """Whether a token still authenticates: not revoked, its agent and namespace not removed.
    Open streams and blocking reads ask it on every wake-up (a revocation's own event wakes them),
    so a revocation reaches connections opened before it."""
    return Token.objects.filter(pk=token_id, revoked__isnull=True).exists()


def revoked_channel() -> str:
    """Where a committed revocation names the token's digest, for the web processes' token
    caches (memory_admin/api/auth.py): one channel per database, as the relay's doorbell."""
    return doorbell_channel().replace("doorbell", "revoked", 1)


def announce_revoked(token_digest: str) -> None:
    """Tell every web process that the token is revoked. A message lost to a Redis outage is
    safe: a process whose subscription broke has dropped its cache, and an entry lives
    seconds at most (settings.TOKEN_CACHE_SECONDS)."""
    try:
        r.client().publish(revoked_channel(), token_digest)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("revocation not announced, Redis unavailable: %s", exc)


def authenticate(raw: str) -> Token | None:
    """The live token for a presented secret, with its agent and namespace, or None.

    Lookup is by the SHA-256 of the secret, so no secret is ever compared byte by byte.
    """
    if not raw or len(raw) > 200:
        return None
    return by_digest(digest(raw))


def by_digest(token_digest: str) -> Token | None:
    """The live token with this digest, with its agent and namespace, or None. Every API request
    whose token is not in its process's cache runs it, so the query is written once
    (memory_admin/sql.py, read by memory_admin/rows.py)."""
    with connection.cursor() as cursor:
        cursor.execute(sql.TOKEN_BY_DIGEST, [token_digest])
        row = cursor.fetchone()
    if row is None:
        return None
    token = rows.load(Token, row)
    token.agent = agent = rows.load(Agent, row, rows.width(Token))
    agent.ns = rows.load(Namespace, row, rows.width(Token) + rows.width(Agent))
    return token


def find_token(*, prefix: str) -> Token:
    """The one live token whose shown prefix starts with `prefix` (or is `prefix`'s first 10 characters)."""
    shown = prefix[:10]  # only the first 10 characters of a token are stored in clear
    if len(shown) < 6:
        raise Invalid(f"give at least 6 characters of the token (its prefix is {shown!r})")
    tokens = list(Token.objects.filter(prefix__startswith=shown, revoked__isnull=True)[:2])
    if not tokens:
        raise NotFound(f"no live token starts with {shown!r}")
    if len(tokens) > 1:
        raise Invalid(f"more than one live token starts with {shown!r}; give more of it")
    return tokens[0]
