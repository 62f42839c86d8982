"""Who is trying to log in: the address is the connection's unless a configured proxy says
otherwise, and a username is locked out from every address after enough failures."""

from __future__ import annotations

import re

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from memory_admin import redis as r
from memory_admin import throttle
from tests.conftest import start_web

# Also on a Redis Cluster (conftest: redis_store).
pytestmark = pytest.mark.cluster

PASSWORD = "a-long-enough-password-for-the-validators"


def log_in(client: Client, username: str, password: str, address: str):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_failures_from_many_addresses_lock_the_username_out_from_every_address():
    User.objects.create_user("olga", password=PASSWORD)
    User.objects.create_user("ivan", password=PASSWORD)
    for i in range(settings.LOGIN_USERNAME_FAILURE_LIMIT):
        # Each address stays below the limit of its own pair.
        assert log_in(Client(), "olga", "wrong", f"10.1.{i}.1").status_code == 200
    refused = log_in(Client(), "olga", PASSWORD, "10.9.9.9")  # a fresh address, the right password
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS
    assert log_in(Client(), "ivan", PASSWORD, "10.1.0.1").status_code == 302  # others are not locked


@pytest.mark.django_db
def test_below_the_username_limit_other_addresses_still_log_in_and_a_success_clears_it():
    User.objects.create_user("olga", password=PASSWORD)
    for i in range(settings.LOGIN_USERNAME_FAILURE_LIMIT - 1):
        log_in(Client(), "olga", "wrong", f"10.2.{i}.1")
    assert log_in(Client(), "olga", PASSWORD, "10.9.9.9").status_code == 302
    for i in range(settings.LOGIN_USERNAME_FAILURE_LIMIT - 1):
        log_in(Client(), "olga", "wrong", f"10.3.{i}.1")
    assert log_in(Client(), "olga", PASSWORD, "10.9.9.8").status_code == 302


def _fail_once_over_http(url: str, username: str, forwarded_for: str) -> int:
    with httpx.Client(base_url=url) as browser:
        form = browser.get("/login/").text
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
        answer = browser.post(
            "/login/",
            data={"username": username, "password": "wrong", "csrfmiddlewaretoken": csrf},
            headers={"X-Forwarded-For": forwarded_for, "Referer": url + "/login/"},
        )
        return answer.status_code


def _counted_for(username: str, address: str) -> bool:
    return bool(r.client().exists(throttle._key(username, address)))


@pytest.mark.django_db(transaction=True)
def test_the_web_process_ignores_x_forwarded_for_unless_its_sender_is_trusted(web_server):
    assert _fail_once_over_http(web_server.url, "mallory", "203.0.113.7") == 200
    assert _counted_for("mallory", "127.0.0.1")  # the connection's address
    assert not _counted_for("mallory", "203.0.113.7")


@pytest.mark.django_db(transaction=True)
def test_forwarding_headers_count_from_the_proxies_in_forwarded_allow_ips(tmp_path, monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1")
    server = start_web(tmp_path)
    try:
        assert _fail_once_over_http(server.url, "mallory", "203.0.113.7") == 200
    finally:
        server.process.stop()
    assert _counted_for("mallory", "203.0.113.7")
    assert not _counted_for("mallory", "127.0.0.1")
