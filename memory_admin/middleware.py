"""Content-Security-Policy on every response, no-store on the console's; and, for ASGI, the
console websocket's Origin check and the request body's limits (below).

The console has no inline script or style by design (static/console.js, console.css), so
the policy allows only this origin's own files: an injected `<script>` or `onclick=` does
not run, and no other site may frame a page (frame-ancestors, besides X-Frame-Options).
Websockets are named with the request's own host because older browsers do not count
ws:/wss: as 'self'.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware
from django.template.loader import render_to_string
from django.utils.deprecation import MiddlewareMixin

from memory_admin import metrics, outage
from memory_admin.live.consumer import Refused

HEADER = "Content-Security-Policy"

_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self' ws://{host} wss://{host}; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI (/api/v1/docs, ninja's template) sets styles inline; scripts stay strict there too.
_DOCS = "/api/v1/docs"


def policy(request: HttpRequest) -> str:
    try:
        host = request.get_host()
    except Exception:  # a disallowed Host: the response is an error page; no websocket to allow
        host = "'none'"
    text = _POLICY.format(host=host)
    if request.path.startswith(_DOCS):
        text = text.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
    return text


class InlineHooks:
    """For the async chain: call a MiddlewareMixin's process_request / process_response in the
    event loop instead of handing each to a thread and back (Django's default for sync hooks).

    Only for middleware whose hooks do no I/O — they read the request and set headers — so
    they cannot block the loop. Two thread hops saved per hook per request (bench/README.md).
    """

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = self.process_request(request) if hasattr(self, "process_request") else None
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            response = self.process_response(request, response)
        return response


class ContentSecurityPolicyMiddleware(InlineHooks, MiddlewareMixin):
    """Adds the policy unless a view set its own. Sync and async, so it adds no thread hop."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if HEADER not in response:
            response[HEADER] = policy(request)
        return response


class NoStoreMiddleware(InlineHooks, MiddlewareMixin):
    """`Cache-Control: no-store` on the console's responses unless a view set its own: pages show
    operators' data (and tokens, once), which no shared or browser cache should keep for the
    next person at the machine. The agent API is not behind it (config/asgi.py)."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if "Cache-Control" not in response:
            response["Cache-Control"] = "no-store"
        return response


class InlineSecurityMiddleware(InlineHooks, SecurityMiddleware):
    pass


class InlineCommonMiddleware(InlineHooks, CommonMiddleware):
    pass


class InlineXFrameOptionsMiddleware(InlineHooks, XFrameOptionsMiddleware):
    pass


class SameOriginWebsockets:
    """ASGI: a console websocket only from a page of this very origin — scheme, host and port
    as the request names itself (or one of CSRF_TRUSTED_ORIGINS), as Django's CSRF check
    compares forms. A page served from another port of the same host is another origin: with
    the host alone compared, it could open the console with the operator's cookie."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and not same_origin(scope):
            return await Refused()(scope, receive, send)
        return await self.application(scope, receive, send)


def same_origin(scope: dict) -> bool:
    headers = {name.decode("latin1").lower(): value.decode("latin1") for name, value in scope["headers"]}
    origin = headers.get("origin")
    if not origin:
        return False
    try:
        sent = _origin(*_split(origin))
    except ValueError:
        return False
    secure = scope.get("scheme") == "wss"
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy and headers.get(proxy[0].removeprefix("HTTP_").replace("_", "-").lower()) == proxy[1]:
        secure = True
    host = headers.get("host", "")
    if host and not host.startswith(("[", ":")) and host.count(":") > 1:
        return False  # an IPv6 address without brackets: not a Host header a browser sends
    try:
        own = _origin("https" if secure else "http", host)
    except ValueError:
        return False
    if sent == own:
        return True
    return any(_trusted(sent, pattern) for pattern in settings.CSRF_TRUSTED_ORIGINS)


def _split(origin: str) -> tuple[str, str]:
    scheme, sep, netloc = origin.partition("://")
    if not sep or not netloc or "/" in netloc:
        raise ValueError(origin)
    return scheme, netloc


def _origin(scheme: str, netloc: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in; ValueError if malformed."""
    scheme = scheme.lower()
    parsed = urlsplit(f"{scheme}://{netloc}")
    if scheme not in ("http", "https") or not parsed.hostname or parsed.username or parsed.password:
        raise ValueError(netloc)
    return scheme, parsed.hostname.lower(), parsed.port or (443 if scheme == "https" else 80)


def _trusted(sent: tuple[str, str, int], pattern: str) -> bool:
    """CSRF_TRUSTED_ORIGINS as Django reads it: `https://example.com[:port]` or `https://*.example.com`."""
    try:
        scheme, netloc = _split(pattern)
    except ValueError:
        return False
    if netloc.startswith("*."):
        wanted = _origin(scheme, netloc[2:])
        return sent[0] == wanted[0] and sent[2] == wanted[2] and sent[1].endswith("." + wanted[1])
    try:
        return sent == _origin(scheme, netloc)
    except ValueError:
        return False


class BodyLimit:
    """ASGI, in front of Django: a request body is read here, within MAX_BODY_BYTES and
    BODY_TIMEOUT_SECONDS, before any view sees it.

    Django's handler reads a whole body into a spooled file before its own checks run: a
    declared 64 MiB body was read in full before the 413, a chunked one over the limit became
    a 400 HTML page, and a body that never came held its request (and its worker's slot)
    forever. Here a declared length over the limit is refused before a byte is read, reading
    stops at the limit, and a body not complete in time is refused — each in the API's error
    shape, and the connection closed (the rest of the body is never read)."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.application(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:
            return await self.application(scope, receive, send)  # no body: nothing to read
        limit = settings.MAX_BODY_BYTES
        too_large = f"the body is over the limit of {limit} bytes"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _refuse(send, 413, "payload_too_large", too_large, limit=limit)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.BODY_TIMEOUT_SECONDS
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                late = f"the body did not arrive within {settings.BODY_TIMEOUT_SECONDS} s"
                return await _refuse(send, 408, "request_timeout", late)
            if message["type"] == "http.disconnect":
                return None  # the client left: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _refuse(send, 413, "payload_too_large", too_large, limit=limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # what follows a body: the disconnect, when it comes

        return await self.application(scope, replay, send)


async def _refuse(send, status: int, code: str, message: str, **details) -> None:
    body = json.dumps({"error": {"code": code, "message": message, **details}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the unread rest of the body cannot start a request
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class OutageMiddleware(InlineHooks, MiddlewareMixin):
    """Console pages while Postgres is down (memory_admin/outage.py): a 503 page at once when
    the circuit is open, and a 503 page, not a 500, when a page's query finds Postgres gone.
    The API answers for itself (its gate), as do the outage banner and static files."""

    EXEMPT = ("/api/", "/static/", "/metrics", "/outage/")

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if not request.path.startswith(self.EXEMPT) and not outage.postgres.allow():
            return outage_page()
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if request.path.startswith(self.EXEMPT) or not outage.is_postgres_error(exception):
            return None
        outage.postgres_failed(exception)
        return outage_page()


def outage_page() -> HttpResponse:
    # Rendered without the console's base: that reads the session and the user from Postgres.
    response = HttpResponse(render_to_string("memory_admin/outage.html", {"page": True}), status=503)
    response["Retry-After"] = "1"
    return response


class MetricsMiddleware(MiddlewareMixin):
    """Every request counted and timed by route and status (memory_admin/metrics.py); the
    outermost middleware, so the 503s of an outage and the 413s of the gate count too."""

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self.__acall__(request)
        started = time.perf_counter()
        response = self.get_response(request)
        metrics.observe_request(request, response, time.perf_counter() - started)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        metrics.observe_request(request, response, time.perf_counter() - started)
        return response
