"""Console pages (function views)."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Memory Admin console")
