from django.http import HttpRequest
from ninja import Router, Schema

from memory_admin.api.common import errors, token_of

router = Router(tags=["identity"])


class MeOut(Schema):
    agent_id: str
    namespace: str
    scopes: list[str]


@router.get("/me", response={200: MeOut, **errors()}, url_name="me")
def me(request: HttpRequest):
    """Who the token speaks for."""
    token = token_of(request)
    return {"agent_id": token.agent.name, "namespace": token.agent.ns.name, "scopes": token.scopes}
