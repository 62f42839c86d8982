"""The durable state: namespaces, agents and their tokens, facts, versioned records,
conflicts, lock fences and the event log.

Status and locks live in Redis (memory_admin/redis.py); their last known state is
kept here so operators still see who an agent was and which token a lock last had.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.utils.timezone import now


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a Z, as the API shows times.

    The last moment formatted is kept by identity: the 50 records a /txn writes share one
    timestamp object, and isoformat (2.5 us) was 6% of the web process's time on it."""
    global _last_iso
    last, text = _last_iso
    if moment is last:
        return text
    text = None if moment is None else moment.isoformat().replace("+00:00", "Z")
    _last_iso = (moment, text)
    return text


_last_iso: tuple[datetime | None, str | None] = (None, None)  # swapped whole: safe across threads


def iso_from_us(us: int) -> str:
    """iso() of the moment `us` microseconds after the Unix epoch, without a datetime in between:
    the relay formats one per event it publishes (psycopg's load of a timestamptz, 0.7-1.3 us, and
    its isoformat, 2.5 us, against 0.1 us for a bigint's and 1.2 us for this, timeit)."""
    second, micro = divmod(us, 1_000_000)
    prefix = _SECONDS.get(second)
    if prefix is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        prefix = _SECONDS[second] = (_EPOCH + timedelta(seconds=second)).isoformat()
    return f"{prefix}.{micro:06d}Z" if micro else f"{prefix}Z"  # as isoformat: no fraction at 0


_EPOCH = datetime(1970, 1, 1)
_SECONDS: dict[int, str] = {}


