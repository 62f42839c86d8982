"""Prometheus metrics: what operators watch (GET /metrics, README: Metrics).

Two kinds:
- counted where they happen, in the process they happen in: HTTP requests by route and
  status, record writes by outcome, lock acquisitions and their waits, open websockets and
  event streams, the Postgres pool and circuit. Under several uvicorn workers these go
  through prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by
  config/web.py before anything imports prometheus_client), so a scrape of any worker sums
  them all;
- read from the stores when scraped (`StoreCollector`), so every worker answers the same and
  no process has to stay up to keep them: Postgres and Redis up, events appended, relay lag,
  consumer-group lag, held locks, lock expirations, agents by state.

Names follow Prometheus' conventions (`memory_admin_*`, `_total` for counters, units in the
name). Labels stay few: URL patterns (not paths), namespaces for the per-namespace gauges.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Min, Q
from django.http import HttpRequest, HttpResponse
from django.utils.timezone import now
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from memory_admin import outage

log = logging.getLogger("memory_admin.metrics")

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "memory_admin_http_requests_total",
    "HTTP requests answered, by route (the URL pattern), method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "memory_admin_http_request_duration_seconds",
    "Time to answer a request (to the first byte, for a stream), by route and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
RECORD_WRITES = Counter(
    "memory_admin_record_writes_total",
    "Record writes by outcome: ok, conflict (expected_version did not match), fenced (stale token).",
    ["outcome"],
)
LOCK_ACQUISITIONS = Counter(
    "memory_admin_lock_acquisitions_total",
    "Lock acquire calls by result: acquired, held (not free within wait_seconds), refused (other).",
    ["result"],
)
LOCK_WAIT = Histogram(
    "memory_admin_lock_wait_seconds",
    "How long a lock acquire call took, waiting included, by result.",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBSOCKETS = Gauge(
    "memory_admin_websockets_open", "Console websockets open now.", multiprocess_mode="livesum"
)
EVENT_STREAMS = Gauge(
    "memory_admin_event_streams_open", "Agent event streams (SSE) open now.", multiprocess_mode="livesum"
)
POOL = Gauge(
    "memory_admin_postgres_pool_connections",
    "The web processes' Postgres pool: connections open (size), idle (available), calls waiting.",
    ["state"],
    multiprocess_mode="livesum",
)
CIRCUIT = Gauge(
    "memory_admin_postgres_circuit_open",
    "1 while a web process answers 503 at once because Postgres is down (outage.py).",
    multiprocess_mode="livemax",
)
LOCK_ROUTES = frozenset({"api/v1/locks/<path:resource>", "api/v1/locks/<path:resource>!"})


# --- counted where they happen --------------------------------------------------------------


def record_written(outcome: str, count: int = 1) -> None:
    """`count` record writes ended: "ok", "conflict" or "fenced"."""
    RECORD_WRITES.labels(outcome).inc(count)


def lock_acquire_ended(result: str, seconds: float) -> None:
    """A lock acquire call ended after `seconds`: "acquired", "held" or "refused".

    Called from the HTTP layer (observe_request, by route and status); the lock service may
    call it instead, and then the route rule below goes."""
    LOCK_ACQUISITIONS.labels(result).inc()
    LOCK_WAIT.labels(result).observe(seconds)


def observe_request(request: HttpRequest, response: HttpResponse, seconds: float) -> None:
    match = getattr(request, "resolver_match", None)
    # The URL pattern, not the path: one series per operation (with the method), whatever key.
    route = match.route if match is not None else "unmatched"
    status = response.status_code
    REQUESTS.labels(route, request.method, str(status)).inc()
    LATENCY.labels(route, request.method).observe(seconds)
    if route in LOCK_ROUTES and request.method == "POST":
        lock_acquire_ended({200: "acquired", 409: "held"}.get(status, "refused"), seconds)
    _sample_process(every=5.0)


_sampled = 0.0


def _sample_process(every: float) -> None:
    """This process's pool and circuit, at most once per `every` seconds (and at each scrape)."""
    global _sampled
    moment = time.monotonic()
    if moment - _sampled < every:
        return
    _sampled = moment
    CIRCUIT.set(1 if outage.postgres.open else 0)
    pool = getattr(connection, "pool", None)
    if pool is not None:
        stats = pool.get_stats()
        POOL.labels("size").set(stats.get("pool_size", 0))
        POOL.labels("available").set(stats.get("pool_available", 0))
        POOL.labels("waiting").set(stats.get("requests_waiting", 0))


# --- read from the stores when scraped ------------------------------------------------------


