"""The web process: `python -m config.web` serves config.asgi with uvicorn in WEB_WORKERS processes.

Why uvicorn and several processes (measured, bench/README.md): one Python process tops out at
one core, and an API request costs a few milliseconds of CPU in Django, so the web tier scales
by processes. uvicorn forks its workers onto one listening socket, supervises them (a dead
worker is replaced) and costs less CPU per request than Daphne did (httptools, uvloop). The
Channels Redis layer carries doorbells to every worker, as it would across machines.

HOST, PORT and WEB_WORKERS come from the environment, checked as the settings check them;
this module does not import the settings (they need the servers running).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

from config.env import env_int, env_str

APP = "config.asgi:application"


def workers() -> int:
    """WEB_WORKERS, by default one per core: the API is CPU-bound in Python."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return env_int("WEB_WORKERS", cores, minimum=1, maximum=64)


def forwarding() -> list[str]:
    """uvicorn's options for X-Forwarded-For/-Proto: trusted only from the addresses in
    FORWARDED_ALLOW_IPS (a proxy's, comma-separated; `*` for any), by default from none.
    uvicorn itself would trust them from 127.0.0.1, so anything on the same host — or any client
    of a proxy that passes the header on — could pick its own address (and dodge the login
    lockout, memory_admin/throttle.py)."""
    trusted = (env_str("FORWARDED_ALLOW_IPS", "") or "").strip()
    if not trusted:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", "--forwarded-allow-ips", trusted]


def argv(host: str, port: int, workers: int = 1, app: str = APP) -> list[str]:
    """The command line of a web process serving `app` on host:port."""
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--lifespan", "off",  # Channels' router speaks http and websocket only
        "--no-server-header",
        "--timeout-graceful-shutdown", "5",  # open console websockets must not hold a stop up
        *forwarding(),
    ]  # fmt: skip


METRICS_DIRS = "memory-admin-metrics-"


def share_metrics() -> None:
    """Called first thing in each web process (config/asgi.py): when it is one of several
    uvicorn workers, point prometheus_client at a folder that every worker of this server
    writes and any worker's /metrics reads (its multiprocess mode), before anything imports
    prometheus_client. The folder is named after the uvicorn supervisor (pid and start time),
    so a restarted server starts from zero; folders of supervisors that are gone are removed.
    A PROMETHEUS_MULTIPROC_DIR set by the operator is used as it is (empty it at each start).
    """
    parent = multiprocessing.parent_process()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or parent is None:
        return  # one process: its own counters are all there is
    base = Path(tempfile.gettempdir())
    folder = base / f"{METRICS_DIRS}{parent.pid}-{_started(parent.pid)}"
    folder.mkdir(mode=0o700, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    # What a dead worker last said of open sockets and pools is no longer so (the supervisor
    # replaces a worker that dies); its counters stay, as they should.
    for gauge in folder.glob("gauge_live*_*.db"):
        pid = gauge.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            gauge.unlink(missing_ok=True)
    for old in base.glob(f"{METRICS_DIRS}*"):
        pid, _, started = old.name.removeprefix(METRICS_DIRS).partition("-")
        if old != folder and pid.isdigit() and _started(int(pid)) != started:
            shutil.rmtree(old, ignore_errors=True)


def _started(pid: int) -> str:
    """The process' start time in clock ticks since boot ("" when it is gone): with the pid,
    a name no later process has."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def main() -> None:
    host = env_str("HOST", "127.0.0.1")
    port = env_int("PORT", 8000, minimum=1, maximum=65535)
    command = argv(host, port, workers())
    os.execv(command[0], command)  # the same pid: whoever started us signals uvicorn itself


if __name__ == "__main__":
    main()
