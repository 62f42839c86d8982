"""`manage.py demo`: the research, writing and review agents, each its own process, fill the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memory_admin.models import Conflict, Event, Fact, Record, Token
from memory_admin.services.records import write_record
from tests.conftest import ROOT, actor, children_of, free_port, server_env, wait_for

# The issue asks for a 30-second run; the agents' pace makes every kind of activity appear in it.
SECONDS = 30


def demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "demo", *args],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_demo_team_leaves_facts_a_versioned_draft_a_resolved_conflict_locks_and_status(web_server, relay):
    done = demo("--seconds", str(SECONDS), "--url", web_server.url, "--copies", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Demo finished" in done.stdout

    events = Event.objects.filter(ns__name="report-team")
    assert Fact.objects.filter(ns__name="report-team").values("category").distinct().count() >= 2
    draft = Record.objects.get(ns__name="report-team", key="report/draft")
    assert draft.version >= 3 and draft.value["sections"]
    assert draft.versions.count() >= 3
    assert Conflict.objects.filter(ns__name="report-team", status="resolved").exists()
    assert events.filter(type="conflict.resolved").exists()
    types = set(events.values_list("type", flat=True))
    assert {"lock.acquired", "lock.released", "status.changed", "fact_discovered", "section_written"} <= types
    assert "review_done" in types
    assert {"research-1", "writing-1", "review-1"} <= set(
        events.filter(type="status.changed").values_list("agent_id", flat=True)
    )
    assert not Token.objects.filter(agent__ns__name="report-team", revoked__isnull=True).exists()


def test_without_a_server_the_demo_says_how_to_start_one_and_fails(db):
    done = demo("--url", f"http://127.0.0.1:{free_port()}", "--seconds", "1")
    assert done.returncode != 0
    assert "make run" in done.stderr and "No Memory Admin server answers" in done.stderr


def test_the_agent_module_runs_on_the_client_alone():
    check = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['django'] = None; import memory_admin.demo.team"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_demo_team_carries_on_over_a_draft_of_another_shape(web_server, relay, make_agent):
    # What the client README's own example leaves under the demo's key.
    someone = make_agent("someone", namespace="report-team")
    draft = {"sections": ["intro"]}
    write_record(ns=someone.ns, key="report/draft", value=draft, expected_version=0, actor=actor(someone))
    done = demo("--seconds", "12", "--url", web_server.url)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Demo finished" in done.stdout and "Traceback" not in done.stderr
    draft = Record.objects.get(ns__name="report-team", key="report/draft")
    assert isinstance(draft.value["sections"], dict) and draft.value["sections"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_summary_names_an_agent_that_died_and_the_demo_fails(web_server, relay):
    run = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--seconds", "30", "--url", web_server.url],
        cwd=ROOT,
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        writer = wait_for(
            lambda: _agent_process(run.pid, "writing-1"), timeout=60, message="the writing agent"
        )
        os.kill(writer, signal.SIGKILL)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode != 0
    assert "Demo finished" not in out
    assert "Demo ended with 1 of 3 agents dead" in out
    assert "writing-1 was killed by SIGKILL" in err


def _agent_process(parent: int, name: str) -> int | None:
    for pid in children_of(parent):
        try:
            if name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None
