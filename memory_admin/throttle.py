"""Failed-login throttling for the console (and the Django admin, which logs in the same way).

An authentication backend, so every login form goes through it: after LOGIN_FAILURE_LIMIT
failed attempts for one username from one client address, that pair is refused — without
the password being checked — until LOGIN_LOCKOUT_SECONDS have passed since its last
failure. A success clears the count. Keyed by username *and* address, so an attacker cannot
lock a real operator out from elsewhere. Counters live in Redis; while Redis is down
logins are not throttled (the console cannot run without Redis anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

import redis
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from memory_admin import redis as r

log = logging.getLogger("memory_admin.auth")


def _key(username: str, address: str) -> str:
    who = hashlib.sha256(f"{username.casefold()}\0{address}".encode()).hexdigest()
    return r.login_failures_key(who)


def address_of(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def locked_for(username: str, address: str) -> int:
    """Seconds this pair stays locked out; 0 when it may try."""
    try:
        pipe = r.client().pipeline(transaction=False)
        pipe.get(_key(username, address))
        pipe.ttl(_key(username, address))
        count, ttl = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("login throttle skipped, Redis unavailable: %s", exc)
        return 0
    if count is None or int(count) < settings.LOGIN_FAILURE_LIMIT:
        return 0
    return max(int(ttl), 1)


def record_failure(username: str, address: str) -> None:
    key = _key(username, address)
    try:
        pipe = r.client().pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, settings.LOGIN_LOCKOUT_SECONDS)
        count, _ = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("login failure not counted, Redis unavailable: %s", exc)
        return
    if count == settings.LOGIN_FAILURE_LIMIT:
        log.warning("console login for %r from %s locked out after %s failures", username, address, count)


def clear(username: str, address: str) -> None:
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        r.client().delete(_key(username, address))


class ThrottledModelBackend(ModelBackend):
    """Django's username/password check behind the failed-login throttle."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:  # not a login form (the shell, tests' client.login): nothing to throttle
            return super().authenticate(request, username, password, **kwargs)
        name, address = str(username or ""), address_of(request)
        seconds = locked_for(name, address)
        if seconds:
            request.login_locked_for = seconds  # the login view says so, with Retry-After
            raise PermissionDenied("too many failed logins")  # no other backend is asked
        user = super().authenticate(request, username, password, **kwargs)
        if user is None:
            record_failure(name, address)
        else:
            clear(name, address)
        return user
