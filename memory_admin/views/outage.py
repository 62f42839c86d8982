"""The console's outage banner: every page asks for it every 2 s (base.html), and it says
which store is down. It must answer while Postgres, which holds the sessions, is down: then
it says so without asking who is logged in (it tells no more than /api/v1/health)."""

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

from memory_admin import outage
from memory_admin.services.health import postgres_answers, redis_answers


def banner(request: HttpRequest) -> HttpResponse:
    postgres_down = not postgres_answers()
    if not postgres_down:
        try:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
        except Exception as exc:  # the session's query found Postgres gone after all
            if not outage.is_postgres_error(exc):
                raise
            outage.postgres_failed(exc)
            postgres_down = True
    context = {"postgres_down": postgres_down, "redis_down": not redis_answers()}
    html = render_to_string("memory_admin/outage.html#banner", context)
    return HttpResponse(html, headers={"Cache-Control": "no-store"})
