"""Fixtures for every test: real Postgres and Redis, never mocks.

Builders (`make_agent`, `make_token`) and three standing agents — `alpha` and `beta` in
namespace `team`, `outsider` in namespace `other` — for permission checks.
`web_server` runs the real ASGI app under uvicorn (config/web.py) on a free port (with `relay`
alongside when a test asks for it), against the test database and the tests' Redis database.

Tests marked `cluster` run twice: on the tests' Redis database (`[redis]`) and on a real
three-master Redis Cluster (`[cluster]`, tests/redis_cluster.py) that the session starts on its
first such test; `redis_store` says which one a test runs on.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client, override_settings
from django.utils.timezone import now

from config import processes, web
from config.env import channel_layers
from config.processes import free_port  # noqa: F401 - the tests import it from here
from memory_admin import redis as r
from memory_admin.errors import VersionConflict
from memory_admin.models import Agent, Conflict, LockFence, Namespace, Record
from memory_admin.services import Actor
from memory_admin.services.facts import store_fact
from memory_admin.services.locks import acquire_lock
from memory_admin.services.records import write_record
from memory_admin.services.status import heartbeat
from memory_admin.services.tokens import ensure_agent, issue_token
from tests import redis_cluster
from tests.browser_support import (  # noqa: F401 - the browser tests' fixtures, for every module
    allow_orm_beside_playwright,
    api,
    browser,
    context,
    page,
)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def pytest_generate_tests(metafunc) -> None:
    if metafunc.definition.get_closest_marker("cluster") and "redis_store" in metafunc.fixturenames:
        metafunc.parametrize("redis_store", ["redis", "cluster"], indirect=True)


@pytest.fixture(scope="session")
def cluster_of_redis() -> Iterator[redis_cluster.RedisCluster]:
    """A three-master Redis Cluster for the session; skipped without redis-server, unless
    REQUIRE_CLUSTER=1 (CI), where that fails instead."""
    reason = redis_cluster.missing()
    if reason is not None:
        if redis_cluster.required():
            pytest.fail(f"REQUIRE_CLUSTER=1 but {reason}")
        pytest.skip(reason)
    cluster = redis_cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_store(request) -> Iterator[str]:
    """Which Redis the test runs on: the tests' database ("redis"), or for the `[cluster]` run of
    a test marked `cluster` the cluster ("cluster"): settings (REDIS_URL, CHANNEL_LAYERS) point at
    it for that test, and the processes the test starts (`server_env`) inherit them."""
    store = getattr(request, "param", "redis")
    if store == "redis":
        yield store
        return
    url = request.getfixturevalue("cluster_of_redis").url
    with override_settings(REDIS_URL=url, CHANNEL_LAYERS=channel_layers(url)):
        _forget_redis_clients()
        try:
            yield store
        finally:
            _forget_redis_clients()


def _forget_redis_clients() -> None:
    """memory_admin.redis keeps one client and its scripts per process: make them anew."""
    r.client.cache_clear()
    r.script.cache_clear()


@pytest.fixture(autouse=True)
def clean_redis(redis_store) -> Iterator[None]:
    """Each test starts with the tests' Redis database (or the cluster) empty."""
    r.client().flushdb()
    yield


@pytest.fixture
def make_agent(db):
    def make(name: str, namespace: str = "team") -> Agent:
        return ensure_agent(namespace=namespace, agent_id=name)

    return make


@pytest.fixture
def make_token(db):
    def make(agent: Agent, read_only: bool = False) -> str:
        return issue_token(agent=agent, read_only=read_only)[1]

    return make


@pytest.fixture
def alpha(make_agent) -> Agent:
    return make_agent("alpha")


@pytest.fixture
def beta(make_agent) -> Agent:
    return make_agent("beta")


@pytest.fixture
def outsider(make_agent) -> Agent:
    return make_agent("outsider", namespace="other")


