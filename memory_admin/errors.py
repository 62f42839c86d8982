"""Domain errors raised by services and mapped once to API responses (api/__init__.py).

Each kind carries the HTTP status and the error code of API.md, plus the details an
agent needs to act on it.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init_subclass__(cls, *, status: int | None = None, code: str | None = None, **kwargs: Any) -> None:
        """A kind names its status and code where it is declared: `class X(DomainError, status=409,
        code="x"): ...`."""
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class Invalid(DomainError, status=422, code="validation_error"):
    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message, fields=fields or {})


class NotFound(DomainError, status=404, code="not_found"): ...


class Forbidden(DomainError, status=403, code="forbidden"): ...


class VersionConflict(DomainError, status=409, code="version_conflict"): ...


class LockHeld(DomainError, status=409, code="lock_held"): ...


class NotLockHolder(DomainError, status=409, code="not_lock_holder"): ...


class StaleFence(DomainError, status=409, code="stale_fencing_token"): ...


class Unavailable(DomainError, status=503, code="unavailable"):
    """Postgres or Redis cannot be reached; nothing was half-done."""

    retry_after = 1