def iso_ms(moment: datetime | None) -> str | None:
    """ISO 8601 UTC to the millisecond: what Redis keeps of lock and status times, so a value
    reads back the same as it was first returned."""
    return None if moment is None else iso(moment.replace(microsecond=moment.microsecond // 1000 * 1000))


class DomId:
    """`dom_id`: the id of the object's element on the console's pages, `<dom_prefix>-<pk>`."""

    dom_prefix: str

    @property
    def dom_id(self) -> str:
        return f"{self.dom_prefix}-{self.pk}"


class Namespace(models.Model):
    name = models.CharField(max_length=200, unique=True)
    created = models.DateTimeField(default=now)
    # The namespace's log (services/events.py): the last position handed out by the sequencer,
    # and the last one the relay has published to Redis. Only the sequencer and relay write them.
    head = models.BigIntegerField(default=0, db_default=0)
    published = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        ordering = ["name"]
        permissions = [
            ("operate", "Can act in the console: release locks, resolve conflicts, edit, manage tokens")
        ]
        indexes = [
            # The relay's look for namespaces with positioned events it has not published yet.
            models.Index(
                fields=["id"],
                name="namespace_unpublished_idx",
                condition=models.Q(head__gt=models.F("published")),
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Agent(DomId, models.Model):
    ns = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)  # the agent_id agents see
    created = models.DateTimeField(default=now)
    # Last known status; the live copy (with its TTL) is in Redis.
    status = models.CharField(max_length=64, blank=True)
    detail = models.TextField(blank=True)
    seen = models.DateTimeField(null=True, blank=True)  # last heartbeat
    expires = models.DateTimeField(null=True, blank=True)  # seen + ttl
    stale = models.BooleanField(default=False)  # set once the relay has recorded agent.stale

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["ns", "name"], name="agent_ns_name_uniq")]
        indexes = [
            # The relay's sweep: agents whose heartbeat lapsed and are not yet marked stale.
            models.Index(
                fields=["expires"],
                name="agent_expiry_idx",
                condition=models.Q(stale=False, expires__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.name

    dom_prefix = "agent"


class Token(DomId, models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tokens")
    digest = models.CharField(
        max_length=64, unique=True
    )  # sha256 of the token; the token itself is never stored
    prefix = models.CharField(max_length=16)  # shown to operators to tell tokens apart
    read_only = models.BooleanField(default=False)
    created = models.DateTimeField(default=now)
    created_by = models.CharField(max_length=200, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    @property
    def scopes(self) -> list[str]:
        return ["read"] if self.read_only else ["read", "write"]

    dom_prefix = "token"


class Fact(DomId, models.Model):
    ns = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="facts")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="facts")
    fact = models.TextField()
    category = models.CharField(max_length=100)
    metadata = models.JSONField(default=dict)
    created = models.DateTimeField(default=now)
    search = models.GeneratedField(
        expression=SearchVector("fact", config="english"), output_field=SearchVectorField(), db_persist=True
    )

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Facts by category, newest first, paged by id.
            models.Index(fields=["ns", "category", "-id"], name="fact_ns_category_idx"),
            models.Index(fields=["ns", "agent", "-id"], name="fact_ns_agent_idx"),
            models.Index(fields=["ns", "-id"], name="fact_ns_id_idx"),
            GinIndex(fields=["search"], name="fact_search_idx"),
        ]

    dom_prefix = "fact"


class Record(DomId, models.Model):
    # No index of its own: record_ns_key_uniq leads with it.
    ns = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="records", db_index=False)
    # Bytewise collation: prefix listing (LIKE 'p%') and key cursors use the unique index.
    key = models.CharField(max_length=200, db_collation="C")
    value = models.JSONField(null=True)
    version = models.PositiveBigIntegerField()
    # A delete keeps the row as a tombstone, so versions never repeat for a key.
    deleted = models.BooleanField(default=False)
    updated_by = models.CharField(max_length=220)  # an agent_id, or "operator:<username>"
    updated = models.DateTimeField(default=now)
    created = models.DateTimeField(default=now)
    # The log order of the event of its latest version (services/events.py): the next version's
    # event orders after it, whatever transaction ids the two writers had.
    ord = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        ordering = ["key"]
        constraints = [models.UniqueConstraint(fields=["ns", "key"], name="record_ns_key_uniq")]
        indexes = [
            models.Index(fields=["ns", "updated_by"], name="record_ns_writer_idx"),
        ]

    def __str__(self) -> str:
        return self.key

    dom_prefix = "record"


class RecordVersion(models.Model):
    # No index of its own (recordversion_uniq leads with it) and no foreign key in Postgres: its
    # check, deferred to commit, was an SPI query per version written, a tenth of Postgres' work on
    # a /txn of 50 puts (bench/README.md, round 7). Only write_record and write_records add
    # versions, in the statement that writes the record; no record is ever deleted but by the
    # ORM's cascade, which takes its versions along.
    record = models.ForeignKey(
        Record, on_delete=models.CASCADE, related_name="versions", db_index=False, db_constraint=False
    )
    version = models.PositiveBigIntegerField()
    value = models.JSONField(null=True)
    deleted = models.BooleanField(default=False)
    updated_by = models.CharField(max_length=220)
    updated = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-version"]
        constraints = [models.UniqueConstraint(fields=["record", "version"], name="recordversion_uniq")]


class StoreItem(models.Model):
    """A LangGraph store item beside its record (services/store.py): the namespace path and
    key as LangGraph names them, the TTL and the search text. The value, its versions and
    its events are the record's (`ns`, `rkey`); this row changes without a version when a
    read refreshes the TTL."""

    ns = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="store_items")
    rkey = models.CharField(max_length=200, db_collation="C")  # the record's key
    path = ArrayField(models.TextField())  # the LangGraph namespace, label by label
    key = models.TextField()
    created = models.DateTimeField(default=now)  # this item's creation (a record outlives deletes)
    ttl = models.FloatField(null=True)  # minutes; null: never expires
    expires = models.DateTimeField(null=True)
    search = SearchVectorField(null=True)  # null: put with index=False

    class Meta:
        constraints = [models.UniqueConstraint(fields=["ns", "rkey"], name="storeitem_ns_rkey_uniq")]
        indexes = [
            # Searches and namespace listings scan one namespace's items by path.
            models.Index(fields=["ns", "path"], name="storeitem_ns_path_idx"),
            GinIndex(fields=["search"], name="storeitem_search_idx"),
        ]


class Conflict(DomId, models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    class Resolution(models.TextChoices):
        SUPERSEDED = "superseded"  # the agent later wrote the key successfully
        ACCEPTED = "accepted"  # an operator wrote the proposed value
        KEPT = "kept"  # an operator kept the current value
        MERGED = "merged"  # an operator wrote an edited merge

    ns = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="conflicts")
    key = models.CharField(max_length=200)
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, null=True, related_name="conflicts")
    actor = models.CharField(max_length=220)  # who attempted the write (agent_id or operator:<name>)
    expected_version = models.PositiveBigIntegerField()
    current_version = models.PositiveBigIntegerField(null=True)  # null: the key did not exist
    proposed_value = models.JSONField(null=True)
    delete = models.BooleanField(default=False)  # the rejected write was a delete
    # The id of the aborted /txn whose writes were refused together (services/txn.py); blank for
    # a single write. Operators resolve a group as one.
    group = models.CharField(max_length=40, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=12, choices=Resolution.choices, blank=True)
    resolved_by = models.CharField(max_length=220, blank=True)
    resolved = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # One open conflict per key and writer: a losing retry loop refreshes it (an upsert)
            # instead of filling the inbox; it also serves the auto-close on a later write.
            models.UniqueConstraint(
                fields=["ns", "key", "actor"],
                name="conflict_one_open_uniq",
                condition=models.Q(status="open"),
            ),
        ]
        indexes = [
            models.Index(fields=["ns", "status", "-id"], name="conflict_ns_status_idx"),
            # A group's conflicts, for the console's resolve-together; single writes stay out of it.
            models.Index(fields=["ns", "group"], name="conflict_group_idx", condition=~models.Q(group="")),
        ]

    dom_prefix = "conflict"


