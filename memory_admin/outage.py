"""Failing fast while Postgres is down: a circuit breaker per web process (README: Outages).

Closed, every call goes to Postgres. After `DB_CIRCUIT_FAILURES` consecutive calls failed for
want of Postgres (a broken connection, a refused connect, a pool that gave no connection
within `DB_POOL_TIMEOUT`), a background thread probes Postgres with a connection of its own.
If the probe fails, the circuit opens: the pool is closed, so calls waiting for a connection
fail at once, and calls are answered 503 `unavailable` with `Retry-After` at once, without
touching the pool, and the probe repeats every
`DB_CIRCUIT_PROBE_SECONDS`. The first probe that gets through closes the circuit, and the
pool is replaced, so calls find fresh connections instead of waiting out the backoff of a
pool that watched Postgres go away. (A probe that gets through at once means the pool was
only busy: the circuit stays closed.)

The state is per process: each web worker learns of an outage from its own calls within a
few of them, and nothing here depends on a store that may itself be down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import django.db
import psycopg
import redis
from django.conf import settings
from django.db import connection
from psycopg_pool import PoolTimeout

from memory_admin import sql

log = logging.getLogger("memory_admin.outage")


class Circuit:
    """Consecutive failures start a probe; a failed probe opens it, a good one closes it."""

    def __init__(self, *, threshold: int, probe_every: float, probe: Callable[[], bool]) -> None:
        self.threshold = threshold
        self.probe_every = probe_every
        self._probe = probe
        self._lock = threading.Lock()
        self._failures = 0
        self._broken = False  # a connection broke since the last success: the pool's are suspect
        self._opened: float | None = None  # monotonic time it opened; None while closed
        self._prober: threading.Thread | None = None
        # when it opens: fail the calls waiting for a connection; after a probe got through
        # where connections had broken: replace the pool
        self.on_open: Callable[[], None] | None = None
        self.on_close: Callable[[], None] | None = None

    @property
    def open(self) -> bool:
        return self._opened is not None

    def allow(self) -> bool:
        """Whether a call may go to Postgres now."""
        return self._opened is None

    def failed(self, *, broken: bool = True) -> None:
        """A call failed for want of Postgres: `broken`, its connection did, or else the pool
        gave none in time. A pool that is only busy fails calls too, so a run of failures opens
        the circuit only once a probe on a fresh connection fails as well."""
        with self._lock:
            self._failures += 1
            self._broken = self._broken or broken
            if self._failures < self.threshold or self._prober is not None:
                return
            self._prober = threading.Thread(target=self._probe_until_up, name="pg-probe", daemon=True)
        self._prober.start()

    def succeeded(self) -> None:
        if self._failures:  # no lock on the common path: a stale read costs one more failure
            with self._lock:
                self._failures, self._broken = 0, False

    def _probe_until_up(self) -> None:
        try:
            while not self._probe():
                with self._lock:
                    opening, self._opened = self._opened is None, self._opened or time.monotonic()
                if opening:
                    log.warning("Postgres unreachable: answering 503 until a probe gets through")
                    if self.on_open is not None:
                        self.on_open()
                time.sleep(self.probe_every)
            with self._lock:
                opened, broken = self._opened, self._broken
                self._opened, self._failures, self._broken = None, 0, False
            if opened is not None:
                log.warning("Postgres reachable again after %.1f s", time.monotonic() - opened)
            # Connections that broke leave others like them in the pool (Postgres restarted
            # under them); fresh ones answer, so replace them all rather than fail on each.
            if (opened is not None or broken) and self.on_close is not None:
                self.on_close()
        finally:
            with self._lock:
                self._prober = None


def probe_postgres() -> bool:
    """Whether Postgres answers a fresh connection (not the pool's) within a second or two."""
    params = connection.get_connection_params()
    params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context", "prepare_threshold")}
    try:
        with psycopg.connect(**params, connect_timeout=2, autocommit=True) as conn:
            conn.execute(sql.PING)
        return True
    except psycopg.Error:
        return False


def _refresh_pool() -> None:
    """Close the pool: calls waiting for one of its connections fail at once (503) instead of
    waiting out DB_POOL_TIMEOUT, and the next call builds a fresh pool rather than waiting out
    the reconnect backoff of one that watched Postgres go away."""
    try:
        connection.close_pool()
    except Exception:  # a pool that cannot close cleanly is replaced all the same
        log.exception("closing the Postgres pool after an outage")


postgres = Circuit(
    threshold=settings.DB_CIRCUIT_FAILURES,
    probe_every=settings.DB_CIRCUIT_PROBE_SECONDS,
    probe=probe_postgres,
)
postgres.on_open = postgres.on_close = _refresh_pool


def is_postgres_error(exc: BaseException) -> bool:
    return isinstance(exc, django.db.OperationalError | django.db.InterfaceError)


def is_redis_error(exc: BaseException) -> bool:
    """A Redis that did not answer (no circuit: the calls that need Redis fail fast on their own)."""
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def postgres_failed(exc: BaseException) -> None:
    """Tell the circuit a call failed with `exc`, one of `is_postgres_error`'s."""
    postgres.failed(broken=not isinstance(exc.__cause__, PoolTimeout))
