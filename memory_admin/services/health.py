"""Whether Postgres and Redis answer: the probes of the health check, the console's outage page
and the metrics."""

from __future__ import annotations

from django.db import connection

from memory_admin import outage, sql
from memory_admin import redis as r


def postgres_answers() -> bool:
    """Whether Postgres answers through the pool; at once False while the circuit is open."""
    if not outage.postgres.allow():
        return False
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.PING)
    except Exception as exc:  # any failure to answer is "down" for a health check
        if outage.is_postgres_error(exc):
            outage.postgres_failed(exc)
        return False
    outage.postgres.succeeded()
    return True


def redis_answers() -> bool:
    try:
        r.client().ping()
    except Exception:  # any failure to answer is "down" for a health check
        return False
    return True
