"""Content-Security-Policy on every response.

The console has no inline script or style by design (static/console.js, console.css), so
the policy allows only this origin's own files: an injected `<script>` or `onclick=` does
not run, and no other site may frame a page (frame-ancestors, besides X-Frame-Options).
Websockets are named with the request's own host because older browsers do not count
ws:/wss: as 'self'.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.security import SecurityMiddleware

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


class ContentSecurityPolicyMiddleware:
    """Adds the policy unless a view set its own. Sync and async, so it adds no thread hop."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        return self._add(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return self._add(request, await self.get_response(request))

    @staticmethod
    def _add(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if HEADER not in response:
            response[HEADER] = policy(request)
        return response


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


class InlineSecurityMiddleware(InlineHooks, SecurityMiddleware):
    pass


class InlineCommonMiddleware(InlineHooks, CommonMiddleware):
    pass


class InlineXFrameOptionsMiddleware(InlineHooks, XFrameOptionsMiddleware):
    pass
