"""Process helpers for what starts servers of its own (the embedded servers, the tests, the
fault suite, the benchmark): a free port, a wait for a condition, a child stopped in steps."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

HOST = "127.0.0.1"
T = TypeVar("T")


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def wait_for(
    predicate: Callable[[], T], timeout: float = 10, interval: float = 0.05, message: str = "condition"
) -> T:
    """Poll `predicate` until it returns something truthy, and return that; AssertionError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10, group: bool = False) -> None:
    """Send `sig` (to the process group the child leads, with `group`), wait up to `grace`
    seconds, then SIGKILL; returns once the child is reaped. Nothing for a child already gone."""
    if proc.poll() is not None:
        return
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    with suppress(ProcessLookupError):  # it ended meanwhile
        send(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            send(signal.SIGKILL)
        proc.wait()
