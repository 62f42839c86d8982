"""`make bench`: the service next to raw Postgres, raw Redis, etcd and a Django hello-world,
on this machine, in one run (issue 6). Prints one table and writes bench/results/.

Everything runs in a fresh temp folder (MEMORY_ADMIN_VAR): its own embedded Postgres and
Valkey, etcd when `/usr/bin/etcd` is there (Debian's etcd-server), the production web command
(config/web.py) for the API and for the hello-world floor, and the relay. Every process
started here is stopped at the end.

    .venv/bin/python bench/run.py [--seconds 6] [--only 1,5,7] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from config import processes  # noqa: E402 - after the path is set
from config import web as config_web  # noqa: E402
from config.processes import free_port  # noqa: E402

NS = "bench"
LIVE_NS = "bench-live"
HOST = "127.0.0.1"


def log(msg: str) -> None:
    print(msg, flush=True)


# --- processes ---------------------------------------------------------------------------


class Procs:
    """Every child process this run starts, stopped in reverse order at the end."""

    def __init__(self, var: Path) -> None:
        self.var = var
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.var / f"{name}.log", "wb")  # noqa: SIM115 - the child writes to it until it ends
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.children[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in reversed(list(self.children.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # all at once, then each waited for
        for proc in self.children.values():
            processes.stop(proc, grace=10, group=True)


def wait_http(port: int, path: str, proc: subprocess.Popen, logfile: Path, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited:\n{logfile.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=1):
                return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on {port}{path}:\n{logfile.read_text()[-3000:]}")


def server_argv(port: int, app: str) -> list[str]:
    """The production web command (config/web.py: uvicorn, one worker per core), for ours and the
    hello-world alike. BENCH_WORKERS=n changes the worker count of both; BENCH_SERVER=daphne runs
    both in one Daphne process instead, BENCH_SERVER=granian both on granian with as many workers,
    for comparison (`pip install daphne` / `pip install granian` first)."""
    if os.environ.get("BENCH_SERVER") == "daphne":
        return [sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), app]
    if os.environ.get("BENCH_SERVER") == "granian":  # `pip install granian` first
        return [
            sys.executable, "-m", "granian", "--interface", "asginl", "--host", HOST, "--port", str(port),
            "--workers", str(server_workers()), "--no-ws" if "hello" in app else "--ws", app,
        ]  # fmt: skip
    return config_web.argv(HOST, port, server_workers(), app)


def server_workers() -> int:
    return int(os.environ.get("BENCH_WORKERS") or config_web.workers())


def server_name() -> str:
    if os.environ.get("BENCH_SERVER") == "daphne":
        return "daphne, 1 process"
    if os.environ.get("BENCH_SERVER") == "granian":
        return f"granian, {server_workers()} workers"
    return f"uvicorn, {server_workers()} workers"


class Watch:
    """CPU and peak RSS of the servers: sampled every 0.25 s for RSS, snapshotted for CPU."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.procs: dict[str, list] = {}
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def add(self, name: str, pid: int, children: bool = False) -> None:
        with contextlib.suppress(self.psutil.Error):
            self.procs[name] = [self.psutil.Process(pid), children]

    def _members(self, name: str) -> list:
        proc, children = self.procs[name]
        try:
            return [proc, *proc.children(recursive=True)] if children else [proc]
        except self.psutil.Error:
            return []

    def _sample(self) -> None:
        while not self.stop.wait(0.25):
            for name in list(self.procs):
                try:
                    rss = sum(p.memory_info().rss for p in self._members(name))
                except self.psutil.Error:
                    continue
                self.peak[name] = max(self.peak.get(name, 0), rss)

    def cpu(self) -> dict[str, float]:
        totals = {}
        for name in self.procs:
            total = 0.0
            for p in self._members(name):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except self.psutil.Error:
                    pass
            totals[name] = total
        return totals


