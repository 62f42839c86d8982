"""The console's security: login everywhere, strict headers and CSP that its pages really
meet, failed-login throttling, secure cookies and `check --deploy` in production.

Viewer-vs-operator and CSRF on every action: tests/test_console_views.py
(test_viewers_are_refused_every_action, test_actions_need_a_csrf_token); websocket session
and Origin checks: tests/test_console_live.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.conftest import ROOT
from tests.test_console_views import pages

PASSWORD = "a-long-enough-password-for-the-validators"
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "k3Jx9-production-like-secret-Qw7v2Lp0Zr8Tn4Ys6Bm1Hc5Fd3Gk9Xa2Ue7Wi0Oq",
    "ALLOWED_HOSTS": "memory.example.com",
    "DATABASE_URL": "postgresql://ma:pw@db.internal:5432/memory_admin",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "SECURE_PROXY_SSL_HEADER": "1",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
}


def production_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "REDIS_DB"))}
    return {**env, **PRODUCTION, **overrides}


# --- login required ---------------------------------------------------------------------


def every_console_url() -> list[str]:
    """One concrete URL per pattern of the console (memory_admin/urls.py), arguments filled in."""
    samples = {
        "ns": "team",
        "name": "alpha",
        "key": "plan",
        "fact_id": "1",
        "conflict_id": "1",
        "token_id": "1",
        "parked_id": "1",
        "group": "g1",
    }
    urls = []
    for pattern in get_resolver("memory_admin.urls").url_patterns:
        assert isinstance(pattern, URLPattern) and not isinstance(pattern, URLResolver)
        route = str(pattern.pattern)
        urls.append("/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: samples[m.group(1)], route))
    return urls


@pytest.mark.django_db
def test_every_console_url_but_login_sends_anonymous_visitors_to_log_in(client, ns):
    urls = every_console_url()
    assert len(urls) >= 15
    for url in urls:
        if url == "/login/":
            assert client.get(url).status_code == 200
            continue
        if url == "/logout/":  # POST only, and it only ever leads to the login page
            assert client.post(url)["Location"] == "/login/"
            continue
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 302, (method, url)
            assert response["Location"].startswith("/login/"), (method, url)
    assert client.get("/admin/").status_code == 302


# --- headers and CSP --------------------------------------------------------------------


def csp(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return {d.split()[0]: " ".join(d.split()[1:]) for d in (part.strip() for part in header.split(";")) if d}


@pytest.mark.django_db
def test_pages_and_api_answers_carry_the_security_headers(client, as_operator, ns, world):  # noqa: F811
    for response in (
        client.get("/login/"),
        as_operator.get(f"/ns/{ns.name}/locks/"),
        client.get("/api/v1/health"),
        client.get("/api/v1/records/x"),
    ):
        policy = csp(response)
        assert policy["script-src"] == "'self'"
        assert policy["style-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert policy["object-src"] == "'none'"
        assert "'unsafe-inline'" not in response["Content-Security-Policy"]
        assert "'unsafe-eval'" not in response["Content-Security-Policy"]
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"


class InlineFinder(HTMLParser):
    """What a strict CSP would block: inline scripts, event-handler attributes, inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> element")
        self.found += [f"{tag} {n}=" for n in names if n.startswith("on") or n == "style"]
        for name, value in attrs:
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"{tag} {name}=javascript:")


@pytest.mark.django_db
def test_no_console_page_needs_an_inline_script_or_style(client, as_operator, ns, world):  # noqa: F811
    bodies = {"login": client.get("/login/").content.decode()}
    for name, url in pages(ns, world).items():
        response = as_operator.get(url)
        assert response.status_code == 200, url
        bodies[name] = response.content.decode()
    for name, body in bodies.items():
        finder = InlineFinder()
        finder.feed(body)
        assert finder.found == [], name


# --- failed-login throttling ------------------------------------------------------------


def log_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_failed_logins_lock_out_that_username_from_that_address_and_say_for_how_long(client):
    User.objects.create_user("olga", password=PASSWORD)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        assert log_in(client, "olga", "wrong").status_code == 200
    refused = log_in(client, "olga", PASSWORD)  # even the right password, while locked out
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS
    assert b"Too many failed logins" in refused.content
    assert "_auth_user_id" not in client.session
    # Someone else's address is not locked out, so an attacker cannot lock a real operator out.
    assert log_in(Client(), "olga", PASSWORD, address="10.0.0.2").status_code == 302


@pytest.mark.django_db
def test_a_successful_login_clears_the_count(client):
    User.objects.create_user("olga", password=PASSWORD)
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        log_in(client, "olga", "wrong")
    assert log_in(client, "olga", PASSWORD).status_code == 302
    client.logout()
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        log_in(client, "olga", "wrong")
    assert log_in(client, "olga", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_the_admin_login_is_throttled_too(client):
    User.objects.create_superuser("root", password=PASSWORD)
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        client.post("/admin/login/", {"username": "root", "password": "wrong"}, REMOTE_ADDR="10.0.0.9")
    client.post("/admin/login/", {"username": "root", "password": PASSWORD}, REMOTE_ADDR="10.0.0.9")
    assert "_auth_user_id" not in client.session


# --- production settings ----------------------------------------------------------------


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_check_deploy_passes_with_production_settings_and_no_warning():
    done = run_manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_check_deploy_fails_without_https_settings():
    env = production_env(SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="0")
    done = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert done.returncode != 0
    assert "security.W004" in done.stderr and "security.W008" in done.stderr


def test_production_cookies_are_secure_and_http_only():
    script = (
        "from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SESSION_COOKIE_HTTPONLY, s.CSRF_COOKIE_HTTPONLY)"
    )
    done = run_manage("shell", "-c", script, env=production_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["True", "True", "True", "True"]


def test_production_refuses_to_start_without_a_secret_or_with_the_development_one():
    env = production_env()
    del env["SECRET_KEY"]
    done = run_manage("check", env=env)
    assert done.returncode != 0 and "SECRET_KEY must be set" in done.stderr
    done = run_manage("check", env=production_env(SECRET_KEY=settings_module_dev_secret()))
    assert done.returncode != 0 and "development key" in done.stderr


def settings_module_dev_secret() -> str:
    from config import settings as module

    return module._DEV_SECRET
