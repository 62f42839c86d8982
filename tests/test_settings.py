"""Settings come from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

from config.env import channel_layers, redis_cluster_nodes
from tests.conftest import ROOT

GOOD = {"SECRET_KEY": "a-real-secret-for-this-test-only-0123456789", "DEBUG": "0"}


def start(code: str = "print('ok')", **env: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with `env` on top of working stores, then run
    `code`."""
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    base.update(
        DATABASE_URL=os.environ.get("DATABASE_URL") or settings.DATABASE_URL, REDIS_URL=settings.REDIS_URL
    )
    base.update(env, DJANGO_SETTINGS_MODULE="config.settings")
    code = f"import django; django.setup(); {code}"
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
        ("REDIS_URL", "redis+cluster://node-1:7000,node-2"),
        ("REDIS_URL", "redis+cluster://node-1:7000/3"),
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


def test_a_cluster_url_names_every_node_and_the_pub_sub_layer_shards_over_them():
    url = "rediss+cluster://app:secret@node-1:7000,node-2:7001"
    assert redis_cluster_nodes(url) == [
        "rediss://app:secret@node-1:7000/0",
        "rediss://app:secret@node-2:7001/0",
    ]
    assert redis_cluster_nodes("redis://localhost:6379/2") is None
    layer = channel_layers(url)["default"]
    assert layer["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert layer["CONFIG"]["hosts"] == redis_cluster_nodes(url)
    assert (
        channel_layers("redis://localhost:6379/2")["default"]["BACKEND"]
        == "channels_redis.core.RedisChannelLayer"
    )


def test_a_cluster_ignores_redis_db_it_has_database_0_only():
    done = start(
        "from django.conf import settings; print(settings.REDIS_URL)",
        **GOOD,
        REDIS_URL="redis+cluster://127.0.0.1:7000",
        REDIS_DB="13",
    )
    assert done.stdout.strip() == "redis+cluster://127.0.0.1:7000", done.stderr
