"""Request bodies on the real web process (uvicorn, raw sockets): a declared length over the
limit is refused before a byte of the body is read, a chunked body is refused as soon as it
passes the limit, a body that never arrives times out — each in the API's error shape."""

from __future__ import annotations

import contextlib
import json
import socket
from urllib.parse import urlsplit

import pytest

from memory_admin.services.tokens import issue_token
from tests.conftest import start_web

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 1024 * 1024  # the default MAX_BODY_BYTES of the test servers


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    return sock


def head(token: str, path: str = "/api/v1/facts", **headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response read off the socket: status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    raw_head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = raw_head.decode("latin1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the server may refuse to read: it may close the connection meanwhile."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def error_of(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> dict:
    assert status == expected, (status, body[:300])
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    return error


def test_a_declared_length_over_the_limit_is_413_before_any_of_the_body_is_sent(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    with connect(web_server.url) as sock:
        sock.sendall(head(token, Content_Length=str(64 * 1024 * 1024)))  # and not one byte of it
        error = error_of(*answer(sock), 413, "payload_too_large")
    assert error["limit"] == LIMIT


def test_a_chunked_body_over_the_limit_is_413_json_as_soon_as_it_passes(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    with connect(web_server.url) as sock:
        sock.sendall(head(token, Transfer_Encoding="chunked"))
        piece = b"x" * (LIMIT // 4)
        for _ in range(5):  # past the limit, and the body not finished: no closing chunk
            send_quietly(sock, b"%x\r\n%s\r\n" % (len(piece), piece))
        error = error_of(*answer(sock), 413, "payload_too_large")
    assert error["limit"] == LIMIT


def test_a_chunked_body_within_the_limit_is_taken(web_server, alpha):
    token = issue_token(agent=alpha)[1]
    body = json.dumps({"fact": "sent in chunks", "category": "transport"}).encode()
    with connect(web_server.url) as sock:
        sock.sendall(head(token, Transfer_Encoding="chunked"))
        for part in (body[:10], body[10:]):
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        status, _, answered = answer(sock)
    assert status == 201, answered
    assert json.loads(answered)["fact"] == "sent in chunks"


def test_a_body_that_never_arrives_times_out_with_408(alpha, tmp_path, monkeypatch):
    monkeypatch.setenv("BODY_TIMEOUT_SECONDS", "1")
    server = start_web(tmp_path)
    token = issue_token(agent=alpha)[1]
    try:
        with connect(server.url) as sock:
            sock.sendall(head(token, Content_Length="100") + b'{"fact": ')  # and then nothing
            error = error_of(*answer(sock), 408, "request_timeout")
    finally:
        server.process.stop()
    assert "1 s" in error["message"]
