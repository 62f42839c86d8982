"""`make demo`: a research, a writing and a review agent (or K copies of each) working on a
report together through the Python client, each its own process, against a running server.

Tokens are issued here (in the database of these settings, so the server at --url must
use the same one) and revoked when the agents stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count

from memory_admin.models import Conflict, Event, Fact, Namespace, Record, Token
from memory_admin.services.tokens import ensure_agent, issue_token, revoke_token

ROLES = ("research", "writing", "review")
GRACE_SECONDS = 10


def default_url() -> str:
    host = settings.HOST if settings.HOST not in ("", "0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.PORT}"


class Command(BaseCommand):
    help = "Run the demo team (research, writing, review agents) against a running server."

    def add_arguments(self, parser):
        parser.add_argument("--seconds", type=float, default=120, help="how long to run; 0: until Ctrl-C")
        parser.add_argument("--url", default=None, help="the server (default: http://HOST:PORT of settings)")
        parser.add_argument("--copies", type=int, default=1, help="copies of each agent (default 1)")
        parser.add_argument("--namespace", default="report-team")

    def handle(self, *args, seconds: float, url: str | None, copies: int, namespace: str, **options):
        url = (url or default_url()).rstrip("/")
        if copies < 1:
            raise CommandError("--copies must be at least 1")
        self._check_server(url)
        team = [(role, f"{role}-{i}") for i in range(1, copies + 1) for role in ROLES]
        tokens: dict[str, tuple[Token, str]] = {}
        for _, name in team:
            tokens[name] = issue_token(agent=ensure_agent(namespace=namespace, agent_id=name))
        try:
            self._check_token(url, tokens[team[0][1]][1])
            started = (
                Event.objects.filter(ns__name=namespace)
                .order_by("-seq")
                .values_list("seq", flat=True)
                .first()
            )
            died = self._run(url, team, tokens, seconds)
        finally:
            for token, _ in tokens.values():
                revoke_token(token=token)
        self._summary(namespace, started or 0, died, len(team))
        if died:
            raise CommandError(f"{len(died)} of {len(team)} demo agents died: " + "; ".join(died))

    def _check_server(self, url: str) -> None:
        try:
            response = httpx.get(f"{url}/api/v1/health", timeout=5)
        except httpx.HTTPError as exc:
            raise CommandError(
                f"No Memory Admin server answers at {url} ({type(exc).__name__}).\n"
                "Start one in another terminal with `make run`, then run `make demo` again "
                "(or pass --url to reach a server elsewhere)."
            ) from exc
        if response.status_code != 200:
            raise CommandError(
                f"The server at {url} is not healthy ({response.status_code}): {response.text[:300]}"
            )

    def _check_token(self, url: str, token: str) -> None:
        response = httpx.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        if response.status_code == 401:
            raise CommandError(
                f"The server at {url} refused a token issued in this database: it uses another "
                "database. Run the demo with the same DATABASE_URL as the server."
            )

    def _run(self, url: str, team, tokens, seconds: float) -> list[str]:
        wal_dir = Path(settings.VAR_DIR) / "demo"
        agents: dict[str, subprocess.Popen] = {}
        stopping: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda signum, _: stopping.append(signum))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        self.stdout.write(
            f"Demo team of {len(team)} agents against {url} "
            + (f"for {seconds:g} s" if seconds > 0 else "until Ctrl-C")
            + "; watch it in the console."
        )
        self.stdout.flush()
        try:
            for role, name in team:
                argv = [sys.executable, "-m", "memory_admin.demo.team", role, "--name", name, "--url", url]
                argv += ["--seconds", str(seconds), "--wal", str(wal_dir / f"{name}.wal")]
                agents[name] = subprocess.Popen(
                    argv,
                    cwd=settings.BASE_DIR,
                    env={**os.environ, "MEMORY_ADMIN_TOKEN": tokens[name][1], "PYTHONUNBUFFERED": "1"},
                    stdin=subprocess.DEVNULL,
                    process_group=0,  # Ctrl-C reaches this process only; it stops each agent in turn
                )
            while not stopping and any(agent.poll() is None for agent in agents.values()):
                time.sleep(0.2)
        finally:
            for agent in agents.values():
                if agent.poll() is None:
                    agent.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + GRACE_SECONDS
            for agent in agents.values():
                try:
                    agent.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if stopping:  # Ctrl-C: each agent was told to stop, and did as told
            return []
        return [_death(name, agent.returncode) for name, agent in agents.items() if agent.returncode]

    def _summary(self, namespace: str, started: int, died: list[str], size: int) -> None:
        ns = Namespace.objects.filter(name=namespace).first()
        if ns is None:
            return
        draft = Record.objects.filter(ns=ns, key="report/draft").first()
        counts = dict(
            Event.objects.filter(ns=ns, seq__gt=started)
            .values_list("type")
            .annotate(n=Count("seq"))
            .order_by()
        )
        resolved = Conflict.objects.filter(ns=ns, status="resolved").count()
        outcome = f"Demo ended with {len(died)} of {size} agents dead" if died else "Demo finished"
        self.stdout.write(
            f"{outcome}: {Fact.objects.filter(ns=ns).count()} facts, draft at version "
            f"{draft.version if draft else 0}, {resolved} conflicts resolved; events this run: "
            + ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
        )


def _death(name: str, code: int) -> str:
    """How an agent process ended, for the summary: its exit code, or the signal that killed it."""
    if code < 0:
        return f"{name} was killed by {signal.Signals(-code).name}"
    return f"{name} exited with code {code} (its traceback is above)"