# --- the run -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per run (default 6)")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,5")
    parser.add_argument("--quick", action="store_true", help="1 s runs, for checking the harness")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 1.0
    only = {int(x) for x in args.only.split(",") if x.strip()} or set(range(1, 11))

    # A run stopped with SIGTERM (kill, pkill) stops what it started too: the `finally` below runs
    # (by default SIGTERM ends Python at once, and uvicorn's supervisors lived on, restarting workers).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    var = Path(tempfile.mkdtemp(prefix="mab-", dir="/tmp"))  # short: Postgres' socket path limit
    password = secrets.token_urlsafe(16)
    os.environ.update(
        {
            "MEMORY_ADMIN_VAR": str(var),
            "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-" + secrets.token_urlsafe(32),
            "DEBUG": "0",
            "SECURE_COOKIES": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "RATE_LIMIT_PER_MINUTE": "10000000",  # the benchmark measures throughput, not the limiter's 429s
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "config.settings",
        }
    )
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_DB"):
        os.environ.pop(name, None)  # the benchmark's own embedded servers, never the project's
    procs = Procs(var)
    watch = Watch()
    started = time.monotonic()
    try:
        report = run(args, only, var, password, procs, watch)
        report["total_seconds"] = round(time.monotonic() - started, 1)
        write_report(report, Path(args.out))
        return 0
    finally:
        watch.stop.set()
        procs.stop_all()
        try:
            from django.db import connections

            for conn in connections.all(initialized_only=True):
                conn.close()
                if hasattr(conn, "close_pool"):
                    conn.close_pool()
        except Exception as exc:  # settings may have failed after starting the servers: stop them anyway
            log(f"closing connections failed: {exc}")
        from config import embedded

        embedded.stop(var)
        shutil.rmtree(var, ignore_errors=True)
        log(f"cleaned up {var} ({time.monotonic() - started:.0f} s in all)")


