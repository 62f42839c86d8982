"""Failed-login throttling for the console (and the Django admin, which logs in the same way).

An authentication backend, so every login form goes through it: after LOGIN_FAILURE_LIMIT
failed attempts for one username from one client address, that pair is refused — without
the password being checked — until LOGIN_LOCKOUT_SECONDS have passed since its last
failure. Keyed by username *and* address, so an attacker from one address cannot lock a real
operator out from elsewhere. But addresses are many (a botnet; a forwarding header, were it
trusted), so the username alone is counted too, as Django-axes can: after
LOGIN_USERNAME_FAILURE_LIMIT failures from any addresses (by default twice the pair's), that
username is refused from everywhere for the same time. A success clears both counts.
The client address is the connection's: config/web.py trusts forwarding headers only from
FORWARDED_ALLOW_IPS. Counters live in Redis; while Redis is down logins are not throttled
(the console cannot run without Redis anyway).
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


def _username_key(username: str) -> str:
    who = hashlib.sha256(f"{username.casefold()}\0from anywhere".encode()).hexdigest()
    return r.login_failures_key(who)


def _limits(username: str, address: str) -> list[tuple[str, int]]:
    return [
        (_key(username, address), settings.LOGIN_FAILURE_LIMIT),
        (_username_key(username), settings.LOGIN_USERNAME_FAILURE_LIMIT),
    ]


def address_of(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR") or "unknown"


def locked_for(username: str, address: str) -> int:
    """Seconds this username stays locked out from this address; 0 when it may try."""
    limits = _limits(username, address)
    try:
        pipe = r.client().pipeline(transaction=False)
        for key, _ in limits:
            pipe.get(key)
            pipe.ttl(key)
        replies = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("login throttle skipped, Redis unavailable: %s", exc)
        return 0
    seconds = 0
    for (_, limit), count, ttl in zip(limits, replies[::2], replies[1::2], strict=True):
        if count is not None and int(count) >= limit:
            seconds = max(seconds, int(ttl), 1)
    return seconds


def record_failure(username: str, address: str) -> None:
    try:
        pipe = r.client().pipeline(transaction=False)
        for key, _ in _limits(username, address):
            pipe.incr(key)
            pipe.expire(key, settings.LOGIN_LOCKOUT_SECONDS)
        pair, everywhere = pipe.execute()[::2]
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("login failure not counted, Redis unavailable: %s", exc)
        return
    if pair == settings.LOGIN_FAILURE_LIMIT:
        log.warning("console login for %r from %s locked out after %s failures", username, address, pair)
    if everywhere == settings.LOGIN_USERNAME_FAILURE_LIMIT:
        log.warning(
            "console login for %r locked out from every address after %s failures", username, everywhere
        )


def clear(username: str, address: str) -> None:
    with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
        r.client().delete(*(key for key, _ in _limits(username, address)))


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
