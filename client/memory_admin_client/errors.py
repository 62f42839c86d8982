"""The client's errors: one base class, one kind per error code of the API (API.md: Errors).

Every error the server sends carries its `code`, `status`, `message` and details; the kinds
agents act on also carry those details as attributes (`ConflictError.current`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _detail(name: str, *, empty: Callable[[], Any] | None = None) -> Any:
    """An attribute of the error read from its details: what the server sent as `name`, else
    None (or, with `empty`, a new empty value)."""

    def read(error: MemoryAdminError) -> Any:
        value = error.details.get(name)
        return (value or empty()) if empty else value

    return property(read)


class MemoryAdminError(Exception):
    """Base of every error this client raises."""

    code = "error"
    status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if status is not None:
            self.status = status


class InvalidRequest(MemoryAdminError):
    """422 `validation_error` (see `fields`), 400 `malformed_json`, 422 `idempotency_key_reused`."""

    code = "validation_error"

    fields: dict[str, str] = _detail("fields", empty=dict)


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class Unauthorized(MemoryAdminError):
    """401: the server knows no live token like the client's (mistyped, revoked, or issued in
    another server's database). The message says so; it never contains the token."""

    code = "unauthenticated"

    def __init__(self, message: str, **details: Any) -> None:
        hint = (
            "check the client's token: it may be mistyped, revoked, or issued for another server"
            " (issue a new one with `manage.py issue_token`)"
        )
        super().__init__(f"{message.rstrip('.')}; {hint}", **details)


Unauthenticated = Unauthorized  # the earlier name, kept for code that catches it


class Forbidden(MemoryAdminError):
    """403: a read-only token tried to write."""

    code = "forbidden"


class AgentMismatch(MemoryAdminError, ValueError):
    """The call named an agent other than the one the token speaks for (raised before sending)."""

    code = "agent_mismatch"


class NotFound(MemoryAdminError):
    code = "not_found"


class ConflictError(MemoryAdminError):
    """A versioned write lost: someone wrote the key since `expected_version`.

    `current` is the record as it is now (`{"key", "value", "version", ...}`) or None when the
    key does not exist; `conflict_id` names the conflict operators see until a later write of
    this agent to the key closes it.
    """

    code = "version_conflict"

    current: dict[str, Any] | None = _detail("current")
    expected_version: int | None = _detail("expected_version")
    conflict_id: int | None = _detail("conflict_id")


class TxnAborted(MemoryAdminError):
    """409 `txn_aborted`: an operation of the transaction's branch failed, so nothing of it was
    kept. `failed_op` is its index, `error` what it failed with; the branch's record writes wait
    in the conflict inbox as one group (`conflict_group`)."""

    code = "txn_aborted"

    failed_op: int | None = _detail("failed_op")
    error: dict[str, Any] = _detail("error", empty=dict)
    txn: str | None = _detail("txn")
    conflict_group: str | None = _detail("conflict_group")


class LockHeld(MemoryAdminError):
    """The lock was not free within the wait; `held_by` and `expires_at` say by whom and until when."""

    code = "lock_held"

    held_by: str | None = _detail("held_by")
    expires_at: str | None = _detail("expires_at")


class NotLockHolder(MemoryAdminError):
    """Renew or release of a lock this agent does not hold with that token (it expired or was freed)."""

    code = "not_lock_holder"


class StaleFence(MemoryAdminError):
    """A fenced write whose lock is no longer ours: refused by the server, or by the client itself
    when it already knows the lock is lost (renewal failed, lease ran out, force-released)."""

    code = "stale_fencing_token"


class RateLimited(MemoryAdminError):
    """429 after the client's retries; `retry_after` seconds is when the server takes calls again."""

    code = "rate_limited"

    retry_after: float | None = _detail("retry_after")


class Unavailable(MemoryAdminError):
    """The server could not be reached, or it answered 503 (Postgres or Redis down), after the
    client's retries. Nothing was half-done on the server."""

    code = "unavailable"


class ServerError(MemoryAdminError):
    """A 5xx other than 503: a bug on the server (it logged it)."""

    code = "internal_error"


_BY_CODE: dict[str, type[MemoryAdminError]] = {
    "malformed_json": InvalidRequest,
    "validation_error": InvalidRequest,
    "idempotency_key_reused": InvalidRequest,
    "payload_too_large": PayloadTooLarge,
    "unauthenticated": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "version_conflict": ConflictError,
    "txn_aborted": TxnAborted,
    "lock_held": LockHeld,
    "not_lock_holder": NotLockHolder,
    "stale_fencing_token": StaleFence,
    "rate_limited": RateLimited,
    "unavailable": Unavailable,
}
_BY_STATUS: dict[int, type[MemoryAdminError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
}


def from_response(status: int, body: Any, retry_after: float | None = None) -> MemoryAdminError:
    """The error for an answer of the server: by its `code`, else by the HTTP status."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": f"HTTP {status}"}
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    code = error.get("code")
    kind = (
        _BY_CODE.get(code) or _BY_STATUS.get(status) or (ServerError if status >= 500 else MemoryAdminError)
    )
    if retry_after is not None:
        details.setdefault("retry_after", retry_after)
    exc = kind(str(error.get("message") or f"HTTP {status}"), status=status, **details)
    if code and code != kind.code:
        exc.code = code
    return exc
