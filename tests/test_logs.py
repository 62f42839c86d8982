"""The server log an operator reads: the API's ordinary answers (a conflict, a 404) are not
warnings, a browser leaving a console page is no error, and LOG_FORMAT=json gives one JSON
object per line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from websockets.sync.client import connect

from memory_admin.services.events import publish_event
from tests.conftest import ROOT, actor, gauge, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
TROUBLE = ("WARNING", "ERROR", "Traceback", "never retrieved", "Exception in ASGI")


def log_since(server, mark: int) -> str:
    return server.process.output()[mark:]


def test_the_apis_ordinary_answers_are_not_logged_as_warnings(web_server, alpha, make_token):
    mark = len(web_server.process.output())
    with httpx.Client(
        base_url=f"{web_server.url}/api/v1", headers={"Authorization": f"Bearer {make_token(alpha)}"}
    ) as api:
        assert api.put("/records/plan", json={"value": 1, "expected_version": 0}).status_code == 201
        assert api.put("/records/plan", json={"value": 2, "expected_version": 0}).status_code == 409
        assert api.get("/records/missing").status_code == 404
        assert api.put("/records/plan", json={"value": 3, "nonsense": 1}).status_code == 422
        assert api.get("/me", headers={"Authorization": "Bearer ma_unknown_token"}).status_code == 401
        assert api.get("/health").status_code == 200  # the last line, to wait for
    wait_for(lambda: "/api/v1/health" in log_since(web_server, mark), message="the access log")
    text = log_since(web_server, mark)
    assert not [word for word in TROUBLE if word in text], text


def test_browsers_leaving_console_pages_while_events_flow_log_no_error(web_server, relay, ns, alpha):
    """Tabs closed without a close handshake while doorbells ring and catch-ups send: the
    server finds each browser gone in the middle of its work, which is no error."""
    session = Client()
    session.force_login(User.objects.create_superuser("root", "", None))
    cookie = f"{settings.SESSION_COOKIE_NAME}={session.cookies[settings.SESSION_COOKIE_NAME].value}"
    url = web_server.url.replace("http://", "ws://") + f"/ws/ns/{ns.name}/?page=timeline"
    flowing = threading.Event()

    def publish() -> None:
        i = 0
        while not flowing.is_set():
            publish_event(ns=ns, type="tick", payload={"i": i}, actor=actor(alpha))
            i += 1

    mark = len(web_server.process.output())
    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        for _ in range(12):
            with connect(url, additional_headers={"Cookie": cookie, "Origin": web_server.url}) as ws:
                ws.send(json.dumps({"after": 0}))
                ws.recv(timeout=10)  # caught up once; doorbells ring from here on
                time.sleep(0.2)
                ws.socket.shutdown(socket.SHUT_RDWR)  # the tab closed: no close handshake
    finally:
        flowing.set()
        publisher.join()
    # What the server does after the browsers left is what this test reads: wait until it has
    # seen every one go (its open-websockets gauge back at 0), then read what it logged.
    gone = lambda: gauge(web_server.url, "memory_admin_websockets_open") == 0  # noqa: E731
    wait_for(gone, timeout=30, message="the server to see the tabs go")
    text = log_since(web_server, mark)
    assert not [word for word in TROUBLE if word in text], text


def test_log_format_json_gives_one_json_object_per_line():
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('memory_admin.test').warning('a %s line', 'json')"
    )
    env = {**os.environ, "LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "config.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stderr.strip().splitlines()[-1])
    assert entry["level"] == "WARNING" and entry["logger"] == "memory_admin.test"
    assert entry["message"] == "a json line" and entry["time"].endswith("+00:00")
