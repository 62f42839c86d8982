"""An agent as a process of its own, for tests that SIGKILL or SIGSTOP it.

python -m tests.faults.agent URL TOKEN hold RESOURCE... -- takes the locks (TTL 3 s) and
    sets its status (TTL 5 s), prints them as one JSON line, then idles until killed;
python -m tests.faults.agent URL TOKEN fenced-write RESOURCE KEY -- takes the lock (TTL 2 s),
    prints its token, works for a second, then writes KEY fenced by that token and prints
    the answer: paused in between (SIGSTOP), the write comes after its lease ran out.
"""

from __future__ import annotations

import json
import sys
import time

import httpx

LOCK_TTL = 3
STATUS_TTL = 5
FENCED_TTL = 2


def main(url: str, token: str, mode: str, *args: str) -> None:
    client = httpx.Client(base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if mode == "hold":
        held = {}
        for resource in args:
            response = client.post(f"/locks/{resource}", json={"ttl_seconds": LOCK_TTL})
            response.raise_for_status()
            held[resource] = response.json()
        status = client.put("/status", json={"status": "working", "ttl_seconds": STATUS_TTL})
        status.raise_for_status()
        print(json.dumps({"locks": held, "status": status.json()}), flush=True)
        while True:
            time.sleep(1)
    elif mode == "fenced-write":
        resource, key = args
        lock = client.post(f"/locks/{resource}", json={"ttl_seconds": FENCED_TTL})
        lock.raise_for_status()
        token_ = lock.json()["fencing_token"]
        print(json.dumps({"fencing_token": token_}), flush=True)
        started = time.monotonic()
        while time.monotonic() - started < 1.0:  # the work the lock protects; a pause lands here
            time.sleep(0.01)
        fence = {"lock": resource, "token": token_}
        write = client.put(f"/records/{key}", json={"value": {"by": "paused"}, "fence": fence})
        print(json.dumps({"status": write.status_code, "body": write.json()}), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
