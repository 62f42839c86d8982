"""Strict helpers for settings read from the environment.

A bad value stops start-up with a message naming the variable, instead of
surfacing later as a confusing error deep inside a request.
"""

import ipaddress
import os
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def env_str(name: str, default: str | None = None) -> str | None:
    value = _raw(name)
    return default if value in (None, "") else value


def env_bool(name: str, default: bool = False) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer; got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}; got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float, maximum: float) -> float:
    value = _raw(name)
    if value in (None, ""):
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number; got {value!r}") from None
    if not minimum <= number <= maximum:  # NaN fails this too
        raise ImproperlyConfigured(f"{name} must be between {minimum} and {maximum}; got {value}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value in (None, ""):
        return default
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(
            f"{name} must be a comma-separated list without empty items; got {value!r}"
        )
    return items


def env_networks(name: str, default: list[str]) -> list:
    """Addresses or networks (CIDR), comma-separated."""
    networks = []
    for item in env_list(name, default):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {item!r} is not an address or network") from None
    return networks


def env_url(name: str, schemes: set[str]) -> str | None:
    """A URL whose scheme is one of `schemes`, or None when unset."""
    value = env_str(name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        allowed = ", ".join(sorted(schemes))
        raise ImproperlyConfigured(f"{name} must be a URL with scheme {allowed}; got {value!r}")
    return value


def database_config(url: str) -> dict:
    """Django DATABASES entry from a postgres:// URL (host may be a socket folder in ?host=)."""
    from urllib.parse import parse_qs, unquote

    parts = urlsplit(url)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = query.pop("host", None) or (unquote(parts.hostname) if parts.hostname else "")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"DATABASE_URL has a bad port; got {url!r}") from None
    name = unquote(parts.path.lstrip("/")) or "postgres"
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or "postgres"),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
        "OPTIONS": query,
    }


CLUSTER_SCHEMES = {"redis+cluster", "rediss+cluster"}


def redis_cluster_nodes(url: str) -> list[str] | None:
    """A redis:// (or rediss://) URL for each node that a `redis+cluster://[user:password@]host:port
    [,host:port...]` URL names (any one introduces the rest), or None for a URL of one server.
    A cluster has database 0 only."""
    scheme, _, rest = url.partition("://")
    if scheme not in CLUSTER_SCHEMES:
        return None
    userinfo, at, hosts = rest.partition("/")[0].rpartition("@")
    path = rest.partition("/")[2]
    if path not in ("", "0"):
        raise ImproperlyConfigured(f"REDIS_URL: a Redis Cluster has database 0 only; got {url!r}")
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ImproperlyConfigured(f"REDIS_URL: each cluster node is host:port; got {node!r} in {url!r}")
        nodes.append(f"{scheme.removesuffix('+cluster')}://{userinfo}{at}{node}/0")
    return nodes


def channel_layers(redis_url: str) -> dict:
    """CHANNEL_LAYERS for REDIS_URL. On a cluster, channels-redis' pub/sub layer with one shard
    per node: it keeps no keys (so slots do not concern it), and a PUBLISH reaches a subscriber on
    the node the layer hashes the channel to; its default layer's Lua scripts span many keys,
    which a cluster refuses (CROSSSLOT)."""
    nodes = redis_cluster_nodes(redis_url)
    if nodes is None:
        layer = {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    else:
        layer = {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": nodes}}
    layer["CONFIG"]["prefix"] = "ma:channels:"
    return {"default": layer}


def redis_url_with_db(url: str, db: int) -> str:
    """The same Redis URL pointing at database `db`."""
    from urllib.parse import urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))