class LockFence(DomId, models.Model):
    """The durable side of a lock: its fencing counter and the last known holder.

    An acquire bumps `token` in the Postgres transaction that records it and commits before
    the token is handed out, so tokens only grow, also after Redis or Postgres lost state.
    """

    ns = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="fences")
    resource = models.CharField(max_length=200)
    token = models.BigIntegerField()  # the newest token issued
    holder = models.CharField(max_length=200)
    held = models.BooleanField(default=True)  # false once released, expired or force-released
    acquired = models.DateTimeField(default=now)
    expires = models.DateTimeField()
    ord = models.BigIntegerField(default=0, db_default=0)  # log order of the lock's last event (Record.ord)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["ns", "resource"], name="lockfence_ns_resource_uniq")]
        indexes = [
            # The relay's sweep: held locks whose last known expiry passed.
            models.Index(fields=["expires"], name="lockfence_expiry_idx", condition=models.Q(held=True)),
        ]

    dom_prefix = "lock"


# The events that change who holds a lock; time travel reads a lock's last one up to an event.
LOCK_EVENTS = ("lock.acquired", "lock.released", "lock.expired", "lock.force_released")
# The condition of the log's readers' indexes (Event.Meta).
POSITIONED = models.Q(position__isnull=False)


class Event(models.Model):
    """The append-only log (services/events.py).

    A writer appends with `seq` from a sequence and `ord` at least its transaction id; the
    sequencer later stamps `position`, the event's place in its namespace's log: dense,
    ascending, never reused. The position is the id agents and pages see.
    """

    seq = models.BigAutoField(primary_key=True)
    # No index of its own (event_ns_position_uniq leads with it) and no foreign key in Postgres:
    # its check, on every event at commit, key-share locked the namespace row, which the
    # sequencer updates on every pass, and so made a MultiXact per check under concurrent
    # writers: a fifth of Postgres' CPU on a /txn of 50 puts (bench/README.md, round 6). No
    # namespace is ever deleted; one deleted through the ORM still takes its events along.
    ns = models.ForeignKey(
        Namespace, on_delete=models.CASCADE, related_name="events", db_index=False, db_constraint=False
    )
    position = models.BigIntegerField(null=True)  # null until sequenced
    ord = models.BigIntegerField()  # >= the writer's xid8: the sequencer's order (with seq)
    txn = models.CharField(max_length=40, blank=True, default="", db_default="")  # the /txn that wrote it
    type = models.CharField(max_length=64)
    actor = models.CharField(max_length=220)  # agent_id, "operator:<username>" or "system"
    agent_id = models.CharField(max_length=200, blank=True)  # the agent it concerns, if any
    subject = models.CharField(max_length=200, blank=True)  # key, resource, fact id ...
    payload = models.JSONField(default=dict)
    created = models.DateTimeField(default=now)

    class Meta:
        ordering = ["position"]
        # The readers' indexes hold positioned events only: an event enters them when the
        # sequencer stamps it (an update that writes every index anyway), not also when it is
        # appended, with a null position among all the others waiting. Two index entries less
        # for each event appended, 15% of Postgres' work on a /txn of 50 puts (bench/README.md,
        # round 7). A query reaches them when it says the position is not null, as a condition
        # on the position (`position > n`) does.
        constraints = [
            models.UniqueConstraint(
                fields=["ns", "position"], name="event_ns_position_uniq", condition=POSITIONED
            ),
        ]
        indexes = [
            models.Index(fields=["ns", "type", "position"], name="event_ns_type_idx", condition=POSITIONED),
            models.Index(
                fields=["ns", "agent_id", "position"], name="event_ns_agent_idx", condition=POSITIONED
            ),
            # Who held a lock as of an event (services/history.py): a lock's last event up to it,
            # one backward probe per lock. Only lock events: the write path pays for no other.
            models.Index(
                fields=["ns", "subject", "position"],
                name="event_ns_lock_idx",
                condition=models.Q(type__in=LOCK_EVENTS) & POSITIONED,
            ),
            # The sequencer's work: committed events waiting for a position, in its order.
            models.Index(
                fields=["ord", "seq"], name="event_unsequenced_idx", condition=models.Q(position__isnull=True)
            ),
        ]

    @property
    def id(self) -> int | None:
        """What agents and pages call the event's id: its position in the namespace's log."""
        return self.position

    @property
    def dom_id(self) -> str:
        return f"event-{self.position}"

    def body(self) -> dict:
        """The event as API.md shows it (and as the relay publishes it)."""
        return {
            "id": self.position,
            "type": self.type,
            "agent_id": self.agent_id or None,
            "actor": self.actor,
            "subject": self.subject,
            "payload": self.payload,
            "created_at": iso(self.created),
            **({"txn": self.txn} if self.txn else {}),
        }


