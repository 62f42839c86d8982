"""Domain errors raised by services and mapped once to API responses (api/__init__.py).

Each kind carries the HTTP status and the error code of API.md, plus the details an
agent needs to act on it.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class Invalid(DomainError):
    status, code = 422, "validation_error"

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message, fields=fields or {})


class NotFound(DomainError):
    status, code = 404, "not_found"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class VersionConflict(DomainError):
    status, code = 409, "version_conflict"


class LockHeld(DomainError):
    status, code = 409, "lock_held"


class NotLockHolder(DomainError):
    status, code = 409, "not_lock_holder"


class StaleFence(DomainError):
    status, code = 409, "stale_fencing_token"


class Unavailable(DomainError):
    """Postgres or Redis cannot be reached; nothing was half-done."""

    status, code = 503, "unavailable"
    retry_after = 1
