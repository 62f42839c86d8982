"""Python client for Memory Admin: shared facts, versioned records, fenced locks, status and an
event log for multi-agent systems, with the method names of the three-class pattern
(RedisAgentMemory, EventStore, SharedAgentDB) and an offline write-ahead log.

    from memory_admin_client import MemoryClient, AgentEvent, ConflictError

    client = MemoryClient("http://127.0.0.1:8000", token, wal_path="research-1.wal")
"""

from memory_admin_client._core import Backoff, Op, Txn
from memory_admin_client.aio import AsyncLock, AsyncMemoryClient
from memory_admin_client.errors import (
    AgentMismatch,
    ConflictError,
    Forbidden,
    InvalidRequest,
    LockHeld,
    MemoryAdminError,
    NotFound,
    NotLockHolder,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    StaleFence,
    TxnAborted,
    Unauthenticated,
    Unauthorized,
    Unavailable,
)
from memory_admin_client.events import AgentEvent
from memory_admin_client.sync import Lock, MemoryClient
from memory_admin_client.wal import LogInUse

__all__ = [
    "AgentEvent",
    "AgentMismatch",
    "AsyncLock",
    "AsyncMemoryClient",
    "Backoff",
    "ConflictError",
    "Forbidden",
    "InvalidRequest",
    "Lock",
    "LockHeld",
    "LogInUse",
    "MemoryAdminError",
    "MemoryClient",
    "NotFound",
    "NotLockHolder",
    "Op",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "StaleFence",
    "Txn",
    "TxnAborted",
    "Unauthenticated",
    "Unauthorized",
    "Unavailable",
]
__version__ = "0.1.0"