def run(args, only: set[int], var: Path, password: str, procs: Procs, watch: Watch) -> dict:
    import django

    t0 = time.monotonic()
    log(f"starting embedded Postgres and Valkey under {var}")
    from config import embedded

    embedded.start_unset(var)  # DATABASE_URL / REDIS_URL are unset: the benchmark's own servers
    django.setup()  # the settings find them running
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connections

    from bench import reactions, seed
    from memory_admin.services.tokens import ensure_agent, issue_token

    call_command("migrate", interactive=False, verbosity=0)
    log(f"migrated in {time.monotonic() - t0:.1f} s; seeding")
    seeding = seed.seed(settings.DATABASE_URL, settings.REDIS_URL, NS, log=lambda m: log(m))
    tokens = [
        issue_token(agent=ensure_agent(namespace=NS, agent_id=f"client-{i:03d}"))[1] for i in range(100)
    ]
    live_token = issue_token(agent=ensure_agent(namespace=LIVE_NS, agent_id="writer"))[1]
    # Clients spread over three namespaces: client i writes in namespace i % 3.
    spread_tokens = [
        issue_token(agent=ensure_agent(namespace=f"{NS}-{i % 3}", agent_id=f"client-{i:03d}"))[1]
        for i in range(64)
    ]
    User.objects.create_user("bench", password=password)
    reacting = reactions.prepare(reactions.REPS) if 10 in only else None
    for conn in connections.all(initialized_only=True):
        conn.close()

    env = {
        **os.environ,
        "DATABASE_URL": settings.DATABASE_URL,
        "REDIS_URL": settings.REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        # The raw Postgres baseline opens 64 connections beside the web workers' pools, and
        # the embedded server allows 100: 2 workers x 14 + 64 + the relay's and ours fit.
        "DB_POOL_MAX": str(max(4, 28 // server_workers())),
    }
    web_port, hello_port = free_port(), free_port()
    web = procs.start("web", server_argv(web_port, "config.asgi:application"), env)
    relay = procs.start("relay", [sys.executable, "manage.py", "relay"], env)
    hello = procs.start("hello", server_argv(hello_port, "bench.hello:application"), env)
    wait_http(web_port, "/api/v1/health", web, var / "web.log")
    wait_http(hello_port, "/hello", hello, var / "hello.log")
    watch.add("web", web.pid, children=True)  # children: uvicorn's workers
    watch.add("relay", relay.pid)
    watch.add("hello", hello.pid, children=True)
    pg_pid = int((var / "pg" / "postmaster.pid").read_text().split()[0])
    watch.add(
        "postgres", pg_pid, children=True
    )  # CPU only: RSS summed over backends counts shared memory many times
    watch.add("valkey", int((var / "valkey" / "valkey.pid").read_text().strip()))

    etcd_port = None
    etcd_bin = shutil.which("etcd")
    if etcd_bin:
        etcd_port, peer = free_port(), free_port()
        etcd = procs.start(
            "etcd",
            [
                etcd_bin, "--name", "bench", "--data-dir", str(var / "etcd"),
                "--listen-client-urls", f"http://{HOST}:{etcd_port}",
                "--advertise-client-urls", f"http://{HOST}:{etcd_port}",
                "--listen-peer-urls", f"http://{HOST}:{peer}",
                "--initial-advertise-peer-urls", f"http://{HOST}:{peer}",
                "--initial-cluster", f"bench=http://{HOST}:{peer}",
                "--log-level", "error",
            ],
            env,
        )  # fmt: skip
        wait_http(etcd_port, "/health", etcd, var / "etcd.log")
        watch.add("etcd", etcd.pid)
    else:
        log("etcd not found (apt-get install etcd-server): the etcd baseline is skipped")
    watch.thread.start()
    log(f"servers up in {time.monotonic() - t0:.0f} s from start")

    report = {
        "machine": machine(),
        "versions": versions(etcd_bin),
        "seconds_per_run": args.seconds,
        "server": server_name(),
        "seeding_seconds": seeding,
        "results": [],
        "notes": [] if etcd_bin else ["etcd-server not installed: etcd baseline skipped"],
    }
    ctx = {
        "args": args,
        "only": only,
        "tokens": tokens,
        "spread_tokens": spread_tokens,
        "live_token": live_token,
        "password": password,
        "web": web_port,
        "web_pid": web.pid,
        "hello": hello_port,
        "etcd": etcd_port,
        "dsn": settings.DATABASE_URL,
        "redis": settings.REDIS_URL,
        "watch": watch,
        "report": report,
        "reacting": reacting,
    }
    asyncio.run(scenarios(ctx))
    report["peak_rss_mb"] = {
        name: round(rss / 2**20, 1) for name, rss in watch.peak.items() if name != "postgres"
    }
    log(f"8. peak RSS (MB): {report['peak_rss_mb']}")
    if 7 in only:
        report["plans"] = explain_plans()
    return report


async def scenarios(ctx: dict) -> None:
    from bench import scenarios as s
    from bench.loadgen import closed_loop

    args, only, report, watch = ctx["args"], ctx["only"], ctx["report"], ctx["watch"]
    ours, hello = s.Target(HOST, ctx["web"]), s.Target(HOST, ctx["hello"])
    tokens = ctx["tokens"]
    # BENCH_LEVELS=16 (comma-separated) runs only those client counts: for A/B runs of one change
    levels = tuple(int(n) for n in os.environ.get("BENCH_LEVELS", "1,16,64").split(","))

    def profile(name: str) -> None:
        """With BENCH_PROFILE=<part of a run's name>, py-spy samples the web process meanwhile."""
        wanted = os.environ.get("BENCH_PROFILE")
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not wanted or wanted not in name or not Path(spy).exists():
            return
        out = RESULTS / ("profile-" + "".join(c if c.isalnum() else "-" for c in name) + ".txt")
        subprocess.Popen(
            [spy, "record", "--pid", str(ctx["web_pid"]), "--duration", str(max(1, int(args.seconds))),
             "--rate", "200", "--gil", "--format", "raw", "--output", str(out), "--nonblocking",
             "--subprocesses"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        log(f"     profiling the web process into {out}")

    async def measure(op, *, clients: int, scenario: str, system: str, extra=None, activity: bool = False):
        before: dict = {}
        sampler = s.PgActivity(ctx["dsn"]) if activity else None

        async def mark() -> None:
            before.update(watch.cpu())
            profile(f"{scenario}-{system}-{clients}")
            if sampler:
                await sampler.start()

        async def done() -> None:
            after.update(watch.cpu())
            if sampler:
                result_extra.update(await sampler.stop())

        result_extra: dict = {}

        after: dict = {}
        result = await closed_loop(
            op, clients=clients, seconds=args.seconds, scenario=scenario, system=system,
            on_measure=mark, on_done=done,
        )  # fmt: skip
        for name, value in after.items():
            if name in before and value - before[name] > 0.005 * result.seconds:
                result.cpu[f"{name}_cpu_pct"] = round(100 * (value - before[name]) / result.seconds, 1)
        result.extra.update(result_extra)
        if extra:
            result.extra.update(extra(op))
        add(result)
        return result

    def add(result) -> None:
        row = result.row()
        report["results"].append(row)
        extra = " ".join(f"{k}={v}" for k, v in row.get("extra", {}).items())
        log(
            f"  {row['scenario']:<24} {row['system']:<12} c={row['clients']:<3} "
            f"{row['ops_per_s']:>8.1f} ops/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
            f"err {row['errors']}  {extra}  cpu {row.get('cpu', {})}"
        )

    if 1 in only:
        log("1. versioned write, own key; Django hello-world floor; Postgres lock waits sampled at 16")
        for c in levels:
            await measure(s.Hello(hello), clients=c, scenario="1 hello-world floor", system="django-hello")
            await measure(
                s.VersionedWrite(ours, tokens),
                clients=c,
                scenario="1 versioned write",
                system="ours",
                activity=c == 16,
            )
            await measure(
                s.PgVersionedUpdate(ctx["dsn"]), clients=c, scenario="1 versioned write", system="postgres"
            )
            if ctx["etcd"]:
                await measure(
                    s.EtcdCas(s.Target(HOST, ctx["etcd"])),
                    clients=c,
                    scenario="1 versioned write",
                    system="etcd",
                )
        await measure(
            s.VersionedWrite(ours, ctx["spread_tokens"]),
            clients=16,
            scenario="1 versioned write, 3 ns",
            system="ours",
            activity=True,
        )
    if 2 in only:
        await quiesce(watch)
        log("2. point read; facts by category (1,000,000 facts)")
        for c in levels:
            await measure(s.PointRead(ours, tokens), clients=c, scenario="2 point read", system="ours")
        for c in levels:
            await measure(
                s.FactsByCategory(ours, tokens), clients=c, scenario="2 facts by category", system="ours"
            )
    if 3 in only:
        await quiesce(watch)
        log("3. hot key: 32 clients increment one record")
        from bench.loadgen import Http

        conn = Http(HOST, ctx["web"], {"Authorization": f"Bearer {tokens[0]}"})
        start = (await conn.request("PUT", f"/api/v1/records/{s.HotKey.key}", {"value": {"count": 0}})).json()
        op = s.HotKey(ours, tokens)
        result = await measure(op, clients=32, scenario="3 hot key", system="ours")
        final = (await conn.request("GET", f"/api/v1/records/{s.HotKey.key}")).json()
        await conn.close()
        result_row = report["results"][-1]
        result_row["extra"] = {
            "increments": op.increments,
            "attempts": op.attempts,
            "conflict_rate": round(op.conflicts / max(1, op.attempts), 3),
            "final_count": final["value"]["count"],
            "count_exact": final["value"]["count"] == start["value"]["count"] + op.increments,
        }
        log(f"     {result_row['extra']}")
    if 4 in only:
        await quiesce(watch)
        log("4. lock cycle: acquire + release")
        for c in levels:
            await measure(s.LockCycle(ours, tokens), clients=c, scenario="4 lock cycle", system="ours")
            await measure(s.RedisLockCycle(ctx["redis"]), clients=c, scenario="4 lock cycle", system="redis")
        await measure(
            s.LockCycle(ours, tokens, resource="s4-contended"),
            clients=16,
            scenario="4 lock contended",
            system="ours",
            extra=lambda op: {"busy_409s": op.busy},
        )
        await measure(
            s.RedisLockCycle(ctx["redis"], resource="contended"),
            clients=16,
            scenario="4 lock contended",
            system="redis",
        )
        await measure(
            s.WaitingLockCycle(ours, tokens, resource="s4-queued"),
            clients=16,
            scenario="4 lock contended, waiting",
            system="ours",
            extra=lambda op: op.fairness(16),
        )
    if 5 in only:
        await quiesce(watch)
        log("5. mixed agent workload; Django hello-world floor")
        for c in levels:
            await measure(s.Hello(hello), clients=c, scenario="5 hello-world floor", system="django-hello")
            await measure(s.Mixed(ours, tokens), clients=c, scenario="5 mixed workload", system="ours")
    if 6 in only or 7 in only:
        cookie = await s.login(ours, "bench", ctx["password"])
    if 6 in only:
        log("6. live latency: API write -> fragment on the console websocket, 100 events/s")
        from bench.loadgen import Http

        # 100 events/s is the issue's rate; 20 events/s beside it shows the live path's own
        # latency when the writes alone do not saturate the web process.
        for consoles, rate in ((1, 100), (20, 100), (100, 100), (20, 20)):
            await quiesce(watch)
            conn = Http(HOST, ctx["web"], {"Authorization": f"Bearer {ctx['live_token']}"})
            after = (
                await conn.request("POST", "/api/v1/events", {"type": "bench.mark", "payload": {}})
            ).json()["id"]
            await conn.close()
            before = watch.cpu()
            result = await s.live_latency(
                ours, token=ctx["live_token"], cookie=cookie, ns=LIVE_NS, consoles=consoles, rate=rate,
                seconds=args.seconds, after=after,
                on_measure=functools.partial(profile, f"6-live-latency-{rate:g}-{consoles}"),  # sockets open
            )  # fmt: skip
            after_cpu = watch.cpu()
            for name in ("web", "relay", "postgres"):
                result.cpu[f"{name}_cpu_pct"] = round(
                    100 * (after_cpu[name] - before[name]) / result.seconds, 1
                )
            add(result)
    if 9 in only:
        log("9. 50 versioned writes a request: /batch and /txn, beside etcd's CAS and Txn (16 clients)")
        report["ratios"] = await s.many_keys(
            measure, ours, tokens, s.Target(HOST, ctx["etcd"]) if ctx["etcd"] else None
        )
        for name, found in report["ratios"].items():
            log(f"  {name}: {found['median']:.3f}x, the median of {found['pairs']}")
    if 10 in only:
        from bench.reactions import REPS, reaction_times

        await quiesce(watch)
        log(f"10. reaction times: each reaction {REPS} times, one at a time")
        report["reactions"] = await reaction_times(HOST, ctx["web"], ctx["redis"], ctx["reacting"], REPS)
        for row in report["reactions"]:
            log(
                f"  {row['reaction']:<44} p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
                f"  max {row['max_ms']} ms  bound {row['bound_ms']} ms:"
                f" {'met' if row['met'] else 'missed'}  err {row['errors']}"
            )
    if 7 in only:
        log("7. scale: console pages and API lists (1M facts, 1M events, 10k agents, 10k locks)")
        await quiesce(watch)
        report["pages"], report["lists"] = await scale(ours, cookie, tokens[0])


async def quiesce(watch: Watch, limit: float = 30.0) -> None:
    """Wait (up to `limit` s) until web and relay are idle: a scenario that saturated them
    leaves a backlog (rendering for 100 consoles) that would be billed to the next one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = watch.cpu()
        await asyncio.sleep(0.5)
        after = watch.cpu()
        if all(after[name] - before[name] < 0.05 for name in ("web", "relay") if name in after):
            return


async def scale(target, cookie: str, token: str) -> tuple[list, list]:
    from bench.loadgen import Http
    from bench.scenarios import time_requests

    as_of_time = (datetime.now(UTC) - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    pages = [
        f"/ns/{NS}/",
        f"/ns/{NS}/agents/",
        f"/ns/{NS}/agents/agent-00042",
        f"/ns/{NS}/facts/",
        f"/ns/{NS}/facts/?category=cat-07",
        f"/ns/{NS}/facts/?q=budget+outage",
        f"/ns/{NS}/facts/12345/",
        f"/ns/{NS}/records/",
        f"/ns/{NS}/records/rec-00042",
        f"/ns/{NS}/records/rec-00042?a=1&b=3",  # the diff of two versions
        f"/ns/{NS}/records/rec-00042?at=1",  # an old version beside the current one, to restore
        f"/ns/{NS}/conflicts/",
        f"/ns/{NS}/locks/",
        f"/ns/{NS}/timeline/",
        f"/ns/{NS}/timeline/?type=lock.acquired",
        f"/ns/{NS}/leftovers/agent-00042",  # an agent's cascade: locks, deliveries, conflicts
        f"/ns/{NS}/groups/",
        f"/ns/{NS}/as-of/?event=500000",  # records, status and locks as of an event (no lock held then)
        f"/ns/{NS}/as-of/?event=995000",  # ... when 5,000 of the seeded locks were held
        f"/ns/{NS}/as-of/?at={as_of_time}",  # ... as of a time: the event found by bisecting positions
        f"/ns/{NS}/search/?q=budget",
    ]
    lists = [
        "/api/v1/facts",
        "/api/v1/facts?category=cat-07",
        "/api/v1/facts?agent_id=agent-00042",
        "/api/v1/facts?q=budget",
        "/api/v1/events?after=0",
        "/api/v1/events?after=500000&type=lock.acquired",
        "/api/v1/events?agent_id=agent-00042",
        "/api/v1/records?prefix=rec-0",
        "/api/v1/agents",  # the full lists: every one of 10,000 (API.md gives them no paging)
        "/api/v1/agents?limit=50",  # keyset pages (an addition: docs/API.md)
        "/api/v1/agents?limit=50&after=agent-05000",
        "/api/v1/locks",
        "/api/v1/locks?limit=50",
        "/api/v1/locks?limit=50&after=res-05000",
        "/api/v1/conflicts",
    ]
    conn = Http(target.host, target.port)
    # Three versions of one record, for the record page's diff and its old version side by side.
    for version in (1, 2):
        body = {"value": {"n": 42, "v": version + 1}, "expected_version": version}
        auth = {"Authorization": f"Bearer {token}"}
        written = await conn.request("PUT", "/api/v1/records/rec-00042", body, headers=auth)
        assert written.status == 200, written.body[:300]
    page_rows = []
    for path in pages:
        row = await time_requests(conn, path, count=8, headers={"Cookie": cookie})
        page_rows.append(row)
        log(
            f"  page {path:<40} {row['status']} {row['bytes']:>8} B  "
            f"p50 {row['p50_ms']} ms  max {row['max_ms']} ms"
        )
    list_rows = []
    for path in lists:
        row = await time_requests(conn, path, count=40, headers={"Authorization": f"Bearer {token}"})
        list_rows.append(row)
        log(
            f"  list {path:<48} {row['status']} {row['bytes']:>8} B  "
            f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
        )
    await conn.close()
    return page_rows, list_rows


def explain_plans() -> list[dict]:
    """EXPLAIN ANALYZE of the queries behind the scale pages and lists: do they use indexes?"""
    from django.db import connection

    from memory_admin import sql as statements
    from memory_admin.models import Agent, Event, Fact, Namespace
    from memory_admin.services.counts import COUNT_CAP, DISTINCT_SQL

    ns = Namespace.objects.get(name=NS)
    agent = Agent.objects.get(ns=ns, name="agent-00042")
    queries = {
        "facts newest": Fact.objects.filter(ns=ns).order_by("-id")[:51],
        "facts by category": Fact.objects.filter(ns=ns, category="cat-07").order_by("-id")[:51],
        "facts by agent": Fact.objects.filter(ns=ns, agent=agent).order_by("-id")[:51],
        "facts full text": Fact.objects.filter(ns=ns)
        .extra(where=["search @@ websearch_to_tsquery('english', %s)"], params=["budget"])
        .order_by("-id")[:51],
        "events after cursor": Event.objects.filter(ns=ns, position__gt=0).order_by("position")[:51],
        "events by type": Event.objects.filter(ns=ns, type="lock.acquired", position__gt=500_000).order_by(
            "position"
        )[:51],
        # as GET /api/v1/events?agent_id= (read_events: after 0)
        "events by agent": Event.objects.filter(ns=ns, agent_id="agent-00042", position__gt=0).order_by(
            "position"
        )[:51],
        "timeline newest": Event.objects.filter(ns=ns, position__isnull=False).order_by("-position")[:51],
    }
    plans = []
    with connection.cursor() as cursor:
        for name, qs in queries.items():
            sql, params = qs.query.sql_with_params()
            plans.append(_explain(cursor, name, sql, params))
        for what, page in (("categories", "facts page"), ("types", "timeline page")):
            sql = DISTINCT_SQL[what]
            plans.append(_explain(cursor, f"distinct {what} ({page})", sql, {"ns": ns.pk, "limit": 200}))
        # The overview counts at most COUNT_CAP + 1 facts, then asks the planner's estimate.
        capped = Fact.objects.filter(ns=ns).order_by().values("pk")[: COUNT_CAP + 1]
        sql, params = capped.query.sql_with_params()
        capped_sql = f"SELECT count(*) FROM ({sql}) s"
        plans.append(_explain(cursor, "fact count, capped (overview)", capped_sql, params))
        # Time travel: a page of records and of agents' status as of event 500,000.
        at = Event.objects.get(ns=ns, position=500_000).created
        plans.append(
            _explain(
                cursor,
                "records as of (as-of page)",
                statements.RECORDS_AT,
                {"ns": ns.pk, "at": at, "after": "", "limit": 50},
            )  # fmt: skip
        )
        plans.append(
            _explain(
                cursor,
                "status as of (as-of page)",
                statements.STATUS_AT,
                {"ns": ns.pk, "n": 500_000, "after": "", "limit": 50},
            )  # fmt: skip
        )
        plans.append(
            _explain(
                cursor,
                "locks as of (as-of page)",
                statements.LOCKS_AT,
                {"ns": ns.pk, "n": 500_000, "after": "", "limit": 50},
            )  # fmt: skip
        )
    return plans


def _explain(cursor, name: str, sql: str, params) -> dict:
    cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + sql, params)
    lines = [row[0] for row in cursor.fetchall()]
    text = "\n".join(lines)
    ms = next(
        (float(line.split(":")[1].split()[0]) for line in lines if line.startswith("Execution Time")), None
    )
    return {
        "query": name,
        "uses_index": any(k in text for k in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")),
        "seq_scan": "Seq Scan" in text,
        "execution_ms": ms,
        "plan": lines,
    }


# --- report --------------------------------------------------------------------------------


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": mem[1].split()[1] if len(mem) > 1 else "",
        "kernel": platform.release(),
        "load_before": os.getloadavg(),
    }


def versions(etcd_bin: str | None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import psycopg
    import redis as redis_py

    out = {"python": platform.python_version()}
    for name in ("django", "uvicorn", "daphne", "channels", "django-ninja", "psycopg", "redis"):
        with contextlib.suppress(PackageNotFoundError):  # daphne only when installed to compare
            out[name] = version(name)
    with psycopg.connect(os.environ.get("BENCH_DSN") or _dsn()) as conn:
        out["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
    client = redis_py.Redis.from_url(_redis_url())
    info = client.info("server")
    out["valkey"] = info.get("valkey_version") or info.get("redis_version")
    client.close()
    if etcd_bin:
        out["etcd"] = subprocess.run([etcd_bin, "--version"], capture_output=True, text=True).stdout.split()[
            2
        ]
    return out


def _dsn() -> str:
    from django.conf import settings

    return settings.DATABASE_URL


def _redis_url() -> str:
    from django.conf import settings

    return settings.REDIS_URL


def write_report(report: dict, out: Path) -> None:
    from bench.chart import draw

    out.mkdir(parents=True, exist_ok=True)
    report["machine"]["load_after"] = os.getloadavg()
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    if report.get("plans"):
        with open(out / "plans.txt", "w") as handle:
            for plan in report["plans"]:
                handle.write(f"-- {plan['query']}\n" + "\n".join(plan["plan"]) + "\n\n")
    table = format_table(report)
    (out / "table.md").write_text(table)
    print("\n" + table)
    try:
        draw(report, out / "bench.png")
    except ImportError as exc:
        log(f"no chart: {exc} (pip install -r bench/requirements.txt)")


def format_table(report: dict) -> str:
    lines = [
        "| scenario | system | clients | ops/s | p50 ms | p99 ms | errors | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in report["results"]:
        notes = ", ".join(f"{k} {v}" for k, v in row.get("extra", {}).items())
        gen = row.get("cpu", {}).get("generator_cpu_pct")
        if gen is not None:
            notes = (notes + "; " if notes else "") + f"generator {gen}% CPU"
        lines.append(
            f"| {row['scenario']} | {row['system']} | {row['clients']} | {row['ops_per_s']:.0f} | "
            f"{row['p50_ms']} | {row['p99_ms']} | {row['errors']} | {notes} |"
        )
    if report.get("ratios"):
        lines += ["", "| ratio (scenario 9, pairs side by side) | each pair | median |"]
        lines += ["| --- | --- | ---: |"]
        lines += [
            f"| {name} | {', '.join(f'{r:.3f}' for r in found['pairs'])} | **{found['median']:.3f}x** |"
            for name, found in report["ratios"].items()
        ]
    for title, key in (("console page", "pages"), ("API list", "lists")):
        if report.get(key):
            lines += [
                "",
                f"| {title} | status | bytes | p50 ms | p99 ms | max ms |",
                "| --- | ---: | ---: | ---: | ---: | ---: |",
            ]
            lines += [
                f"| `{r['path']}` | {r['status']} | {r['bytes']} | "
                f"{r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
                for r in report[key]
            ]
    if report.get("reactions"):
        lines += [
            "",
            "| reaction (scenario 10) | n | errors | p50 ms | p99 ms | max ms | bound (every one) | |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        lines += [
            f"| {r['reaction']} | {r['n']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
            f"< {r['bound_ms']} ms | {'**met**' if r['met'] else '**missed**'} |"
            for r in report["reactions"]
        ]
    if report.get("plans"):
        lines += ["", "| query | index used | seq scan | ms |", "| --- | --- | --- | ---: |"]
        lines += [
            f"| {p['query']} | {'yes' if p['uses_index'] else 'no'} | "
            f"{'yes' if p['seq_scan'] else 'no'} | {p['execution_ms']} |"
            for p in report["plans"]
        ]
    if report.get("peak_rss_mb"):
        lines += ["", "peak RSS (MB): " + ", ".join(f"{k} {v}" for k, v in report["peak_rss_mb"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
