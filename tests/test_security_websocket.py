"""The console websocket's handshake: only a logged-in page of this very origin (scheme, host
and port), and any other path refused cleanly."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from config.asgi import application
from memory_admin.middleware import same_origin
from tests.test_console_live import socket

pytestmark = pytest.mark.django_db(transaction=True)


def connects(path: str, cookie: str | None, origin: bytes, host: bytes = b"127.0.0.1:8000") -> bool:
    async def scenario():
        page = socket(path, cookie, origin, host)
        connected, _ = await page.connect(timeout=5)
        if connected:
            await page.disconnect()
        return connected

    return async_to_sync(scenario)()


def test_a_page_of_the_same_origin_connects(ns, session_cookie):
    assert connects("/ws/ns/team/", session_cookie, b"http://127.0.0.1:8000")
    assert connects("/ws/ns/team/", session_cookie, b"http://127.0.0.1", host=b"127.0.0.1")
    assert connects("/ws/ns/team/", session_cookie, b"http://LOCALHOST:8000", host=b"localhost:8000")


@pytest.mark.parametrize(
    "origin",
    [
        b"http://127.0.0.1:1",  # the probe: another port of the same host
        b"http://127.0.0.1",  # port 80 is another port too
        b"https://127.0.0.1:8000",  # another scheme
        b"http://localhost:8000",  # another host, though allowed in ALLOWED_HOSTS
        b"http://evil.example:8000",
        b"null",  # a sandboxed frame or a file
        b"http://127.0.0.1:8000/path",
        b"http://user@127.0.0.1:8000",
        b"",
    ],
)
def test_a_page_of_another_origin_is_refused(ns, session_cookie, origin):
    assert not connects("/ws/ns/team/", session_cookie, origin)


def test_the_handshake_without_an_origin_is_refused(ns, session_cookie):
    async def scenario():
        page = WebsocketCommunicator(
            application,
            "/ws/ns/team/",
            headers=[(b"host", b"127.0.0.1:8000"), (b"cookie", session_cookie.encode())],
        )
        connected, _ = await page.connect(timeout=5)
        return connected

    assert async_to_sync(scenario)() is False


def test_a_trusted_origin_connects_as_csrf_trusts_it(ns, session_cookie, settings):
    settings.CSRF_TRUSTED_ORIGINS = ["http://localhost:9000", "https://*.example.com"]
    assert connects("/ws/ns/team/", session_cookie, b"http://localhost:9000")
    assert not connects("/ws/ns/team/", session_cookie, b"http://localhost:9001")

    def scope(origin: bytes) -> dict:
        return {"type": "websocket", "headers": [(b"host", b"127.0.0.1:8000"), (b"origin", origin)]}

    # Subdomains as Django's CSRF check takes them (ALLOWED_HOSTS is checked besides, at start-up).
    assert same_origin(scope(b"https://console.example.com"))
    assert not same_origin(scope(b"http://console.example.com"))
    assert not same_origin(scope(b"https://example.com.evil.test"))


def test_behind_a_tls_proxy_the_page_is_https_when_the_proxy_says_so(ns, session_cookie, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    async def scenario(proto: bytes):
        page = WebsocketCommunicator(
            application,
            "/ws/ns/team/",
            headers=[
                (b"host", b"127.0.0.1"),
                (b"origin", b"https://127.0.0.1"),
                (b"x-forwarded-proto", proto),
                (b"cookie", session_cookie.encode()),
            ],
        )
        connected, _ = await page.connect(timeout=5)
        if connected:
            await page.disconnect()
        return connected

    assert async_to_sync(scenario)(b"https") is True
    assert async_to_sync(scenario)(b"http") is False


@pytest.mark.parametrize("path", ["/", "/ws/", "/ws/ns/", "/ws/ns/team", "/nope/at/all", "/ws/ns/a b/"])
def test_a_socket_to_an_unrouted_path_is_refused_not_an_error(ns, session_cookie, path):
    assert not connects(path, session_cookie, b"http://127.0.0.1:8000")