@pytest.fixture
def ns(alpha) -> Namespace:
    return alpha.ns


# --- waiting for a condition on a machine others load ------------------------------

# A loaded machine (other suites, a busy CI runner) is many times slower than a quiet one: each
# wait for a condition may take this many times its timeout. A wait ends as soon as its condition
# holds, so this costs a passing test nothing; only a failing one takes longer to say so.
PATIENCE = 3


def wait_for(predicate, timeout: float = 10, interval: float = 0.05, message: str = "condition"):
    """config.processes.wait_for, with PATIENCE times the timeout."""
    return processes.wait_for(predicate, timeout=timeout * PATIENCE, interval=interval, message=message)


def clear_of_a_minute_boundary(seconds: float) -> None:
    """Sleep into the next minute unless `seconds` are left of this one: for a test that counts what
    it does in the current minute's bucket (a minute that turned halfway would split its count)."""
    left = 60 - (time.time() % 60)
    if left < seconds:
        time.sleep(left + 0.1)


# --- lapsed TTLs: what Redis and the rows hold once a lease ran out, without waiting for it ---


def _a_moment_ago():
    return now() - timedelta(milliseconds=1)


def wait_for_waiters(count: int) -> None:
    """Until `count` sessions of this database wait for a lock (of any kind)."""
    for _ in range(1000):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= count:
                return
        time.sleep(0.01)
    raise AssertionError(f"{count} sessions never waited for a lock")


def on_own_connection(work, *, deadlock_timeout: str) -> tuple[threading.Thread, list]:
    """Run `work()` on a connection of its own; the list gets its result or its exception."""
    outcome: list = []

    def run():
        try:
            with connection.cursor() as cursor:  # who would notice a deadlock first
                cursor.execute(f"SET deadlock_timeout = '{deadlock_timeout}'")
            outcome.append(work())
        except Exception as exc:
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def lapse_fence(ns: Namespace, resource: str) -> None:
    """The lock's fence row says its lease ran out (as time would; Redis may know better)."""
    LockFence.objects.filter(ns=ns, resource=resource).update(expires=_a_moment_ago())


def lapse_lock(ns: Namespace, resource: str) -> None:
    """The lock's TTL lapsed: Redis dropped the lease, the index and the fence row say it ended."""
    client = r.client()
    client.delete(r.lock_key(ns.name, resource))
    client.zadd(r.locks_index(ns.name), {resource: r.to_ms(_a_moment_ago())}, xx=True)
    lapse_fence(ns, resource)


def shorten_lease(ns: Namespace, resource: str, ms: int) -> None:
    """The held lock's lease lapses `ms` from now (as if taken that much before its TTL ran out):
    in Redis, its index and its fence row, so a waiter sees it end without a wait of seconds."""
    ends = now() + timedelta(milliseconds=ms)
    client = r.client()
    client.hset(r.lock_key(ns.name, resource), "expires", r.to_ms(ends))
    client.pexpire(r.lock_key(ns.name, resource), ms)
    client.zadd(r.locks_index(ns.name), {resource: r.to_ms(ends)}, xx=True)
    LockFence.objects.filter(ns=ns, resource=resource).update(expires=ends)


def lapse_heartbeat(agent: Agent) -> None:
    """The agent's heartbeat TTL lapsed: Redis dropped its status; the index and row say when."""
    client = r.client()
    client.delete(r.status_key(agent.ns.name, agent.name))
    client.zadd(r.heartbeats_index(agent.ns.name), {agent.name: r.to_ms(_a_moment_ago())}, xx=True)
    Agent.objects.filter(pk=agent.pk).update(expires=_a_moment_ago())


# --- the console's operator and a namespace with something on every page ---------------


@pytest.fixture
def viewer(db) -> User:
    return User.objects.create_user("vera")  # no password: hashing one costs half a second


