from django.core.management.base import BaseCommand, CommandError

from memory_admin.errors import DomainError
from memory_admin.services.tokens import ensure_agent, issue_token


class Command(BaseCommand):
    help = (
        "Issue a bearer token for an agent (creating the namespace and agent if new); prints the token last."
    )

    def add_arguments(self, parser):
        parser.add_argument("--namespace", required=True)
        parser.add_argument("--agent", required=True)
        parser.add_argument("--read-only", action="store_true")

    def handle(self, *args, namespace: str, agent: str, read_only: bool, **options):
        try:
            found = ensure_agent(namespace=namespace, agent_id=agent)
            token, raw = issue_token(agent=found, read_only=read_only)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        scope = "read-only" if read_only else "read-write"
        self.stderr.write(
            f"Issued a {scope} token {token.prefix}… for {agent} in {namespace}; it is shown once:"
        )
        self.stdout.write(raw)
