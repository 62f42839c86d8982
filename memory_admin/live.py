"""The only module that touches the channel layer: what the relay broadcasts to pages."""

from __future__ import annotations

from typing import Literal, TypedDict

from channels.layers import get_channel_layer


class Changed(TypedDict):
    """One committed event, pushed to every console socket of its namespace."""

    type: Literal["memory.changed"]
    ns: str
    event: dict


def group_name(ns_id: int) -> str:
    return f"ns-{ns_id}"


async def broadcast(ns_id: int, ns: str, event: dict) -> None:
    message: Changed = {"type": "memory.changed", "ns": ns, "event": event}
    await get_channel_layer().group_send(group_name(ns_id), message)