def logged_in(user: User) -> Client:
    """A test client with a session of `user` (made here; the login form has its own tests)."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def as_viewer(viewer) -> Client:
    return logged_in(viewer)


@pytest.fixture
def session_cookie(viewer) -> str:
    """The Cookie header of a logged-in viewer's browser."""
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={logged_in(viewer).cookies[name].value}"


@pytest.fixture
def operator_user(db) -> User:
    user = User.objects.create_user("otto")
    # The permission itself: the "operators" group of the data migration is flushed by
    # transactional tests, the permission row is recreated after every flush.
    user.user_permissions.add(Permission.objects.get(codename="operate"))
    return user


@pytest.fixture
def as_operator(operator_user) -> Client:
    return logged_in(operator_user)


@pytest.fixture
def world(ns, alpha, beta, outsider):
    """A namespace with something on every page."""
    heartbeat(agent=alpha, status="researching", detail="reading papers", ttl_seconds=60, actor=actor(alpha))
    fact = store_fact(ns=ns, fact="The sky is blue", category="colour", actor=actor(alpha))
    write_record(ns=ns, key="plan/q3", value={"goal": "ship"}, expected_version=0, actor=actor(alpha))
    write_record(
        ns=ns, key="plan/q3", value={"goal": "ship", "by": "june"}, expected_version=1, actor=actor(alpha)
    )
    with pytest.raises(VersionConflict):
        write_record(ns=ns, key="plan/q3", value={"goal": "rest"}, expected_version=1, actor=actor(beta))
    lock = acquire_lock(ns=ns, resource="report/draft", actor=actor(beta), ttl_seconds=60)
    return {
        "fact": fact,
        "record": Record.objects.get(ns=ns, key="plan/q3"),
        "conflict": Conflict.objects.get(ns=ns, key="plan/q3"),
        "lock": lock,
    }


def actor(agent: Agent) -> Actor:
    return Actor.of_agent(agent)


def sequence_here() -> None:
    """What the sequencer does once a transaction commits, for a test that never commits (its
    events sit above the horizon for good): positions for every event waiting, the test's own
    included. Only inside a test's transaction: elsewhere the horizon must be respected."""
    from django.db import connection

    from memory_admin import sql

    with connection.cursor() as cursor:
        cursor.execute(sql.SEQUENCE.replace(sql.HORIZON, str(2**63 - 1)), [100_000])


# --- processes ------------------------------------------------------------------------


def server_env() -> dict[str, str]:
    """Environment for a child process that must see the test database and Redis database."""
    db = settings.DATABASES["default"]
    host = db["HOST"]
    if host.startswith("/"):
        url = f"postgresql://{db['USER']}@/{db['NAME']}?host={host}"
    else:
        url = f"postgresql://{db['USER']}:{db['PASSWORD']}@{host}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "REDIS_DB": "",
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "0",
        "SECURE_COOKIES": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        # A burst of requests grows the pool; on a machine other suites load, opening Postgres
        # connections can take longer than the 3 s a request waits for one by default, and three
        # such 503s open the circuit for all (test_web_workers' sixteen writers at once).
        "DB_POOL_TIMEOUT": os.environ.get("DB_POOL_TIMEOUT", str(3 * PATIENCE)),
    }


