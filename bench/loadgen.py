"""The load generator: a raw asyncio HTTP/1.1 keep-alive client, a minimal websocket client,
and closed loops of concurrent clients for a fixed time.

Raw sockets instead of httpx because the generator shares the machine's two cores with the
servers it measures: every microsecond it spends parsing is taken from them. One request on
one connection at a time, Content-Length bodies (what Daphne, etcd's gateway and our API send).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class HttpError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.base = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reused = False  # whether a response came on this connection already

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.reused = False

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        if self.writer is None:
            await self.connect()
        if raw is None and body is not None:
            raw = json.dumps(body, separators=(",", ":")).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.base}{extra}"
        if raw is not None:
            if "Content-Type" not in extra:
                head += "Content-Type: application/json\r\n"
            head += f"Content-Length: {len(raw)}\r\n"
        message = head.encode() + b"\r\n" + (raw or b"")
        for attempt in (1, 2):
            reused = self.reused
            self.writer.write(message)
            try:
                response = await self._read()
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await self.close()
                # A keep-alive connection the server closed while idle (uvicorn: after 5 s)
                # fails the next request before any answer: send an idempotent one again on a
                # new connection, as HTTP clients do.
                nothing_read = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                if attempt == 1 and reused and nothing_read and method in IDEMPOTENT:
                    await self.connect()
                    continue
                raise HttpError(f"connection lost: {exc!r}") from exc
            self.reused = self.writer is not None
            return response
        raise AssertionError("unreachable")

    async def _read(self) -> Response:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        cookies = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "set-cookie":
                cookies.append(value.strip())
            headers[name] = value.strip()
        if cookies:
            headers["set-cookie"] = "\n".join(cookies)
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            body = b"".join(parts)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = await self.reader.read()
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, body)


class WebSocket:
    """A minimal RFC 6455 client: text messages, no extensions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int, path: str, headers: dict[str, str]) -> WebSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{extra}\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            writer.close()
            raise HttpError(f"websocket refused: {head[:200]!r}")
        return cls(reader, writer)

    async def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def recv(self) -> str | None:
        """The next text message; None when the server closed."""
        parts = []
        while True:
            b1, b2 = await self.reader.readexactly(2)
            n = b2 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            mask = await self.reader.readexactly(4) if b2 & 0x80 else None
            payload = await self.reader.readexactly(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b1 & 0x0F
            if opcode == 0x8:
                return None
            if opcode == 0x9:  # ping: answer with a pong
                self.writer.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            if opcode in (0x1, 0x2, 0x0):
                parts.append(payload)
                if b1 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        self.writer.close()


# --- closed loops -----------------------------------------------------------------------


@dataclass
class Result:
    """One measured run: a scenario at a number of clients."""

    scenario: str
    system: str  # ours, postgres, redis, etcd, django-hello
    clients: int
    seconds: float
    ops: int
    errors: int
    latencies: list[float] = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float | None:
        if not self.latencies:
            return None
        data = sorted(self.latencies)
        index = min(len(data) - 1, max(0, round(p / 100 * len(data) + 0.5) - 1))
        return data[index] * 1000

    def row(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "system": self.system,
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "ops": self.ops,
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_ms": _round(self.pct(50)),
            "p99_ms": _round(self.pct(99)),
            "max_ms": _round(max(self.latencies) * 1000 if self.latencies else None),
            "errors": self.errors,
            **({"extra": self.extra} if self.extra else {}),
            **({"cpu": self.cpu} if self.cpu else {}),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class Op:
    """What a client does in one iteration. `setup` makes its per-client state; an iteration
    counts as `per_run` operations (a request that carries several)."""

    per_run = 1

    async def setup(self, index: int) -> Any:
        return None

    async def run(self, state: Any) -> bool:  # True: success; False: an error (counted)
        raise NotImplementedError

    async def teardown(self, state: Any) -> None:
        pass


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def closed_loop(
    op: Op,
    *,
    clients: int,
    seconds: float,
    scenario: str,
    system: str,
    warmup: float = 0.5,
    on_measure: Callable[[], Awaitable[None]] | None = None,
    on_done: Callable[[], Awaitable[None]] | None = None,
) -> Result:
    """`clients` loops each doing op.run back to back for `seconds` (after a warm-up)."""
    states = await asyncio.gather(*(op.setup(i) for i in range(clients)))
    latencies: list[float] = []
    counts = {"ops": 0, "errors": 0}
    measuring = False
    stop = False

    async def loop(state: Any) -> None:
        while not stop:
            start = time.perf_counter()
            try:
                ok = await op.run(state)
            except Exception:  # an error is counted, the loop goes on
                ok = False
                await asyncio.sleep(0.01)
            if measuring:
                if ok:
                    latencies.append(time.perf_counter() - start)
                    counts["ops"] += op.per_run
                else:
                    counts["errors"] += 1

    tasks = [asyncio.create_task(loop(s)) for s in states]
    await asyncio.sleep(warmup)
    if on_measure:
        await on_measure()
    measuring = True
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    if on_done:
        await on_done()
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(op.teardown(s) for s in states), return_exceptions=True)
    result = Result(scenario, system, clients, elapsed, counts["ops"], counts["errors"], latencies)
    result.cpu["generator_cpu_pct"] = round(100 * cpu / elapsed, 1)
    return result
