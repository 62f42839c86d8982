from django.http import JsonResponse
from ninja import Router

from memory_admin.services.health import postgres_answers, redis_answers

router = Router(tags=["health"])


@router.get("/health", auth=None, url_name="health")
def health(request):
    """Whether Postgres and Redis answer; 503 naming what is down."""
    checks = {name: "ok" if answers() else "down" for name, answers in PROBES.items()}
    ok = all(value == "ok" for value in checks.values())
    response = JsonResponse({"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503)
    if not ok:
        response["Retry-After"] = "1"
    return response


PROBES = {"postgres": postgres_answers, "redis": redis_answers}
