"""One agent of the demo team, as its own process: `python -m memory_admin.demo.team ROLE`.

Uses the Python client only (no Django), the way an agent author would:
- research stores facts by category and publishes `fact_discovered`;
- writing follows `fact_discovered` on the event stream, takes the lock of a report section,
  updates the versioned draft through it (a fenced write) and publishes `section_written`;
- review takes `section_written` events through a consumer group, reads the facts and the
  draft, and writes its notes with expected_version; when the writer got there first it
  gets a ConflictError and retries with `update`, which closes its conflict;
- all of them heartbeat their status.
The token comes from MEMORY_ADMIN_TOKEN. SIGTERM or SIGINT ends the agent after its step.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from memory_admin_client import AgentEvent, ConflictError, LockHeld, MemoryAdminError, MemoryClient

DRAFT = "report/draft"
TOPICS: dict[str, list[str]] = {
    "market_size": [
        "The market is worth ${n}.{m}B this year",
        "Analysts expect {n}% yearly growth to {y}",
        "The top three vendors hold {n}% of the market",
    ],
    "competitors": [
        "Competitor {c} cut prices by {n}%",
        "Competitor {c} opened an office in {city}",
        "Competitor {c} raised ${n}M",
    ],
    "customers": [
        "{n}% of surveyed customers want on-premise hosting",
        "Customers in {city} renew at {n}%",
        "Support tickets fell {n}% after onboarding changes",
    ],
    "risks": [
        "New regulation in {city} takes effect in {y}",
        "Supply costs rose {n}% this quarter",
        "A key supplier depends on one factory in {city}",
    ],
}
NAMES = {"c": ["Acme", "Globex", "Initech", "Umbrella"], "city": ["Lyon", "Osaka", "Austin", "Leeds"]}
NOTES = ["needs a source", "clear", "tighten the wording", "add numbers", "good"]


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: other agents (or a person trying the
    API) may have written anything under the demo's keys, and the team carries on over it."""
    return value if isinstance(value, dict) else {}


def sections_of(draft: Any) -> dict[str, Any]:
    """The draft's sections by name, whatever shape the record holds."""
    return as_dict(as_dict(draft).get("sections"))


class Agent:
    def __init__(self, name: str, client: MemoryClient, seconds: float) -> None:
        self.name = name
        self.client = client
        self.deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
        self.stopping = threading.Event()

    def running(self) -> bool:
        return not self.stopping.is_set() and time.monotonic() < self.deadline

    def pause(self, low: float, high: float) -> None:
        self.stopping.wait(random.uniform(low, high))

    def say(self, text: str) -> None:
        sys.stdout.write(f"[{self.name}] {text}\n")  # one write: lines of the team never interleave
        sys.stdout.flush()

    def status(self, status: str, detail: str = "") -> None:
        self.client.set_agent_status(self.name, status, detail, ttl_seconds=15)

    def run(self) -> None:
        self.status("starting")
        while self.running():
            try:
                self.step()
            except MemoryAdminError as exc:  # the server away or busy: say so, go on
                self.say(f"{type(exc).__name__}: {exc}")
                self.pause(1, 2)
        self.status("done", "demo finished")

    def step(self) -> None:
        raise NotImplementedError


class Research(Agent):
    def step(self) -> None:
        category = random.choice(list(TOPICS))
        self.status("researching", category)
        fact = random.choice(TOPICS[category]).format(
            n=random.randint(2, 60),
            m=random.randint(0, 9),
            y=random.randint(2026, 2030),
            c=random.choice(NAMES["c"]),
            city=random.choice(NAMES["city"]),
        )
        meta = {
            "source": f"report_{random.randint(100, 999)}",
            "confidence": round(random.uniform(0.5, 0.99), 2),
        }
        fact_id = self.client.store_fact(self.name, fact, category, metadata=meta)
        self.client.publish(
            AgentEvent("fact_discovered", self.name, {"fact_id": fact_id, "category": category})
        )
        self.say(f"found [{category}] {fact}" + ("" if fact_id else " (queued offline)"))
        self.pause(0.4, 1.0)


