"""The Redis connection, the key layout and the Lua scripts — nowhere else.

Every key of a namespace shares the hash tag `{<namespace>}` so multi-key scripts
stay on one Redis Cluster slot. REDIS_URL may name a cluster (`redis+cluster://host:port,...`,
config/env.py): the clients made here are then redis-py's cluster clients.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from django.conf import settings

from config.env import redis_cluster_nodes
from memory_admin.errors import Unavailable

P = ParamSpec("P")
T = TypeVar("T")

_OPTIONS = {
    "decode_responses": True,
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
    "health_check_interval": 15,
}


class _Pool(redis.ConnectionPool):
    """redis-py wraps `get_connection` in a check for deprecated arguments that inspects the call
    on every command (a tenth of a command's CPU, measured: bench/README.md); nothing passes any."""

    get_connection = inspect.unwrap(redis.ConnectionPool.get_connection)


class _AsyncPool(redis.asyncio.ConnectionPool):
    get_connection = inspect.unwrap(redis.asyncio.ConnectionPool.get_connection)


_POOLS = {redis.Redis: _Pool, redis.asyncio.Redis: _AsyncPool}


def _connect(single: type, cluster: type, node: type):
    """A client of REDIS_URL: `single` for one server, `cluster` for a cluster (seeded with every
    node the URL names, so any one of them that answers introduces the rest)."""
    nodes = redis_cluster_nodes(settings.REDIS_URL)
    if nodes is None:
        pool = _POOLS[single].from_url(settings.REDIS_URL, retry_on_timeout=False, **_OPTIONS)
        client = single(connection_pool=pool)
        client.auto_close_connection_pool = True  # as from_url's client: closing it closes the pool
        return client
    others = [urlsplit(url) for url in nodes[1:]]
    return cluster.from_url(nodes[0], startup_nodes=[node(u.hostname, u.port) for u in others], **_OPTIONS)


# A cluster none of whose nodes answers raises RedisClusterException where one server raises
# ConnectionError: these say ConnectionError too, so every caller's outage handling (a 503, a
# relay that waits) holds on a cluster.
_UNREACHABLE = redis.exceptions.RedisClusterException


class _Cluster(redis.cluster.RedisCluster):
    def __init__(self, *args, **kwargs) -> None:
        try:
            super().__init__(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise redis.ConnectionError(str(exc)) from exc


class _AsyncCluster(redis.asyncio.cluster.RedisCluster):
    async def initialize(self, *args, **kwargs) -> _AsyncCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise redis.ConnectionError(str(exc)) from exc


@functools.cache
def client() -> redis.Redis | redis.cluster.RedisCluster:
    return _connect(redis.Redis, _Cluster, redis.cluster.ClusterNode)


def async_client() -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """A new asyncio client; asyncio pools are bound to one event loop, so callers own it."""
    return _connect(redis.asyncio.Redis, _AsyncCluster, redis.asyncio.cluster.ClusterNode)


async def pubsub(client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster):
    """`client.pubsub()` that hears every PUBLISH: a cluster broadcasts them to all its nodes, so a
    cluster's subscriber may listen on any one; the cluster's client must first know its nodes."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        await client.initialize()
    return client.pubsub(ignore_subscribe_messages=True)


def unavailable_on_error(func: Callable[P, T]) -> Callable[P, T]:
    """Turn a lost Redis connection into a 503 the API can map."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise Unavailable("Redis is unreachable; retry shortly") from exc

    return wrapper


# --- times: Redis keeps them as Unix milliseconds --------------------------------------


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_ms(ms: str | float) -> datetime:
    return datetime.fromtimestamp(float(ms) / 1000, tz=UTC)


def iso_from_ms(ms: str | int) -> str:
    """What the API shows of a time Redis keeps (`iso_ms(from_ms(ms))`: to the millisecond, no
    fraction at .000) without a datetime in between: a full list formats 20,000 of them."""
    try:
        second, milli = divmod(int(ms), 1000)
    except ValueError:  # not a whole number of milliseconds: the part below one is cut
        second, milli = divmod(int(float(ms)), 1000)
    prefix = _SECONDS.get(second)
    if prefix is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        prefix = _SECONDS[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return prefix + _FRACTIONS[milli]


# Heartbeats and leases of a namespace fall in few distinct seconds: each is formatted once.
_SECONDS: dict[int, str] = {}
_FRACTIONS = ["Z"] + [f".{milli:03d}000Z" for milli in range(1, 1000)]


# --- keys -----------------------------------------------------------------------------


def _tag(ns: str) -> str:
    return f"ma:{{{ns}}}"


def lock_key(ns: str, resource: str) -> str:
    return f"{_tag(ns)}:lock:{resource}"


def lock_queue(ns: str, resource: str) -> str:
    """Sorted set of the lock's waiters by ticket (arrival)."""
    return f"{_tag(ns)}:lockq:{resource}"


def lock_leases(ns: str, resource: str) -> str:
    """Hash of the lock's waiters and the expiry (ms) of their lease."""
    return f"{_tag(ns)}:lockql:{resource}"


def lock_tickets(ns: str) -> str:
    return f"{_tag(ns)}:locktickets"


def lock_keys(ns: str, resource: str) -> list[str]:
    """What the lock scripts take: lock, index, queue, leases, tickets."""
    return [
        lock_key(ns, resource),
        locks_index(ns),
        lock_queue(ns, resource),
        lock_leases(ns, resource),
        lock_tickets(ns),
    ]


def locks_index(ns: str) -> str:
    """Sorted set of held resources scored by expiry (ms), for listing."""
    return f"{_tag(ns)}:locks"


def status_key(ns: str, agent: str) -> str:
    return f"{_tag(ns)}:status:{agent}"


def heartbeats_index(ns: str) -> str:
    """Sorted set of agents scored by heartbeat expiry (ms), for the stale sweep."""
    return f"{_tag(ns)}:heartbeats"


def stream_key(ns: str) -> str:
    """The namespace's log in Redis: entry `<position>-0` per event. (Not `:events`, the stream of
    global event ids before positions: that one is left alone.)"""
    return f"{_tag(ns)}:log"


def activity_key(ns: str, agent: str = "") -> str:
    """Hash of finished minutes' activity counts (services/activity.py), of the namespace or one agent."""
    return f"{_tag(ns)}:activity:{agent}"


def recent_activity_key(ns: str, agent: str = "") -> str:
    """The last hour's buckets as last counted, kept a few seconds (services/activity.py)."""
    return f"{_tag(ns)}:activity-now:{agent}"


def lock_waits_key(ns: str, minute: int) -> str:
    """Counter of the lock waits that began in one minute (epoch minutes), kept a little over an hour."""
    return f"{_tag(ns)}:lockwaits:{minute}"


def lock_wait_mark(ns: str, waiter: str) -> str:
    """Set while a waiter's wait is counted, so that its later looks do not count it again."""
    return f"{_tag(ns)}:lockwaited:{waiter}"


def group_consumers_key(ns: str, group: str) -> str:
    """Hash of a consumer group's consumers: consumer name -> the agent that read as it."""
    return f"{_tag(ns)}:group:{group}:consumers"


def group_replays_key(ns: str, group: str) -> str:
    """Hash of a group's replayed events: event id -> the stream entry that carries the replay."""
    return f"{_tag(ns)}:group:{group}:replays"


def rate_key(ns: str, token_id: int, window: int) -> str:
    return f"{_tag(ns)}:rate:{token_id}:{window}"


# Calls (ARGV[2] of them: services/limits.py takes them in blocks) counted in their window's key
# (KEYS[1]), which lives ARGV[1] seconds from the window's first call; the count so far. One
# command, where INCRBY and EXPIRE in a MULTI were a pipeline's worth.
COUNT_CALL = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


def login_failures_key(who: str) -> str:
    """Failed console logins of one (username, address) pair, `who` being their digest."""
    return f"ma:login-failures:{who}"


# --- scripts --------------------------------------------------------------------------

# A lock is a hash (owner, token, acquired, expires, state) with the lease as its TTL, and the
# namespace's index of held locks by expiry. An acquire reserves it here first (state
# `acquiring`, no token), records the acquire in Postgres (which issues the token), then confirms
# it (state `held`); a release marks it `releasing`, records that, then frees it (services/locks.py).
# Waiters queue per lock, first come first served: a sorted set of waiter ids by ticket, each
# with a lease refreshed while it waits (a waiter whose process died drops out when its lease
# lapses). Freeing a lock PUBLISHes its next waiter's id.
_PRUNE = """
local function prune(now)
  local leases = redis.call('HGETALL', KEYS[4])
  for i = 1, #leases, 2 do
    if tonumber(leases[i + 1]) < now then
      redis.call('HDEL', KEYS[4], leases[i])
      redis.call('ZREM', KEYS[3], leases[i])
    end
  end
end
local function wake(channel, message, now)
  prune(now)
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head then redis.call('PUBLISH', channel, message .. head) end
end
"""

# KEYS: lock, index, queue, leases, tickets. ARGV: owner, now_ms, ttl_ms, waiter id ('' for none),
# lease_ms, join the queue (1/0).
# Returns {1} when reserved; {0, owner, token, expires_ms} when held; {2} when free but an earlier
# waiter's turn (the caller, if it waits, is queued in both cases); {3, token, acquired_ms,
# expires_ms} when a release handed the lock to this waiter already (RELEASE's 'hand').
ACQUIRE = (
    _PRUNE
    + """
local now = tonumber(ARGV[2])
local waiter = ARGV[4]
prune(now)
if waiter ~= '' then
  local handed = redis.call('HMGET', KEYS[1], 'waiter', 'token', 'acquired', 'expires')
  if handed[1] == waiter then return {3, handed[2], handed[3], handed[4]} end
end
local function queue()
  if waiter == '' or ARGV[6] ~= '1' then return end
  if not redis.call('ZSCORE', KEYS[3], waiter) then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), waiter)
  end
  redis.call('HSET', KEYS[4], waiter, now + tonumber(ARGV[5]))
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  queue()
  local h = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires')
  return {0, h[1], h[2] or '', h[3]}
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
if head and head ~= waiter then
  queue()
  return {2}
end
local expires = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', '', 'acquired', ARGV[2], 'expires', expires,
           'state', 'acquiring')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if waiter ~= '' then
  redis.call('ZREM', KEYS[3], waiter)
  redis.call('HDEL', KEYS[4], waiter)
end
return {1}
"""
)

# KEYS: lock, index. ARGV: owner, token, resource, the relay's doorbell channel ('' for none:
# the acquire's transaction rings it when it commits). Rings the doorbell (Postgres has the
# acquire's event either way); returns 1 when confirmed, 0 when the reservation is gone (its
# lease ran out first).
CONFIRM = """
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], '1') end
local h = redis.call('HMGET', KEYS[1], 'owner', 'state', 'expires')
if h[1] ~= ARGV[1] or h[2] ~= 'acquiring' then return 0 end
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'state', 'held')
redis.call('ZADD', KEYS[2], h[3], ARGV[3])
return 1
"""

# KEYS: lock, index, queue, leases. ARGV: owner, resource, channel, message prefix, now_ms.
# Gives back a reservation whose acquire failed in Postgres, and wakes the next waiter.
UNDO = (
    _PRUNE
    + """
local h = redis.call('HMGET', KEYS[1], 'owner', 'state')
if h[1] == ARGV[1] and h[2] == 'acquiring' then redis.call('DEL', KEYS[1]) end
wake(ARGV[3], ARGV[4], tonumber(ARGV[5]))
return 1
"""
)

# KEYS: lock, index, queue, leases. ARGV: owner, token, resource, channel, message prefix, now_ms,
# phase, the relay's doorbell channel ('' for none); for 'hand' also the waiter, its owner, its
# token, its lease's expiry (ms).
# Ends a lock the caller holds with that token: `releasing` (Postgres records the release while
# nobody can take the lock) with `phase` 'begin', which returns {1, the first waiter in line} ({1}
# with none); deleted, the next waiter woken and the relay's doorbell rung (Postgres has the
# release's event, also when the lease ran out meanwhile), with 'end'; back to `held` with 'undo'.
# 'hand' gives it to that waiter instead of deleting it (Postgres has recorded the handover and
# issued the token): held by the waiter's owner, marked with the waiter's id (ACQUIRE answers that
# waiter's next look with it), and the wake-up carries the token and times after a newline, so
# the waiter is answered without a look of its own. Nobody but that waiter can have taken the lock
# meanwhile (an acquire is refused while an earlier waiter is in line), also when the lease ran
# out. If the waiter left the line meanwhile (it stopped waiting, or its place lapsed while a busy
# process kept it from looking), 'hand' frees the lock with no wake-up and returns 2: the caller
# records the waiter's release and wakes the next (a grant published then would answer a request
# with a lock that is being released under it).
# Returns 1 when the caller held it (in the state the phase needs).
RELEASE = (
    _PRUNE
    + """
local phase = ARGV[7]
if (phase == 'end' or phase == 'hand') and ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], '1') end
local h = redis.call('HMGET', KEYS[1], 'owner', 'token', 'state')
if phase == 'hand' and (not h[1] or (h[1] == ARGV[1] and h[2] == ARGV[2])) then
  local waiter, now, expires = ARGV[9], tonumber(ARGV[6]), tonumber(ARGV[12])
  redis.call('DEL', KEYS[1])
  local queued = redis.call('ZREM', KEYS[3], waiter)
  redis.call('HDEL', KEYS[4], waiter)
  if queued == 0 then
    redis.call('ZREM', KEYS[2], ARGV[3])
    return 2
  end
  redis.call('HSET', KEYS[1], 'owner', ARGV[10], 'token', ARGV[11], 'acquired', ARGV[6], 'expires', ARGV[12],
             'state', 'held', 'waiter', waiter)
  redis.call('PEXPIRE', KEYS[1], expires - now)
  redis.call('ZADD', KEYS[2], expires, ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[5] .. waiter .. '\\n' .. ARGV[11] .. ' ' .. ARGV[6] .. ' ' .. ARGV[12])
  return 1
end
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return 0 end
if phase == 'begin' then
  if h[3] == 'releasing' then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'releasing')
  prune(tonumber(ARGV[6]))
  return {1, redis.call('ZRANGE', KEYS[3], 0, 0)[1]}
elseif phase == 'undo' then
  redis.call('HSET', KEYS[1], 'state', 'held')
else
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  wake(ARGV[4], ARGV[5], tonumber(ARGV[6]))
end
return 1
"""
)

# KEYS: lock, index. ARGV: owner, token, now_ms, ttl_ms, resource.
# Returns {1, acquired_ms, expires_ms} when renewed, {0} when the caller is not the holder.
RENEW = """
local h = redis.call('HMGET', KEYS[1], 'owner', 'token', 'acquired', 'state')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or h[4] == 'releasing' then return {0} end
local expires = tonumber(ARGV[3]) + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], expires, ARGV[5])
return {1, h[3], expires}
"""

# KEYS: lock, index, queue, leases. ARGV: resource, channel, message prefix, now_ms.
# Returns {owner, token} of the removed holder, or {}; wakes the next waiter.
FORCE_RELEASE = (
    _PRUNE
    + """
local h = redis.call('HMGET', KEYS[1], 'owner', 'token')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
wake(ARGV[2], ARGV[3], tonumber(ARGV[4]))
if not h[1] then return {} end
return {h[1], h[2]}
"""
)

# KEYS: lock, index, queue, leases. ARGV: waiter id. A waiter that stops waiting leaves the queue.
# Returns {owner, token} when a release had handed it the lock meanwhile (the caller releases it),
# else {}.
LEAVE = """
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'waiter', 'owner', 'token')
if h[1] == ARGV[1] then return {h[2], h[3]} end
return {}
"""

# KEYS: lock, index, queue, leases. ARGV: resource, channel, message prefix, now_ms.
# A lease that lapsed: wake the next waiter (the key is gone by itself).
WAKE = (
    _PRUNE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
wake(ARGV[2], ARGV[3], tonumber(ARGV[4]))
return 1
"""
)

# KEYS: the waiter's mark, the minute's counter. ARGV: the mark's TTL (ms), the counter's (s).
# Counts a wait once, however often its waiter looks again. Returns 1 when counted now.
COUNT_WAIT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: status, heartbeats index. ARGV: agent, status, detail, now_ms, ttl_ms.
# Returns {previous status or false, previous detail or false, was_live (0/1), and what
# RESTORE_STATUS needs to undo it: previous updated, expires (or false), index score (or false)}.
HEARTBEAT = """
local prev = redis.call('HMGET', KEYS[1], 'status', 'detail', 'updated', 'expires')
local live = redis.call('EXISTS', KEYS[1])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
local expires = tonumber(ARGV[4]) + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'detail', ARGV[3], 'updated', ARGV[4], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
return {prev[1], prev[2], live, prev[3], prev[4], score}
"""

# KEYS: status, heartbeats index. ARGV: agent, the updated_ms HEARTBEAT wrote, then what it
# returned: was_live, status, detail, updated, expires, score ('' for none); now_ms.
# Puts back what a heartbeat replaced, when the Postgres part of that heartbeat failed; only
# while its write is still there (a later heartbeat's is not undone). Returns 1 when restored.
RESTORE_STATUS = """
if redis.call('HGET', KEYS[1], 'updated') ~= ARGV[2] then return 0 end
if ARGV[3] == '1' and tonumber(ARGV[7]) > tonumber(ARGV[9]) then
  redis.call('HSET', KEYS[1], 'status', ARGV[4], 'detail', ARGV[5], 'updated', ARGV[6], 'expires', ARGV[7])
  redis.call('PEXPIREAT', KEYS[1], ARGV[7])
else
  redis.call('DEL', KEYS[1])
end
if ARGV[8] == '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
end
return 1
"""

# KEYS: status, heartbeats index. ARGV: agent. Takes a lapsed agent out of the index, unless it
# heartbeat meanwhile (its status is back): checked and removed in one step, so a heartbeat that
# lands between the sweep's look and its removal is not dropped from the index.
# Returns 1 when removed (the agent is stale), 0 when it is live.
DROP_LAPSED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


# KEYS: stream, the group's replays hash. ARGV: event JSON, event id, group.
# Appends a replay of an event right after the stream's newest entry (<ms>-<seq + 1>: the relay's
# next `<id>-0` still sorts after it), marked with the one group it is for, and remembers which
# entry carries it so that acking the event's id acks the replay. Returns the entry id.
REPLAY = """
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
local dash = string.find(last, '-', 1, true)
local id = string.sub(last, 1, dash - 1) .. '-' .. (tonumber(string.sub(last, dash + 1)) + 1)
redis.call('XADD', KEYS[1], id, 'event', ARGV[1], 'group', ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], id)
return id
"""

# KEYS: a namespace's stream (the relay's). ARGV: the stream's MAXLEN (approximate); the events,
# ids ascending, as one text: each one's entry id and body, each followed by RS (0x1E, the record
# separator of JSON text sequences, RFC 7464: no JSON text holds it). Adds each as its own entry
# (field `event`). An id at or below the stream's top was added before (a relay that died between
# publishing and storing its cursor): Redis refuses it, and the rest go on, so each event is in the
# stream once, by Redis' own rule. Any other refusal ends the script with that error. Returns how
# many it added.
# One call a batch: with an XADD per event, redis-py's packing of each command and reading of each
# reply cost the relay ~40 us an event (its CPU per event published in batches of 50: 103-117 us
# with XADDs, 64-70 with this). One argument for them all: redis-py packs each argument in Python,
# and an id and a body per event as arguments of their own cost the relay ~4 us more an event
# (47.1-51.7 us against 42.2-44.0).
ADD_EVENTS = """
local added = 0
for id, body in string.gmatch(ARGV[2], '([^\\30]*)\\30([^\\30]*)\\30') do
  local reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'event', body)
  if type(reply) ~= 'table' or not reply.err then
    added = added + 1
  elseif not string.find(reply.err, 'equal or smaller', 1, true) then
    return reply
  end
end
return added
"""

# KEYS: stream, the group's replays hash. ARGV: group, event ids. Acks each event's entry
# (`<id>-0`) and its replay, if one is out. Returns how many were pending.
ACK = """
local acked = 0
for i = 2, #ARGV do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i] .. '-0')
  local replay = redis.call('HGET', KEYS[2], ARGV[i])
  if replay then
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], replay)
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return acked
"""


# Reads of thousands of hashes for the full lists. The reply is one JSON string: redis-py parses
# a reply of 40,000 bulk strings in Python (150 ms for 10,000 hashes pipelined), one string
# json.loads parses in C.

# KEYS: hashes. ARGV: field names. Returns JSON: per key, its values of those fields (false: none).
HMGET_EACH = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HMGET', key, unpack(ARGV))
end
return cjson.encode(out)
"""

