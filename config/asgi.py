import contextlib
import contextvars
import functools
import gc
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpResponseBase
from django.urls import Resolver404, get_resolver, set_script_prefix

from config import web  # noqa: E402

web.share_metrics()  # before anything imports prometheus_client (memory_admin/metrics.py)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)  # before anything imports models (what get_asgi_application does)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from memory_admin.api.auth import watch_revocations  # noqa: E402
from memory_admin.mcp_server import PATH as MCP_PATH  # noqa: E402
from memory_admin.mcp_server import McpEndpoint  # noqa: E402
from memory_admin.middleware import BodyLimit, SameOriginWebsockets  # noqa: E402
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
    "memory_admin.middleware.NoStoreMiddleware",  # API answers say for themselves how to cache
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


class ReusedThreads:
    """Django runs each request's sync code (views, sync middleware, signals) on a thread of
    its own: by default a new thread per request, started and joined every time (about a tenth
    of the web process's CPU in the benchmark's profile). Here each request still gets a thread
    to itself, taken from the threads earlier requests finished with, as a WSGI server would.
    Connections stay correct: Django returns a request's connection to the pool at its end."""

    MAX_IDLE = 64  # threads kept for the next requests; more are stopped when their request ends

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)


class ConsoleHandler(ReusedThreads, ASGIHandler):
    """Django for the console: the full middleware chain."""


@contextlib.contextmanager
def api_middleware() -> Iterator[None]:
    """settings.MIDDLEWARE is API_MIDDLEWARE while a chain is built (BaseHandler reads the setting;
    chains are built once, at import)."""
    full = settings.MIDDLEWARE
    settings.MIDDLEWARE = API_MIDDLEWARE
    try:
        yield
    finally:
        settings.MIDDLEWARE = full


def is_async_view(path: str, method: str, body: Callable[[], bytes] = bytes) -> bool:
    """Whether `method` on `path` with `body()` is answered by async code (a lock acquire that
    waits, the event stream); the body is read only for an operation whose answer depends on it.
    Paths no pattern takes are answered by sync code (the 404)."""
    # Agents send the same few paths again and again; a long path resolves each time rather than
    # fill the cache.
    answers = _answers(path) if len(path) <= 300 else _answers.__wrapped__(path)
    if answers is None:
        return True
    async_methods, waits = answers
    return method in async_methods or (method in waits and waits[method](body()))


@functools.lru_cache(maxsize=4096)
def _answers(path: str) -> tuple[frozenset[str], dict[str, Callable[[bytes], bool]]] | None:
    """The methods async code answers at `path`, and those it answers when their body asks to
    wait (method -> `waits(body)`); None: every method, whatever the body."""
    try:
        view = get_resolver().resolve(path).func
    except Resolver404:
        return frozenset(), {}
    if not iscoroutinefunction(view):
        return frozenset(), {}
    async_methods = getattr(view, "async_methods", None)  # memory_admin/api/__init__.py: AgentAPI
    if async_methods is None:
        return None
    return async_methods, getattr(view, "waits", {})


# The body of a request read before choosing how to answer it (ApiHandler.handle).
_read_body: contextvars.ContextVar[BinaryIO | None] = contextvars.ContextVar("read_body", default=None)


class DirectHandler(BaseHandler):
    """The API's middleware chain and views, run in the request's thread. A sync operation on a
    path whose view is async (a lock's release beside its acquire) is called as the sync view
    the API keeps for it, rather than through the async view, which would hop back to the loop
    and then to a thread again."""

    def resolve_request(self, request):
        match = super().resolve_request(request)
        match.func = getattr(match.func, "sync_view", match.func)
        return match


class ApiHandler(ReusedThreads, ASGIHandler):
    """Django for the agent API: the same URLs and views, API_MIDDLEWARE as the chain.

    A request for a sync view is answered in one hop to its thread and back: the request_started
    signal, the middleware chain and view, and the response's close (request_finished, which gives
    the connection back to the pool) run there one after the other, as under a WSGI server.
    Django's ASGI path hands each of the three to the thread separately; each hop is a future, a
    queue, a thread wake-up and the loop's wake-up back (in the benchmark's profile, handing work
    to threads was about a sixth of the web process's CPU). Async operations (waiting locks, the
    event stream) keep Django's path: they wait in the event loop, not in a thread. (The path is
    matched without the server's root_path: it is the request's path_info.)"""

    def __init__(self) -> None:
        super().__init__()
        self.direct = DirectHandler()
        with api_middleware():
            self.direct.load_middleware(is_async=False)
        self.respond_in_thread = sync_to_async(self.respond)  # built once: ~7 us of checks each time

    def load_middleware(self, is_async: bool = False) -> None:
        with api_middleware():
            super().load_middleware(is_async=is_async)

    async def handle(self, scope, receive, send) -> None:
        await watch_revocations()  # the token cache's feed (memory_admin/api/auth.py)
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if is_async_view(path, scope["method"], lambda: _peek(body_file)):
            chosen = _read_body.set(body_file)
            try:
                await super().handle(scope, receive, send)
            finally:
                _read_body.reset(chosen)
            return
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await self.respond_in_thread(scope, body_file)
            await self.send_response(response, send)
            if response.streaming:  # its content was made while it was sent
                await sync_to_async(response.close)()
        finally:
            body_file.close()

    async def read_body(self, receive) -> BinaryIO:
        """The body, as read already when the request was routed to Django's async path."""
        body_file = _read_body.get()
        return body_file if body_file is not None else await super().read_body(receive)

    def respond(self, scope, body_file) -> HttpResponseBase:
        """In the request's thread: the response to the request, closed unless it streams."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.direct.get_response(request)
        if not response.streaming:
            response.close()  # its content is all made: the request is finished
        return response


def _peek(body_file: BinaryIO) -> bytes:
    """The body's bytes, the file left to be read from the start."""
    body = body_file.read()
    body_file.seek(0)
    return body


# The console's few static files are served by the app itself: one process, no extra server.
console_http = ASGIStaticFilesHandler(ConsoleHandler())
api_http = ApiHandler()
# The MCP endpoint is the official SDK's own ASGI app, beside Django rather than under it
# (memory_admin/mcp_server.py says how it runs without the lifespan scope).
mcp_http = McpEndpoint()


async def http(scope, receive, send) -> None:
    path = scope["path"]
    if path.startswith("/api/"):
        app = api_http
    elif path == MCP_PATH or path.startswith(MCP_PATH + "/"):
        app = mcp_http
    else:
        app = console_http
    await app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": BodyLimit(http),
        "websocket": SameOriginWebsockets(
            AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)

# What is loaded by now lives as long as the process: out of the collector's sight, a full
# collection scans what requests leave behind (~23k objects) instead of everything (~200k), and
# its pause, which stalls every open console of the process, is a tenth (bench/README.md).
gc.freeze()
