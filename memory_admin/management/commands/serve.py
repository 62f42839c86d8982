"""`make run`: the whole service in one command.

Migrates, makes sure an operator can log in, then runs the two processes of DESIGN.md
(web: uvicorn in WEB_WORKERS processes, config/web.py; relay: manage.py relay) side by side
until a stop signal or until either of them dies, and then stops both, plus the embedded
Postgres / Valkey that manage.py started for it because DATABASE_URL / REDIS_URL were unset.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from config import embedded, web

GRACE_SECONDS = 10  # after SIGTERM, how long a child gets before SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.2

# Loaded once here: the child only calls it, between fork and exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


class _Stop(BaseException):
    """A stop signal arrived while migrating (a BaseException, so no `except Exception` eats it)."""


class Command(BaseCommand):
    help = "Migrate, ensure the operator account, then run web (uvicorn) and relay until stopped."

    def handle(self, *args, verbosity: int, **options) -> None:
        # manage.py started (or reused) the embedded servers for each URL not given; those
        # are ours to stop at the end, the servers behind given URLs are not.
        embedded_postgres = not os.environ.get("DATABASE_URL", "").strip()
        embedded_redis = not os.environ.get("REDIS_URL", "").strip()
        if _listening(settings.HOST, settings.PORT):
            # Refused before migrating and outside the cleanup below: the process holding the
            # port may be another serve using the same embedded servers, so leave them running.
            raise CommandError(f"{settings.HOST}:{settings.PORT} is in use; set PORT to a free port")

        self._stopping: signal.Signals | None = None
        self._raise_on_signal = True
        # A signal ignored from the start stays ignored: SIGHUP under nohup, SIGINT in a
        # shell's background job.
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in STOP_SIGNALS
            if signal.getsignal(sig) is not signal.SIG_IGN
        }
        children: dict[str, subprocess.Popen] = {}
        failure = None
        try:
            call_command("migrate", interactive=False, verbosity=verbosity)
            # From here on signals are only noted: interrupted, ensure_operator could set a
            # password it never prints, and starting a child could leave it running unrecorded.
            self._raise_on_signal = False
            if self._stopping is None:
                call_command("ensure_operator", verbosity=verbosity)
                _release_database()
                children = self._start_children()
                failure = self._supervise(children)
        except _Stop:
            pass
        finally:
            self._raise_on_signal = False
            if self._stopping is not None:
                self.stdout.write(f"{self._stopping.name} received; stopping")
            _terminate(children)
            _release_database()
            var = Path(settings.VAR_DIR)
            if embedded_redis:
                embedded.stop_redis(var)
            if embedded_postgres:
                embedded.stop_postgres(var)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if failure:
            raise CommandError(failure)
        self.stdout.write("Memory Admin stopped")

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stopping is None:  # later signals must not interrupt the cleanup
            self._stopping = signal.Signals(signum)
            if self._raise_on_signal:
                raise _Stop

    def _start_children(self) -> dict[str, subprocess.Popen]:
        # The children must not start embedded servers of their own: give them the URLs in use.
        env = {
            **os.environ,
            "DATABASE_URL": settings.DATABASE_URL,
            "REDIS_URL": settings.REDIS_URL,
            # With the URLs given, the embedded default's secret would not be looked for.
            "SECRET_KEY": settings.SECRET_KEY,
            "PYTHONUNBUFFERED": "1",  # their log lines interleave with ours in order
        }
        base = Path(settings.BASE_DIR)
        commands = {
            "web": web.argv(settings.HOST, settings.PORT, settings.WEB_WORKERS),
            "relay": [sys.executable, str(base / "manage.py"), "relay"],
        }  # fmt: skip
        children = {}
        for name, argv in commands.items():
            # Own process group: a Ctrl-C in the terminal reaches only this process, which
            # then stops each child with one SIGTERM, instead of every process at once.
            children[name] = subprocess.Popen(
                argv,
                cwd=base,
                env=env,
                stdin=subprocess.DEVNULL,
                process_group=0,
                preexec_fn=_die_with_parent,
            )
        return children

    def _supervise(self, children: dict[str, subprocess.Popen]) -> str | None:
        """Wait for a stop signal or a child's exit; return the failure if a child exited."""
        announced = False
        while self._stopping is None:
            for name, proc in children.items():
                code = proc.poll()
                if code is not None:
                    return f"{name} exited unexpectedly with code {code}; stopped the others"
            if not announced and _listening(settings.HOST, settings.PORT):
                host = f"[{settings.HOST}]" if ":" in settings.HOST else settings.HOST
                self.stdout.write(f"Memory Admin console: http://{host}:{settings.PORT}/")
                self.stdout.flush()
                announced = True
            time.sleep(POLL_SECONDS)
        return None


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if serve itself dies without cleaning up."""
    if _prctl is not None:
        parent = os.getppid()
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def _terminate(children: dict[str, subprocess.Popen]) -> None:
    """SIGTERM every running child's process group, then SIGKILL what is left after the grace period."""
    running = [proc for proc in children.values() if proc.poll() is None]
    for proc in running:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
        os.killpg(proc.pid, sig)


def _release_database() -> None:
    """Close this process's pooled connections: it is idle while the children run, and the
    embedded Postgres stops faster with no clients left."""
    for conn in connections.all(initialized_only=True):
        conn.close()
        if hasattr(conn, "close_pool"):  # the postgresql backend with pooling on
            conn.close_pool()


def _listening(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port (a wildcard host means this machine)."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False
