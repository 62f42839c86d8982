from django.db import connection
from django.http import JsonResponse
from ninja import Router

from memory_admin import outage
from memory_admin import redis as r

router = Router(tags=["health"])


@router.get("/health", auth=None, url_name="health")
def health(request):
    """Whether Postgres and Redis answer; 503 naming what is down."""
    checks = {"postgres": _postgres(), "redis": _redis()}
    ok = all(value == "ok" for value in checks.values())
    response = JsonResponse({"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503)
    if not ok:
        response["Retry-After"] = "1"
    return response


def _postgres() -> str:
    return "ok" if postgres_answers() else "down"


def postgres_answers() -> bool:
    """Whether Postgres answers through the pool; at once False while the circuit is open."""
    if not outage.postgres.allow():
        return False
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure to answer is "down" for a health check
        if outage.is_postgres_error(exc):
            outage.postgres_failed(exc)
        return False
    outage.postgres.succeeded()
    return True


def redis_answers() -> bool:
    return _redis() == "ok"


def _redis() -> str:
    try:
        r.client().ping()
        return "ok"
    except Exception:
        return "down"
