"""The agents' JSON API v1 (API.md): one NinjaAPI, a router per noun, errors mapped once."""

from ninja import NinjaAPI

from memory_admin.api import health

api = NinjaAPI(
    title="Memory Admin agent API",
    version="1",
    description="Shared facts, versioned records, fenced locks, status and an event log for agents.",
    urls_namespace="api",
)
api.add_router("", health.router)
