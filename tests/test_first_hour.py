"""A newcomer's first hour, from a clean clone: the README's "Try it" block runs as written on
the embedded default (no DATABASE_URL, REDIS_URL, SECRET_KEY or DEBUG in the environment), and
so do the commands the service itself tells them to type."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from config import embedded, processes
from memory_admin.models import Token
from tests.conftest import ROOT, free_port

STARTUP_SECONDS = 180  # a fresh embedded Postgres: initdb, then every migration
# What a newcomer's shell has: none of the settings a developer or CI exports.
UNSET = (
    "DATABASE_URL", "REDIS_URL", "REDIS_DB", "SECRET_KEY", "DEBUG", "TEST_DATABASE_NAME", "MEMORY_ADMIN_VAR",
)  # fmt: skip


def try_it_block() -> list[str]:
    """The README's "Try it" commands, one per entry, continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@dataclass
class Clone:
    path: Path
    env: dict[str, str]
    port: int

    def sh(self, command: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.path,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,  # no terminal: getpass reads the password from stdin
        )


@pytest.fixture
def clone() -> Iterator[Clone]:
    """A clean clone of this repository in a short folder (the embedded Postgres' socket lives
    under it), sharing this checkout's installed .venv instead of installing it again."""
    top = Path(tempfile.mkdtemp(prefix="ma-", dir="/tmp"))
    path = top / "c"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(path)], check=True, timeout=120)
    (path / ".venv").symlink_to(Path(sys.prefix))
    for name in ("requirements.txt", "requirements-dev.txt"):
        if (path / name).exists():
            os.utime(path / name, (0, 0))  # older than the venv's stamps: make installs nothing
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(PORT=str(port), HOST="127.0.0.1", WEB_WORKERS="1", PYTHONUNBUFFERED="1")
    try:
        yield Clone(path, env, port)
    finally:
        embedded.stop(path / "var")  # in case make run could not
        shutil.rmtree(top, ignore_errors=True)


def start_make_run(clone: Clone, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["make", "run"], cwd=clone.path, env=clone.env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + STARTUP_SECONDS
    while "Memory Admin console:" not in log.read_text():
        assert proc.poll() is None, f"make run exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"make run did not start:\n{log.read_text()}"
        time.sleep(0.3)
    return proc


def stop(proc: subprocess.Popen) -> None:
    processes.stop(proc, grace=60, group=True)


@pytest.mark.slow
def test_the_readme_try_it_block_runs_as_written_from_a_clean_clone(clone, tmp_path):
    log = tmp_path / "make-run.log"
    server = None
    token = ""
    outputs = []
    try:
        for line in try_it_block():
            command = line.split("  #", 1)[0].strip()
            if command == "make run":
                server = start_make_run(clone, log)
            elif command.startswith("TOKEN="):
                token = outputs[-1].stdout.strip().splitlines()[-1]
                assert token.startswith("ma_"), outputs[-1]
                clone.env["TOKEN"] = token
            else:
                command = command.replace("localhost:8000", f"localhost:{clone.port}")
                done = clone.sh(command)
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                outputs.append(done)
        assert server is not None and token
        # Both curl calls answered in the API's success shapes.
        fact, record = (json.loads(done.stdout) for done in outputs[-2:])
        assert "id" in fact and record["version"] == 1, (fact, record)

        # The commands the README and make run's own output name, as written.
        password = "first-hour-password-8c1d"
        done = clone.sh(".venv/bin/python manage.py changepassword admin", stdin=f"{password}\n{password}\n")
        assert done.returncode == 0 and "changed successfully" in done.stdout, done.stdout + done.stderr
        done = clone.sh(f".venv/bin/python manage.py revoke_token {token[:8]}")
        assert done.returncode == 0 and "revoked" in done.stdout, done.stdout + done.stderr
        refused = httpx.get(
            f"http://127.0.0.1:{clone.port}/api/v1/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 401
        done = clone.sh("make demo DEMO_SECONDS=3", timeout=120)
        assert done.returncode == 0 and "Demo finished" in done.stdout, done.stdout + done.stderr[-3000:]

        # The console accepts the new password: the server and the command share one secret.
        with httpx.Client(base_url=f"http://127.0.0.1:{clone.port}") as browser:
            form = browser.get("/login/")
            csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
            login = browser.post(
                "/login/",
                data={"username": "admin", "password": password, "csrfmiddlewaretoken": csrf},
                headers={"Referer": f"http://127.0.0.1:{clone.port}/login/"},
            )
            assert login.status_code == 302, login.text[:500]
    finally:
        if server is not None:
            stop(server)
    output = log.read_text()
    assert "Memory Admin stopped" in output, output
    assert "Traceback" not in output, output
    secret = clone.path / "var" / "secret_key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_revoke_token_takes_any_prefix_that_names_one_live_token(alpha, make_token):
    first, second = make_token(alpha), make_token(alpha)
    with pytest.raises(CommandError, match="at least 6 characters"):
        call_command("revoke_token", first[:5])
    call_command("revoke_token", first[:8])
    assert Token.objects.get(prefix=first[:10]).revoked is not None
    assert Token.objects.get(prefix=second[:10]).revoked is None
    with pytest.raises(CommandError, match="no live token"):
        call_command("revoke_token", first[:8])  # revoked already: nothing live starts so
    # A second live token shown with the same 10 characters: a prefix no longer names one.
    Token.objects.create(agent=alpha, digest="0" * 64, prefix=second[:10])
    with pytest.raises(CommandError, match="more than one live token"):
        call_command("revoke_token", second[:7])
    call_command("revoke_token", second)  # the whole token still names exactly one
    assert Token.objects.filter(prefix=second[:10], revoked__isnull=True).count() == 1


TOOLS = ("pytest", "pytest-django", "playwright", "schemathesis", "hypothesis", "ruff", "daphne")


def _names(requirements: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in requirements.read_text().splitlines())
    return {re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower() for line in lines if line and line[0] != "-"}


def test_make_run_installs_only_what_runs_and_make_test_adds_the_test_tools(tmp_path):
    path = tmp_path / "c"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(path)], check=True, timeout=120)
    assert not _names(path / "requirements.txt") & set(TOOLS)
    assert set(TOOLS) <= _names(path / "requirements-dev.txt")
    assert "-r requirements.txt" in (path / "requirements-dev.txt").read_text()

    def plan(target: str) -> str:
        return subprocess.run(
            ["make", "-n", target], cwd=path, capture_output=True, text=True, check=True, timeout=60
        ).stdout

    run, test = plan("run"), plan("test")
    assert "-r requirements.txt" in run and "requirements-dev.txt" not in run
    assert "-r requirements-dev.txt" in test
    assert "make test" in (path / ".ci" / "run").read_text()


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [("PUT", "/api/v1/records/", "key"), ("GET", "/api/v1/records/", "key"),
     ("DELETE", "/api/v1/records/", "key"), ("POST", "/api/v1/locks/", "resource"),
     ("GET", "/api/v1/agents/", "agent_id")],
)  # fmt: skip
def test_an_empty_key_is_a_validation_error_not_a_missing_endpoint(method, path, field, alpha, make_token):
    response = Client().generic(
        method, path, '{"value": 1}', content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {make_token(alpha)}",
    )  # fmt: skip
    assert response.status_code == 422, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error" and field in error["fields"]
