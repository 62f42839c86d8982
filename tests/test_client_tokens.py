"""The client and its token: checked when the client is made, never printed, and a refused
one reported as such (not as an unreachable server)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from memory_admin_client import (
    AsyncMemoryClient,
    LogInUse,
    MemoryClient,
    Unauthenticated,
    Unauthorized,
)

from memory_admin.services.tokens import issue_token

pytestmark = pytest.mark.django_db(transaction=True)

CLIENTS = [MemoryClient, AsyncMemoryClient]
UNKNOWN = "ma_" + "Zq7" * 14  # shaped like a token, issued by nobody


def me(client) -> dict:
    if isinstance(client, AsyncMemoryClient):

        async def ask():
            async with client:
                return await client.me()

        return asyncio.run(ask())
    with client:
        return client.me()


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_token_pasted_with_a_trailing_newline_works(kind, web_server, alpha):
    token = issue_token(agent=alpha)[1]
    assert me(kind(web_server.url, f"  {token}\n"))["agent_id"] == "alpha"


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("token", [None, "", "  \n", "ma_first\nsecond", "ma_tab\there", "ma_caf\u00e9"])
def test_a_missing_empty_or_unsendable_token_is_refused_at_construction(kind, token):
    with pytest.raises(ValueError, match="token") as refused:
        kind("http://127.0.0.1:9", token)
    if token and token.strip():
        assert token.strip() not in str(refused.value)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_refused_token_says_to_check_the_token_and_never_shows_it(kind, web_server, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Unauthorized) as refused:
        me(kind(web_server.url, UNKNOWN))
    assert isinstance(refused.value, Unauthenticated)  # the earlier name still catches it
    assert refused.value.status == 401
    assert "check the client's token" in str(refused.value)
    assert UNKNOWN not in str(refused.value) and UNKNOWN[:12] not in str(refused.value)
    assert UNKNOWN[:12] not in caplog.text
    assert UNKNOWN[:12] not in web_server.process.output()


def test_an_error_of_the_http_stack_that_quotes_the_header_is_shown_without_the_token():
    token = "ma_" + "k" * 40
    with MemoryClient("http://127.0.0.1:9", token) as client:
        text = client._redact(ValueError(f"Illegal header value b'Bearer {token}'"))
    assert "kkkkkkkk" not in text and "Illegal header value" in text


def test_a_second_client_on_the_same_offline_log_in_one_process_says_how_to_fix_it(tmp_path):
    wal = tmp_path / "agent.wal"
    first = MemoryClient("http://127.0.0.1:9", UNKNOWN, wal_path=wal, flush_interval=None)
    with pytest.raises(LogInUse, match="another client in this process") as refused:
        MemoryClient("http://127.0.0.1:9", UNKNOWN, wal_path=wal, flush_interval=None)
    assert "share that client" in str(refused.value)
    first.close()
    MemoryClient("http://127.0.0.1:9", UNKNOWN, wal_path=wal, flush_interval=None).close()
