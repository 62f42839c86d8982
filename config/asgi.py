import os

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi = get_asgi_application()  # sets Django up before anything imports models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from memory_admin.routing import websocket_urlpatterns  # noqa: E402

# The agent API (/api/) authenticates with bearer tokens: it needs no session, CSRF, auth,
# messages or htmx middleware. Under ASGI each middleware that is not async-native costs thread
# hops on every request — measured, about half the CPU of a Django hello-world (bench/README.md).
# Everything else (the security headers, the CSP, ALLOWED_HOSTS) stays as on the console.
API_SKIPS = {
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
}
# The rest only set headers: their hooks run in the event loop, not in a thread each.
API_INLINE = {
    "django.middleware.security.SecurityMiddleware": "memory_admin.middleware.InlineSecurityMiddleware",
    "django.middleware.common.CommonMiddleware": "memory_admin.middleware.InlineCommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": (
        "memory_admin.middleware.InlineXFrameOptionsMiddleware"
    ),
}
API_MIDDLEWARE = [API_INLINE.get(path, path) for path in settings.MIDDLEWARE if path not in API_SKIPS]


class ApiHandler(ASGIHandler):
    """Django for the agent API: the same URLs and views, API_MIDDLEWARE as the chain."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE; swap the list in only while the chain is built
        # (once, at import).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = API_MIDDLEWARE
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full


# The console's few static files are served by the app itself: one process, no extra server.
console_http = ASGIStaticFilesHandler(django_asgi)
api_http = ApiHandler()


async def http(scope, receive, send) -> None:
    app = api_http if scope["path"].startswith("/api/") else console_http
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
