"""schemathesis against /api/v1/openapi.json on a live server: every operation, valid and
invalid input, checked for server errors, documented status codes, response schemas and
content types. FUZZ_EXAMPLES examples per operation and mode (`make test`: 10; `.ci/run`:
enough for more than 5,000 requests, which FUZZ_MIN_REQUESTS then demands)."""

from __future__ import annotations

import os
import time
from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from memory_admin.services.tokens import ensure_agent, issue_token
from tests.conftest import start_web

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
MIN_REQUESTS = int(os.environ.get("FUZZ_MIN_REQUESTS", "0"))
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
STREAM = "/api/v1/events/stream"


@pytest.fixture(scope="module")
def fuzz_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """A web server of its own without a practical rate limit, so thousands of requests pass."""
    before = os.environ.get("RATE_LIMIT_PER_MINUTE")
    os.environ["RATE_LIMIT_PER_MINUTE"] = "10000000"
    try:
        server = start_web(tmp_path_factory.mktemp("fuzz"))
    finally:
        if before is None:
            del os.environ["RATE_LIMIT_PER_MINUTE"]
        else:
            os.environ["RATE_LIMIT_PER_MINUTE"] = before
    yield server
    server.process.stop()


def tame(case) -> None:
    """Keep waits short: a fuzzer that asks to wait 30 s for a lock tests nothing more."""
    if isinstance(case.body, dict):
        if isinstance(case.body.get("wait_seconds"), int | float) and case.body["wait_seconds"] > 0.2:
            case.body["wait_seconds"] = 0.2
        if isinstance(case.body.get("block_ms"), int) and case.body["block_ms"] > 200:
            case.body["block_ms"] = 200


class Caller:
    def __init__(self, base: str, session: requests.Session, headers: dict[str, str]) -> None:
        self.base, self.session, self.headers = base, session, headers

    def check(self, case) -> None:
        tame(case)
        if case.operation.path == STREAM:
            # An event stream never ends: its head is what there is to check.
            kwargs = case.as_transport_kwargs(base_url=self.base, headers=self.headers)
            with self.session.request(**kwargs, stream=True, timeout=10) as response:
                assert response.status_code < 500
                if response.status_code == 200:
                    assert response.headers["Content-Type"].startswith("text/event-stream")
            return
        case.call_and_validate(
            base_url=self.base, session=self.session, headers=self.headers, checks=CHECKS, timeout=30
        )


def fuzz(operation, mode: GenerationMode, caller: Caller, sent: Counter[str]) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        sent[label] += 1
        caller.check(case)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # Nothing of the operation can be made invalid (no parameters, no body).


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.django_db(transaction=True)
def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(fuzz_server, make_agent):
    agent = ensure_agent(namespace="fuzz", agent_id="fuzzer")
    token = issue_token(agent=agent)[1]
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/api/v1/openapi.json")
    base = fuzz_server.url
    headers = {"Authorization": f"Bearer {token}"}
    session = requests.Session()
    sent: Counter[str] = Counter()
    started = time.monotonic()

    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in GenerationMode:
            fuzz(operation, mode, Caller(base, session, headers), sent)

    total = sum(sent.values())
    print(f"{total} requests over {len(sent)} operations in {time.monotonic() - started:.1f}s")
    assert set(sent) == {f"{op.method.upper()} {op.path}" for op in operations}
    assert total >= MIN_REQUESTS
    assert httpx.get(f"{fuzz_server.url}/api/v1/health").status_code == 200
