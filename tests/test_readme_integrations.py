"""The README's "Use it from LangGraph" and "Use it from an MCP client" snippets run as written
against a running server, with only TOKEN and MEMORY_ADMIN_URL in their environment."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from memory_admin.models import Record
from memory_admin.services.tokens import issue_token
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def snippet(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)\n```", readme, re.S)
    assert found, f"no snippet {name!r} in README.md"
    return found.group(1)


def run_snippet(name: str, web_server, agent, tmp_path) -> str:
    path = tmp_path / f"readme_{name.replace('-', '_')}.py"
    path.write_text(snippet(name))
    env = {**os.environ, "TOKEN": issue_token(agent=agent)[1], "MEMORY_ADMIN_URL": web_server.url}
    done = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_langgraph_sdk_snippet_runs(web_server, alpha, tmp_path):
    out = run_snippet("langgraph-sdk", web_server, alpha, tmp_path).splitlines()
    assert ast.literal_eval(out[0]) == {"theme": "dark", "note": "likes short answers"}
    assert out[1:] == ["prefs", "[['users', 'alice']]"]
    assert [v.version for v in Record.objects.get(key="~users/alice/prefs").versions.all()] == [2, 1]


def test_the_langgraph_store_snippet_runs_and_leaves_a_versioned_record(web_server, alpha, tmp_path):
    out = run_snippet("langgraph-store", web_server, alpha, tmp_path).splitlines()
    assert out == ["{'user': 'alice', 'visits': 1}", "{'user': 'alice', 'visits': 2}"]
    record = Record.objects.get(key="~visits/alice/count")
    assert [v.value for v in record.versions.order_by("version")] == [{"n": 1}, {"n": 2}]


def test_the_mcp_snippet_runs(web_server, alpha, tmp_path):
    out = run_snippet("mcp", web_server, alpha, tmp_path).splitlines()
    assert "'write_record'" in out[0] and "'read_events'" in out[0]
    assert "'value': {'step': 1}" in out[1] and "'version': 1" in out[1]
    assert out[2].startswith("True ") and "version_conflict" in out[2] and "current version: 1" in out[2]
