"""The channel layer: the relay's doorbells to the console sockets of a namespace.

Nothing outside memory_admin.live touches it (an import-linter contract says so): the relay
calls `broadcast`, each process's Feed (feed.py) is the one member of its namespace's group.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from channels.layers import BaseChannelLayer, get_channel_layer


class Changed(TypedDict):
    """A doorbell: the namespace's log has grown to `event["id"]` (a position); every console
    socket of the namespace reads the log after its own cursor."""

    type: Literal["memory.changed"]
    ns: str
    event: dict


def group_name(ns_id: int) -> str:
    return f"ns-{ns_id}"


def layer() -> BaseChannelLayer:
    return get_channel_layer()


async def broadcast(ns_id: int, ns: str, position: int) -> None:
    message: Changed = {"type": "memory.changed", "ns": ns, "event": {"id": position}}
    await layer().group_send(group_name(ns_id), message)
