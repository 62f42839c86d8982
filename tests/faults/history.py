"""Histories of concurrent runs and a mechanical check of them (Jepsen/Knossos style, simplified).

Every operation a test client performs against records and locks is recorded with the
monotonic time it was invoked and returned, the request and the response (or the error
that stood in for one). `check` then looks for what the service promises never happens:

records
  - each (key, version) is written at most once;
  - every successful conditional write's `expected_version` was the previous version
    (the version it returns is expected + 1);
  - no read returns a version older than one whose write completed before the read began,
    nor older than what a read that completed before it began had already seen;
  - a read of (key, version) returns the value that the write of that version sent.

locks
  - the hold intervals of successful acquires never overlap. A holder may count on the lock
    from when its acquire returned until the earliest of: invoking release, its acquire's
    invoke time + TTL (the server starts the TTL after that), and a moment at which the
    coordination store is known to have lost its data (`lease_breaks`, e.g. a Redis restart
    without persistence: the service promises fencing there, not mutual exclusion);
  - fencing tokens grow: an acquire that began after another returned has a larger token.

A history that fails is written to test-artifacts/ as JSON, with the violations on top.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class Op:
    process: str  # the client that performed it
    kind: str  # read | write | acquire | release
    target: str  # record key or lock resource
    invoke: float
    ret: float | None = None
    request: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # None: no answer (connection lost, timeout)
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class History:
    """A thread-safe list of operations; `clock` is shared by every client of a run."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.notes: list[dict[str, Any]] = []  # faults injected, with their times
        self._lock = threading.Lock()

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    def add(self, op: Op) -> Op:
        with self._lock:
            self.ops.append(op)
        return op

    def note(self, what: str, **details: Any) -> float:
        at = self.clock()
        with self._lock:
            self.notes.append({"at": at, "what": what, **details})
        return at

    def to_json(self, violations: list[str] | None = None) -> str:
        return json.dumps(
            {
                "violations": violations or [],
                "notes": self.notes,
                "ops": [asdict(op) for op in sorted(self.ops, key=lambda op: op.invoke)],
            },
            indent=1,
            default=str,
        )

    def save(self, name: str, violations: list[str], folder: Path = ARTIFACTS) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"history-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(self.to_json(violations))
        return path


def check_records(ops: list[Op]) -> list[str]:
    problems: list[str] = []
    writes: dict[str, list[Op]] = defaultdict(list)
    reads: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == "write" and op.ok:
            writes[op.target].append(op)
        elif op.kind == "read" and op.ok:
            reads[op.target].append(op)

    for key in writes.keys() | reads.keys():
        done = writes.get(key, [])
        seen: dict[int, Op] = {}
        for op in done:
            version = op.body["version"]
            if version in seen:
                problems.append(
                    f"{key}: version {version} written twice, by {seen[version].process} and {op.process}"
                )
            seen[version] = op
            expected = op.request.get("expected_version")
            if expected is not None and version != expected + 1:
                problems.append(
                    f"{key}: {op.process} wrote over version {expected} and got version {version}"
                )
        written = {v: op.request.get("value") for v, op in seen.items()}
        for op in reads.get(key, []):
            version = op.body["version"]
            if version in written and op.body["value"] != written[version]:
                problems.append(f"{key}: a read of version {version} returned a value no write of it sent")
        problems += _stale_reads(key, done, reads.get(key, []))
    return problems


def _stale_reads(key: str, writes: list[Op], reads: list[Op]) -> list[str]:
    """Reads that saw less than what had completed before they began."""
    problems = []
    done = sorted(((op.ret, op.body["version"], op.process) for op in writes + reads), key=lambda x: x[0])
    ends = [d[0] for d in done]
    best: list[tuple[int, str]] = []  # prefix maximum of (version, who) over completion order
    for _, version, who in done:
        best.append(max(best[-1], (version, who)) if best else (version, who))
    for op in reads:
        i = bisect.bisect_left(ends, op.invoke)  # operations that returned before the read began
        if i and best[i - 1][0] > op.body["version"]:
            problems.append(
                f"{key}: {op.process} read version {op.body['version']} at {op.invoke:.3f}, but version "
                f"{best[i - 1][0]} (by {best[i - 1][1]}) was complete before it began"
            )
    return problems


def check_locks(ops: list[Op], lease_breaks: list[float] = ()) -> list[str]:
    problems: list[str] = []
    by_resource: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind in ("acquire", "release"):
            by_resource[op.target].append(op)
    for resource, group in by_resource.items():
        releases = defaultdict(list)
        for op in group:
            if op.kind == "release":
                releases[(op.process, op.request["fencing_token"])].append(op.invoke)
        holds = []
        for op in group:
            if op.kind != "acquire" or not op.ok:
                continue
            token = op.body["fencing_token"]
            end = op.invoke + op.request["ttl_seconds"]
            end = min([end, *releases.get((op.process, token), [])])
            end = min([end, *(moment for moment in lease_breaks if moment > op.ret)])
            holds.append((op.ret, end, op.process, token))
        holds.sort()
        for (start_a, end_a, who_a, tok_a), (start_b, _, who_b, tok_b) in zip(holds, holds[1:], strict=False):
            if start_b < end_a:
                problems.append(
                    f"{resource}: {who_a} held it (token {tok_a}) from {start_a:.3f} to {end_a:.3f}, "
                    f"and {who_b} (token {tok_b}) from {start_b:.3f}"
                )
        acquired = sorted((op for op in group if op.kind == "acquire" and op.ok), key=lambda op: op.ret)
        for earlier in acquired:
            for later in acquired:
                before = later.invoke > earlier.ret
                if before and later.body["fencing_token"] <= earlier.body["fencing_token"]:
                    problems.append(
                        f"{resource}: token {later.body['fencing_token']} of {later.process} is not larger "
                        f"than {earlier.body['fencing_token']} of {earlier.process}, acquired before it began"
                    )
    return problems


def check(history: History, name: str, lease_breaks: list[float] = (), folder: Path = ARTIFACTS) -> list[str]:
    """All the checks; a failing history is saved under test-artifacts/ and its path reported."""
    problems = check_records(history.ops) + check_locks(history.ops, lease_breaks)
    if problems:
        path = history.save(name, problems, folder)
        problems.append(f"history saved to {path}")
    return problems
