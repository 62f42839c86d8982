"""AgentEvent: the event the three-class pattern published, accepted by `publish` as it was."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memory_admin_client._core import now_iso


@dataclass
class AgentEvent:
    """An agent's own event. `event_type` must match ^[a-z0-9][a-z0-9_.-]{0,63}$ and not use a
    prefix the server writes itself (fact., record., lock., ...). The server stamps the time
    and the id; `timestamp` and `event_id` are kept for code that sets or reads them."""

    event_type: str
    agent_id: str
    payload: dict[str, Any]
    timestamp: str = field(default_factory=now_iso)
    event_id: str = ""