class Sequencer(models.Model):
    """One row, id 1: how far the sequencer has stamped (services/events.py). Every event with
    `ord` below `floor` has its position, and every event still to come has `ord` at or above
    it, so the sequencer's scan of the events waiting starts at the floor: the index entries of
    events stamped before it, left in the partial index until vacuum removes them, are never
    read again (with the floor at 0, a pass read every one of them: milliseconds a pass)."""

    floor = models.BigIntegerField(default=0)


class Idempotency(models.Model):
    """A stored first response for a retried POST/PUT/DELETE (API.md: Idempotency).

    Keyed by the agent, not its token: an offline log replayed after the token was rotated
    must still find the responses its first attempts stored.
    """

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # sha256 of method, path, body
    status = models.PositiveSmallIntegerField()
    body = models.BinaryField()
    headers = models.JSONField(default=dict)
    created = models.DateTimeField(default=now)

    KEEP = timedelta(hours=24)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "key"], name="idempotency_agent_key_uniq")]
        indexes = [models.Index(fields=["created"], name="idempotency_created_idx")]


class ConsumerGroup(DomId, models.Model):
    """A consumer group on a namespace's Redis stream, kept here so Redis may lose it.

    `floor`: every event up to it has been delivered and acked. A group Redis lost is
    recreated from there, and the events after it re-seeded from the log.
    """

    ns = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="groups")
    name = models.CharField(max_length=200)
    floor = models.BigIntegerField(default=0)
    # An event delivered this many times without an ack is parked instead of delivered again
    # (null: never parked).
    max_deliveries = models.PositiveIntegerField(null=True, blank=True)
    created = models.DateTimeField(default=now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["ns", "name"], name="consumergroup_ns_name_uniq")]

    dom_prefix = "group"


class ParkedEvent(DomId, models.Model):
    """An event a group's consumers failed `max_deliveries` times, taken out of delivery
    (acked in Redis) until an operator replays or discards it."""

    group = models.ForeignKey(ConsumerGroup, on_delete=models.CASCADE, related_name="parked")
    event = models.BigIntegerField()  # the event's id in the namespace's log
    body = models.JSONField()  # the event as consumers got it
    consumer = models.CharField(max_length=200)  # the consumer that had it last
    deliveries = models.PositiveIntegerField()
    parked = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-parked", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["group", "event"], name="parkedevent_group_event_uniq")
        ]

    dom_prefix = "parked"


@dataclass(frozen=True)
class HeldLock:
    """A lock as held in Redis now (not a table: locks live in Redis)."""

    resource: str
    owner: str
    token: int
    acquired: datetime
    expires: datetime
    waiting: tuple[str, ...] = ()  # agents queued for it, first in line first (when asked for)

    @property
    def seconds_left(self) -> float:
        return max(0.0, (self.expires - now()).total_seconds())

    @property
    def dom_id(self) -> str:
        return "lock-" + "".join(c if c.isalnum() else "_" for c in self.resource)


@dataclass(frozen=True)
class AgentStatus:
    """An agent with its status: live from Redis, else the last known copy in Postgres."""

    agent: Agent
    status: str
    detail: str
    updated: datetime | None
    expires: datetime | None
    state: str  # live / stale / never_seen

    @property
    def dom_id(self) -> str:
        return self.agent.dom_id


def payload_id(event: Event, field: str) -> int | None:
    """The id an event's payload names in `field` (`conflict_id`, `fact_id`), or None.

    Events of agents from before their types were reserved can pose as the server's with any
    payload (`conflict_id: "not-a-number"`, a list for a payload): pages take ids only from here.
    """
    payload = event.payload if isinstance(event.payload, dict) else {}
    value = payload.get(field)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None
