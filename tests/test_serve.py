"""`manage.py serve` (what `make run` runs) end to end: it migrates, prints the operator's
password, serves /api/v1/health through the web process (uvicorn, WEB_WORKERS worker processes)
next to a relay, and on SIGTERM stops them all, workers included, and exits 0.

With DATABASE_URL set, serve gets a throwaway database on that server (REDIS_URL is passed
as is); with it unset, serve starts its own embedded Postgres and Valkey in a short folder
under /tmp, never the project's ./var, and must stop them again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from config import embedded
from config.processes import free_port
from tests.conftest import alive, children_of, web_workers

BASE_DIR = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 90


def health(port: int) -> int | None:
    """The status code of /api/v1/health, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


@pytest.fixture
def serve_env() -> Iterator[dict[str, str]]:
    """The environment for serve: a throwaway database on the given server, or a fresh var folder."""
    env = {**os.environ, "PORT": str(free_port()), "HOST": "127.0.0.1", "WEB_WORKERS": "2"}
    env.pop("DEBUG", None)
    given = os.environ.get("DATABASE_URL", "").strip()
    if given:
        name = f"ma_serve_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(given, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        env["DATABASE_URL"] = urlunsplit(urlsplit(given)._replace(path=f"/{name}"))
        yield env
        with psycopg.connect(given, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        # Short: the embedded Postgres' socket lives in this folder (~107-character limit).
        var = Path(tempfile.mkdtemp(prefix="ma-", dir="/tmp"))
        env["MEMORY_ADMIN_VAR"] = str(var)
        env.pop("REDIS_URL", None)  # both embedded, or neither: serve stops what it started
        yield env
        embedded.stop(var)  # in case serve could not
        shutil.rmtree(var, ignore_errors=True)


@pytest.mark.slow  # about 12 s with embedded servers, most of it migrating a fresh database
def test_serve_runs_web_and_relay_and_stops_them_all_on_sigterm(serve_env, tmp_path):
    port = int(serve_env["PORT"])
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        serve = subprocess.Popen(
            [sys.executable, "manage.py", "serve"],
            cwd=BASE_DIR,
            env=serve_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while (status := health(port)) is None or status == 503:
            assert serve.poll() is None, f"serve exited with {serve.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, (
                f"no healthy answer in {STARTUP_SECONDS} s:\n{log.read_text()}"
            )
            time.sleep(0.3)
        if status == 404:
            pytest.skip("GET /api/v1/health answers 404: the endpoint is not there yet")
        assert status == 200, log.read_text()
        children = children_of(serve.pid)
        assert len(children) == 2, f"expected web and relay, found {children}:\n{log.read_text()}"
        # uvicorn's supervisor forks the workers; the relay has no children.
        workers = [pid for child in children for pid in web_workers(child)]
        assert len(workers) == 2, f"expected 2 web workers, found {workers}:\n{log.read_text()}"
        # serve announces the console once it sees the port listening, on its next look: a stop
        # sent between the first healthy answer and that look would find nothing announced yet.
        announced = time.monotonic() + 10
        while "Memory Admin console:" not in log.read_text() and time.monotonic() < announced:
            time.sleep(0.1)

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0, log.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()

    output = log.read_text()
    assert "Operator account: admin / " in output
    assert f"Memory Admin console: http://127.0.0.1:{port}/" in output
    assert not [pid for pid in children + workers if alive(pid)], output
    if "MEMORY_ADMIN_VAR" in serve_env:
        var = Path(serve_env["MEMORY_ADMIN_VAR"])
        assert not (var / "pg" / "postmaster.pid").exists(), "embedded Postgres still running"
        assert not (var / "valkey" / "valkey.pid").exists(), "embedded Valkey still running"