# KEYS: locks index. ARGV: lock key prefix, now_ms. Returns JSON: [resource, owner, token,
# acquired_ms, expires_ms] of each lock held now, soonest to expire first. The lock keys come
# from the index, not KEYS; they share its hash tag, so they are on its slot.
HELD_LOCKS = """
local out, n = {}, 0
for _, resource in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')) do
  local h = redis.call('HMGET', ARGV[1] .. resource, 'owner', 'token', 'acquired', 'expires')
  if h[1] and h[2] and h[2] ~= '' then
    n = n + 1
    out[n] = {resource, h[1], h[2], h[3], h[4]}
  end
end
if n == 0 then return '[]' end
return cjson.encode(out)
"""


def hmget_each(keys: list[str], *fields: str, chunk: int = 2000) -> list[list[str | bool]]:
    """Those fields of each hash, False for a field (or hash) that is not there: a round trip per
    `chunk` keys, so that no script holds Redis for long (2,000 hashes: a few milliseconds)."""
    run = script(HMGET_EACH)
    return [
        values
        for start in range(0, len(keys), chunk)
        for values in json.loads(run(keys=keys[start : start + chunk], args=list(fields)))
    ]


def held_locks(ns: str, now_ms: int) -> list[list[str]]:
    """[resource, owner, token, acquired_ms, expires_ms] of each lock of `ns` held at `now_ms`,
    soonest to expire first (equal expiries by resource), in one round trip."""
    return json.loads(script(HELD_LOCKS)(keys=[locks_index(ns)], args=[lock_key(ns, ""), now_ms]))


class Script:
    """A Lua script run by its SHA1 (EVALSHA) on this process's client, loaded on its first NOSCRIPT
    (a restarted or flushed Redis): what redis-py's Script does, less its per-call work for
    pipelines (an import and a type check each call, measured: bench/README.md). `run` does the
    same on an asyncio client."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: list | tuple = (), args: list | tuple = ()):
        execute = client().execute_command
        try:
            return execute(*self.command(keys, args))
        except redis.exceptions.NoScriptError:
            client().script_load(self.source)  # on a cluster, to every primary
            return execute(*self.command(keys, args))

    def command(self, keys: list | tuple = (), args: list | tuple = ()) -> tuple:
        """The EVALSHA command, to queue in a pipeline (whose caller runs `run` on NOSCRIPT)."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def run(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        keys: list | tuple = (),
        args: list | tuple = (),
    ):
        """As a call, on an asyncio client (the caller's own: an asyncio client belongs to its loop)."""
        try:
            return await client.execute_command(*self.command(keys, args))
        except redis.exceptions.NoScriptError:
            await client.script_load(self.source)  # on a cluster, to every primary
            return await client.execute_command(*self.command(keys, args))


@functools.cache
def script(source: str) -> Script:
    return Script(source)
