"""Settings come from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

from tests.conftest import ROOT

GOOD = {"SECRET_KEY": "a-real-secret-for-this-test-only-0123456789", "DEBUG": "0"}


def start(**env: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with `env` on top of working stores."""
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    base.update(
        DATABASE_URL=os.environ.get("DATABASE_URL") or settings.DATABASE_URL, REDIS_URL=settings.REDIS_URL
    )
    base.update(env, DJANGO_SETTINGS_MODULE="config.settings")
    code = "import django; django.setup(); print('ok')"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60
    )


def test_good_settings_start():
    assert start(**GOOD).stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("DATABASE_URL", "mysql://localhost/db"),
        ("REDIS_URL", "http://localhost:6379"),
        ("ALLOWED_HOSTS", "a,,b"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(name, value):
    result = start(**{**GOOD, name: value})
    assert result.returncode != 0
    assert name in result.stderr and "ImproperlyConfigured" in result.stderr


def test_without_debug_a_missing_secret_key_is_refused():
    result = start(DEBUG="0")
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


def test_without_debug_the_development_secret_is_refused():
    result = start(DEBUG="0", SECRET_KEY="dev-only-insecure-secret-key-do-not-use-in-production")
    assert result.returncode != 0 and "development key" in result.stderr


def test_importing_the_settings_starts_no_server(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(GOOD, MEMORY_ADMIN_VAR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    code = "import django; django.setup()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "DATABASE_URL and REDIS_URL unset and no embedded server runs" in result.stderr
    assert "make run" in result.stderr
    assert not (tmp_path / "pg").exists() and not (tmp_path / "valkey").exists()