@dataclass
class Process:
    proc: subprocess.Popen
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        processes.stop(self.proc, sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_process(args: list[str], name: str, tmp: Path) -> Process:
    log = tmp / f"{name}.log"
    handle = open(log, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    proc = subprocess.Popen(args, cwd=ROOT, env=server_env(), stdout=handle, stderr=subprocess.STDOUT)
    return Process(proc, log)


def start_relay(tmp: Path, name: str = "relay", standby: bool = False) -> Process:
    """A relay process, returned once it is active (it holds the advisory lock and hears the
    doorbell); with `standby`, once it has begun to wait for the lock another relay holds."""
    process = start_process([sys.executable, "manage.py", "relay", "--name", name], name, tmp)
    said = "waiting to become" if standby else f"{name} active"
    try:
        wait_for(lambda: said in process.output(), timeout=60, message=f"{name} to start")
        if standby:
            time.sleep(0.3)  # it tries the lock right after that line
    except AssertionError:
        process.stop()
        raise
    return process


@dataclass
class LiveServer:
    url: str
    process: Process


def start_web(tmp: Path, port: int | None = None, workers: int = 1) -> LiveServer:
    """The web process (config/web.py) on `port` (a free one by default; pass the old one to
    restart a stopped server), with `workers` processes."""
    port = port or free_port()
    process = start_process(web.argv("127.0.0.1", port, workers), "web", tmp)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30 * PATIENCE
    while True:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return LiveServer(url, process)
        except httpx.HTTPError:
            pass
        if process.proc.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"web server did not start:\n{process.output()}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def web_servers(django_db_setup, django_db_blocker) -> Iterator[dict[str, LiveServer]]:
    """The session's web processes, one per Redis store, each started by its first test."""
    servers: dict[str, LiveServer] = {}
    yield servers
    for server in servers.values():
        server.process.stop()


@pytest.fixture
def web_server(web_servers, redis_store, tmp_path_factory) -> LiveServer:
    """The web process serving config.asgi on a free port, for the whole session (tests use
    transactional db), on the test's Redis store."""
    if redis_store not in web_servers:
        web_servers[redis_store] = start_web(tmp_path_factory.mktemp("web"))
    return web_servers[redis_store]


@pytest.fixture
def relay(transactional_db, tmp_path) -> Iterator[Process]:
    process = start_relay(tmp_path)
    yield process
    process.stop()


def api_clients(server: LiveServer, agents: list[Agent]) -> list[httpx.Client]:
    """One API client per agent, each with a token of its own, against `server`."""
    return [
        httpx.Client(
            base_url=server.url + "/api/v1",
            headers={"Authorization": f"Bearer {issue_token(agent=agent)[1]}"},
            timeout=60,
        )
        for agent in agents
    ]


def run_together(clients: list[httpx.Client], work) -> float:
    """Run work(index, client) on every client at once; returns the seconds it took."""
    barrier = threading.Barrier(len(clients))

    def go(i):
        barrier.wait()
        return work(i, clients[i])

    started = time.monotonic()
    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(go, range(len(clients))))
    return time.monotonic() - started


def increment_record(client: httpx.Client, key: str) -> int:
    """Add 1 to record `key` through the API: read, then write over the version read, again
    after each version conflict with a growing random pause, as an agent should. Returns the
    conflicts it met on the way."""
    conflicts = 0
    while True:
        current = client.get(f"/records/{key}").json()
        answer = client.put(
            f"/records/{key}", json={"value": current["value"] + 1, "expected_version": current["version"]}
        )
        if answer.status_code == 200:
            return conflicts
        assert answer.status_code == 409, answer.text
        assert answer.json()["error"]["code"] == "version_conflict", answer.text
        conflicts += 1
        time.sleep(random.uniform(0, 0.005 * 2 ** min(conflicts, 6)))


def gauge(url: str, name: str) -> float:
    """A gauge of the server at `url`, as its /metrics says now (summed over its workers)."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)[1])


def alive(pid: int) -> bool:
    """Running, and not a zombie that nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def web_workers(pid: int) -> list[int]:
    """uvicorn's worker processes under the web process `pid` (its resource tracker is a child too)."""
    workers = []
    for child in children_of(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            continue
    return workers


def pytest_sessionfinish(session, exitstatus) -> None:
    """Stop the embedded servers this test session started; ones that were running stay."""
    from config import embedded

    var = settings.VAR_DIR.resolve()
    if ("postgres", var) in embedded.started:
        embedded.stop_postgres(var)
    if ("redis", var) in embedded.started:
        embedded.stop_redis(var)
