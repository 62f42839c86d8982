"""The only code that changes state. One module per noun; every function runs in one
transaction with the event that records it (DESIGN.md, "Where each thing lives")."""

from __future__ import annotations

from dataclasses import dataclass

from memory_admin.models import Agent

SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    """Who acts: an agent (from its token) or an operator (from the session)."""

    name: str
    agent: Agent | None = None

    @classmethod
    def of_agent(cls, agent: Agent) -> Actor:
        return cls(name=agent.name, agent=agent)

    @classmethod
    def of_operator(cls, user) -> Actor:
        return cls(name=f"operator:{user.get_username()}")

    @property
    def agent_id(self) -> str:
        return self.agent.name if self.agent else ""

    @property
    def is_operator(self) -> bool:
        return self.name.startswith("operator:")


SYSTEM_ACTOR = Actor(name=SYSTEM)