class StoreCollector(Collector):
    """What Postgres and Redis say now. A store that is down yields its `_up` 0 and nothing else."""

    def collect(self) -> Iterator:
        from memory_admin.services.health import postgres_answers, redis_answers

        postgres, redis = postgres_answers(), redis_answers()
        yield _gauge("memory_admin_postgres_up", "1 when Postgres answers.", postgres)
        yield _gauge("memory_admin_redis_up", "1 when Redis answers.", redis)
        if not postgres:
            return
        try:
            yield from _from_postgres()
        except Exception:  # a scrape shows what it can; the log says what failed
            log.exception("metrics from Postgres")

    def describe(self) -> list:
        return []  # collected at scrape time only: nothing to check at registration


def _from_postgres() -> Iterator:
    from memory_admin.models import Agent, ConsumerGroup, Event, LockFence
    from memory_admin.services.status import state_counts

    head = Event.objects.aggregate(head=Max("pk"))["head"] or 0
    appended = CounterMetricFamily(
        "memory_admin_events", "Events appended to the log (the newest event's sequence number)."
    )
    appended.add_metric([], head)
    yield appended

    behind, oldest = _relay_behind(Event)
    yield _gauge(
        "memory_admin_relay_lag_events", "Events in the log the relay has not published yet.", behind
    )
    yield _gauge(
        "memory_admin_relay_lag_seconds",
        "Age of the oldest event the relay has not published yet (0 when it is caught up).",
        (now() - oldest).total_seconds() if oldest is not None else 0,
    )

    lag = GaugeMetricFamily(
        "memory_admin_consumer_group_lag_events",
        "Events of the namespace after the group's acked floor.",
        labels=["namespace", "group"],
    )
    for group in ConsumerGroup.objects.select_related("ns"):
        lag.add_metric([group.ns.name, group.name], _after_floor(Event, group))
    yield lag

    held = GaugeMetricFamily("memory_admin_locks_held", "Locks held now, by namespace.", labels=["namespace"])
    rows = (
        LockFence.objects.filter(held=True, expires__gt=now())
        .values_list("ns__name")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for namespace, n in rows:
        held.add_metric([namespace], n)
    yield held

    expired = CounterMetricFamily(
        "memory_admin_lock_expirations", "Locks that expired (their TTL lapsed) and were swept."
    )
    expired.add_metric([], Event.objects.filter(type="lock.expired").count())
    yield expired

    agents = GaugeMetricFamily(
        "memory_admin_agents",
        "Agents by state (live, stale, never_seen) and namespace.",
        labels=["namespace", "state"],
    )
    moment = now()
    counts = (
        Agent.objects.values_list("ns__name")
        .annotate(
            live=Count("pk", filter=Q(seen__isnull=False, expires__gt=moment)),
            never_seen=Count("pk", filter=Q(seen__isnull=True)),
            total=Count("pk"),
        )
        .order_by()
    )
    for namespace, live, never_seen, total in counts:
        # The agent-state rule (services/status.py), with Postgres' last known expiry for the
        # heartbeat's TTL: every namespace in one query, and a scrape that works without Redis.
        for state, n in state_counts(total=total, live=live, never_seen=never_seen).items():
            agents.add_metric([namespace, state], n)
    yield agents


def _relay_behind(Event) -> tuple[int, object]:
    """(events not yet published, the oldest one's creation time or None)."""
    fields = {field.name for field in Event._meta.get_fields()}
    if "position" in fields:  # the relay stamps each event's position as it publishes it
        pending = Event.objects.filter(position__isnull=True)
    else:  # until then: the relay's cursor
        from memory_admin.models import RelayCursor

        published = RelayCursor.objects.values_list("published", flat=True).first() or 0
        pending = Event.objects.filter(pk__gt=published)
    found = pending.aggregate(n=Count("pk"), oldest=Min("created"))
    return found["n"], found["oldest"]


def _after_floor(Event, group) -> int:
    column = "position" if "position" in {f.name for f in Event._meta.get_fields()} else "pk"
    return Event.objects.filter(ns_id=group.ns_id, **{f"{column}__gt": group.floor}).count()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


# --- the endpoint ---------------------------------------------------------------------------


def allowed(request: HttpRequest) -> bool:
    """METRICS_TOKEN as a bearer token, or a client address in METRICS_ALLOW."""
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOW)


def render() -> tuple[bytes, str]:
    """The exposition text of every metric: all web processes' counters, and the stores'."""
    _sample_process(every=0)
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Default())
    registry.register(StoreCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Default(Collector):
    """This process's own metrics (one process: no multiprocess files to read)."""

    def collect(self) -> Iterator:
        yield from REGISTRY.collect()
