"""GET /metrics: Prometheus' text format (memory_admin/metrics.py), for a scraper that holds
METRICS_TOKEN or calls from an address in METRICS_ALLOW."""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from memory_admin import metrics as m


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not m.allowed(request):
        return HttpResponse(
            "forbidden: set METRICS_TOKEN or METRICS_ALLOW\n", status=403, content_type="text/plain"
        )
    body, content_type = m.render()
    return HttpResponse(body, content_type=content_type, headers={"Cache-Control": "no-store"})
