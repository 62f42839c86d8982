"""The web process as production runs it (config/web.py): uvicorn, several workers on one port.

Web is stateless (DESIGN.md): two worker processes must answer the API with the same headers,
lose no update between them, and every console socket, whichever worker holds it, must get
every event the relay publishes through the Channels layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from websockets.sync.client import connect

from memory_admin.services.tokens import issue_token
from memory_admin.views.screens import last_event_id
from tests.conftest import api_clients, increment_record, run_together, start_web, wait_for, web_workers

pytestmark = pytest.mark.django_db(transaction=True)

ROW = re.compile(r'id="event-(\d+)"')
ROUNDS = 5


@pytest.fixture
def two_workers(tmp_path):
    server = start_web(tmp_path, workers=2)
    try:
        yield server, wait_for(lambda: len(found := web_workers(server.process.proc.pid)) == 2 and found)
    finally:
        server.process.stop()


def established_on(pid: int, port: int) -> int:
    """How many TCP connections to our `port` the process holds open (from /proc, no tools)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
            count += 1
    return count


def test_api_answers_of_the_real_server_carry_the_security_headers(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    with httpx.Client(base_url=web_server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        answers = [
            http.get("/api/v1/health"),
            http.put("/api/v1/records/h", json={"value": 1}),
            http.get("/api/v1/records/missing"),
        ]
    assert [answer.status_code for answer in answers] == [200, 201, 404]
    for answer in answers:
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert "server" not in answer.headers  # the server's name and version are nobody's business


def test_two_workers_lose_no_update_to_one_record(two_workers, make_agent):
    server, _ = two_workers
    clients = api_clients(server, [make_agent(f"w{i}") for i in range(16)])
    clients[0].put("/records/count", json={"value": 0, "expected_version": 0}).raise_for_status()

    def increment(_, client: httpx.Client) -> None:
        for _ in range(ROUNDS):
            increment_record(client, "count")

    run_together(clients, increment)
    final = clients[0].get("/records/count").json()
    assert final["value"] == 16 * ROUNDS and final["version"] == 16 * ROUNDS + 1
    for client in clients:
        client.close()


def test_every_console_on_either_worker_gets_every_event(two_workers, relay, alpha):
    server, workers = two_workers
    port = int(server.url.rsplit(":", 1)[1])
    web = Client()
    web.force_login(User.objects.create_user("vera"))
    headers = {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={web.cookies[settings.SESSION_COOKIE_NAME].value}",
        "Origin": server.url,
    }
    after = last_event_id(alpha.ns)
    with contextlib.ExitStack() as stack:
        sockets = []
        # The kernel hands connections to whichever worker accepts first: open sockets until both
        # workers hold some (almost always within a few).
        while len(sockets) < 40 and not all(established_on(pid, port) for pid in workers):
            url = f"ws{server.url[4:]}/ws/ns/{alpha.ns.name}/?page=timeline"
            sockets.append(stack.enter_context(connect(url, additional_headers=headers)))
            sockets[-1].send(json.dumps({"after": after}))
        held = {pid: established_on(pid, port) for pid in workers}
        assert all(held.values()), f"one worker holds every socket: {held}"

        token = issue_token(agent=alpha)[1]
        with httpx.Client(
            base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            written = [
                http.post("/events", json={"type": "note", "payload": {"n": n}}).json()["id"]
                for n in range(20)
            ]

        for socket in sockets:
            seen: list[int] = []
            while not set(written) <= set(seen):
                seen += [int(found) for found in ROW.findall(socket.recv(timeout=10))]
            assert sorted(event for event in seen if event in written) == written  # each exactly once