class Writing(Agent):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.fresh: set[str] = set()
        threading.Thread(target=self.follow, daemon=True).start()

    def follow(self) -> None:
        """New facts, as they happen, from the event stream (it resumes itself after a drop)."""
        try:
            for event in self.client.subscribe(types=["fact_discovered"]):
                self.fresh.add(str(as_dict(event.get("payload")).get("category", "")))
        except MemoryAdminError as exc:
            self.say(f"event stream ended: {exc}")

    def step(self) -> None:
        self.status("waiting", "for new facts")
        self.pause(0.5, 1.2)
        sections = [s for s in self.fresh if s in TOPICS][:2] or [random.choice(list(TOPICS))]
        self.fresh.difference_update(sections)
        for section in sections:
            try:
                with self.client.lock(f"report/section/{section}", ttl=10, wait=2) as lock:
                    self.write_section(section, lock)
            except LockHeld as held:
                self.say(f"section {section} is taken by {held.held_by}; skipping")

    def write_section(self, section: str, lock: Any) -> None:
        self.status("writing", f"section {section} (lock token {lock.fencing_token})")
        facts = self.client.get_facts_by_category(section, limit=4)
        text = " ".join(f"{f['fact']}." for f in reversed(facts)) or "(no facts yet)"
        self.pause(0.2, 0.6)  # composing

        def put(draft: Any) -> dict[str, Any]:
            draft = {"title": "Market report", **as_dict(draft)}
            sections = sections_of(draft)
            revision = as_dict(sections.get(section)).get("revision")
            sections[section] = {
                "text": text,
                "facts": [f["id"] for f in facts],
                "by": self.name,
                "revision": (revision if isinstance(revision, int) else 0) + 1,
            }
            return {**draft, "sections": sections}

        record = lock.update(DRAFT, put)  # fenced: refused if the lock was lost meanwhile
        self.client.publish("section_written", {"section": section, "version": record["version"]})
        self.say(f"wrote section {section}: draft v{record['version']}")


class Review(Agent):
    GROUP = "reviewers"

    def step(self) -> None:
        self.status("waiting", "for written sections")
        events = self.client.read_group(self.GROUP, self.name, count=5, block_ms=2000)
        if events:
            self.client.ack(self.GROUP, [e["id"] for e in events])
        sections = {as_dict(e.get("payload")).get("section") for e in events} - {None}
        draft = self.client.read(DRAFT)
        written = sections_of(draft["value"]) if draft else {}
        if not written:
            return
        section = sections.pop() if sections else random.choice(list(written))
        if section not in written:
            return
        self.status("reviewing", f"section {section} at v{draft['version']}")
        evidence = self.client.get_facts_by_category(section, limit=10)
        self.pause(0.8, 1.6)  # reading, while the writers keep writing
        note = {"by": self.name, "note": random.choice(NOTES), "facts_checked": len(evidence)}

        def review(value: Any) -> Any:
            value = as_dict(value)
            return {**value, "reviews": {**as_dict(value.get("reviews")), section: note}}

        try:
            record = self.client.write(
                DRAFT, review(draft["value"]), self.name, expected_version=draft["version"]
            )
        except ConflictError as lost:
            now = (lost.current or {}).get("version")
            self.say(f"conflict on the draft: read v{draft['version']}, now v{now}; retrying")
            record = self.client.update(DRAFT, review)  # its success closes the conflict
        self.client.publish("review_done", {"section": section, "version": record["version"], **note})
        history = self.client.versions(DRAFT, limit=3)
        self.say(f"reviewed {section}: draft v{record['version']} ({len(history)} recent versions)")


ROLES: dict[str, type[Agent]] = {"research": Research, "writing": Writing, "review": Review}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--name", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=60, help="0: until SIGTERM")
    parser.add_argument("--wal", type=Path, help="offline log file (store_fact/publish/status wait there)")
    args = parser.parse_args(argv)
    token = os.environ.get("MEMORY_ADMIN_TOKEN")
    if not token:
        parser.error("MEMORY_ADMIN_TOKEN is not set")
    with MemoryClient(args.url, token, wal_path=args.wal) as client:
        agent = ROLES[args.role](args.name, client, args.seconds)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.stopping.set())
        agent.run()
        if client.pending():
            agent.say(f"{len(client.pending())} calls still wait in the offline log {args.wal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
