"""A real Redis Cluster of three masters on loopback ports, for the tests that run on one.

Debian's `redis-server --cluster-enabled yes`, one per port, in a temp folder of its own, joined
by `redis-cli --cluster create ... --cluster-yes`; `stop()` ends the servers and removes the
folder. Without `redis-server` the cluster tests are skipped with that reason, unless
REQUIRE_CLUSTER=1 (as CI sets it), which makes a missing server an error.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.cluster

MASTERS = 3


def missing() -> str | None:
    """Why no cluster can start here, or None."""
    for program in ("redis-server", "redis-cli"):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian: apt-get install redis-server)"
    return None


def required() -> bool:
    return os.environ.get("REQUIRE_CLUSTER", "") == "1"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports free for a cluster node: its own and its bus port (+10000)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55000 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


@dataclass
class RedisCluster:
    folder: Path
    ports: list[int]
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """REDIS_URL naming this cluster (every node, so any of them can introduce the rest)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        node = self.folder / str(port)
        node.mkdir(exist_ok=True)
        args = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            "--save", "", "--appendonly", "no", "--dir", str(node),
        ]  # fmt: skip
        log = open(node / "log", "wb")  # noqa: SIM115 - the server writes to it for its whole life
        self.procs[port] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: _answers(port), f"redis-server on {port}")

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.ports[0], decode_responses=True)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start() -> RedisCluster:
    """Three masters, every slot assigned and the cluster state ok."""
    cluster = RedisCluster(Path(tempfile.mkdtemp(prefix="ma-rc-")), free_ports(MASTERS))
    try:
        for port in cluster.ports:
            cluster.start_node(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.ports), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(lambda: all(_state_ok(port) for port in cluster.ports), "the cluster's state to be ok")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _answers(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.ConnectionError:
        return False


def _state_ok(port: int) -> bool:
    info = redis.Redis(port=port, socket_timeout=1, decode_responses=True).cluster("info")
    return info.get("cluster_state") == "ok"


def _wait(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
